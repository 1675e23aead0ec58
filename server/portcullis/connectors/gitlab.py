"""GitLab.com and self-managed GitLab upstream (Dex's ``gitlab`` connector type).

Dex's keys and behaviour (connector/gitlab/gitlab.go): the OAuth application asks for
``read_user``, plus ``openid read_api`` when groups matter (``groups`` configured or the client
asked for the ``groups`` scope). The user is ``GET /api/v4/user``: id (or the username with
``useLoginAsID``), name (the email when empty), username, email (GitLab's confirmed primary
address). Groups are the ``full_path`` of every group from ``GET /api/v4/groups`` in which
``GET /api/v4/groups/:id/members/all/:user_id`` finds the user (inherited memberships count);
``getGroupsPermission`` adds ``full_path:role`` (guest, planner, reporter, developer,
maintainer, owner, admin by ``access_level``). With ``groups`` set, only members of one of them
may log in and only those groups are kept.

Beyond Dex: ``/api/v4/groups`` is read page by page (``per_page=100`` and ``X-Next-Page``; Dex
reads only the first 20, so users of larger instances lost groups), a membership answer other
than 200/404 (rate limit, outage) fails the login instead of silently dropping the group, and
rotating refresh tokens go through the single-flight shared with the oidc connector. A refresh
re-runs the group checks and fails when the user lost access, the refresh token was revoked or
the token now belongs to someone else. Connector data holds only what refresh needs: GitLab's
refresh token (its access token only when no refresh token was issued), under Dex's key names.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from portcullis.clock import Clock
from portcullis.connectors.base import (
    CallbackConnector,
    Connector,
    ConnectorEnv,
    ConnectorError,
    ConnectorType,
    LoginRedirect,
    RefreshConnector,
    Scopes,
)
from portcullis.connectors.oauth2_common import (
    ClientCredentials,
    RefreshFlights,
    TokenResponse,
    UpstreamHTTP,
    authorization_url,
    callback_error,
    check_root_cas,
    decode_state,
    encode_state,
    exchange_code,
    filter_allowed,
    http_url,
    raise_for_api_status,
    refresh_grant,
)
from portcullis.storage.models import Identity

__all__ = ["CONNECTOR_TYPE", "GitLabConfig", "GitLabConnector", "open_gitlab"]

log = logging.getLogger(__name__)

_STRICT = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

SCOPE_USER = "read_user"
SCOPE_OPENID = "openid"
SCOPE_READ_API = "read_api"
#: Largest page GitLab serves.
PER_PAGE = 100
#: Pages of groups followed before failing closed (10,000 visible groups).
MAX_PAGES = 100
#: GitLab's access levels (doc/api/members.md) as Dex names them.
ACCESS_LEVELS = {
    10: "guest",
    15: "planner",
    20: "reporter",
    30: "developer",
    40: "maintainer",
    50: "owner",
    60: "admin",
}


class GitLabConfig(BaseModel):
    """Dex's ``gitlab`` connector config (connector/gitlab/gitlab.go key names)."""

    model_config = _STRICT

    base_url: str = Field("https://gitlab.com", alias="baseURL")
    client_id: str = Field(alias="clientID", min_length=1)
    client_secret: SecretStr = Field(alias="clientSecret")
    redirect_uri: str = Field(alias="redirectURI")
    groups: list[str] = Field(default_factory=list)
    use_login_as_id: bool = Field(False, alias="useLoginAsID")
    get_groups_permission: bool = Field(False, alias="getGroupsPermission")
    #: PEM of a CA for a self-managed instance; base64 of the PEM as Dex's JSON []byte reads it.
    root_ca_data: str = Field("", alias="rootCAData")

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return http_url(value or "https://gitlab.com", "baseURL").rstrip("/")

    @field_validator("redirect_uri")
    @classmethod
    def _redirect(cls, value: str) -> str:
        return http_url(value, "redirectURI")

    @field_validator("root_ca_data")
    @classmethod
    def _root_ca_data(cls, value: str) -> str:
        if value:
            try:
                check_root_cas([value])
            except ValueError:
                raise ValueError(
                    "rootCAData is not a PEM certificate (give the PEM text or base64 of it)"
                ) from None
        return value


class GitLabConnector(CallbackConnector, RefreshConnector):
    """Logs users in with GitLab and maps group memberships to groups."""

    def __init__(
        self,
        connector_id: str,
        name: str,
        connector_type: str,
        config: GitLabConfig,
        env: ConnectorEnv,
    ) -> None:
        super().__init__(connector_id, name, connector_type)
        self._config = config
        self._clock: Clock = env.clock
        self._api = f"{config.base_url}/api/v4"
        self._http = UpstreamHTTP(root_cas=[config.root_ca_data] if config.root_ca_data else [])
        # None: HTTP Basic first, the request body when refused, as golang.org/x/oauth2 does.
        self._credentials = ClientCredentials(
            config.client_id, config.client_secret.get_secret_value(), None
        )
        self._flights = RefreshFlights(env.clock)

    def _groups_required(self, scopes: Scopes) -> bool:
        return bool(self._config.groups) or scopes.groups

    async def login_url(self, scopes: Scopes, callback_url: str, state: str) -> LoginRedirect:
        if callback_url != self._config.redirect_uri:
            raise ConnectorError(
                f"the callback URL {callback_url} does not match this connector's redirectURI"
            )
        wanted = [SCOPE_USER]
        if self._groups_required(scopes):
            wanted = [SCOPE_USER, SCOPE_OPENID, SCOPE_READ_API]
        url = authorization_url(
            f"{self._config.base_url}/oauth/authorize",
            client_id=self._config.client_id,
            redirect_uri=self._config.redirect_uri,
            scopes=wanted,
            state=state,
        )
        return LoginRedirect(url)

    async def handle_callback(
        self, scopes: Scopes, params: Mapping[str, str], connector_state: bytes
    ) -> Identity:
        error = callback_error(params)
        if error is not None:
            raise error
        code = params.get("code", "")
        if not code:
            raise ConnectorError("GitLab sent no authorization code")
        tokens = await exchange_code(
            self._http,
            f"{self._config.base_url}/oauth/token",
            self._credentials,
            code=code,
            redirect_uri=self._config.redirect_uri,
        )
        return await self._identity(scopes, tokens, previous=None, keep=scopes.offline_access)

    async def refresh(self, scopes: Scopes, identity: Identity) -> Identity:
        data = decode_state(identity.connector_data, "session data")
        refresh_token = data.get("refreshToken", "")
        if refresh_token:

            async def work() -> Identity:
                tokens = await refresh_grant(
                    self._http,
                    f"{self._config.base_url}/oauth/token",
                    self._credentials,
                    refresh_token,
                )
                if not tokens.refresh_token:  # GitLab rotates; keep the old one if it did not
                    tokens = replace(tokens, refresh_token=refresh_token)
                return await self._identity(scopes, tokens, previous=identity, keep=True)

            return await self._flights.run(refresh_token, work)
        access_token = data.get("accessToken", "")
        if not access_token:
            raise ConnectorError("this session cannot be refreshed; please log in again")
        tokens = TokenResponse(access_token, "Bearer", "", "", {})
        return await self._identity(scopes, tokens, previous=identity, keep=True)

    # -- GitLab REST API v4 ------------------------------------------------------------------

    async def _identity(
        self, scopes: Scopes, tokens: TokenResponse, previous: Identity | None, keep: bool
    ) -> Identity:
        token = tokens.access_token
        user = await self._get(f"{self._api}/user", token, "user")
        if not isinstance(user, dict):
            raise ConnectorError("GitLab's user response is not a JSON object")
        numeric_id, username = user.get("id"), user.get("username")
        if not isinstance(numeric_id, int) or not isinstance(username, str) or not username:
            raise ConnectorError("GitLab's user response has no id or username")
        user_id = username if self._config.use_login_as_id else str(numeric_id)
        if previous is not None and user_id != previous.user_id:
            raise ConnectorError("GitLab refreshed a different user; please log in again")
        email = user.get("email") if isinstance(user.get("email"), str) else ""
        name = user.get("name") if isinstance(user.get("name"), str) else ""
        groups: tuple[str, ...] = previous.groups if previous is not None else ()
        if self._groups_required(scopes):
            groups = tuple(await self._groups(scopes, token, username, numeric_id))
        data = b""
        if keep:
            if tokens.refresh_token:
                data = encode_state({"refreshToken": tokens.refresh_token})
            else:
                data = encode_state({"accessToken": token})
        return Identity(
            user_id=user_id,
            username=str(name or email),
            preferred_username=username,
            email=str(email),
            email_verified=True,
            groups=groups,
            connector_data=data,
        )

    async def _groups(self, scopes: Scopes, token: str, username: str, user_id: int) -> list[str]:
        found: list[str] = []
        async for group in self._visible_groups(token):
            group_id, full_path = group.get("id"), group.get("full_path")
            if not isinstance(group_id, int) or not isinstance(full_path, str):
                continue
            level = await self._access_level(token, group_id, user_id)
            if level is None:
                continue
            found.append(full_path)
            role = ACCESS_LEVELS.get(level)
            if self._config.get_groups_permission and role:
                found.append(f"{full_path}:{role}")
        if self._config.groups:
            allowed = filter_allowed(found, self._config.groups)
            if not allowed:
                log.info("gitlab: user %s is not in any of the required groups", username)
                raise ConnectorError("you are not a member of the GitLab groups required")
            return allowed
        return found if scopes.groups else []

    async def _access_level(self, token: str, group_id: int, user_id: int) -> int | None:
        """The user's (possibly inherited) access level in the group; None when not a member
        (404). Any other refusal is an error, never a silently missing group."""
        url = f"{self._api}/groups/{group_id}/members/all/{user_id}"
        response = await self._http.fetch(url, what="group membership", headers=_bearer(token))
        if response.status == 404:
            return None
        if response.status != 200:
            raise_for_api_status(response, "group membership", self._clock.now())
            raise ConnectorError(f"GitLab answered the group membership with {response.status}")
        body = response.body
        level = body.get("access_level") if isinstance(body, dict) else None
        if isinstance(level, bool) or not isinstance(level, int):
            return None  # Dex: a membership without access_level is no membership
        return level

    async def _visible_groups(self, token: str) -> AsyncIterator[dict[str, Any]]:
        """Every page of ``GET /groups`` (offset pagination: ``page``/``per_page`` and the
        ``X-Next-Page`` header, empty on the last page)."""
        page = "1"
        for _ in range(MAX_PAGES):
            query = urlencode({"per_page": PER_PAGE, "page": page})
            url = f"{self._api}/groups?{query}"
            response = await self._http.fetch(url, what="groups", headers=_bearer(token))
            if response.status != 200:
                raise_for_api_status(response, "groups", self._clock.now())
                raise ConnectorError(f"GitLab answered the groups request with {response.status}")
            if not isinstance(response.body, list):
                raise ConnectorError("GitLab's groups response is not a JSON list")
            for item in response.body:
                if isinstance(item, dict):
                    yield item
            page = str(response.headers.get("x-next-page", "")).strip()
            if not page:
                return
            if not page.isdigit():
                raise ConnectorError("GitLab's groups response has a malformed X-Next-Page")
        raise ConnectorError(f"GitLab's groups list has more than {MAX_PAGES} pages")

    async def _get(self, url: str, token: str, what: str) -> Any:
        response = await self._http.fetch(url, what=what, headers=_bearer(token))
        if response.status != 200:
            raise_for_api_status(response, what, self._clock.now())
            raise ConnectorError(f"GitLab answered the {what} request with {response.status}")
        return response.body


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def open_gitlab(
    connector_id: str, name: str, connector_type: str, config: BaseModel, env: ConnectorEnv
) -> Connector:
    """Build the connector (no network until the first login)."""
    assert isinstance(config, GitLabConfig)
    return GitLabConnector(connector_id, name, connector_type, config, env)


CONNECTOR_TYPE = ConnectorType(GitLabConfig, open_gitlab)
