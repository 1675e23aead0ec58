"""The ``atlassian-crowd`` connector: username and password checked by Atlassian Crowd.

Dex-compatible (``connector/atlassiancrowd/atlassiancrowd.go``), with Dex's keys: ``baseURL``
(Crowd's context URL, e.g. ``https://crowd.example.org/crowd``), ``clientID``/``clientSecret``
(the *application* name and password configured in Crowd; every call authenticates as the
application with HTTP Basic), ``groups`` (only members of one of these may log in),
``usernamePrompt`` and ``preferredUsernameField`` (``key``, ``name`` or ``email``). The Crowd
REST API (``/rest/usermanagement/1``) calls, as Dex makes them:

* login: ``POST /session`` with ``{"username", "password"}`` creates an SSO session (201) when
  the password is right *and* the user may use this application; 400 with reason
  ``INVALID_USER_AUTHENTICATION`` is a wrong username or password;
* ``GET /user?username=`` gives the user (``key`` is the stable user ID, ``name``, ``email``,
  ``active``);
* ``GET /user/group/nested?username=`` gives the user's direct and inherited groups;
* refresh: the user is read again and ``POST /session?validate-password=false`` asks Crowd
  whether they may still use the application; groups are read again.

Where Portcullis is stricter than Dex, on purpose:

* ``groups`` restricts login and refresh whether or not the client asked for the ``groups``
  scope (Dex checks it only with the scope, so a client without it let anyone in).
* Refresh fails closed for a deactivated user (``active: false``) and for a user whose ``key``
  changed (a deleted account re-created under the same name is somebody else).
* Usernames are URL-encoded in query strings (Dex pastes them in raw, so ``&`` or ``#`` in a
  username changes the request), and group lists are read page by page (``start-index``,
  ``max-results``) until Crowd has no more, never cut at its default page size.
* A ``preferredUsernameField`` other than ``key``, ``name`` or ``email`` is a config error
  (Dex logs a warning per login and leaves the claim empty).
* The SSO session token Crowd returns is never stored or logged; connector data is only the
  username, as in Dex.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any, Literal
from urllib.parse import quote, urlencode

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
    filter_allowed,
    http_url,
    raise_for_api_status,
)
from portcullis.storage.models import Identity

__all__ = ["CONNECTOR_TYPE", "CrowdConfig", "CrowdConnector", "open_atlassian_crowd"]

log = logging.getLogger("portcullis.connectors.atlassiancrowd")

#: Groups asked for per request, and the most pages read before the login fails rather than
#: issuing a groups claim Crowd did not finish.
GROUP_PAGE_SIZE = 1000
MAX_GROUP_PAGES = 100

_MISCONFIGURED = "the Atlassian Crowd connector is not set up correctly; contact an administrator"


class CrowdConfig(BaseModel):
    """``connectors[].config`` of a ``type: atlassian-crowd`` connector, Dex's key names."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    base_url: str = Field(alias="baseURL", min_length=1)
    client_id: str = Field(alias="clientID", min_length=1)
    client_secret: SecretStr = Field(alias="clientSecret")
    groups: tuple[str, ...] = ()
    preferred_username_field: Literal["", "key", "name", "email"] = Field(
        "", alias="preferredUsernameField"
    )
    username_prompt: str = Field("", alias="usernamePrompt")

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        http_url(value, "baseURL")
        if "/rest/" in value:
            raise ValueError(
                "baseURL is Crowd's context URL (e.g. https://crowd.example.org/crowd), "
                f"without /rest/...; got {value!r}"
            )
        return value.rstrip("/")

    @field_validator("client_secret")
    @classmethod
    def _secret(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("clientSecret must not be empty (the application's Crowd password)")
        return value

    @field_validator("groups")
    @classmethod
    def _groups(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not name for name in value):
            raise ValueError("group names must not be empty")
        return value


class CrowdConnector(PasswordConnector, RefreshConnector):
    """Password logins against Crowd's user management REST API, as an application."""

    def __init__(
        self,
        connector_id: str,
        name: str,
        connector_type: str,
        config: CrowdConfig,
        clock: Clock,
        http: UpstreamHTTP | None = None,
    ) -> None:
        super().__init__(connector_id, name, connector_type)
        self._config = config
        self._clock = clock
        self._http = http or UpstreamHTTP()
        self._api = f"{config.base_url}/rest/usermanagement/1"
        credentials = f"{config.client_id}:{config.client_secret.get_secret_value()}"
        self._authorization = "Basic " + base64.b64encode(credentials.encode()).decode()
        if config.username_prompt:
            self.prompt = config.username_prompt

    def __repr__(self) -> str:
        return f"CrowdConnector(id={self.id!r}, baseURL={self._config.base_url!r})"

    async def login(self, scopes: Scopes, username: str, password: str) -> Identity | None:
        if not username or not password:
            return None
        session = await self._call(
            "POST", "/session", "login", body={"username": username, "password": password}
        )
        if session.status == 400 and _reason(session) == "INVALID_USER_AUTHENTICATION":
            log.info("crowd login refused: %s", session.message() or "invalid credentials")
            return None
        self._session_refusal(session, "login")
        user = await self._user(username, "user lookup")
        if user is None:
            raise ConnectorError("Atlassian Crowd lost the user right after the login")
        identity = self._identity(user)
        groups = await self._groups(identity.username, scopes)
        data = json.dumps({"username": identity.username}).encode()
        return _with(identity, groups=groups, connector_data=data)

    async def refresh(self, scopes: Scopes, identity: Identity) -> Identity:
        try:
            data = json.loads(identity.connector_data)
            username = data["username"]
        except (ValueError, KeyError, TypeError):
            raise ConnectorError(
                "the stored Atlassian Crowd session is unreadable; please log in again"
            ) from None
        if not isinstance(username, str) or not username:
            raise ConnectorError("the stored Atlassian Crowd session has no username")
        user = await self._user(username, "refresh user lookup")
        if user is None:
            log.info("crowd refresh refused: user %r no longer exists", username)
            raise ConnectorError("your Atlassian Crowd account no longer exists")
        fresh = self._identity(user)
        if fresh.user_id != identity.user_id:
            log.warning("crowd refresh refused: user %r has a different key now", username)
            raise ConnectorError("your Atlassian Crowd account was replaced; please log in again")
        if user.get("active") is False:
            log.info("crowd refresh refused: user %r is inactive", username)
            raise ConnectorError("your Atlassian Crowd account is inactive")
        # Crowd checks that the user may still use this application when it opens a session.
        session = await self._call(
            "POST",
            "/session?validate-password=false",
            "refresh session",
            body={"username": username},
        )
        self._session_refusal(session, "refresh session")
        groups = await self._groups(fresh.username, scopes)
        return _with(fresh, groups=groups, connector_data=identity.connector_data)

    # -- Crowd REST API --------------------------------------------------------------------

    async def _call(
        self, method: str, path: str, what: str, *, body: dict[str, str] | None = None
    ) -> ApiResponse:
        response = await self._http.fetch(
            f"{self._api}{path}",
            what=f"Crowd {what}",
            method=method,
            json_body=body,
            headers={"Authorization": self._authorization},
        )
        if response.status in (401, 403) and not isinstance(response.body, dict):
            # Crowd answers the *application's* failures in plain text: 401 "Application
            # failed to authenticate" (clientID/clientSecret) and 403 "The server understood
            # the request but refuses to authorize it." (this host not in the app's allowed
            # remote addresses). Both are configuration errors, not the user's.
            log.error(
                "crowd refused the application %r (HTTP %d on %s): check clientID/clientSecret "
                "and the application's remote addresses in Crowd",
                self._config.client_id,
                response.status,
                what,
            )
            raise ConnectorError(_MISCONFIGURED)
        return response

    def _session_refusal(self, response: ApiResponse, what: str) -> None:
        if response.status == 201:
            return
        reason = _reason(response)
        if response.status == 400 and reason:
            log.info("crowd %s refused: %s (%s)", what, reason, response.message())
            messages = {
                "INACTIVE_ACCOUNT": "your Atlassian Crowd account is inactive",
                "EXPIRED_CREDENTIAL": "your Atlassian Crowd password has expired; change it "
                "in Crowd and log in again",
                "INVALID_USER_AUTHENTICATION": "Atlassian Crowd no longer lets you use this "
                "application",
                "USER_NOT_FOUND": "your Atlassian Crowd account no longer exists",
            }
            raise ConnectorError(
                messages.get(reason, f"Atlassian Crowd refused the {what} ({reason})")
            )
        self._check(response, what)
        raise ConnectorError(f"Atlassian Crowd's {what} answer is not a new session")

    async def _user(self, username: str, what: str) -> dict[str, Any] | None:
        response = await self._call("GET", f"/user?{urlencode({'username': username})}", what)
        if response.status == 404:
            return None
        self._check(response, what)
        if not isinstance(response.body, dict) or not _text(response.body, "key"):
            raise ConnectorError(f"Atlassian Crowd's {what} answer has no user key")
        return response.body

    async def _groups(self, username: str, scopes: Scopes) -> tuple[str, ...]:
        allowed = self._config.groups
        if not allowed and not scopes.groups:
            return ()
        names = await self._all_groups(username)
        if not allowed:
            return names
        kept = tuple(filter_allowed(names, allowed))
        if not kept:
            log.info("crowd: user %r is in none of the configured groups", username)
            raise ConnectorError(
                "you are not a member of the Atlassian Crowd groups allowed to log in here"
            )
        return kept

    async def _all_groups(self, username: str) -> tuple[str, ...]:
        names: list[str] = []
        for _ in range(MAX_GROUP_PAGES):
            query = urlencode(
                {
                    "username": username,
                    "start-index": str(len(names)),
                    "max-results": str(GROUP_PAGE_SIZE),
                },
                quote_via=quote,
            )
            response = await self._call("GET", f"/user/group/nested?{query}", "groups lookup")
            if response.status == 404:
                raise ConnectorError("your Atlassian Crowd account no longer exists")
            self._check(response, "groups lookup")
            groups = response.body.get("groups") if isinstance(response.body, dict) else None
            if not isinstance(groups, list):
                raise ConnectorError("Atlassian Crowd's groups answer has no group list")
            if not groups:
                return tuple(dict.fromkeys(names))
            for group in groups:
                name = _text(group, "name") if isinstance(group, dict) else ""
                if not name:
                    raise ConnectorError("Atlassian Crowd's groups answer has a nameless group")
                names.append(name)
        raise ConnectorError(
            f"Atlassian Crowd lists more than {MAX_GROUP_PAGES * GROUP_PAGE_SIZE} groups"
        )

    def _identity(self, user: dict[str, Any]) -> Identity:
        key, name, email = _text(user, "key"), _text(user, "name"), _text(user, "email")
        preferred = {"key": key, "name": name, "email": email}.get(
            self._config.preferred_username_field, ""
        )
        return Identity(
            user_id=key,
            username=name,
            preferred_username=preferred,
            email=email,
            email_verified=True,  # as Dex: Crowd's directory is the authority for the address
        )

    def _check(self, response: ApiResponse, what: str) -> None:
        raise_for_api_status(response, f"Crowd {what}", self._clock.now())


def _reason(response: ApiResponse) -> str:
    """Crowd's error ``reason`` code (``INVALID_USER_AUTHENTICATION``...), or ""."""
    body = response.body
    reason = body.get("reason") if isinstance(body, dict) else None
    return reason if isinstance(reason, str) else ""


def _text(document: dict[str, Any], key: str) -> str:
    value = document.get(key)
    return value if isinstance(value, str) else ""


def _with(identity: Identity, **changes: Any) -> Identity:
    return Identity(**{**identity.__dict__, **changes})


def open_atlassian_crowd(
    connector_id: str, name: str, connector_type: str, config: BaseModel, env: ConnectorEnv
) -> Connector:
    """Open an ``atlassian-crowd`` connector from its validated config (no network I/O)."""
    if not isinstance(config, CrowdConfig):
        raise TypeError(f"expected CrowdConfig, got {type(config).__name__}")
    return CrowdConnector(connector_id, name, connector_type, config, env.clock)


CONNECTOR_TYPE = ConnectorType(CrowdConfig, open_atlassian_crowd)
