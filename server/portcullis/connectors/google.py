"""Google upstream (Dex's ``google`` connector type): Google accounts and Google Workspace.

Dex's keys and behaviour (connector/google/google.go): OpenID Connect against
``https://accounts.google.com`` (this module is the ``oidc`` connector underneath: discovery,
PKCE, nonce, full ID token verification and the refresh single-flight are its code), ``scopes``
(default ``profile email``, ``openid`` always), ``promptType`` (default ``consent``, sent with
``access_type=offline`` when the client wants a refreshable session). The user id is the ID
token's ``sub``, the name its ``name`` (kept from the previous identity when a refreshed ID token
leaves it out, as Dex does), the email and ``email_verified`` from the token.

``hostedDomains``: only accounts whose ID token carries an ``hd`` (Workspace domain) claim in the
list may log in; the authorization request carries ``hd`` (the domain, or ``*`` for several) so
Google's account picker offers the right accounts, but only the signed claim is trusted.

Groups: Google's ID token has none. With ``domainToAdminEmail`` (or the older ``adminEmail``,
which is its ``*`` entry) they are read from the Admin SDK Directory API as a service account
(see :mod:`portcullis.connectors.google_directory`): the group email addresses the user belongs
to, with ``fetchTransitiveGroupMembership`` also the groups of those groups. ``groups`` restricts
logins to members of one of the listed groups and keeps only those in the claim.

Beyond Dex: ``groups`` is enforced whenever it is set, at login and at every refresh (Dex only
checks it when the client asked for the ``groups`` scope), and a ``groups`` list without
``domainToAdminEmail`` is a config error (Dex lets everyone in then). Refresh re-verifies the
refreshed ID token, re-checks ``hd`` and the groups, and fails when the user lost access, the
grant was revoked or the token names someone else. Google's ID tokens may carry the issuer
without its scheme (``accounts.google.com``), which is accepted as go-oidc does. Connector data
is the refresh token (and subject), only for ``offline_access`` sessions; Dex's format (the bare
refresh token) is read too, so sessions imported from Dex keep refreshing.

Tests reach a local stand-in through the ``endpoints`` constructor argument, which no config can
set (Dex has no key for Google's addresses either).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from portcullis.connectors.base import (
    Connector,
    ConnectorEnv,
    ConnectorError,
    ConnectorType,
    LoginRedirect,
    Scopes,
)
from portcullis.connectors.google_directory import DirectoryGroups, GoogleAPIs
from portcullis.connectors.oauth2_common import (
    TokenResponse,
    UpstreamHTTP,
    claim_str,
    encode_state,
    filter_allowed,
    http_url,
)
from portcullis.connectors.oidc import OIDCConfig, OIDCConnector, _Provider
from portcullis.storage.models import Identity

__all__ = ["CONNECTOR_TYPE", "GoogleConfig", "GoogleConnector", "GoogleEndpoints", "open_google"]

log = logging.getLogger(__name__)

_STRICT = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

ISSUER = "https://accounts.google.com"
PROMPTS = ("none", "consent", "select_account")


class GoogleConfig(BaseModel):
    """Dex's ``google`` connector config (connector/google key names)."""

    model_config = _STRICT

    client_id: str = Field(alias="clientID", min_length=1)
    client_secret: SecretStr = Field(SecretStr(""), alias="clientSecret")
    redirect_uri: str = Field(alias="redirectURI")
    scopes: list[str] = Field(default_factory=list)
    hosted_domains: list[str] = Field(default_factory=list, alias="hostedDomains")
    groups: list[str] = Field(default_factory=list)
    service_account_file_path: str = Field("", alias="serviceAccountFilePath")
    #: Deprecated in Dex for ``domainToAdminEmail: {"*": ...}``.
    admin_email: str = Field("", alias="adminEmail")
    domain_to_admin_email: dict[str, str] = Field(default_factory=dict, alias="domainToAdminEmail")
    fetch_transitive_group_membership: bool = Field(False, alias="fetchTransitiveGroupMembership")
    prompt_type: str | None = Field(None, alias="promptType")

    @field_validator("redirect_uri")
    @classmethod
    def _redirect(cls, value: str) -> str:
        return http_url(value, "redirectURI")

    @field_validator("hosted_domains", "groups")
    @classmethod
    def _no_empty_entries(cls, value: list[str], info: Any) -> list[str]:
        alias = cls.model_fields[info.field_name].alias or info.field_name
        if any(not item.strip() for item in value):
            raise ValueError(f"{alias} must not contain empty entries")
        return value

    @field_validator("admin_email")
    @classmethod
    def _admin_email(cls, value: str) -> str:
        if value and "@" not in value:
            raise ValueError(f"adminEmail must be an email address, got {value!r}")
        return value

    @field_validator("domain_to_admin_email")
    @classmethod
    def _domain_to_admin_email(cls, value: dict[str, str]) -> dict[str, str]:
        for domain, email in value.items():
            if not domain or "@" in domain:
                raise ValueError(f"domainToAdminEmail: {domain!r} is not a domain (or '*')")
            if "@" not in email:
                raise ValueError(
                    f"domainToAdminEmail.{domain}: must be an admin's email address, got {email!r}"
                )
        return {domain.lower(): email for domain, email in value.items()}

    @field_validator("prompt_type")
    @classmethod
    def _prompt(cls, value: str | None) -> str | None:
        if value and any(part not in PROMPTS for part in value.split()):
            raise ValueError(
                f"promptType must be space-separated values of {', '.join(PROMPTS)}, got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _directory(self) -> GoogleConfig:
        if self.service_account_file_path and not self.admins():
            # Dex: "directory service requires the domainToAdminEmail option to be configured"
            raise ValueError(
                "serviceAccountFilePath needs domainToAdminEmail: the Workspace admin the "
                "service account acts for when it reads groups"
            )
        if self.groups and not self.admins():
            raise ValueError(
                "groups needs domainToAdminEmail (and a service account): Google's ID token "
                "carries no groups, so the restriction could not be enforced"
            )
        return self

    def admins(self) -> dict[str, str]:
        """``domainToAdminEmail`` with Dex's ``adminEmail`` as its ``*`` entry (Dex lets the
        deprecated key win)."""
        admins = dict(self.domain_to_admin_email)
        if self.admin_email:
            admins["*"] = self.admin_email
        return admins


@dataclass(frozen=True)
class GoogleEndpoints:
    """The OpenID provider (discovery base) and the Google APIs; fixed in production, given
    by tests."""

    issuer: str = ISSUER
    apis: GoogleAPIs = field(default_factory=GoogleAPIs)


class GoogleConnector(OIDCConnector):
    """Logs users in with Google; Workspace domains and groups can restrict who may."""

    def __init__(
        self,
        connector_id: str,
        name: str,
        connector_type: str,
        config: GoogleConfig,
        env: ConnectorEnv,
        endpoints: GoogleEndpoints | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        endpoints = endpoints or GoogleEndpoints()
        oidc_config = OIDCConfig.model_validate(
            {
                "issuer": endpoints.issuer,
                "clientID": config.client_id,
                "clientSecret": config.client_secret.get_secret_value(),
                "redirectURI": config.redirect_uri,
                "scopes": config.scopes,
                "promptType": config.prompt_type,
            }
        )
        super().__init__(connector_id, name, connector_type, oidc_config, env)
        self._google = config
        admins = config.admins()
        if config.admin_email:
            log.warning(
                'connector %s: adminEmail is deprecated; use domainToAdminEmail: {"*": ...}',
                connector_id,
            )
        self._directory: DirectoryGroups | None = None
        if admins:
            environment = os.environ if environ is None else environ
            if not config.service_account_file_path:
                log.warning(
                    "connector %s: no serviceAccountFilePath; groups use Application Default "
                    "Credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud's file, or the "
                    "metadata server's service account through IAM signJwt)",
                    connector_id,
                )
            self._directory = DirectoryGroups(
                http=UpstreamHTTP(),
                clock=env.clock,
                domain_to_admin_email=admins,
                key_file=config.service_account_file_path,
                apis=endpoints.apis,
                environ=environment,
            )

    # -- login ---------------------------------------------------------------------------------

    async def login_url(self, scopes: Scopes, callback_url: str, state: str) -> LoginRedirect:
        start = await super().login_url(scopes, callback_url, state)
        domains = self._google.hosted_domains
        if not domains:
            return start
        # Dex: the domain when there is one, "*" (any Workspace account) for several.
        parts = urlsplit(start.url)
        query = [*parse_qsl(parts.query, keep_blank_values=True)]
        query.append(("hd", domains[0] if len(domains) == 1 else "*"))
        url = urlunsplit(
            (parts.scheme, parts.netloc, parts.path, urlencode(query, quote_via=quote), "")
        )
        return replace(start, url=url)

    async def handle_callback(
        self, scopes: Scopes, params: Mapping[str, str], connector_state: bytes
    ) -> Identity:
        identity = await super().handle_callback(scopes, params, connector_state)
        return await self._with_groups(scopes.groups, identity)

    async def refresh(self, scopes: Scopes, identity: Identity) -> Identity:
        fresh = await super().refresh(scopes, _from_dex_data(identity))
        return await self._with_groups(scopes.groups, fresh)

    async def token_identity(self, subject_token_type: str, subject_token: str) -> Identity:
        """A Google ID token minted for our ``clientID`` (RFC 8693), with the same ``hd`` and
        ``groups`` checks as a login; groups are read when the directory is configured."""
        identity = await super().token_identity(subject_token_type, subject_token)
        return await self._with_groups(True, identity)

    # -- ID token checks and claims --------------------------------------------------------------

    def _check_claims(
        self, provider: _Provider, claims: Mapping[str, Any], nonce: str | None
    ) -> None:
        # go-oidc accepts Google's scheme-less issuer for https://accounts.google.com.
        iss = claims.get("iss")
        if isinstance(iss, str) and iss == provider.issuer.partition("://")[2]:
            claims = {**claims, "iss": provider.issuer}
        super()._check_claims(provider, claims, nonce)

    async def _identity(
        self,
        provider: _Provider,
        tokens: TokenResponse,
        id_claims: dict[str, Any],
        previous: Identity | None,
        keep_data: bool,
        userinfo: bool | None = None,
    ) -> Identity:
        """Dex's createIdentity: everything from the verified ID token (Google throttles its
        userinfo endpoint, so it is never asked)."""
        if not id_claims:
            raise ConnectorError("Google sent no ID token")
        subject = claim_str(id_claims, "sub")
        if not subject:
            raise ConnectorError('Google\'s ID token has no "sub" claim')
        if previous is not None and previous.user_id != subject:
            raise ConnectorError("Google refreshed a different user; please log in again")
        domains = self._google.hosted_domains
        hosted = claim_str(id_claims, "hd") or ""
        if domains and hosted not in domains:
            log.info(
                "connector %s: refused user %s: hosted domain %r is not allowed",
                self.id,
                subject,
                hosted,
            )
            raise ConnectorError("your Google account is not in a domain allowed to log in here")
        name = claim_str(id_claims, "name") or (previous.username if previous else "")
        data = b""
        if keep_data:
            if not tokens.refresh_token:
                log.info("connector %s: Google issued no refresh token for this session", self.id)
            data = encode_state({"rt": tokens.refresh_token, "sub": subject})
        return Identity(
            user_id=subject,
            username=name,
            email=claim_str(id_claims, "email") or "",
            email_verified=id_claims.get("email_verified") is True,
            groups=previous.groups if previous is not None else (),
            connector_data=data,
        )

    async def _with_groups(self, wanted: bool, identity: Identity) -> Identity:
        """The identity with its Workspace groups when they are wanted or restrict logins;
        ConnectorError when ``groups`` is set and the user is in none of them."""
        required = self._google.groups
        if self._directory is None or not (wanted or required):
            return replace(identity, groups=())
        if not identity.email:
            raise ConnectorError(
                "Google sent no email address, which groups are looked up by (add the email scope)"
            )
        groups = await self._directory.groups(
            identity.email, self._google.fetch_transitive_group_membership
        )
        if required:
            groups = filter_allowed(groups, required)
            if not groups:
                log.info(
                    "connector %s: user %s is not in any of the required groups",
                    self.id,
                    identity.user_id,
                )
                raise ConnectorError("you are not a member of the Google groups required")
        return replace(identity, groups=tuple(groups))


def _from_dex_data(identity: Identity) -> Identity:
    """Dex's google connector stores the bare refresh token as connector data: wrap it in
    ours (the subject is the user id, as in Dex)."""
    raw = identity.connector_data
    if not raw:
        return identity
    try:
        parsed = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        parsed = None
    if isinstance(parsed, dict):
        return identity
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return identity  # unreadable either way: the oidc code refuses it with a clear error
    return replace(identity, connector_data=encode_state({"rt": token, "sub": identity.user_id}))


def open_google(
    connector_id: str, name: str, connector_type: str, config: BaseModel, env: ConnectorEnv
) -> Connector:
    """Build the connector (no network and no key file read until the first login)."""
    assert isinstance(config, GoogleConfig)
    return GoogleConnector(connector_id, name, connector_type, config, env)


CONNECTOR_TYPE = ConnectorType(GoogleConfig, open_google)
