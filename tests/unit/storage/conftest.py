"""The storage conformance fixtures: every backend in BACKENDS runs every conformance test.

A new backend joins by adding one entry to BACKENDS (a name and a factory that opens a fresh,
empty store in the test's temp dir, or from a fixture such as a fresh PostgreSQL database).
Sample records are built by the ``samples`` fixture so the tests stay independent of how pytest
imports this directory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from portcullis.config.model import PostgresConfig
from portcullis.storage.base import Storage
from portcullis.storage.memory import MemoryStorage
from portcullis.storage.models import (
    PKCE,
    AuthCode,
    AuthRequest,
    Client,
    DeviceRequest,
    Identity,
    Password,
    RefreshToken,
)
from portcullis.storage.postgres import PostgresStorage
from portcullis.storage.sealing import Sealer, SealingKey, generate_key
from portcullis.storage.sqlite import SQLiteStorage

from tests.support.postgres import (  # noqa: F401
    _reusable_database,
    fresh_postgres_database,
    postgres_cluster,
    postgres_database,
)


def sealer() -> Sealer:
    """A sealer with a fresh key: the SQL backends run every conformance test sealing
    connector data, as they do when served (tests/unit/storage/test_storage_sealing.py checks
    what lands in the rows)."""
    return Sealer(SealingKey(generate_key(), "a test key"))


def _postgres(request: pytest.FixtureRequest, _tmp: Path) -> Storage:
    # A fresh database on the session's real PostgreSQL server (started on first use).
    settings: dict[str, Any] = request.getfixturevalue("postgres_database")
    return PostgresStorage(PostgresConfig.model_validate(settings), sealer=sealer())


# name -> factory(request, tmp_path) opening a fresh, empty store.
BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Storage]] = {
    "memory": lambda _request, _tmp: MemoryStorage(),
    "sqlite": lambda _request, tmp: SQLiteStorage(str(tmp / "portcullis.db"), sealer=sealer()),
    "postgres": _postgres,
}


@pytest.fixture(params=sorted(BACKENDS))
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    store = BACKENDS[request.param](request, tmp_path)
    try:
        yield store
    finally:
        store.close()


class Samples:
    """Builders for records with every field set to a non-default, awkward value, so a backend
    that drops or mangles a field fails the round-trip tests."""

    @staticmethod
    def identity(user_id: str = "user-1", **changes: object) -> Identity:
        fields: dict[str, object] = {
            "user_id": user_id,
            "username": "Ålice Ünicode",
            "preferred_username": "alice",
            "email": "alice@example.com",
            "email_verified": True,
            "groups": ("admins", "dev ops", "ünïcode"),
            # Not valid UTF-8 on purpose: connector data is opaque bytes.
            "connector_data": b"\x00\xff\xfe{refresh: 'upstream'}\x80",
        }
        fields.update(changes)
        return Identity(**fields)

    @staticmethod
    def client(client_id: str = "example-app", **changes: object) -> Client:
        fields: dict[str, object] = {
            "id": client_id,
            "secret_hash": "ab" * 32,
            "redirect_uris": ("http://127.0.0.1:5555/callback", "https://app.example/cb"),
            "trusted_peers": ("kubectl",),
            "public": False,
            "name": "Example App",
            "logo_url": "https://app.example/logo.png",
            "grant_types": ("authorization_code", "refresh_token"),
            "response_types": ("code",),
            "allowed_connectors": ("local", "mock"),
            "id_token_ttl": 600.5,
            "refresh_token_absolute_lifetime": None,
            "post_logout_redirect_uris": ("https://app.example/bye", "http://127.0.0.1:5555/"),
            "allowed_resources": ("https://flux-mcp.example.com", "urn:example:api"),
            "registration_token_hash": "9f" * 32,
            "registered_at": 1_700_000_000.25,
            "expires_at": 1_702_592_000.5,
        }
        fields.update(changes)
        return Client(**fields)

    def auth_request(self, request_id: str = "req-1", **changes: object) -> AuthRequest:
        fields: dict[str, object] = {
            "id": request_id,
            "client_id": "example-app",
            "response_types": ("code", "id_token"),
            "scopes": ("openid", "email", "groups", "offline_access"),
            "redirect_uri": "http://127.0.0.1:5555/callback",
            "expiry": 1_700_000_600.25,
            "nonce": "n-0S6_WzA2Mj",
            "state": "af0ifjsldkj",
            "force_approval_prompt": True,
            "logged_in": True,
            "identity": self.identity(),
            "connector_id": "local",
            "pkce": PKCE("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", "S256"),
            "auth_time": 1_700_000_000.5,
            "browser_binding": "csrf-binding",
            "connector_state": b"\x00upstream-verifier\xff",
            "response_mode": "fragment",
            "resources": ("https://flux-mcp.example.com", "https://api.example/v1"),
        }
        fields.update(changes)
        return AuthRequest(**fields)

    def auth_code(self, code_id: str = "code-1", **changes: object) -> AuthCode:
        fields: dict[str, object] = {
            "id": code_id,
            "client_id": "example-app",
            "redirect_uri": "http://127.0.0.1:5555/callback",
            "scopes": ("openid", "groups"),
            "identity": self.identity(),
            "connector_id": "local",
            "expiry": 1_700_000_600.75,
            "nonce": "nonce",
            "pkce": PKCE("challenge", "plain"),
            "auth_time": 1_700_000_000.5,
            "resources": ("https://flux-mcp.example.com",),
        }
        fields.update(changes)
        return AuthCode(**fields)

    def refresh_token(self, record_id: str = "rt-1", **changes: object) -> RefreshToken:
        fields: dict[str, object] = {
            "id": record_id,
            "token_hash": "cd" * 32,
            "client_id": "example-app",
            "connector_id": "local",
            "identity": self.identity(),
            "scopes": ("openid", "offline_access"),
            "created_at": 1_700_000_000.125,
            "last_used": 1_700_000_100.5,
            "obsolete_token_hash": "ef" * 32,
            "successor_sealed": "sealed-successor",
            "nonce": "nonce",
            "auth_time": 1_700_000_000.5,
            "issued_by_code": "code-1",
            "expires_at": 1_700_086_400.0,
            "resources": ("https://flux-mcp.example.com", "urn:example:api"),
        }
        fields.update(changes)
        return RefreshToken(**fields)

    def device_request(
        self, record_id: str = "dev-1", user_code: str = "BCDFGHJK", **changes: object
    ) -> DeviceRequest:
        fields: dict[str, object] = {
            "id": record_id,
            "user_code": user_code,
            "client_id": "kubectl",
            "scopes": ("openid", "groups", "offline_access"),
            "expiry": 1_700_000_300.5,
            "interval": 10.0,
            "last_poll": 1_700_000_010.25,
            "status": "approved",
            "pkce_verifier": "v" * 64,
            "identity": self.identity(),
            "connector_id": "local",
            "auth_time": 1_700_000_000.5,
        }
        fields.update(changes)
        return DeviceRequest(**fields)

    @staticmethod
    def password(email: str = "Admin@Example.com", **changes: object) -> Password:
        fields: dict[str, object] = {
            "email": email,
            "hash": "$2b$10$abcdefghijklmnopqrstuu0123456789abcdefghijklmnopqrstu",
            "username": "admin",
            "user_id": "08a8684b-db88-4b73-90a9-3cd1661f5466",
            "name": "Admin Istrator",
            "preferred_username": "admin",
            "email_verified": False,
            "groups": ("admins",),
        }
        fields.update(changes)
        return Password(**fields)


@pytest.fixture
def samples() -> Samples:
    return Samples()
