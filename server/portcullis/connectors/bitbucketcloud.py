"""Bitbucket Cloud upstream (Dex's ``bitbucket-cloud`` connector type).

Dex's keys and behaviour (connector/bitbucketcloud/bitbucketcloud.go): OAuth 2.0 at
``https://bitbucket.org/site/oauth2/...`` with the ``account`` and ``email`` scopes; the user is
``GET /2.0/user`` (user id = the ``uuid``, name = ``username``) with the confirmed primary address
from ``GET /2.0/user/emails``. Groups are the slugs of the user's workspaces (``GET
/2.0/user/workspaces``), read when ``teams`` is configured or the client asked for ``groups``;
``getWorkspacePermissions`` adds ``workspace:permission`` (``owner``, ``collaborator``,
``member``) from ``GET /2.0/user/workspaces/{slug}/permission``. With ``teams`` set, only members
of one of those workspaces may log in and only they are kept. ``includeTeamGroups`` is accepted
and ignored with a warning, as in Dex (the 1.0 API it used is gone).

Every list is followed through the ``next`` URL of Bitbucket's paged body (on the API origin
only, with a page bound). Beyond Dex, a permission lookup that fails for another reason than
403/404 fails the login instead of silently dropping the suffix. Bitbucket access tokens expire
(two hours); an expired one is renewed with the refresh grant through the shared single-flight,
and each refresh re-reads the user and re-checks the workspaces. Connector data is Dex's
(``accessToken``, ``refreshToken``, ``expiry``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from portcullis.clock import Clock
from portcullis.connectors.base import (
    Connector,
    ConnectorEnv,
    ConnectorError,
    ConnectorType,
    LoginRedirect,
    Scopes,
)
from portcullis.connectors.oauth2_common import (
    ClientCredentials,
    RefreshFlights,
    UpstreamHTTP,
    filter_allowed,
    http_url,
    is_rate_limited,
    raise_for_api_status,
    same_origin,
)
from portcullis.connectors.oauth2_user_api import UserAPIConnector
from portcullis.storage.models import Identity

__all__ = [
    "CONNECTOR_TYPE",
    "BitbucketCloudConfig",
    "BitbucketCloudConnector",
    "BitbucketEndpoints",
    "open_bitbucket_cloud",
]

log = logging.getLogger(__name__)

_STRICT = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

SCOPES = ["account", "email"]
#: Bitbucket's largest page for these collections.
PAGE_LEN = 100
MAX_PAGES = 100


class BitbucketCloudConfig(BaseModel):
    """Dex's ``bitbucket-cloud`` connector config (connector/bitbucketcloud key names)."""

    model_config = _STRICT

    client_id: str = Field(alias="clientID", min_length=1)
    client_secret: SecretStr = Field(alias="clientSecret")
    redirect_uri: str = Field(alias="redirectURI")
    teams: list[str] = Field(default_factory=list)
    include_team_groups: bool = Field(False, alias="includeTeamGroups")
    get_workspace_permissions: bool = Field(False, alias="getWorkspacePermissions")

    @field_validator("redirect_uri")
    @classmethod
    def _redirect(cls, value: str) -> str:
        return http_url(value, "redirectURI")


@dataclass(frozen=True)
class BitbucketEndpoints:
    """Bitbucket's web (OAuth) and API bases; fixed in production, given by tests."""

    web: str = "https://bitbucket.org"
    api: str = "https://api.bitbucket.org/2.0"


class BitbucketCloudConnector(UserAPIConnector):
    """Logs users in with Bitbucket Cloud and maps workspaces to groups."""

    provider = "Bitbucket"

    def __init__(
        self,
        connector_id: str,
        name: str,
        connector_type: str,
        config: BitbucketCloudConfig,
        env: ConnectorEnv,
        endpoints: BitbucketEndpoints | None = None,
    ) -> None:
        super().__init__(connector_id, name, connector_type)
        if config.include_team_groups:
            log.warning(
                "connector %s: includeTeamGroups is deprecated and has no effect (the Bitbucket "
                "1.0 API it relied on was removed); consider getWorkspacePermissions",
                connector_id,
            )
        self._config = config
        self._clock: Clock = env.clock
        self._endpoints = endpoints or BitbucketEndpoints()
        self._token_url = f"{self._endpoints.web}/site/oauth2/access_token"
        self._http = UpstreamHTTP()
        # None: HTTP Basic first (Bitbucket's documented form), the request body if refused.
        self._credentials = ClientCredentials(
            config.client_id, config.client_secret.get_secret_value(), None
        )
        self._flights = RefreshFlights(env.clock)
        self._redirect_uri = config.redirect_uri

    def _groups_required(self, scopes: Scopes) -> bool:
        return bool(self._config.teams) or scopes.groups

    async def login_url(self, scopes: Scopes, callback_url: str, state: str) -> LoginRedirect:
        return self._login_redirect(
            callback_url, f"{self._endpoints.web}/site/oauth2/authorize", SCOPES, state
        )

    # -- Bitbucket API 2.0 -------------------------------------------------------------------

    async def _identity(self, scopes: Scopes, token: str, previous: Identity | None) -> Identity:
        user = await self._get(f"{self._endpoints.api}/user", token, "user")
        if not isinstance(user, dict):
            raise ConnectorError("Bitbucket's user response is not a JSON object")
        uuid, username = user.get("uuid"), user.get("username")
        if not isinstance(uuid, str) or not uuid or not isinstance(username, str):
            raise ConnectorError("Bitbucket's user response has no uuid or username")
        if previous is not None and uuid != previous.user_id:
            raise ConnectorError("Bitbucket refreshed a different user; please log in again")
        email = ""
        async for item in self._pages(f"{self._endpoints.api}/user/emails", token, "user emails"):
            address = item.get("email")
            confirmed = item.get("is_primary") is True and item.get("is_confirmed") is True
            if confirmed and isinstance(address, str) and address:
                email = address
                break
        if not email:
            raise ConnectorError("your Bitbucket account has no confirmed primary email address")
        groups: tuple[str, ...] = previous.groups if previous is not None else ()
        if self._groups_required(scopes):
            groups = tuple(await self._groups(scopes, token, username))
        return Identity(
            user_id=uuid,
            username=username,
            email=email,
            email_verified=True,
            groups=groups,
            connector_data=b"",
        )

    async def _groups(self, scopes: Scopes, token: str, username: str) -> list[str]:
        workspaces: list[str] = []
        url = f"{self._endpoints.api}/user/workspaces"
        async for access in self._pages(url, token, "workspaces"):
            workspace = access.get("workspace")
            slug = workspace.get("slug") if isinstance(workspace, dict) else None
            if isinstance(slug, str) and slug:
                workspaces.append(slug)
        found = list(workspaces)
        if self._config.get_workspace_permissions:
            for slug in workspaces:
                permission = await self._permission(token, slug)
                if permission:
                    found.append(f"{slug}:{permission}")
        if self._config.teams:
            allowed = filter_allowed(found, self._config.teams)
            if not allowed:
                log.info("bitbucket: user %s is not in any of the required workspaces", username)
                raise ConnectorError("you are not a member of the Bitbucket workspaces required")
            return allowed
        return found if scopes.groups else []

    async def _permission(self, token: str, slug: str) -> str:
        url = f"{self._endpoints.api}/user/workspaces/{quote(slug, safe='')}/permission"
        response = await self._http.fetch(url, what="workspace permission", headers=_bearer(token))
        if response.status in (403, 404) and not is_rate_limited(response):
            log.info("bitbucket: no permission readable for workspace %s", slug)
            return ""
        if response.status != 200:
            raise_for_api_status(response, "workspace permission", self._clock.now())
            raise ConnectorError(f"Bitbucket answered the permission with {response.status}")
        body = response.body
        permission = body.get("permission") if isinstance(body, dict) else None
        return permission if isinstance(permission, str) else ""

    async def _get(self, url: str, token: str, what: str) -> Any:
        response = await self._http.fetch(url, what=what, headers=_bearer(token))
        if response.status != 200:
            raise_for_api_status(response, what, self._clock.now())
            raise ConnectorError(f"Bitbucket answered the {what} request with {response.status}")
        return response.body

    async def _pages(self, url: str, token: str, what: str) -> AsyncIterator[dict[str, Any]]:
        """Every ``values`` item of a paged collection, following the body's ``next`` URL."""
        next_url = f"{url}?pagelen={PAGE_LEN}"
        for _ in range(MAX_PAGES):
            body = await self._get(next_url, token, what)
            if not isinstance(body, dict) or not isinstance(body.get("values"), list):
                raise ConnectorError(f"Bitbucket's {what} response has no values list")
            for item in body["values"]:
                if isinstance(item, dict):
                    yield item
            following = body.get("next")
            if not following:
                return
            if not isinstance(following, str) or not same_origin(following, self._endpoints.api):
                log.warning("bitbucket: %s pagination pointed off the API origin; refused", what)
                raise ConnectorError(f"Bitbucket's {what} pagination link is not on its API")
            next_url = following
        raise ConnectorError(f"Bitbucket's {what} list has more than {MAX_PAGES} pages")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def open_bitbucket_cloud(
    connector_id: str, name: str, connector_type: str, config: BaseModel, env: ConnectorEnv
) -> Connector:
    """Build the connector (no network until the first login)."""
    assert isinstance(config, BitbucketCloudConfig)
    return BitbucketCloudConnector(connector_id, name, connector_type, config, env)


CONNECTOR_TYPE = ConnectorType(BitbucketCloudConfig, open_bitbucket_cloud)
