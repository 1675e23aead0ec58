"""Microsoft Entra ID / Microsoft accounts upstream (Dex's ``microsoft`` connector type).

Dex's keys and behaviour (connector/microsoft/microsoft.go): the v2.0 authorization code flow at
``{apiURL}/{tenant}/oauth2/v2.0/...`` (``tenant`` ``common`` by default, or ``organizations``,
``consumers``, a tenant id or domain), ``scopes`` (default ``user.read``) plus
``directory.read.all`` when groups matter and ``offline_access`` for refreshable sessions,
``promptType`` and ``domainHint`` on the authorization request. The user is Graph's ``/me``:
``id`` is the user id, ``displayName`` the name, ``userPrincipalName`` the email
(``emailToLowercase`` lower-cases it). Groups are only read for a specific tenant (Dex: the
multi-tenant endpoints have no directory to read) and when ``groups`` is configured or the client
asked for ``groups``: every group the user belongs to, directly or through nested groups
(``onlySecurityGroups`` keeps security groups), named by ``displayName`` or, with
``groupNameFormat: id``, by object id. With ``groups`` set, only members of one of them may log
in; ``useGroupsAsWhitelist`` also keeps only those groups in the claim.

Dex #2108: a user in many groups must never get a silently shortened list. Groups are read from
``/me/transitiveMemberOf/microsoft.graph.group`` page by page through ``@odata.nextLink`` (only
on the Graph origin, so the token never goes elsewhere; a list past the page bound fails the
login rather than being cut), never from the token's ``groups`` claim, which Entra truncates
(the "overage" claim) past 200 groups.

Beyond Dex: refresh uses the rotating refresh token through the shared single-flight, re-reads
the user and re-runs the group checks, and fails when the user lost access, the grant was
revoked or the token now names another user. Connector data is the refresh token only.

``apiURL``/``graphURL`` are Dex's keys for national clouds (https only). Tests reach a local
stand-in through the ``endpoints`` constructor argument, which no config can set.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

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
    decode_state,
    encode_state,
    exchange_code,
    filter_allowed,
    http_url,
    raise_for_api_status,
    refresh_grant,
    same_origin,
)
from portcullis.storage.models import Identity

__all__ = [
    "CONNECTOR_TYPE",
    "MicrosoftConfig",
    "MicrosoftConnector",
    "MicrosoftEndpoints",
    "open_microsoft",
]

log = logging.getLogger(__name__)

_STRICT = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

SCOPE_USER = "user.read"
SCOPE_GROUPS = "directory.read.all"
SCOPE_OFFLINE = "offline_access"
MULTI_TENANT = ("common", "organizations", "consumers")
#: Graph's largest page for directory object collections.
PAGE_SIZE = 999
#: Pages followed before failing closed (about 100,000 groups).
MAX_PAGES = 100
PROMPTS = ("login", "none", "consent", "select_account", "create")
#: Dex's preferredUsernameField values and the Graph user property each one reads.
PREFERRED_USERNAME_FIELDS = {
    "name": "displayName",
    "email": "userPrincipalName",
    "mailNickname": "mailNickname",
    "onPremisesSamAccountName": "onPremisesSamAccountName",
}
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*$")


class MicrosoftConfig(BaseModel):
    """Dex's ``microsoft`` connector config (connector/microsoft/microsoft.go key names)."""

    model_config = _STRICT

    client_id: str = Field(alias="clientID", min_length=1)
    client_secret: SecretStr = Field(SecretStr(""), alias="clientSecret")
    #: Path of a file holding a client assertion JWT (workload identity federation), read on
    #: every token request because the platform rotates it; replaces the client secret.
    client_assertion: str = Field("", alias="clientAssertion")
    redirect_uri: str = Field(alias="redirectURI")
    tenant: str = "common"
    only_security_groups: bool = Field(False, alias="onlySecurityGroups")
    groups: list[str] = Field(default_factory=list)
    group_name_format: str = Field("name", alias="groupNameFormat")
    use_groups_as_whitelist: bool = Field(False, alias="useGroupsAsWhitelist")
    email_to_lowercase: bool = Field(False, alias="emailToLowercase")
    #: Dex splits getByIds lookups into batches of 1000 with this; transitiveMemberOf paging
    #: never hits that limit, so it is accepted and changes nothing.
    batch_group_lookups: bool = Field(False, alias="batchGroupLookups")
    preferred_username_field: str = Field("", alias="preferredUsernameField")
    api_url: str = Field("https://login.microsoftonline.com", alias="apiURL")
    graph_url: str = Field("https://graph.microsoft.com", alias="graphURL")
    prompt_type: str = Field("", alias="promptType")
    domain_hint: str = Field("", alias="domainHint")
    scopes: list[str] = Field(default_factory=list)

    @field_validator("redirect_uri")
    @classmethod
    def _redirect(cls, value: str) -> str:
        return http_url(value, "redirectURI")

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str) -> str:
        value = value or "common"
        if not _TENANT.match(value):
            raise ValueError(
                "tenant must be common, organizations, consumers, a tenant id or a domain"
            )
        return value

    @field_validator("group_name_format")
    @classmethod
    def _group_name_format(cls, value: str) -> str:
        if value not in ("", "name", "id"):
            raise ValueError(f"groupNameFormat must be name or id, got {value!r}")
        return value or "name"

    @field_validator("api_url", "graph_url")
    @classmethod
    def _cloud_urls(cls, value: str, info: Any) -> str:
        alias = cls.model_fields[info.field_name].alias or info.field_name
        if not value:
            return str(cls.model_fields[info.field_name].default)
        if urlsplit(value).scheme != "https":
            raise ValueError(f"{alias} must be an https URL (a Microsoft national cloud)")
        return http_url(value, alias).rstrip("/")

    @field_validator("preferred_username_field")
    @classmethod
    def _preferred_username_field(cls, value: str) -> str:
        if value and value not in PREFERRED_USERNAME_FIELDS:
            choices = ", ".join(PREFERRED_USERNAME_FIELDS)
            raise ValueError(f"preferredUsernameField must be one of {choices}, got {value!r}")
        return value

    @field_validator("prompt_type")
    @classmethod
    def _prompt(cls, value: str) -> str:
        if value and value not in PROMPTS:
            raise ValueError(f"promptType must be one of {', '.join(PROMPTS)}, got {value!r}")
        return value


@dataclass(frozen=True)
class MicrosoftEndpoints:
    """Where the login service and Graph are; from apiURL/graphURL, or given by a test."""

    login: str
    graph: str


class MicrosoftConnector(CallbackConnector, RefreshConnector):
    """Logs users in with Microsoft identity platform v2.0 and reads groups from Graph."""

    def __init__(
        self,
        connector_id: str,
        name: str,
        connector_type: str,
        config: MicrosoftConfig,
        env: ConnectorEnv,
        endpoints: MicrosoftEndpoints | None = None,
    ) -> None:
        super().__init__(connector_id, name, connector_type)
        self._config = config
        self._clock: Clock = env.clock
        self._endpoints = endpoints or MicrosoftEndpoints(config.api_url, config.graph_url)
        tenant = quote(config.tenant, safe="")
        self._authorize_url = f"{self._endpoints.login}/{tenant}/oauth2/v2.0/authorize"
        self._token_url = f"{self._endpoints.login}/{tenant}/oauth2/v2.0/token"
        self._http = UpstreamHTTP()
        # Microsoft's v2.0 endpoint documents client_secret as a form parameter.
        self._credentials: ClientCredentials = (
            AssertionCredentials(config.client_id, config.client_assertion)
            if config.client_assertion
            else ClientCredentials(config.client_id, config.client_secret.get_secret_value(), True)
        )
        self._flights = RefreshFlights(env.clock)

    def _groups_required(self, scopes: Scopes) -> bool:
        wanted = bool(self._config.groups) or scopes.groups
        return wanted and self._config.tenant not in MULTI_TENANT

    def _scopes(self, scopes: Scopes) -> list[str]:
        wanted = list(self._config.scopes) or [SCOPE_USER]
        if self._groups_required(scopes):
            wanted.append(SCOPE_GROUPS)
        if scopes.offline_access:
            wanted.append(SCOPE_OFFLINE)
        return wanted

    async def login_url(self, scopes: Scopes, callback_url: str, state: str) -> LoginRedirect:
        if callback_url != self._config.redirect_uri:
            raise ConnectorError(
                f"the callback URL {callback_url} does not match this connector's redirectURI"
            )
        extra: dict[str, str] = {}
        if self._config.prompt_type:
            extra["prompt"] = self._config.prompt_type
        if self._config.domain_hint:
            extra["domain_hint"] = self._config.domain_hint
        url = authorization_url(
            self._authorize_url,
            client_id=self._config.client_id,
            redirect_uri=self._config.redirect_uri,
            scopes=self._scopes(scopes),
            state=state,
            extra=extra,
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
            raise ConnectorError("Microsoft sent no authorization code")
        tokens = await exchange_code(
            self._http,
            self._token_url,
            self._credentials,
            code=code,
            redirect_uri=self._config.redirect_uri,
        )
        return await self._identity(scopes, tokens, previous=None, keep=scopes.offline_access)

    async def refresh(self, scopes: Scopes, identity: Identity) -> Identity:
        data = decode_state(identity.connector_data, "session data")
        refresh_token = data.get("refreshToken", "")
        if not refresh_token:
            raise ConnectorError("this session cannot be refreshed; please log in again")

        async def work() -> Identity:
            tokens = await refresh_grant(
                self._http, self._token_url, self._credentials, refresh_token
            )
            if not tokens.refresh_token:
                tokens = replace(tokens, refresh_token=refresh_token)
            return await self._identity(scopes, tokens, previous=identity, keep=True)

        return await self._flights.run(refresh_token, work)

    # -- Microsoft Graph ---------------------------------------------------------------------

    async def _identity(
        self, scopes: Scopes, tokens: TokenResponse, previous: Identity | None, keep: bool
    ) -> Identity:
        token = tokens.access_token
        url = (
            f"{self._endpoints.graph}/v1.0/me?$select=id,displayName,userPrincipalName,"
            "mailNickname,onPremisesSamAccountName"
        )
        response = await self._http.fetch(url, what="user", headers=_bearer(token))
        if response.status != 200:
            raise_for_api_status(response, "user", self._clock.now())
            raise ConnectorError(
                f"Microsoft Graph answered the user request with {response.status}"
            )
        user = response.body
        if not isinstance(user, dict) or not isinstance(user.get("id"), str) or not user["id"]:
            raise ConnectorError("Microsoft Graph's user response has no id")
        user_id: str = user["id"]
        if previous is not None and user_id != previous.user_id:
            raise ConnectorError("Microsoft refreshed a different user; please log in again")
        email = (
            user.get("userPrincipalName") if isinstance(user.get("userPrincipalName"), str) else ""
        )
        if self._config.email_to_lowercase:
            email = str(email).lower()
        name = user.get("displayName") if isinstance(user.get("displayName"), str) else ""
        preferred = ""
        if self._config.preferred_username_field:
            field = PREFERRED_USERNAME_FIELDS[self._config.preferred_username_field]
            value = email if field == "userPrincipalName" else user.get(field)
            preferred = value if isinstance(value, str) else ""
        groups: tuple[str, ...] = previous.groups if previous is not None else ()
        if self._groups_required(scopes):
            groups = tuple(await self._groups(token, user_id))
        data = (
            encode_state({"refreshToken": tokens.refresh_token})
            if keep and tokens.refresh_token
            else b""
        )
        if keep and not data:
            log.info("microsoft: no refresh token issued; the session cannot be refreshed")
        return Identity(
            user_id=user_id,
            username=str(name),
            preferred_username=preferred,
            email=str(email),
            email_verified=True,
            groups=groups,
            connector_data=data,
        )

    async def _groups(self, token: str, user_id: str) -> list[str]:
        found: list[str] = []
        async for group in self._member_groups(token):
            if self._config.only_security_groups and group.get("securityEnabled") is not True:
                continue
            key = "id" if self._config.group_name_format == "id" else "displayName"
            value = group.get(key)
            if isinstance(value, str) and value:
                found.append(value)
        required = self._config.groups
        if required:
            allowed = filter_allowed(found, required)
            if not allowed:
                log.info("microsoft: user %s is not in any of the required groups", user_id)
                raise ConnectorError("you are not a member of the Microsoft groups required")
            if self._config.use_groups_as_whitelist:
                return allowed
        return found

    async def _member_groups(self, token: str) -> AsyncIterator[dict[str, Any]]:
        url = (
            f"{self._endpoints.graph}/v1.0/me/transitiveMemberOf/microsoft.graph.group"
            f"?$select=id,displayName,securityEnabled&$top={PAGE_SIZE}"
        )
        for _ in range(MAX_PAGES):
            response = await self._http.fetch(url, what="group memberships", headers=_bearer(token))
            if response.status != 200:
                raise_for_api_status(response, "group memberships", self._clock.now())
                raise ConnectorError(
                    f"Microsoft Graph answered the group request with {response.status}"
                )
            body = response.body
            if not isinstance(body, dict) or not isinstance(body.get("value"), list):
                raise ConnectorError("Microsoft Graph's group response has no value list")
            for item in body["value"]:
                if isinstance(item, dict):
                    yield item
            next_url = body.get("@odata.nextLink")
            if not next_url:
                return
            if not isinstance(next_url, str) or not same_origin(next_url, self._endpoints.graph):
                log.warning("microsoft: group pagination pointed off the Graph origin; refused")
                raise ConnectorError("Microsoft Graph's group pagination link is not on Graph")
            url = next_url
        raise ConnectorError(f"Microsoft Graph's group list has more than {MAX_PAGES} pages")


class AssertionCredentials(ClientCredentials):
    """Client authentication with a federated client assertion (RFC 7523 §2.2) instead of a
    secret: the JWT a workload identity platform writes to ``clientAssertion``, re-read for
    every request because it is short-lived and rotated underneath us."""

    def __init__(self, client_id: str, assertion_path: str) -> None:
        super().__init__(client_id, "", True)
        self._path = Path(assertion_path)

    def styles(self) -> list[bool]:
        return [True]

    def apply(self, in_body: bool, body: dict[str, str], headers: dict[str, str]) -> None:
        try:
            assertion = self._path.read_text().strip()
        except (OSError, UnicodeDecodeError):
            log.warning("microsoft: cannot read the client assertion file %s", self._path)
            raise ConnectorError("the client assertion (clientAssertion) cannot be read") from None
        if not assertion:
            raise ConnectorError("the client assertion file (clientAssertion) is empty")
        body["client_id"] = self.client_id
        body["client_assertion_type"] = ASSERTION_TYPE
        body["client_assertion"] = assertion


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def open_microsoft(
    connector_id: str, name: str, connector_type: str, config: BaseModel, env: ConnectorEnv
) -> Connector:
    """Build the connector (no network until the first login)."""
    assert isinstance(config, MicrosoftConfig)
    return MicrosoftConnector(connector_id, name, connector_type, config, env)


CONNECTOR_TYPE = ConnectorType(MicrosoftConfig, open_microsoft)
