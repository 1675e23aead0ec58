"""An in-process OpenID provider for unit tests of the protocol core: a ``Provider`` built from a
YAML config on ``MemoryStorage`` with a ``FrozenClock``, driven through its token endpoint and
login state machine directly (no ASGI app, no server process), so time can jump and requests
can be interleaved deterministically.

The password connector is the real dev-only ``mockPassword`` connector; ``GatedConnector``
extends it so a test can hold one refresh inside its upstream call while others run.
"""

from __future__ import annotations

import base64
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from portcullis.clock import FrozenClock
from portcullis.connectors.base import Connector, Scopes
from portcullis.connectors.mock import MockPasswordConfig, MockPasswordConnector
from portcullis.issuer import parse_config
from portcullis.oidc.errors import OAuthError
from portcullis.oidc.provider import Provider
from portcullis.oidc.refresh import parse_refresh_token
from portcullis.storage.memory import MemoryStorage
from portcullis.storage.models import Identity

ISSUER = "http://127.0.0.1:5556/dex"
APP_SECRET = "app-secret-value-0123456789"
APP_REDIRECT = "http://127.0.0.1:5555/callback"
APP_LOGOUT_REDIRECT = "http://127.0.0.1:5555/bye"
USERNAME = "alice"
PASSWORD = "correct horse"
START = 1_800_000_000.0


class GatedConnector(MockPasswordConnector):
    """The mock password connector whose next upstream refresh can be held open, counting
    its upstream refresh calls."""

    def __init__(self, config: MockPasswordConfig) -> None:
        super().__init__("mock", "Mock", "mockPassword", config)
        self.hold_next_refresh = False
        self.entered = anyio.Event()
        self.release = anyio.Event()
        # Upstream refresh calls made (each one would rotate a real upstream refresh token).
        self.refreshes = 0

    async def refresh(self, scopes: Scopes, identity: Identity) -> Identity:
        self.refreshes += 1
        if self.hold_next_refresh:
            self.hold_next_refresh = False
            self.entered.set()
            await self.release.wait()
        return await super().refresh(scopes, identity)


@dataclass
class World:
    provider: Provider
    storage: MemoryStorage
    clock: FrozenClock
    connector: GatedConnector
    client_ip: str = "192.0.2.10"
    basic: str = field(default="Basic " + base64.b64encode(f"app:{APP_SECRET}".encode()).decode())

    async def token(self, **form: str) -> dict[str, Any]:
        """POST /token as the confidential client ``app``."""
        return await self.provider.tokens.handle(form, self.basic, self.client_ip)

    async def refuse(self, **form: str) -> OAuthError:
        """POST /token expecting a refusal; returns the error."""
        with pytest.raises(OAuthError) as refused:
            await self.token(**form)
        return refused.value

    async def login(self, scope: str = "openid offline_access groups") -> dict[str, Any]:
        """Tokens for the mock user through the password grant."""
        return await self.token(
            grant_type="password", username=USERNAME, password=PASSWORD, scope=scope
        )

    async def refresh(self, refresh_token: str, **extra: str) -> dict[str, Any]:
        return await self.token(grant_type="refresh_token", refresh_token=refresh_token, **extra)

    def jwt_valid(self, token: str) -> bool:
        return self.provider.reader.verified_claims(token) is not None

    def family_exists(self, refresh_token: str) -> bool:
        parsed = parse_refresh_token(refresh_token)
        assert parsed is not None
        return any(t.id == parsed[0] for t in self.storage.list_refresh_tokens())


def _config(refresh: str, grants: str) -> str:
    return textwrap.dedent(
        f"""
        issuer: {ISSUER}
        storage: {{type: memory}}
        web: {{http: 127.0.0.1:5556}}
        expiry:
          idTokens: 1h
          refreshTokens: {{{refresh}}}
        oauth2:
          passwordConnector: mock
          grantTypes: [{grants}]
        connectors:
          - type: mockPassword
            id: mock
            name: Mock
            config: {{username: {USERNAME}, password: {PASSWORD}}}
        staticClients:
          - id: app
            secret: {APP_SECRET}
            redirectURIs: [{APP_REDIRECT}]
            postLogoutRedirectURIs: [{APP_LOGOUT_REDIRECT}]
          - id: kubectl
            public: true
            redirectURIs: ["http://127.0.0.1:8000/"]
        """
    )


def make_world(
    refresh: str = "reuseInterval: 3s",
    grants: str = "authorization_code, refresh_token, password, client_credentials",
    extra_connectors: Sequence[Connector] = (),
) -> World:
    """Build a started provider; ``refresh`` is the body of ``expiry.refreshTokens`` in YAML
    flow style (e.g. ``"reuseInterval: 3s, disableRotation: true"``). ``extra_connectors`` join
    the mock password connector (id ``mock``)."""
    config = parse_config(_config(refresh, grants))
    spec = config.connectors[0].config
    assert isinstance(spec, MockPasswordConfig)
    connector = GatedConnector(spec)
    storage = MemoryStorage()
    clock = FrozenClock(START)
    connectors = {c.id: c for c in (connector, *extra_connectors)}
    provider = Provider(config, storage, connectors, clock)
    provider.start()
    return World(provider, storage, clock, connector)
