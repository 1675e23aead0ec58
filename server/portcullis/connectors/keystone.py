"""The ``keystone`` connector: username and password checked by OpenStack Keystone (API v3).

Dex-compatible (``connector/keystone/keystone.go``), with Dex's keys: ``keystoneHost`` (the
public endpoint, e.g. ``https://keystone.example.org:5000``), ``domain`` (the domain ID users
log in to, usually ``default``), and ``keystoneUsername``/``keystonePassword``, an account
allowed to read any user's record and groups (Keystone's ``identity:get_user`` and
``identity:list_groups_for_user`` policies). The conversation, as Keystone documents it
(docs.openstack.org/api-ref/identity/v3):

* login: ``POST /v3/auth/tokens`` with the ``password`` method; Keystone answers 201 with the
  new token in the ``X-Subject-Token`` header and the user (``id``, ``name``, ``domain``) in
  the body, or 401 for a wrong password, an unknown or disabled user;
* email: ``GET /v3/users/{id}`` with the user's own token (a Keystone user may read their own
  record); Dex marks an address found there as verified, and so does this connector;
* groups (only when the ``groups`` scope was asked for, as Dex): ``GET /v3/users/{id}/groups``
  with ``X-Auth-Token``, at login the user's own token (as Dex: owners may list their own
  groups), at refresh an admin token from the same endpoint; the group names are the
  groups claim (a list Keystone marks ``truncated``, because its ``list_limit`` cut it, is an
  error: never a silently partial groups claim);
* refresh: with a fresh admin token, ``GET /v3/users/{id}`` must still find the user and, the
  groups re-read, the session carries the user's groups of now.

Where Portcullis is stricter than Dex, on purpose:

* An empty password is refused without a request (Dex sends it and lets Keystone decide).
* Refresh fails closed: a deleted user (404), a disabled one (``enabled: false``, which Dex does
  not look at), or an admin account Keystone no longer accepts ends the session.
* Every call has Portcullis's outbound timeouts and response-size bound; a 429 (a proxy's rate
  limiter in front of Keystone) or a 5xx is a clear ConnectorError, never a stack trace.
* Neither token is stored: connector data stays empty, since refresh needs only the user ID, and
  no token or password ever reaches a log line or an error message.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from portcullis.clock import Clock
from portcullis.connectors.base import (
    Connector,
    ConnectorEnv,
    ConnectorError,
    ConnectorType,
    PasswordConnector,
    RefreshConnector,
    Scopes,
)
from portcullis.connectors.oauth2_common import (
    ApiResponse,
    UpstreamHTTP,
    http_url,
    raise_for_api_status,
)
from portcullis.storage.models import Identity

__all__ = ["CONNECTOR_TYPE", "KeystoneConfig", "KeystoneConnector", "open_keystone"]

log = logging.getLogger("portcullis.connectors.keystone")


class KeystoneConfig(BaseModel):
    """``connectors[].config`` of a ``type: keystone`` connector, with Dex's key names."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    domain: str = Field(min_length=1)
    host: str = Field(alias="keystoneHost", min_length=1)
    admin_username: str = Field(alias="keystoneUsername", min_length=1)
    admin_password: SecretStr = Field(alias="keystonePassword")

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        http_url(value, "keystoneHost")
        if value.rstrip("/").endswith("/v3"):
            raise ValueError(
                "keystoneHost is the endpoint without the API version "
                f"(e.g. https://keystone.example.org:5000), got {value!r}"
            )
        return value.rstrip("/")

    @field_validator("admin_password")
    @classmethod
    def _password(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError(
                "keystonePassword must not be empty (the admin account reads users' groups)"
            )
        return value


class KeystoneConnector(PasswordConnector, RefreshConnector):
    """Password logins against Keystone v3; groups and refresh through the admin account."""

    def __init__(
        self,
        connector_id: str,
        name: str,
        connector_type: str,
        config: KeystoneConfig,
        clock: Clock,
        http: UpstreamHTTP | None = None,
    ) -> None:
        super().__init__(connector_id, name, connector_type)
        self._config = config
        self._clock = clock
        self._http = http or UpstreamHTTP()
        self._api = f"{config.host}/v3"

    async def login(self, scopes: Scopes, username: str, password: str) -> Identity | None:
        if not username or not password:
            return None
        answer = await self._authenticate(username, password, what="login")
        if answer is None:
            return None
        token, user = answer
        user_id = _text(user, "id")
        if not user_id:
            raise ConnectorError("Keystone's token response names no user id (login)")
        email = ""
        record = await self._user(user_id, token, what="user lookup")
        if record is not None:
            email = _text(record, "email")
        groups: tuple[str, ...] = ()
        if scopes.groups:
            groups = await self._groups(user_id, token)
        return Identity(
            user_id=user_id,
            username=_text(user, "name") or username,
            email=email,
            email_verified=bool(email),
            groups=groups,
        )

    async def refresh(self, scopes: Scopes, identity: Identity) -> Identity:
        admin = await self._admin_token()
        record = await self._user(identity.user_id, admin, what="refresh user lookup")
        if record is None:
            log.info("keystone refresh refused: user %s no longer exists", identity.user_id)
            raise ConnectorError("your Keystone account no longer exists; please log in again")
        if record.get("enabled") is False:
            log.info("keystone refresh refused: user %s is disabled", identity.user_id)
            raise ConnectorError("your Keystone account is disabled")
        groups = await self._groups(identity.user_id, admin) if scopes.groups else ()
        email = _text(record, "email")
        return Identity(
            user_id=identity.user_id,
            username=_text(record, "name") or identity.username,
            preferred_username=identity.preferred_username,
            email=email,
            email_verified=bool(email),
            groups=groups,
            connector_data=identity.connector_data,
        )

    # -- Keystone API ----------------------------------------------------------------------

    async def _authenticate(
        self, username: str, password: str, *, what: str
    ) -> tuple[str, dict[str, Any]] | None:
        """(token, token.user) for a password Keystone accepts; None when it says 401."""
        body = {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": username,
                            "domain": {"id": self._config.domain},
                            "password": password,
                        }
                    },
                }
            }
        }
        response = await self._http.fetch(
            f"{self._api}/auth/tokens", what=what, method="POST", json_body=body
        )
        if response.status == 401:
            log.info("keystone %s refused: %s", what, response.message() or "HTTP 401")
            return None
        self._check(response, what)
        token = response.headers.get("x-subject-token", "")
        document = response.body if isinstance(response.body, dict) else {}
        token_body = document.get("token")
        user = token_body.get("user") if isinstance(token_body, dict) else None
        if response.status != 201 or not token or not isinstance(user, dict):
            raise ConnectorError(f"Keystone's {what} answer is not a v3 token response")
        return token, user

    async def _admin_token(self) -> str:
        answer = await self._authenticate(
            self._config.admin_username,
            self._config.admin_password.get_secret_value(),
            what="admin login",
        )
        if answer is None:
            log.error(
                "keystone refused the admin account %r: check keystoneUsername/keystonePassword",
                self._config.admin_username,
            )
            raise ConnectorError(
                "the Keystone connector is not set up correctly (its admin account was "
                "refused); contact an administrator"
            )
        return answer[0]

    async def _user(self, user_id: str, token: str, *, what: str) -> dict[str, Any] | None:
        """The user's record, or None when Keystone no longer knows the user (404)."""
        response = await self._http.fetch(
            f"{self._api}/users/{quote(user_id, safe='')}",
            what=what,
            headers={"X-Auth-Token": token},
        )
        if response.status == 404:
            return None
        self._check(response, what)
        record = response.body.get("user") if isinstance(response.body, dict) else None
        if not isinstance(record, dict):
            raise ConnectorError(f"Keystone's {what} answer has no user")
        return record

    async def _groups(self, user_id: str, token: str) -> tuple[str, ...]:
        response = await self._http.fetch(
            f"{self._api}/users/{quote(user_id, safe='')}/groups",
            what="groups lookup",
            headers={"X-Auth-Token": token},
        )
        if response.status == 404:
            raise ConnectorError("your Keystone account no longer exists; please log in again")
        self._check(response, "groups lookup")
        body = response.body if isinstance(response.body, dict) else {}
        groups = body.get("groups")
        if not isinstance(groups, list):
            raise ConnectorError("Keystone's groups answer has no group list")
        if body.get("truncated") is True:
            # Keystone's list_limit cut the list; a partial groups claim would silently drop
            # memberships that RBAC bindings rely on, so refuse instead (Dex #2108's lesson).
            log.error("keystone cut user %s's group list (list_limit is too low)", user_id)
            raise ConnectorError(
                "Keystone returned only part of your groups (its list_limit is too low); "
                "contact an administrator"
            )
        names: list[str] = []
        for group in groups:
            name = _text(group, "name") if isinstance(group, dict) else ""
            if not name:
                raise ConnectorError("Keystone's groups answer has a group without a name")
            if name not in names:
                names.append(name)
        return tuple(names)

    def _check(self, response: ApiResponse, what: str) -> None:
        raise_for_api_status(response, f"Keystone {what}", self._clock.now())


def _text(document: dict[str, Any], key: str) -> str:
    value = document.get(key)
    return value if isinstance(value, str) else ""


def open_keystone(
    connector_id: str, name: str, connector_type: str, config: BaseModel, env: ConnectorEnv
) -> Connector:
    """Open a ``keystone`` connector from its validated config (no network I/O)."""
    if not isinstance(config, KeystoneConfig):
        raise TypeError(f"expected KeystoneConfig, got {type(config).__name__}")
    return KeystoneConnector(connector_id, name, connector_type, config, env.clock)


CONNECTOR_TYPE = ConnectorType(KeystoneConfig, open_keystone)
