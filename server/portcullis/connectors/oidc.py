"""Upstream OpenID Connect (Dex's ``oidc`` connector type): Okta, Keycloak, Entra ID, Google...

Config keys and claim semantics follow Dex 2.45 (connector/oidc/oidc.go); keys Dex has but we do
not implement are refused at load time with a reason, never ignored.

Login: ``login_url`` makes a fresh nonce and PKCE verifier with ``secrets`` and returns them as the
connector state the issuer stores with the auth request, so ``handle_callback`` (possibly on
another replica) can bind the answer to this very login. The code is exchanged at the token
endpoint and the ID token fully verified: signature through the upstream JWKS (cached; an
unknown ``kid`` refetches the JWKS once, which is how a key rollover shows up), ``alg`` from an
asymmetric allow-list (never ``none`` or HMAC), ``iss``, ``aud`` containing our client id,
``azp`` when there are several audiences, ``exp``/``iat``/``nbf`` with a small skew, ``nonce``.

Discovery is lazy: the first login (or refresh) fetches ``/.well-known/openid-configuration``;
a failure is a ConnectorError for that request and the next request tries again, so the issuer
starts and serves other connectors while this upstream is down.

Refresh and rotating upstream refresh tokens (Dex #2547): ``connector_data`` holds the upstream
refresh token and the subject. Providers that rotate refresh tokens (Okta, Auth0, Keycloak with
"revoke refresh token", node-oidc-provider) invalidate the old token on first use and treat a
second use as theft, revoking the whole grant. Two refreshes of the same session that race (two
kubectl processes, a client retry) would both present the same upstream token; the loser gets
``invalid_grant`` and the session dies. So refreshes are *single-flight per upstream refresh
token* inside the process: the first caller does the upstream call, concurrent callers with the
same token await its result; the result stays in a small cache keyed by a hash of the old token
for ``REFRESH_RESULT_TTL_S``, so a caller arriving just after the first finished also gets the
same new upstream tokens instead of replaying the consumed one. Failures are shared with the
waiting callers but never cached. Limit: the coordination is per process; two issuer processes
refreshing the same session at the same instant still race upstream (sharing the result would
need a sealed record in storage, like the issuer's own ``successor_sealed``).

Groups are only taken from upstream claims with ``insecureEnableGroups`` (Dex's default, because
they were historically not refreshed); here refresh re-reads them and re-applies
``allowedGroups``, so a user removed from an allowed group loses the session at the next refresh.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import urlsplit

from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey, import_key
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from portcullis.connectors.base import (
    ACCESS_TOKEN_TYPE,
    ID_TOKEN_TYPE,
    CallbackConnector,
    Connector,
    ConnectorEnv,
    ConnectorError,
    ConnectorType,
    LoginRedirect,
    RefreshConnector,
    Scopes,
    TokenIdentityConnector,
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
    filter_allowed,
    groups_from_claim,
    http_url,
    pkce_pair,
    refresh_grant,
)
from portcullis.storage.models import Identity

__all__ = ["CONNECTOR_TYPE", "OIDCConfig", "OIDCConnector", "VerifiedLogin", "open_oidc"]

log = logging.getLogger(__name__)

#: Clock skew tolerated on exp / iat / nbf of upstream ID tokens.
CLOCK_SKEW_S = 60.0
#: Asymmetric JWS algorithms an upstream may sign ID tokens with. ``none`` and HMAC never: HMAC
#: with the client secret would let anyone holding the secret mint identities.
ASYMMETRIC_ALGS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
# Dex: providers known to reject client_secret_basic (dexidp/dex#859).
_BROKEN_BASIC_AUTH_DOMAINS = ("okta.com", "oktapreview.com")

_STRICT = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


# -- config ------------------------------------------------------------------------------------


class ProviderDiscoveryOverrides(BaseModel):
    """Endpoints that replace what discovery returned (Dex: providerDiscoveryOverrides)."""

    model_config = _STRICT

    token_url: str = Field("", alias="tokenURL")
    auth_url: str = Field("", alias="authURL")
    jwks_url: str = Field("", alias="jwksURL")
    user_info_url: str = Field("", alias="userInfoURL")
    # Newer Dex keys for features this issuer has no use for yet: refused, not ignored.
    device_auth_url: str = Field("", alias="deviceAuthURL")
    end_session_url: str = Field("", alias="endSessionURL")

    @model_validator(mode="after")
    def _check(self) -> ProviderDiscoveryOverrides:
        for name, value in (
            ("tokenURL", self.token_url),
            ("authURL", self.auth_url),
            ("jwksURL", self.jwks_url),
            ("userInfoURL", self.user_info_url),
        ):
            if value:
                http_url(value, name)
        if self.device_auth_url:
            raise ValueError(
                "deviceAuthURL is not supported: the oidc connector has no device flow"
            )
        if self.end_session_url:
            raise ValueError(
                "endSessionURL is not supported: upstream RP-initiated logout is not implemented"
            )
        return self

    @property
    def empty(self) -> bool:
        return not (self.token_url or self.auth_url or self.jwks_url or self.user_info_url)


class ClaimMapping(BaseModel):
    model_config = _STRICT

    preferred_username: str = Field("", alias="preferred_username")
    email: str = Field("", alias="email")
    groups: str = Field("", alias="groups")


class NewGroupFromClaims(BaseModel):
    model_config = _STRICT

    claims: list[str] = Field(min_length=1)
    delimiter: str = ""
    clear_delimiter: bool = Field(False, alias="clearDelimiter")
    prefix: str = ""


class FilterGroupClaims(BaseModel):
    model_config = _STRICT

    groups_filter: str = Field("", alias="groupsFilter")

    @field_validator("groups_filter")
    @classmethod
    def _compiles(cls, value: str) -> str:
        # Dex logs and ignores an invalid regex (letting every group through); refuse instead.
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"groupsFilter is not a valid regular expression: {exc}") from None
        return value


class ModifyGroupNames(BaseModel):
    model_config = _STRICT

    prefix: str = ""
    suffix: str = ""


class ClaimModifications(BaseModel):
    model_config = _STRICT

    new_group_from_claims: list[NewGroupFromClaims] = Field(
        default_factory=list, alias="newGroupFromClaims"
    )
    filter_group_claims: FilterGroupClaims = Field(
        default_factory=FilterGroupClaims,
        alias="filterGroupClaims",
    )
    modify_group_names: ModifyGroupNames = Field(
        default_factory=ModifyGroupNames, alias="modifyGroupNames"
    )


class OIDCConfig(BaseModel):
    """Dex's ``oidc`` connector config (connector/oidc/oidc.go, Dex 2.45 key names)."""

    model_config = _STRICT

    issuer: str
    issuer_alias: str = Field("", alias="issuerAlias")
    client_id: str = Field(alias="clientID", min_length=1)
    client_secret: SecretStr = Field(SecretStr(""), alias="clientSecret")
    redirect_uri: str = Field(alias="redirectURI")
    provider_discovery_overrides: ProviderDiscoveryOverrides = Field(
        default_factory=ProviderDiscoveryOverrides,
        alias="providerDiscoveryOverrides",
    )
    basic_auth_unsupported: bool | None = Field(None, alias="basicAuthUnsupported")
    scopes: list[str] = Field(default_factory=list)
    hosted_domains: list[str] = Field(default_factory=list, alias="hostedDomains")
    root_cas: list[str] = Field(default_factory=list, alias="rootCAs")
    insecure_skip_email_verified: bool = Field(False, alias="insecureSkipEmailVerified")
    insecure_enable_groups: bool = Field(False, alias="insecureEnableGroups")
    allowed_groups: list[str] = Field(default_factory=list, alias="allowedGroups")
    acr_values: list[str] = Field(default_factory=list, alias="acrValues")
    insecure_skip_verify: bool = Field(False, alias="insecureSkipVerify")
    get_user_info: bool = Field(False, alias="getUserInfo")
    user_id_key: str = Field("", alias="userIDKey")
    user_name_key: str = Field("", alias="userNameKey")
    prompt_type: str | None = Field(None, alias="promptType")
    pkce_challenge: Literal["", "S256", "plain"] = Field("", alias="pkceChallenge")
    override_claim_mapping: bool = Field(False, alias="overrideClaimMapping")
    claim_mapping: ClaimMapping = Field(
        default_factory=ClaimMapping,
        alias="claimMapping",
    )
    claim_modifications: ClaimModifications = Field(
        default_factory=ClaimModifications,
        alias="claimModifications",
    )

    @model_validator(mode="after")
    def _allowed_groups_need_groups(self) -> OIDCConfig:
        # Dex silently ignores allowedGroups without insecureEnableGroups, letting everyone in.
        if self.allowed_groups and not self.insecure_enable_groups:
            raise ValueError(
                "allowedGroups needs insecureEnableGroups: true (groups are only read from the "
                "provider then; without it every user would be let in)"
            )
        return self

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        return http_url(value, "issuer")

    @field_validator("issuer_alias")
    @classmethod
    def _issuer_alias(cls, value: str) -> str:
        return http_url(value, "issuerAlias") if value else value

    @field_validator("redirect_uri")
    @classmethod
    def _redirect(cls, value: str) -> str:
        return http_url(value, "redirectURI")

    @field_validator("root_cas")
    @classmethod
    def _root_cas(cls, value: list[str]) -> list[str]:
        return check_root_cas(value)

    @field_validator("hosted_domains")
    @classmethod
    def _hosted_domains(cls, value: list[str]) -> list[str]:
        if value:
            raise ValueError(
                "hostedDomains was removed from the oidc connector (as in Dex): "
                "use the google connector to restrict Google Workspace domains"
            )
        return value

    @field_validator("pkce_challenge")
    @classmethod
    def _pkce(cls, value: str) -> str:
        if value == "plain":
            raise ValueError(
                'pkceChallenge "plain" sends the verifier in the clear and is refused: use "S256" '
                "or leave it empty to use S256 when the provider supports it"
            )
        return value


# -- verification helpers ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Provider:
    """Discovered (and overridden) upstream endpoints."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str
    algorithms: tuple[str, ...]
    pkce_s256: bool


@dataclass(frozen=True)
class VerifiedLogin:
    """A finished upstream login: its tokens and the verified ID token's claims."""

    tokens: TokenResponse
    claims: dict[str, Any]
    #: The JWS algorithm the verified ID token was signed with (what a kube-apiserver trusting
    #: this provider must accept: ``--oidc-signing-algs``).
    algorithm: str

    def __repr__(self) -> str:  # never print tokens, not even in a traceback's locals
        return f"VerifiedLogin(claims={sorted(self.claims)!r})"


def _audiences(claims: Mapping[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return list(aud)
    raise ConnectorError("the identity provider's ID token has no valid audience")


def _number(claims: Mapping[str, Any], name: str, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise ConnectorError(f'the identity provider\'s ID token has no "{name}" claim')
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConnectorError(f'the identity provider\'s ID token has an invalid "{name}" claim')
    return float(value)


def _required_number(claims: Mapping[str, Any], name: str) -> float:
    value = _number(claims, name, True)
    assert value is not None  # _number raised otherwise
    return value


# -- the connector -----------------------------------------------------------------------------


class OIDCConnector(CallbackConnector, RefreshConnector, TokenIdentityConnector):
    """Logs users in through an upstream OpenID Connect provider."""

    def __init__(
        self,
        connector_id: str,
        name: str,
        connector_type: str,
        config: OIDCConfig,
        env: ConnectorEnv,
    ) -> None:
        super().__init__(connector_id, name, connector_type)
        if config.insecure_skip_verify:
            if env.fips_mode:
                # A ValueError naming the key: reported like a config error at open time.
                raise ValueError("insecureSkipVerify: refused in FIPS mode")
            log.warning(
                "connector %s: insecureSkipVerify is set, TLS certificates of %s are NOT "
                "verified; anyone on the network path can impersonate the identity provider",
                connector_id,
                config.issuer,
            )
        if not config.provider_discovery_overrides.empty:
            log.warning(
                "connector %s: providerDiscoveryOverrides are set; make sure they point at the "
                "same provider as the issuer",
                connector_id,
            )
        self._config = config
        self._clock = env.clock
        self._http = UpstreamHTTP(
            root_cas=config.root_cas, insecure_skip_verify=config.insecure_skip_verify
        )
        self._expected_issuer = config.issuer_alias or config.issuer
        scopes = ["openid", *(config.scopes or ["profile", "email"])]
        self._scopes = tuple(dict.fromkeys(scopes))
        if config.basic_auth_unsupported is not None:
            secret_in_body: bool | None = True if config.basic_auth_unsupported else None
        else:
            host = urlsplit(config.issuer).hostname or ""
            known_broken = any(
                host == d or host.endswith("." + d) for d in _BROKEN_BASIC_AUTH_DOMAINS
            )
            secret_in_body = True if known_broken else None
        self._credentials = ClientCredentials(
            config.client_id, config.client_secret.get_secret_value(), secret_in_body
        )
        groups_filter = config.claim_modifications.filter_group_claims.groups_filter
        self._groups_filter = re.compile(groups_filter) if groups_filter else None
        self._provider: _Provider | None = None
        self._discovery_lock = asyncio.Lock()
        self._jwks: KeySet | None = None
        self._flights = RefreshFlights(env.clock)
        # The FIPS provider of OpenSSL 3.0 has no EdDSA; every other allowed algorithm is
        # FIPS 186 (RSA PKCS#1 v1.5 and PSS, ECDSA on P-256/384/521).
        self._allowed_algs = tuple(
            a for a in ASYMMETRIC_ALGS if not (env.fips_mode and a == "EdDSA")
        )

    # -- discovery and keys --------------------------------------------------------------------
    async def _discover(self) -> _Provider:
        if self._provider is not None:
            return self._provider
        async with self._discovery_lock:
            if self._provider is None:
                self._provider = await self._fetch_discovery()
        return self._provider

    async def _fetch_discovery(self) -> _Provider:
        url = self._config.issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc = await self._http.get_json(url, what="discovery")
        overrides = self._config.provider_discovery_overrides
        if doc.get("issuer") != self._expected_issuer:
            log.warning(
                "connector %s: discovery issuer %r does not match the configured %r",
                self.id,
                doc.get("issuer"),
                self._expected_issuer,
            )
            raise ConnectorError("the identity provider's discovery document names another issuer")

        def endpoint(key: str, override: str, required: bool) -> str:
            value = override or doc.get(key) or ""
            if not isinstance(value, str) or (required and not value):
                raise ConnectorError(f"the identity provider's discovery document has no {key}")
            if value:
                try:
                    http_url(value, key)
                except ValueError:
                    raise ConnectorError(
                        f"the identity provider's discovery document has an invalid {key}"
                    ) from None
            return value

        advertised = doc.get("id_token_signing_alg_values_supported")
        if isinstance(advertised, list) and advertised:
            algorithms = tuple(a for a in advertised if a in self._allowed_algs)
        else:
            algorithms = ("RS256",)  # OIDC Discovery: RS256 MUST be supported
        if not algorithms:
            raise ConnectorError(
                "the identity provider signs ID tokens only with algorithms we refuse"
            )
        methods = doc.get("code_challenge_methods_supported")
        return _Provider(
            issuer=self._expected_issuer,
            authorization_endpoint=endpoint("authorization_endpoint", overrides.auth_url, True),
            token_endpoint=endpoint("token_endpoint", overrides.token_url, True),
            jwks_uri=endpoint("jwks_uri", overrides.jwks_url, True),
            userinfo_endpoint=endpoint("userinfo_endpoint", overrides.user_info_url, False),
            algorithms=algorithms,
            pkce_s256=isinstance(methods, list) and "S256" in methods,
        )

    async def _fetch_jwks(self, provider: _Provider) -> KeySet:
        doc = await self._http.get_json(provider.jwks_uri, what="key set (JWKS)")
        keys = doc.get("keys")
        if not isinstance(keys, list):
            raise ConnectorError("the identity provider's key set (JWKS) is malformed")
        usable: list[RSAKey | ECKey | OKPKey] = []
        for entry in keys:
            # Keys we cannot use (encryption keys, unknown types or curves) are skipped, not
            # fatal: providers publish such keys next to their signing keys.
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            try:
                key = import_key(entry)
            except (JoseError, ValueError, TypeError, KeyError):
                continue
            if isinstance(key, RSAKey | ECKey | OKPKey):
                usable.append(key)
        key_set = KeySet(list(usable))
        self._jwks = key_set
        return key_set

    @staticmethod
    def _pick_key(key_set: KeySet, kid: str | None, alg: str) -> RSAKey | ECKey | OKPKey | None:
        kty = "OKP" if alg == "EdDSA" else {"RS": "RSA", "PS": "RSA", "ES": "EC"}[alg[:2]]
        for key in key_set.keys:
            if not isinstance(key, RSAKey | ECKey | OKPKey) or key.key_type != kty:
                continue
            if kid is not None and key.kid != kid:
                continue
            key_alg = key.get("alg")
            if key_alg and key_alg != alg:
                continue
            return key
        return None

    async def _verify_id_token(
        self, provider: _Provider, raw: str, *, nonce: str | None
    ) -> dict[str, Any]:
        """Claims of a fully verified upstream ID token; ``nonce`` None skips the nonce check
        (refreshed ID tokens, OIDC Core §12.2)."""
        try:
            header = jws.extract_compact(raw.encode()).protected
        except (JoseError, ValueError, UnicodeError):
            raise ConnectorError("the identity provider's ID token is malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in provider.algorithms:
            raise ConnectorError(
                f"the identity provider's ID token uses a refused algorithm ({str(alg)[:16]})"
            )
        kid = header.get("kid")
        kid = kid if isinstance(kid, str) else None
        key = None
        if self._jwks is not None:
            key = self._pick_key(self._jwks, kid, alg)
        if key is None:  # first use, or the provider rolled its keys: refetch once
            key = self._pick_key(await self._fetch_jwks(provider), kid, alg)
        if key is None:
            raise ConnectorError("the identity provider's ID token is signed by an unknown key")
        try:
            token = jwt.decode(raw, key, algorithms=[alg])
        except Exception as exc:  # JoseError, or the crypto backend refusing the key: never a 500
            log.warning(
                "connector %s: upstream ID token signature check failed (%s)",
                self.id,
                type(exc).__name__,
            )
            raise ConnectorError(
                "the identity provider's ID token has an invalid signature"
            ) from None
        claims = dict(token.claims)
        self._check_claims(provider, claims, nonce)
        return claims

    def _check_claims(
        self, provider: _Provider, claims: Mapping[str, Any], nonce: str | None
    ) -> None:
        if claims.get("iss") != provider.issuer:
            raise ConnectorError("the identity provider's ID token has the wrong issuer")
        audiences = _audiences(claims)
        client_id = self._config.client_id
        if client_id not in audiences:
            raise ConnectorError("the identity provider's ID token was issued to another client")
        azp = claims.get("azp")
        if (len(audiences) > 1 or azp is not None) and azp != client_id:
            raise ConnectorError(
                "the identity provider's ID token was authorized for another party (azp)"
            )
        now = self._clock.now()
        exp = _required_number(claims, "exp")
        iat = _required_number(claims, "iat")
        nbf = _number(claims, "nbf", False)
        if now > exp + CLOCK_SKEW_S:
            raise ConnectorError("the identity provider's ID token has expired")
        if iat > now + CLOCK_SKEW_S or (nbf is not None and nbf > now + CLOCK_SKEW_S):
            raise ConnectorError("the identity provider's ID token is not valid yet")
        if nonce is not None and claims.get("nonce") != nonce:
            log.warning("connector %s: upstream ID token nonce mismatch", self.id)
            raise ConnectorError("the identity provider's ID token does not belong to this login")

    # -- login ---------------------------------------------------------------------------------
    async def login_url(self, scopes: Scopes, callback_url: str, state: str) -> LoginRedirect:
        if callback_url != self._config.redirect_uri:
            raise ConnectorError(
                f"the callback URL {callback_url} does not match this connector's redirectURI"
            )
        provider = await self._discover()
        nonce = _random_token()
        extra = {"nonce": nonce}
        if self._config.acr_values:
            extra["acr_values"] = " ".join(self._config.acr_values)
        if scopes.offline_access:
            extra["access_type"] = "offline"
            prompt = "consent" if self._config.prompt_type is None else self._config.prompt_type
            extra["prompt"] = prompt
        data = {"nonce": nonce}
        if self._config.pkce_challenge == "S256" or (
            not self._config.pkce_challenge and provider.pkce_s256
        ):
            verifier, challenge = pkce_pair()
            extra["code_challenge"] = challenge
            extra["code_challenge_method"] = "S256"
            data["verifier"] = verifier
        url = authorization_url(
            provider.authorization_endpoint,
            client_id=self._config.client_id,
            redirect_uri=self._config.redirect_uri,
            scopes=self._scopes,
            state=state,
            extra=extra,
        )
        return LoginRedirect(url, connector_state=encode_state(data))

    async def handle_callback(
        self, scopes: Scopes, params: Mapping[str, str], connector_state: bytes
    ) -> Identity:
        login = await self.redeem(params, connector_state)
        provider = await self._discover()
        return await self._identity(
            provider, login.tokens, login.claims, previous=None, keep_data=scopes.offline_access
        )

    async def redeem(self, params: Mapping[str, str], connector_state: bytes) -> VerifiedLogin:
        """The callback's code exchanged and the ID token fully verified (signature through
        the JWKS, ``iss``, ``aud``, ``azp``, times, this login's nonce), nothing mapped. The
        login's own step, and what the kubeconfig page uses when a cluster trusts another
        issuer: there the raw tokens are the product, and one verification serves both."""
        error = callback_error(params)
        if error is not None:
            raise error
        code = params.get("code", "")
        if not code:
            raise ConnectorError("the identity provider sent no authorization code")
        data = decode_state(connector_state, "login state")
        nonce = data.get("nonce", "")
        if not nonce:
            raise ConnectorError("the stored login state is unreadable; please log in again")
        provider = await self._discover()
        iss = params.get("iss")
        if iss is not None and iss != provider.issuer:  # RFC 9207 mix-up defence
            raise ConnectorError("the login answer came from another identity provider")
        tokens = await exchange_code(
            self._http,
            provider.token_endpoint,
            self._credentials,
            code=code,
            redirect_uri=self._config.redirect_uri,
            code_verifier=data.get("verifier", ""),
        )
        if not tokens.id_token:
            raise ConnectorError("the identity provider returned no ID token")
        claims = await self._verify_id_token(provider, tokens.id_token, nonce=nonce)
        # The header parsed cleanly and its alg was checked against the allow-list just now.
        algorithm = str(jws.extract_compact(tokens.id_token.encode()).protected["alg"])
        return VerifiedLogin(tokens, claims, algorithm)

    # -- refresh -------------------------------------------------------------------------------
    async def refresh(self, scopes: Scopes, identity: Identity) -> Identity:
        data = decode_state(identity.connector_data, "session data")
        refresh_token = data.get("rt", "")
        if not refresh_token:
            raise ConnectorError(
                "the identity provider issued no refresh token for this session "
                "(request offline_access upstream through the connector's scopes)"
            )

        async def work() -> Identity:
            provider = await self._discover()
            tokens = await refresh_grant(
                self._http, provider.token_endpoint, self._credentials, refresh_token
            )
            if not tokens.refresh_token:  # no rotation: keep using the same one
                tokens = replace(tokens, refresh_token=refresh_token)
            claims: dict[str, Any] = {}
            if tokens.id_token:
                claims = await self._verify_id_token(provider, tokens.id_token, nonce=None)
            # A refreshed session stays refreshable even if this request narrowed its scopes.
            return await self._identity(provider, tokens, claims, previous=identity, keep_data=True)

        return await self._flights.run(refresh_token, work)

    # -- token exchange (RFC 8693) -------------------------------------------------------------
    async def token_identity(self, subject_token_type: str, subject_token: str) -> Identity:
        """An upstream ID token is verified exactly like a login's (signature through the
        JWKS, allowed algorithm, ``iss``, ``aud`` containing our ``clientID``, ``azp``, times;
        no nonce: nobody asked for this token through us). Dex skips the audience check here;
        we do not, so a token minted for another relying party of the same upstream cannot be
        replayed at this issuer: mint workload tokens for the connector's ``clientID`` (e.g.
        ``kubectl create token SA --audience CLIENT_ID``). An upstream access token is proved
        by the upstream's userinfo endpoint accepting it, so it needs ``getUserInfo``, as in
        Dex."""
        provider = await self._discover()
        no_tokens = TokenResponse(
            access_token="", token_type="", refresh_token="", id_token="", raw={}
        )
        if subject_token_type == ID_TOKEN_TYPE:
            claims = await self._verify_id_token(provider, subject_token, nonce=None)
            return await self._identity(
                provider, no_tokens, claims, previous=None, keep_data=False, userinfo=False
            )
        if subject_token_type == ACCESS_TOKEN_TYPE:
            if not self._config.get_user_info:
                raise ConnectorError(
                    "this connector cannot verify access tokens (set getUserInfo: true)"
                )
            bearer = replace(no_tokens, access_token=subject_token, token_type="Bearer")  # noqa: S106
            return await self._identity(
                provider, bearer, {}, previous=None, keep_data=False, userinfo=True
            )
        raise ConnectorError(f"unsupported subject token type {subject_token_type[:64]!r}")

    # -- claims -> identity --------------------------------------------------------------------
    async def _identity(
        self,
        provider: _Provider,
        tokens: TokenResponse,
        id_claims: dict[str, Any],
        previous: Identity | None,
        keep_data: bool,
        userinfo: bool | None = None,
    ) -> Identity:
        """Dex's createIdentity: claims (ID token, then userinfo over them) to an Identity.
        ``userinfo`` overrides whether userinfo is asked (token exchange decides itself)."""
        config = self._config
        claims = dict(id_claims)
        use_userinfo = config.get_user_info or (previous is not None and not id_claims)
        if userinfo is not None:
            use_userinfo = userinfo
        if use_userinfo:
            if not provider.userinfo_endpoint:
                if previous is not None and not config.get_user_info:
                    return _with_data(previous, tokens.refresh_token, _sub_of(previous))
                raise ConnectorError("the identity provider has no userinfo endpoint")
            info = await self._http.get_json(
                provider.userinfo_endpoint, what="userinfo", bearer=tokens.access_token
            )
            if id_claims and info.get("sub") != id_claims.get("sub"):
                raise ConnectorError("the identity provider's userinfo is for another user")
            claims.update(info)
        subject = claim_str(claims, "sub")
        if not subject:
            raise ConnectorError('the identity provider sent no "sub" claim')
        if previous is not None and _sub_of(previous) not in ("", subject):
            raise ConnectorError("the identity provider refreshed a different user")
        name_key = config.user_name_key or "name"
        name = claim_str(claims, name_key)
        if name is None:
            raise ConnectorError(f'the identity provider sent no "{name_key}" claim')
        override = config.override_claim_mapping
        mapping = config.claim_mapping

        preferred = claim_str(claims, "preferred_username")
        if (preferred is None or override) and mapping.preferred_username:
            preferred = claim_str(claims, mapping.preferred_username)

        has_email_scope = "email" in self._scopes
        email_key = "email"
        email = claim_str(claims, email_key)
        if (email is None or override) and mapping.email:
            email_key = mapping.email
            email = claim_str(claims, email_key)
        if email is None and has_email_scope:
            raise ConnectorError(f'the identity provider sent no "{email_key}" claim')

        verified = claims.get("email_verified")
        if not isinstance(verified, bool):
            if config.insecure_skip_email_verified:
                verified = True
            elif has_email_scope:
                raise ConnectorError('the identity provider sent no "email_verified" claim')
            else:
                verified = False

        groups = self._groups(claims) if config.insecure_enable_groups else []
        mods = config.claim_modifications
        prefix, suffix = mods.modify_group_names.prefix, mods.modify_group_names.suffix
        if prefix or suffix:
            groups = [f"{prefix}{g}{suffix}" for g in groups]
        for rule in mods.new_group_from_claims:
            segments = [rule.prefix]
            for claim_name in rule.claims:
                value = claim_str(claims, claim_name)
                if value is None:  # Dex: non-string claims are skipped
                    continue
                if rule.clear_delimiter:
                    value = value.replace(rule.delimiter, "")
                segments.append(value)
            if len(segments) > 1:
                groups.append(rule.delimiter.join(segments))

        user_id = subject
        if config.user_id_key:
            custom = claim_str(claims, config.user_id_key)
            if custom is None:
                raise ConnectorError(f'the identity provider sent no "{config.user_id_key}" claim')
            user_id = custom
        return Identity(
            user_id=user_id,
            username=name,
            preferred_username=preferred or "",
            email=email or "",
            email_verified=verified,
            groups=tuple(groups),
            # What refresh needs, and only for sessions that can be refreshed.
            connector_data=(
                encode_state({"rt": tokens.refresh_token, "sub": subject}) if keep_data else b""
            ),
        )

    def _groups(self, claims: Mapping[str, Any]) -> list[str]:
        config = self._config
        key = "groups"
        found = isinstance(claims.get(key), list)
        if (not found or config.override_claim_mapping) and config.claim_mapping.groups:
            key = config.claim_mapping.groups
        groups = groups_from_claim(claims.get(key), key)
        if self._groups_filter is not None:
            groups = [g for g in groups if self._groups_filter.search(g)]
        if config.allowed_groups:
            groups = filter_allowed(groups, config.allowed_groups)
            if not groups:
                raise ConnectorError("you are not a member of a group allowed to log in here")
        return groups


def _random_token() -> str:
    return secrets.token_urlsafe(32)


def _sub_of(identity: Identity) -> str:
    try:
        return decode_state(identity.connector_data, "session data").get("sub", "")
    except ConnectorError:
        return ""


def _with_data(identity: Identity, refresh_token: str, subject: str) -> Identity:
    return replace(identity, connector_data=encode_state({"rt": refresh_token, "sub": subject}))


def open_oidc(
    connector_id: str, name: str, connector_type: str, config: BaseModel, env: ConnectorEnv
) -> Connector:
    """Build the connector; no network here (discovery happens at first use)."""
    assert isinstance(config, OIDCConfig)
    return OIDCConnector(connector_id, name, connector_type, config, env)


CONNECTOR_TYPE = ConnectorType(OIDCConfig, open_oidc)
