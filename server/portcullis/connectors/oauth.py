"""Generic OAuth 2.0 upstream (Dex's ``oauth`` connector type) for providers without OIDC.

The user's identity comes from a JSON userinfo endpoint read with the access token, mapped by
Dex's keys (connector/oauth/oauth.go): ``userIDKey`` (default ``id``, a string or a number) and
``claimMapping`` ``userNameKey`` (``user_name``), ``preferredUsernameKey``
(``preferred_username``), ``emailKey`` (``email``), ``emailVerifiedKey`` (``email_verified``),
``groupsKey`` (``groups``). As in Dex, groups are the union of the userinfo groups and those in
the access token's payload when it is a JWT; that payload is read without a signature check,
which is sound only because the token came straight from the token endpoint over TLS with our
client authentication, never through the browser.

Beyond Dex: this connector also refreshes. With an upstream refresh token the session re-runs the
refresh grant and re-reads userinfo (so removals and group changes bite); rotating refresh tokens
go through the same single-flight as the oidc connector (see ``RefreshFlights``). Without one, a
refresh re-reads userinfo with the stored access token and ends the session once it is refused.
``insecureSkipEmailVerified`` (in Dex's docs but ignored by its code) is honoured: a missing
``email_verified`` counts as verified.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

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
    claim_str,
    decode_state,
    encode_state,
    exchange_code,
    groups_from_claim,
    http_url,
    refresh_grant,
)
from portcullis.storage.models import Identity

__all__ = ["CONNECTOR_TYPE", "OAuthConfig", "OAuthConnector", "open_oauth"]

log = logging.getLogger(__name__)

_STRICT = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class OAuthClaimMapping(BaseModel):
    model_config = _STRICT

    user_name_key: str = Field("user_name", alias="userNameKey")
    preferred_username_key: str = Field("preferred_username", alias="preferredUsernameKey")
    groups_key: str = Field("groups", alias="groupsKey")
    email_key: str = Field("email", alias="emailKey")
    email_verified_key: str = Field("email_verified", alias="emailVerifiedKey")

    @model_validator(mode="before")
    @classmethod
    def _empty_is_default(cls, data: Any) -> Any:
        # Dex treats an empty key as "use the default".
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v != ""}
        return data


class OAuthConfig(BaseModel):
    """Dex's ``oauth`` connector config (connector/oauth/oauth.go key names)."""

    model_config = _STRICT

    client_id: str = Field(alias="clientID", min_length=1)
    client_secret: SecretStr = Field(SecretStr(""), alias="clientSecret")
    redirect_uri: str = Field(alias="redirectURI")
    token_url: str = Field(alias="tokenURL")
    authorization_url: str = Field(alias="authorizationURL")
    user_info_url: str = Field(alias="userInfoURL")
    scopes: list[str] = Field(default_factory=list)
    root_cas: list[str] = Field(default_factory=list, alias="rootCAs")
    insecure_skip_verify: bool = Field(False, alias="insecureSkipVerify")
    insecure_skip_email_verified: bool = Field(False, alias="insecureSkipEmailVerified")
    user_id_key: str = Field("id", alias="userIDKey")
    claim_mapping: OAuthClaimMapping = Field(
        default_factory=OAuthClaimMapping, alias="claimMapping"
    )

    @field_validator("redirect_uri", "token_url", "authorization_url", "user_info_url")
    @classmethod
    def _urls(cls, value: str, info: Any) -> str:
        alias = cls.model_fields[info.field_name].alias or info.field_name
        return http_url(value, alias)

    @field_validator("user_id_key")
    @classmethod
    def _user_id_key(cls, value: str) -> str:
        return value or "id"

    @field_validator("root_cas")
    @classmethod
    def _root_cas(cls, value: list[str]) -> list[str]:
        return check_root_cas(value)


def _jwt_payload(token: str) -> dict[str, Any]:
    """The payload of a JWT-shaped access token, unverified (see the module docstring)."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return {}
    return payload if isinstance(payload, dict) else {}


class OAuthConnector(CallbackConnector, RefreshConnector):
    """Logs users in through a plain OAuth 2.0 provider and its userinfo endpoint."""

    def __init__(
        self,
        connector_id: str,
        name: str,
        connector_type: str,
        config: OAuthConfig,
        env: ConnectorEnv,
    ) -> None:
        super().__init__(connector_id, name, connector_type)
        if config.insecure_skip_verify:
            if env.fips_mode:
                # A ValueError naming the key: reported like a config error at open time.
                raise ValueError("insecureSkipVerify: refused in FIPS mode")
            log.warning(
                "connector %s: insecureSkipVerify is set, TLS certificates of the OAuth provider "
                "are NOT verified; anyone on the network path can impersonate it",
                connector_id,
            )
        self._config = config
        self._http = UpstreamHTTP(
            root_cas=config.root_cas, insecure_skip_verify=config.insecure_skip_verify
        )
        self._credentials = ClientCredentials(
            config.client_id, config.client_secret.get_secret_value(), None
        )
        self._flights = RefreshFlights(env.clock)

    async def login_url(self, scopes: Scopes, callback_url: str, state: str) -> LoginRedirect:
        if callback_url != self._config.redirect_uri:
            raise ConnectorError(
                f"the callback URL {callback_url} does not match this connector's redirectURI"
            )
        url = authorization_url(
            self._config.authorization_url,
            client_id=self._config.client_id,
            redirect_uri=self._config.redirect_uri,
            scopes=self._config.scopes,
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
            raise ConnectorError("the identity provider sent no authorization code")
        tokens = await exchange_code(
            self._http,
            self._config.token_url,
            self._credentials,
            code=code,
            redirect_uri=self._config.redirect_uri,
        )
        return await self._identity(
            scopes, tokens, previous_id=None, keep_data=scopes.offline_access
        )

    async def refresh(self, scopes: Scopes, identity: Identity) -> Identity:
        data = decode_state(identity.connector_data, "session data")
        refresh_token = data.get("rt", "")
        if refresh_token:

            async def work() -> Identity:
                tokens = await refresh_grant(
                    self._http, self._config.token_url, self._credentials, refresh_token
                )
                if not tokens.refresh_token:
                    tokens = replace(tokens, refresh_token=refresh_token)
                return await self._identity(
                    scopes, tokens, previous_id=identity.user_id, keep_data=True
                )

            return await self._flights.run(refresh_token, work)
        access_token = data.get("at", "")
        if not access_token:
            raise ConnectorError("this session cannot be refreshed; please log in again")
        tokens = TokenResponse(access_token, "Bearer", "", "", {})
        return await self._identity(scopes, tokens, previous_id=identity.user_id, keep_data=True)

    async def _identity(
        self, scopes: Scopes, tokens: TokenResponse, previous_id: str | None, keep_data: bool
    ) -> Identity:
        config = self._config
        mapping = config.claim_mapping
        info = await self._http.get_json(
            config.user_info_url, what="userinfo", bearer=tokens.access_token
        )
        raw_id = info.get(config.user_id_key)
        if isinstance(raw_id, bool) or not isinstance(raw_id, str | int | float) or raw_id == "":
            raise ConnectorError(
                f'the identity provider\'s userinfo has no usable "{config.user_id_key}" '
                "(a string or a number)"
            )
        # Big numeric ids can arrive as floats: 12345.0 must become "12345".
        user_id = (
            str(int(raw_id)) if isinstance(raw_id, float) and raw_id.is_integer() else str(raw_id)
        )
        if previous_id is not None and user_id != previous_id:
            raise ConnectorError("the identity provider refreshed a different user")
        verified = info.get(mapping.email_verified_key)
        if not isinstance(verified, bool):
            verified = config.insecure_skip_email_verified
        groups: list[str] = []
        if scopes.groups:
            seen: dict[str, None] = {}
            for source in (info, _jwt_payload(tokens.access_token)):
                try:
                    names = groups_from_claim(source.get(mapping.groups_key), mapping.groups_key)
                except ConnectorError:
                    names = []  # Dex ignores a groups claim it cannot read
                seen.update(dict.fromkeys(names))
            groups = list(seen)
        # Kept only for sessions that can be refreshed (offline_access), like Dex; a refreshed
        # session stays refreshable even when the refresh request narrowed its scopes.
        data = b""
        if keep_data:
            kept = {"rt": tokens.refresh_token} if tokens.refresh_token else {}
            data = encode_state(kept or {"at": tokens.access_token})
        return Identity(
            user_id=user_id,
            username=claim_str(info, mapping.user_name_key) or "",
            preferred_username=claim_str(info, mapping.preferred_username_key) or "",
            email=claim_str(info, mapping.email_key) or "",
            email_verified=verified,
            groups=tuple(groups),
            connector_data=data,
        )


def open_oauth(
    connector_id: str, name: str, connector_type: str, config: BaseModel, env: ConnectorEnv
) -> Connector:
    """Build the connector (no network until the first login)."""
    assert isinstance(config, OAuthConfig)
    return OAuthConnector(connector_id, name, connector_type, config, env)


CONNECTOR_TYPE = ConnectorType(OAuthConfig, open_oauth)
