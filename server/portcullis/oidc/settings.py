"""Protocol settings resolved once from the config (no per-request config parsing)."""

from __future__ import annotations

from dataclasses import dataclass

from portcullis.config.load import Config
from portcullis.storage.models import Client

# Grants only a client that authenticates may use.
_CONFIDENTIAL_ONLY_GRANTS = ("client_credentials", "password")


@dataclass(frozen=True)
class RefreshPolicy:
    disable_rotation: bool
    reuse_interval: float
    valid_if_not_used_for: float
    absolute_lifetime: float


@dataclass(frozen=True)
class ProtocolSettings:
    issuer: str
    id_token_ttl: float
    auth_request_ttl: float
    auth_code_ttl: float
    device_request_ttl: float
    refresh: RefreshPolicy
    grant_types: tuple[str, ...]
    response_types: tuple[str, ...]
    pkce_enforce: bool
    pkce_methods: tuple[str, ...]
    skip_approval: bool
    always_show_login: bool
    password_connector: str
    throttle_per_user: int
    throttle_per_ip: int
    throttle_window: float
    throttle_user_delay: float
    throttle_max_user_delay: float
    fips_mode: bool
    # Static clients with introspectAnyToken: they may introspect any client's access tokens.
    introspectors: frozenset[str] = frozenset()
    # The issuer identifier as configured (``iss``, discovery's ``issuer``); ``issuer`` above is
    # the endpoint base. They differ only by a trailing "/" (Config.issuer_id).
    issuer_id: str = ""

    @property
    def token_issuer(self) -> str:
        return self.issuer_id or self.issuer

    @classmethod
    def from_config(cls, config: Config, *, fips_mode: bool) -> ProtocolSettings:
        raw = config.raw
        refresh = raw.expiry.refresh_tokens
        throttle = raw.web.password_throttle
        return cls(
            issuer=config.issuer,
            id_token_ttl=raw.expiry.id_tokens,
            auth_request_ttl=raw.expiry.auth_requests,
            auth_code_ttl=raw.expiry.auth_codes,
            device_request_ttl=raw.expiry.device_requests,
            refresh=RefreshPolicy(
                disable_rotation=refresh.disable_rotation,
                reuse_interval=refresh.reuse_interval,
                valid_if_not_used_for=refresh.valid_if_not_used_for,
                absolute_lifetime=refresh.absolute_lifetime,
            ),
            grant_types=raw.oauth2.enabled_grant_types(),
            response_types=tuple(raw.oauth2.response_types),
            pkce_enforce=raw.oauth2.pkce.enforce,
            pkce_methods=tuple(raw.oauth2.pkce.code_challenge_methods_supported),
            skip_approval=raw.oauth2.skip_approval_screen,
            always_show_login=raw.oauth2.always_show_login_screen,
            password_connector=raw.oauth2.password_connector,
            throttle_per_user=throttle.max_failures_per_user,
            throttle_per_ip=throttle.max_failures_per_ip,
            throttle_window=throttle.window,
            throttle_user_delay=throttle.user_delay,
            throttle_max_user_delay=throttle.max_user_delay,
            fips_mode=fips_mode,
            introspectors=frozenset(c.id for c in config.clients if c.introspect_any_token),
            issuer_id=config.issuer_id,
        )

    def client_grants(self, client: Client) -> tuple[str, ...]:
        """Grants this client may use: its own ``grantTypes`` (if any) within the server's,
        as in Dex master; without a list, the server's.

        Public clients never get ``password`` (RFC 9700 §2.4: the grant MUST NOT be used; a
        public client cannot even prove who is asking) nor ``client_credentials`` (no
        credentials), whatever their list says.
        """
        listed = client.grant_types or self.grant_types
        confidential_only = _CONFIDENTIAL_ONLY_GRANTS if client.public else ()
        return tuple(g for g in listed if g in self.grant_types and g not in confidential_only)

    def client_response_types(self, client: Client) -> tuple[str, ...]:
        if client.response_types:
            return tuple(t for t in client.response_types if t in self.response_types)
        return self.response_types

    def id_token_ttl_for(self, client: Client) -> float:
        return client.id_token_ttl or self.id_token_ttl

    def max_token_lifetime(self, clients: list[Client]) -> float:
        return max([self.id_token_ttl, *(c.id_token_ttl or 0 for c in clients)])
