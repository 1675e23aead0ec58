"""A real OCI registry for tests: the release package's throwaway local registry
(``portcullis_release.distribute.local_registry``, Debian's ``docker-registry`` with htpasswd auth).

Why a real one: the chart, image and signature tests must prove that artefacts survive a push and
a pull-by-digest through an authenticated registry, and that anonymous access is refused. The
implementation lives in the release package (``make release`` starts the same registry, and
release code never imports ``tests/``); this module gives it the names the test areas use::

    from tests.support.registry import Registry, running_registry, start_registry

    reg = start_registry(tmp_path, {"alice": "s3cret"})
    try:
        reg.host, reg.url, reg.auth_file, reg.username, reg.password
    finally:
        reg.stop()
"""

from __future__ import annotations

from portcullis_release.distribute.local_registry import (
    REGISTRY_BINARY,
    running_registry,
    start_registry,
)
from portcullis_release.distribute.local_registry import LocalRegistry as Registry
from portcullis_release.distribute.local_registry import LocalRegistryError as RegistryError

__all__ = ["REGISTRY_BINARY", "Registry", "RegistryError", "running_registry", "start_registry"]
