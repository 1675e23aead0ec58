"""Fixtures of the oidc / oauth connector suites (a node-oidc-provider per session), kept in
their own directory so the connector-wide conftest stays shared by every connector suite."""

from tests.support.oidc_upstream import (  # noqa: F401
    anyio_backend,
    env,
    oidc_peer,
    tls_oidc_peer,
)
