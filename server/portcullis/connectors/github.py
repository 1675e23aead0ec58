"""GitHub and GitHub Enterprise Server upstream (Dex's ``github`` connector type).

Dex's keys and behaviour (connector/github/github.go): the OAuth app asks for ``user:email``,
plus ``read:org`` when groups matter (``orgs``/``org`` configured or the client asked for the
``groups`` scope). The user is ``GET /user``; a private email comes from ``GET /user/emails``
(the verified primary one, or the first verified one in ``preferredEmailDomain``, where ``*``
matches one DNS label; Enterprise Server cannot verify emails, so there every email counts as
verified, as in Dex). Groups:

* ``orgs: [{name, teams}]``: the user must be a member of at least one listed org (``GET
  /orgs/{org}/members/{login}`` answers 204) and, when the org lists teams, of one of them;
  groups are ``org:team`` (every team of an org without a team list);
* ``org`` (legacy, one org): membership required, groups are the bare team names;
* ``loadAllGroups`` with the ``groups`` scope and no org restriction: every org the user is in
  and every ``org:team``.

``teamNameField`` picks the team's ``name`` (default), ``slug`` or ``both``. ``useLoginAsID``
uses the login instead of the numeric id (which survives renames; the login does not).

Beyond Dex: every list is followed through all its ``Link: rel="next"`` pages (only on the
configured API origin, so the token never goes elsewhere; a runaway list fails closed instead of
being cut short), rate limits (403 with ``X-RateLimit-Remaining: 0``, 403/429 with
``Retry-After``) and a revoked token (401) are clear errors with the upstream status logged, and
a refresh re-runs the org/team checks and fails when the user lost access or became someone
else. Connector data (``offline_access`` sessions only) is Dex's: the access token (OAuth app
tokens do not expire), plus, for GitHub App user tokens, the refresh token and expiry; an expired
token is renewed with the refresh grant (GitHub rotates refresh tokens, so concurrent refreshes
share one upstream call).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

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
    check_root_cas,
    filter_allowed,
    http_url,
    next_link,
    raise_for_api_status,
    same_origin,
)
from portcullis.connectors.oauth2_user_api import UserAPIConnector
from portcullis.storage.models import Identity

__all__ = ["CONNECTOR_TYPE", "GitHubConfig", "GitHubConnector", "GitHubOrg", "open_github"]

log = logging.getLogger(__name__)

_STRICT = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

SCOPE_EMAIL = "user:email"
SCOPE_ORGS = "read:org"
#: GitHub's REST media type. No X-GitHub-Api-Version pin (Dex sends none): GitHub answers an
#: unsupported pin with 400, and an Enterprise Server may not know a newer one.
API_HEADERS = {"Accept": "application/vnd.github+json"}
#: Largest page GitHub serves; fewer round trips for users in many orgs and teams.
PER_PAGE = 100
#: Pages followed per list before failing closed (100 x 100 items is far beyond real users).
MAX_PAGES = 100


class GitHubOrg(BaseModel):
    """One ``orgs`` entry: an org whose members may log in, optionally only some teams."""

    model_config = _STRICT

    name: str = Field(min_length=1)
    teams: list[str] = Field(default_factory=list)


class GitHubConfig(BaseModel):
    """Dex's ``github`` connector config (connector/github/github.go key names)."""

    model_config = _STRICT

    client_id: str = Field(alias="clientID", min_length=1)
    client_secret: SecretStr = Field(alias="clientSecret")
    redirect_uri: str = Field(alias="redirectURI")
    org: str = ""
    orgs: list[GitHubOrg] = Field(default_factory=list)
    host_name: str = Field("", alias="hostName")
    root_ca: str = Field("", alias="rootCA")
    team_name_field: str = Field("", alias="teamNameField")
    load_all_groups: bool = Field(False, alias="loadAllGroups")
    use_login_as_id: bool = Field(False, alias="useLoginAsID")
    preferred_email_domain: str = Field("", alias="preferredEmailDomain")

    @field_validator("redirect_uri")
    @classmethod
    def _redirect(cls, value: str) -> str:
        return http_url(value, "redirectURI")

    @field_validator("host_name")
    @classmethod
    def _host(cls, value: str) -> str:
        if "/" in value:
            raise ValueError("hostName must be a host name (with an optional port), not a URL")
        return value

    @field_validator("root_ca")
    @classmethod
    def _root_ca(cls, value: str) -> str:
        if value:
            try:
                check_root_cas([value])
            except ValueError:
                raise ValueError(
                    "rootCA is not a PEM certificate: give a path to a PEM file, the PEM text, "
                    "or base64 of the PEM text"
                ) from None
        return value

    @field_validator("team_name_field")
    @classmethod
    def _team_name_field(cls, value: str) -> str:
        if value not in ("", "name", "slug", "both"):
            raise ValueError(f"teamNameField must be name, slug or both, got {value!r}")
        return value

    @field_validator("preferred_email_domain")
    @classmethod
    def _preferred_domain(cls, value: str) -> str:
        if value.endswith("*"):
            raise ValueError('preferredEmailDomain: a glob pattern cannot end with "*"')
        return value

    @model_validator(mode="after")
    def _combinations(self) -> GitHubConfig:
        if self.org and self.orgs:
            raise ValueError("org and orgs cannot be used together (org is the legacy form)")
        if self.root_ca and not self.host_name:
            raise ValueError("rootCA requires hostName (it is for GitHub Enterprise Server)")
        return self


def preferred_domain_matches(pattern: str, domain: str) -> bool:
    """Dex's rule: equal, or the same number of labels with ``*`` matching any one label."""
    if domain == pattern:
        return True
    wanted, labels = pattern.split("."), domain.split(".")
    if len(wanted) != len(labels):
        return False
    return all(w in ("*", label) for w, label in zip(wanted, labels, strict=True))


class GitHubConnector(UserAPIConnector):
    """Logs users in with GitHub (or GitHub Enterprise Server) and maps orgs/teams to groups."""

    provider = "GitHub"

    def __init__(
        self,
        connector_id: str,
        name: str,
        connector_type: str,
        config: GitHubConfig,
        env: ConnectorEnv,
    ) -> None:
        super().__init__(connector_id, name, connector_type)
        if config.org:
            log.warning(
                "connector %s: the legacy 'org' key is used; 'orgs' is the current form",
                connector_id,
            )
        self._config = config
        self._clock: Clock = env.clock
        if config.host_name:
            web = f"https://{config.host_name}"
            self._api = f"{web}/api/v3"
        else:
            web = "https://github.com"
            self._api = "https://api.github.com"
        self._authorize_url = f"{web}/login/oauth/authorize"
        self._token_url = f"{web}/login/oauth/access_token"
        self._http = UpstreamHTTP(root_cas=[config.root_ca] if config.root_ca else [])
        # GitHub documents client_id and client_secret as form parameters.
        self._credentials = ClientCredentials(
            config.client_id, config.client_secret.get_secret_value(), True
        )
        self._flights = RefreshFlights(env.clock)
        self._redirect_uri = config.redirect_uri

    def _groups_required(self, scopes: Scopes) -> bool:
        return bool(self._config.orgs) or bool(self._config.org) or scopes.groups

    async def login_url(self, scopes: Scopes, callback_url: str, state: str) -> LoginRedirect:
        wanted = [SCOPE_EMAIL, SCOPE_ORGS] if self._groups_required(scopes) else [SCOPE_EMAIL]
        return self._login_redirect(callback_url, self._authorize_url, wanted, state)

    # -- GitHub REST API ---------------------------------------------------------------------

    async def _identity(self, scopes: Scopes, token: str, previous: Identity | None) -> Identity:
        user = await self._get(f"{self._api}/user", token, "user")
        if not isinstance(user, dict):
            raise ConnectorError("GitHub's user response is not a JSON object")
        login, numeric_id = user.get("login"), user.get("id")
        if not isinstance(login, str) or not login or not isinstance(numeric_id, int):
            raise ConnectorError("GitHub's user response has no login or id")
        user_id = login if self._config.use_login_as_id else str(numeric_id)
        if previous is not None and user_id != previous.user_id:
            raise ConnectorError("GitHub refreshed a different user; please log in again")
        email = user.get("email") if isinstance(user.get("email"), str) else ""
        if not email or self._config.preferred_email_domain:
            email = await self._email(token)
        name = user.get("name") if isinstance(user.get("name"), str) else ""
        if self._groups_required(scopes):
            groups = tuple(await self._groups(scopes, token, login))
        else:
            groups = previous.groups if previous is not None else ()
        return Identity(
            user_id=user_id,
            username=name or login,
            preferred_username=login,
            email=str(email),
            email_verified=True,
            groups=groups,
            connector_data=b"",
        )

    async def _email(self, token: str) -> str:
        preferred = self._config.preferred_email_domain
        primary = ""
        async for item in self._pages(f"{self._api}/user/emails", token, "user emails"):
            address = item.get("email")
            if not isinstance(address, str):
                continue
            verified = item.get("verified") is True or bool(self._config.host_name)
            if verified and item.get("primary") is True:
                primary = primary or address
            if preferred and verified:
                domain = address.partition("@")[2]
                if preferred_domain_matches(preferred, domain):
                    return address
        if primary:
            return primary
        raise ConnectorError("your GitHub account has no verified primary email address")

    async def _groups(self, scopes: Scopes, token: str, login: str) -> list[str]:
        config = self._config
        if config.orgs:
            return await self._groups_for_orgs(token, login)
        if config.org:
            if not await self._in_org(token, login, config.org):
                log.info("github: user %s is not a member of org %s", login, config.org)
                raise ConnectorError(
                    f"you are not a member of the GitHub organization {config.org}"
                )
            return await self._teams_in_org(token, config.org)
        if scopes.groups and config.load_all_groups:
            return await self._all_groups(token)
        return []

    async def _groups_for_orgs(self, token: str, login: str) -> list[str]:
        groups: list[str] = []
        in_org_without_teams = False
        for org in self._config.orgs:
            if not await self._in_org(token, login, org.name):
                continue
            teams = await self._teams_in_org(token, org.name)
            if not org.teams:
                in_org_without_teams = True
            else:
                teams = filter_allowed(teams, org.teams)
                if not teams:
                    log.info("github: user %s is in org %s but none of its teams", login, org.name)
            groups.extend(f"{org.name}:{team}" for team in teams)
        if in_org_without_teams or groups:
            return groups
        log.info("github: user %s is not in the required orgs or teams", login)
        raise ConnectorError("you are not a member of the GitHub organizations or teams required")

    async def _in_org(self, token: str, login: str, org: str) -> bool:
        """GitHub's "check organization membership for a user": 204 member; 302 (the app
        cannot see private membership) or 404 not a member, as Dex reads them."""
        url = f"{self._api}/orgs/{quote(org, safe='')}/members/{quote(login, safe='')}"
        response = await self._http.fetch(url, what="org membership", headers=self._headers(token))
        if response.status == 204:
            return True
        if response.status in (302, 404):
            return False
        raise_for_api_status(response, "org membership", self._clock.now())
        raise ConnectorError(f"GitHub answered the org membership check with {response.status}")

    def _team_names(self, team: Mapping[str, Any]) -> list[str]:
        name, slug = team.get("name"), team.get("slug")
        field = self._config.team_name_field
        chosen = [name, slug] if field == "both" else [slug] if field == "slug" else [name]
        return [value for value in chosen if isinstance(value, str) and value]

    async def _teams_in_org(self, token: str, org: str) -> list[str]:
        teams: list[str] = []
        async for team in self._pages(f"{self._api}/user/teams", token, "user teams"):
            owner = team.get("organization")
            if isinstance(owner, dict) and owner.get("login") == org:
                teams.extend(self._team_names(team))
        return teams

    async def _all_groups(self, token: str) -> list[str]:
        orgs: list[str] = []
        async for org in self._pages(f"{self._api}/user/orgs", token, "user orgs"):
            if isinstance(org.get("login"), str):
                orgs.append(org["login"])
        by_org: dict[str, list[str]] = {}
        async for team in self._pages(f"{self._api}/user/teams", token, "user teams"):
            owner = team.get("organization")
            if isinstance(owner, dict) and isinstance(owner.get("login"), str):
                by_org.setdefault(owner["login"], []).extend(self._team_names(team))
        groups: list[str] = []
        for org_login in orgs:
            groups.append(org_login)
            groups.extend(f"{org_login}:{team}" for team in by_org.get(org_login, []))
        return groups

    def _headers(self, token: str) -> dict[str, str]:
        return {**API_HEADERS, "Authorization": f"Bearer {token}"}

    async def _get(self, url: str, token: str, what: str) -> Any:
        response = await self._http.fetch(url, what=what, headers=self._headers(token))
        if response.status != 200:
            raise_for_api_status(response, what, self._clock.now())
            raise ConnectorError(f"GitHub answered the {what} request with {response.status}")
        return response.body

    async def _pages(self, url: str, token: str, what: str) -> AsyncIterator[dict[str, Any]]:
        """Every item of a paginated list, following ``Link: rel="next"``."""
        next_url = f"{url}?per_page={PER_PAGE}"
        for _ in range(MAX_PAGES):
            response = await self._http.fetch(next_url, what=what, headers=self._headers(token))
            if response.status != 200:
                raise_for_api_status(response, what, self._clock.now())
                raise ConnectorError(f"GitHub answered the {what} request with {response.status}")
            if not isinstance(response.body, list):
                raise ConnectorError(f"GitHub's {what} response is not a JSON list")
            for item in response.body:
                if isinstance(item, dict):
                    yield item
            next_url = next_link(response.headers)
            if not next_url:
                return
            if not same_origin(next_url, self._api):
                log.warning("github: %s pagination pointed off the API origin; refused", what)
                raise ConnectorError(f"GitHub's {what} pagination link is not on its API")
        raise ConnectorError(f"GitHub's {what} list has more than {MAX_PAGES} pages")


def open_github(
    connector_id: str, name: str, connector_type: str, config: BaseModel, env: ConnectorEnv
) -> Connector:
    """Build the connector (no network until the first login)."""
    assert isinstance(config, GitHubConfig)
    return GitHubConnector(connector_id, name, connector_type, config, env)


CONNECTOR_TYPE = ConnectorType(GitHubConfig, open_github)
