"""Shared set-up of the oidc and oauth connector suites: the upstream accounts and clients, and
fixtures for a node-oidc-provider (plain HTTP, and HTTPS for the rootCAs tests) started once per
test session and xdist worker, each stopped by PID at the end.

The fixtures are registered by this directory's conftest."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from portcullis.clock import SystemClock
from portcullis.connectors.base import ConnectorEnv
from portcullis.storage.memory import MemoryStorage

from tests.support.oidc_peer import OIDCPeer, make_tls_files, running_oidc_peer

#: Where the issuer would receive upstream callbacks; never contacted (the tests stop at the
#: redirect to it and hand its query to the connector).
CALLBACK = "http://127.0.0.1:5556/dex/callback"
CLIENT_ID = "portcullis"
CLIENT_SECRET = "peer-secret:with%odd chars"
POST_CLIENT_ID = "portcullis-post"
POST_CLIENT_SECRET = "peer-secret-post"

ALICE = {
    "name": "Alice Liddell",
    "preferred_username": "alice",
    "nickname": "ally",
    "email": "alice@example.com",
    "email_verified": True,
    "groups": ["admins", "devs"],
}
BOB = {
    "name": "Bob",
    "preferred_username": "bob",
    "email": "bob@example.com",
    "email_verified": True,
    "groups": ["devs"],
}

PEER_CLIENTS = [
    {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uris": [CALLBACK],
        "grant_types": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_method": "client_secret_basic",
    },
    {
        "client_id": POST_CLIENT_ID,
        "client_secret": POST_CLIENT_SECRET,
        "redirect_uris": [CALLBACK],
        "grant_types": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_method": "client_secret_post",
    },
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def oidc_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OIDCPeer]:
    with running_oidc_peer(
        tmp_path_factory.mktemp("oidc-peer"),
        clients=PEER_CLIENTS,
        accounts={"alice": ALICE, "bob": BOB},
    ) as peer:
        yield peer


@pytest.fixture(scope="session")
def tls_oidc_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OIDCPeer]:
    workdir = tmp_path_factory.mktemp("oidc-peer-tls")
    tls = make_tls_files(workdir / "tls")
    with running_oidc_peer(
        workdir, clients=PEER_CLIENTS, accounts={"alice": ALICE}, tls=tls
    ) as peer:
        yield peer


@pytest.fixture
def env() -> ConnectorEnv:
    return ConnectorEnv(
        storage=MemoryStorage(),
        clock=SystemClock(),
        issuer="http://127.0.0.1:5556/dex",
        fips_mode=False,
    )


def ca_of(peer: OIDCPeer) -> Path:
    assert peer.ca_cert is not None
    return peer.ca_cert
