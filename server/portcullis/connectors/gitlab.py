"""GitLab.com and self-managed GitLab upstream (Dex's ``gitlab`` connector type).

Dex's keys and behaviour (connector/gitlab/gitlab.go): the OAuth application asks for
``read_user``, plus ``openid`` when groups matter (``groups`` configured or the client asked for
the ``groups`` scope) and ``read_api`` with ``inheritedGroups``. The user is ``GET
/api/v4/user``: id (or the username with ``useLoginAsID``), name (the email when empty),
username, email (GitLab's confirmed primary address). Groups are, by default, the ``groups``
claim of GitLab's OIDC userinfo; with ``inheritedGroups`` the ``full_path`` of every group ``GET
/api/v4/groups?all_available=false`` lists (inherited memberships included).
``getGroupsPermission`` adds ``path:role``: ``owner``/``maintainer``/``developer`` from the
userinfo role claims (a role on a group covers its subgroups), and with ``inheritedGroups`` the
effective access level from ``GET /api/v4/groups/:id/members/all/:user_id`` for the other
groups. With ``groups`` set, only members of one of them may log in and only those are kept.

Beyond Dex: the groups list is followed through ``X-Next-Page`` (Dex stops at the first short
page), a rate-limited or failing membership lookup fails the login instead of silently dropping
a role, and rotating refresh tokens go through the single-flight shared with the oidc
connector. A refresh re-runs the group checks and fails when the user lost access, the refresh
token was revoked or the token now belongs to someone else. Connector data holds only what
refresh needs: GitLab's refresh token (its access token only when no refresh token was issued),
under Dex's key names.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
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
    is_rate_limited,
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
#: Namespace of GitLab's role claims in userinfo (``.../owner``, ``.../maintainer``, ...).
ROLE_CLAIM = "https://gitlab.org/claims/groups"
#: Largest page GitLab serves.
PER_PAGE = 100
#: Pages of groups followed before failing closed (10,000 visible groups).
MAX_PAGES = 100
#: GitLab's access levels (doc/api/members.md) as Dex names them.
ACCESS_LEVELS = {
    5: "minimal_access",
    10: "guest",
    15: "planner",
    20: "reporter",
    25: "security_manager",
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
    #: Read groups from the REST API (inherited memberships included, needs ``read_api``)
    #: instead of the userinfo ``groups`` claim.
    inherited_groups: bool = Field(False, alias="inheritedGroups")
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
            wanted.append(SCOPE_OPENID)
            if self._config.inherited_groups:
                wanted.append(SCOPE_READ_API)
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
        if self._config.inherited_groups:
            found = await self._inherited_group_claims(token, user_id)
        else:
            info = await self._userinfo(token)
            found = list(info.groups)
            if self._config.get_groups_permission:
                found += _permission_claims(info.groups, info)
        if self._config.groups:
            allowed = filter_allowed(found, self._config.groups)
            if not allowed:
                log.info("gitlab: user %s is not in any of the required groups", username)
                raise ConnectorError("you are not a member of the GitLab groups required")
            return allowed
        return found if scopes.groups else []

    async def _userinfo(self, token: str) -> _UserInfo:
        """GitLab's OIDC userinfo: ``groups`` (paths of the user's groups) and the
        ``https://gitlab.org/claims/groups/{owner,maintainer,developer}`` role claims."""
        body = await self._get(f"{self._config.base_url}/oauth/userinfo", token, "userinfo")
        if not isinstance(body, dict):
            raise ConnectorError("GitLab's userinfo response is not a JSON object")

        def paths(key: str) -> tuple[str, ...]:
            value = body.get(key)
            if value is None:
                return ()
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConnectorError(f'GitLab sent a malformed "{key}" claim')
            return tuple(value)

        return _UserInfo(
            groups=paths("groups"),
            owner=paths(f"{ROLE_CLAIM}/owner"),
            maintainer=paths(f"{ROLE_CLAIM}/maintainer"),
            developer=paths(f"{ROLE_CLAIM}/developer"),
        )

    async def _inherited_group_claims(self, token: str, user_id: int) -> list[str]:
        records = [g async for g in self._member_groups(token)]
        paths = [p for p in (_group_path(g) for g in records) if p]
        if not self._config.get_groups_permission:
            return paths
        info = await self._userinfo(token)
        claims = paths + _permission_claims(paths, info)
        for record in records:
            path, group_id = _group_path(record), record.get("id")
            if not path or _role_from_userinfo(path, info) or not isinstance(group_id, int):
                continue
            level = await self._access_level(token, group_id, user_id)
            role = ACCESS_LEVELS.get(level) if level is not None else None
            if role:
                claims.append(f"{path}:{role}")
        return claims

    async def _access_level(self, token: str, group_id: int, user_id: int) -> int | None:
        """The user's effective (possibly inherited) access level in the group; None when GitLab
        does not show one (403/404, as Dex skips them). Any other refusal fails the login."""
        url = f"{self._api}/groups/{group_id}/members/all/{user_id}"
        response = await self._http.fetch(url, what="group membership", headers=_bearer(token))
        if response.status in (403, 404) and not is_rate_limited(response):
            return None
        if response.status != 200:
            raise_for_api_status(response, "group membership", self._clock.now())
            raise ConnectorError(f"GitLab answered the group membership with {response.status}")
        body = response.body
        level = body.get("access_level") if isinstance(body, dict) else None
        if isinstance(level, bool) or not isinstance(level, int):
            return None
        return level

    async def _member_groups(self, token: str) -> AsyncIterator[dict[str, Any]]:
        """Every page of ``GET /groups?all_available=false`` (the user's groups, inherited
        memberships included), by ``page``/``per_page`` and the ``X-Next-Page`` header."""
        page = "1"
        for _ in range(MAX_PAGES):
            query = urlencode({"all_available": "false", "per_page": PER_PAGE, "page": page})
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


@dataclass(frozen=True)
class _UserInfo:
    groups: tuple[str, ...]
    owner: tuple[str, ...]
    maintainer: tuple[str, ...]
    developer: tuple[str, ...]


def _group_path(record: Mapping[str, Any]) -> str:
    for key in ("full_path", "path"):
        value = record.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _covers(path: str, granted: tuple[str, ...]) -> bool:
    """A role on a group applies to the group and its subgroups (``a`` covers ``a/b``, not
    ``ab``)."""
    return any(path == g or path.startswith(g + "/") for g in granted)


def _role_from_userinfo(path: str, info: _UserInfo) -> str:
    for role, granted in (
        ("owner", info.owner),
        ("maintainer", info.maintainer),
        ("developer", info.developer),
    ):
        if _covers(path, granted):
            return role
    return ""


def _permission_claims(paths: Sequence[str], info: _UserInfo) -> list[str]:
    claims = []
    for path in paths:
        role = _role_from_userinfo(path, info)
        if role:
            claims.append(f"{path}:{role}")
    return claims


def open_gitlab(
    connector_id: str, name: str, connector_type: str, config: BaseModel, env: ConnectorEnv
) -> Connector:
    """Build the connector (no network until the first login)."""
    assert isinstance(config, GitLabConfig)
    return GitLabConnector(connector_id, name, connector_type, config, env)


CONNECTOR_TYPE = ConnectorType(GitLabConfig, open_gitlab)
