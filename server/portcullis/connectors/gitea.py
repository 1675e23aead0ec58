"""Gitea (and Forgejo) upstream (Dex's ``gitea`` connector type).

Dex's keys and behaviour (connector/gitea/gitea.go): OAuth2 at ``{baseURL}/login/oauth/...``
(default ``https://gitea.com``), the user from ``GET /api/v1/user`` (id, or the login with
``useLoginAsID``; ``full_name``, else the email, as name; login as preferred username; email).
Groups are read when ``orgs`` is configured or ``loadAllGroups`` is set: from ``GET
/api/v1/user/teams``, each team gives its org's name and ``org:team``. With ``orgs``, only
members of a listed org may log in and only the listed orgs (and their listed teams) are kept.

Differences from Dex, both fail-closed: an org entry with ``teams`` admits only members of one
of those teams (Dex admits any member of the org, because the org name itself always matches),
and the team list is followed through ``Link: rel="next"`` on the configured origin with a page
bound instead of until an empty page. Refresh: Gitea access tokens expire (one hour by default)
and come with a rotating refresh token; an expired token is renewed through the shared
single-flight, the user and groups are re-read, and the session ends when the user lost access,
the grant was revoked or the token names someone else. Connector data is Dex's:
``accessToken``, ``refreshToken``, ``expiry`` (RFC 3339).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

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
    http_url,
    next_link,
    raise_for_api_status,
    same_origin,
)
from portcullis.connectors.oauth2_user_api import UserAPIConnector
from portcullis.storage.models import Identity

__all__ = ["CONNECTOR_TYPE", "GiteaConfig", "GiteaConnector", "GiteaOrg", "open_gitea"]

log = logging.getLogger(__name__)

_STRICT = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

#: Gitea's default MAX_RESPONSE_ITEMS: the largest page it serves unless reconfigured.
PAGE_LIMIT = 50
MAX_PAGES = 100


class GiteaOrg(BaseModel):
    """One ``orgs`` entry: an org whose members may log in, optionally only some teams."""

    model_config = _STRICT

    name: str = Field(min_length=1)
    teams: list[str] = Field(default_factory=list)


class GiteaConfig(BaseModel):
    """Dex's ``gitea`` connector config (connector/gitea/gitea.go key names)."""

    model_config = _STRICT

    base_url: str = Field("https://gitea.com", alias="baseURL")
    client_id: str = Field(alias="clientID", min_length=1)
    client_secret: SecretStr = Field(alias="clientSecret")
    redirect_uri: str = Field(alias="redirectURI")
    orgs: list[GiteaOrg] = Field(default_factory=list)
    load_all_groups: bool = Field(False, alias="loadAllGroups")
    use_login_as_id: bool = Field(False, alias="useLoginAsID")

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return http_url(value or "https://gitea.com", "baseURL").rstrip("/")

    @field_validator("redirect_uri")
    @classmethod
    def _redirect(cls, value: str) -> str:
        return http_url(value, "redirectURI")


class GiteaConnector(UserAPIConnector):
    """Logs users in with Gitea and maps orgs/teams to groups."""

    provider = "Gitea"

    def __init__(
        self,
        connector_id: str,
        name: str,
        connector_type: str,
        config: GiteaConfig,
        env: ConnectorEnv,
    ) -> None:
        super().__init__(connector_id, name, connector_type)
        self._config = config
        self._clock: Clock = env.clock
        self._api = f"{config.base_url}/api/v1"
        self._token_url = f"{config.base_url}/login/oauth/access_token"
        self._http = UpstreamHTTP()
        # None: HTTP Basic first, the request body when refused, as golang.org/x/oauth2 does.
        self._credentials = ClientCredentials(
            config.client_id, config.client_secret.get_secret_value(), None
        )
        self._flights = RefreshFlights(env.clock)
        self._redirect_uri = config.redirect_uri

    def _groups_required(self) -> bool:
        return bool(self._config.orgs) or self._config.load_all_groups

    async def login_url(self, scopes: Scopes, callback_url: str, state: str) -> LoginRedirect:
        return self._login_redirect(
            callback_url, f"{self._config.base_url}/login/oauth/authorize", [], state
        )

    # -- Gitea API v1 ------------------------------------------------------------------------

    async def _identity(self, scopes: Scopes, token: str, previous: Identity | None) -> Identity:
        response = await self._http.fetch(f"{self._api}/user", what="user", headers=_auth(token))
        if response.status != 200:
            raise_for_api_status(response, "user", self._clock.now())
            raise ConnectorError(f"Gitea answered the user request with {response.status}")
        user = response.body
        if not isinstance(user, dict):
            raise ConnectorError("Gitea's user response is not a JSON object")
        numeric_id, login = user.get("id"), user.get("login")
        if not isinstance(numeric_id, int) or not isinstance(login, str) or not login:
            raise ConnectorError("Gitea's user response has no id or login")
        user_id = login if self._config.use_login_as_id else str(numeric_id)
        if previous is not None and user_id != previous.user_id:
            raise ConnectorError("Gitea refreshed a different user; please log in again")
        email = user.get("email") if isinstance(user.get("email"), str) else ""
        name = user.get("full_name") if isinstance(user.get("full_name"), str) else ""
        groups: tuple[str, ...] = previous.groups if previous is not None else ()
        if self._groups_required():
            groups = tuple(await self._groups(token, login))
        return Identity(
            user_id=user_id,
            username=str(name or email),
            preferred_username=login,
            email=str(email),
            email_verified=True,
            groups=groups,
            connector_data=b"",
        )

    async def _groups(self, token: str, login: str) -> list[str]:
        memberships: dict[str, list[str]] = {}
        async for team in self._teams(token):
            org = team.get("organization")
            org_name = org.get("username") if isinstance(org, dict) else None
            team_name = team.get("name")
            if isinstance(org_name, str) and org_name and isinstance(team_name, str):
                memberships.setdefault(org_name, []).append(team_name)
        if not self._config.orgs:
            all_groups: list[str] = []
            for org_name, teams in memberships.items():
                all_groups.append(org_name)
                all_groups.extend(f"{org_name}:{team}" for team in dict.fromkeys(teams))
            return all_groups
        kept: list[str] = []
        for wanted in self._config.orgs:
            user_teams = memberships.get(wanted.name)
            if user_teams is None:
                continue
            if wanted.teams:
                listed = [t for t in dict.fromkeys(user_teams) if t in set(wanted.teams)]
                if not listed:
                    continue
                kept.append(wanted.name)
                kept.extend(f"{wanted.name}:{team}" for team in listed)
            else:
                kept.append(wanted.name)
        if not kept:
            log.info("gitea: user %s is not in the required orgs or teams", login)
            raise ConnectorError(
                "you are not a member of the Gitea organizations or teams required"
            )
        return kept

    async def _teams(self, token: str) -> AsyncIterator[dict[str, Any]]:
        url = f"{self._api}/user/teams?page=1&limit={PAGE_LIMIT}"
        for _ in range(MAX_PAGES):
            response = await self._http.fetch(url, what="user teams", headers=_auth(token))
            if response.status != 200:
                raise_for_api_status(response, "user teams", self._clock.now())
                raise ConnectorError(f"Gitea answered the teams request with {response.status}")
            if not isinstance(response.body, list):
                raise ConnectorError("Gitea's teams response is not a JSON list")
            for item in response.body:
                if isinstance(item, dict):
                    yield item
            url = next_link(response.headers)
            if not url:
                return
            if not same_origin(url, self._api):
                log.warning("gitea: team pagination pointed off the API origin; refused")
                raise ConnectorError("Gitea's team pagination link is not on its API")
        raise ConnectorError(f"Gitea's team list has more than {MAX_PAGES} pages")


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def open_gitea(
    connector_id: str, name: str, connector_type: str, config: BaseModel, env: ConnectorEnv
) -> Connector:
    """Build the connector (no network until the first login)."""
    assert isinstance(config, GiteaConfig)
    return GiteaConnector(connector_id, name, connector_type, config, env)


CONNECTOR_TYPE = ConnectorType(GiteaConfig, open_gitea)
