"""DEV ONLY: connectors that log anyone in as a fixed test user.

They exist for local development and demos (`make run`). The server logs a warning at start when
one is configured and the login page marks it; never enable them in production.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from portcullis.connectors.base import (
    CallbackConnector,
    Connector,
    ConnectorEnv,
    ConnectorError,
    LoginRedirect,
    PasswordConnector,
    RefreshConnector,
    Scopes,
)
from portcullis.storage.models import Identity

MOCK_IDENTITY = Identity(
    user_id="mock-user-0001",
    username="Mock User",
    preferred_username="mock",
    email="mock.user@example.com",
    email_verified=True,
    groups=("authors",),
)


class MockCallbackConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MockPasswordConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    username: str = Field(min_length=1)
    password: SecretStr


def _with_groups(scopes: Scopes) -> Identity:
    if scopes.groups:
        return MOCK_IDENTITY
    return Identity(**{**MOCK_IDENTITY.__dict__, "groups": ()})


class MockCallbackConnector(CallbackConnector, RefreshConnector):
    """Redirects straight back to /callback and logs in as the mock user."""

    @property
    def dev_only(self) -> bool:
        return True

    async def login_url(self, scopes: Scopes, callback_url: str, state: str) -> LoginRedirect:
        return LoginRedirect(f"{callback_url}?{urlencode({'state': state})}")

    async def handle_callback(
        self, scopes: Scopes, params: Mapping[str, str], connector_state: bytes
    ) -> Identity:
        return _with_groups(scopes)

    async def refresh(self, scopes: Scopes, identity: Identity) -> Identity:
        return _with_groups(scopes)


class MockPasswordConnector(PasswordConnector, RefreshConnector):
    """Accepts exactly one configured username and password."""

    def __init__(
        self, connector_id: str, name: str, connector_type: str, config: MockPasswordConfig
    ) -> None:
        super().__init__(connector_id, name, connector_type)
        self._config = config

    @property
    def dev_only(self) -> bool:
        return True

    async def login(self, scopes: Scopes, username: str, password: str) -> Identity | None:
        user_ok = hmac.compare_digest(username.encode(), self._config.username.encode())
        pass_ok = hmac.compare_digest(
            password.encode(), self._config.password.get_secret_value().encode()
        )
        return _with_groups(scopes) if user_ok and pass_ok else None

    async def refresh(self, scopes: Scopes, identity: Identity) -> Identity:
        if identity.user_id != MOCK_IDENTITY.user_id:
            raise ConnectorError("unknown mock user")
        return _with_groups(scopes)


def open_mock_callback(
    connector_id: str, name: str, connector_type: str, config: BaseModel, env: ConnectorEnv
) -> Connector:
    return MockCallbackConnector(connector_id, name, connector_type)


def open_mock_password(
    connector_id: str, name: str, connector_type: str, config: BaseModel, env: ConnectorEnv
) -> Connector:
    assert isinstance(config, MockPasswordConfig)
    return MockPasswordConnector(connector_id, name, connector_type, config)
