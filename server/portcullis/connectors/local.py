"""The local password database (Dex's enablePasswordDB) backed by storage.

Not a ``connectors:`` type (as in Dex, ``enablePasswordDB`` turns it on under the reserved id
``local``), but opened the same way: :data:`LOCAL_CONNECTOR_TYPE` pairs :class:`LocalConfig`
(the static passwords, resolved by the config loader) with :func:`open_local`.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, ConfigDict

from portcullis import passwords
from portcullis.config.model import LOCAL_CONNECTOR_ID
from portcullis.connectors.base import (
    Connector,
    ConnectorEnv,
    ConnectorError,
    ConnectorType,
    PasswordConnector,
    RefreshConnector,
    Scopes,
)
from portcullis.storage.base import NotFoundError, Storage
from portcullis.storage.models import Identity, Password

__all__ = [
    "LOCAL_CONNECTOR_ID",
    "LOCAL_CONNECTOR_TYPE",
    "LocalConfig",
    "LocalPasswordConnector",
    "open_local",
]


def identity_from_password(entry: Password) -> Identity:
    return Identity(
        user_id=entry.user_id,
        username=entry.name or entry.username,
        preferred_username=entry.preferred_username or entry.username,
        email=entry.email,
        email_verified=entry.email_verified,
        groups=entry.groups,
    )


class LocalPasswordConnector(PasswordConnector, RefreshConnector):
    prompt = "Email Address"

    def __init__(
        self,
        storage: Storage,
        static_passwords: list[Password],
        *,
        fips_mode: bool,
        name: str = "Email",
    ) -> None:
        super().__init__(LOCAL_CONNECTOR_ID, name, "local")
        self._storage = storage
        # Static passwords come from config and are never written to storage (like Dex), so
        # removing one from the config removes the user.
        self._static = {p.email.lower(): p for p in static_passwords}
        self._fips_mode = fips_mode

    def _lookup(self, email: str) -> Password | None:
        entry = self._static.get(email.strip().lower())
        if entry is not None:
            return entry
        try:
            return self._storage.get_password(email.strip())
        except NotFoundError:
            return None

    async def login(self, scopes: Scopes, username: str, password: str) -> Identity | None:
        entry = self._lookup(username)
        hashed = entry.hash if entry else passwords.dummy_hash(fips_mode=self._fips_mode)
        try:
            ok = await asyncio.to_thread(
                passwords.verify_password, password, hashed, fips_mode=self._fips_mode
            )
        except passwords.PasswordHashError as exc:
            # A stored hash the policy refuses (e.g. bcrypt in FIPS mode): fail closed, loudly.
            raise ConnectorError(
                "This account's password hash is not allowed by the server policy; "
                "ask an administrator to reset it."
            ) from exc
        if not ok or entry is None:
            return None
        return identity_from_password(entry)

    async def refresh(self, scopes: Scopes, identity: Identity) -> Identity:
        entry = self._lookup(identity.email)
        if entry is None:
            raise ConnectorError("the user no longer exists")
        if entry.user_id != identity.user_id:
            raise ConnectorError("the user was replaced")
        return identity_from_password(entry)


class LocalConfig(BaseModel):
    """The password database's settings: the static passwords from the config file (never
    written to storage); every other user lives in storage."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    static_passwords: tuple[Password, ...] = ()


def open_local(
    connector_id: str, name: str, connector_type: str, config: BaseModel, env: ConnectorEnv
) -> Connector:
    assert isinstance(config, LocalConfig)
    return LocalPasswordConnector(
        env.storage, list(config.static_passwords), fips_mode=env.fips_mode, name=name
    )


LOCAL_CONNECTOR_TYPE = ConnectorType(LocalConfig, open_local)
