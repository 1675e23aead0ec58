"""The configuration schema, in Dex's YAML format (camelCase keys).

Every Dex 2.45 key is either implemented here or rejected with a message naming its YAML path:
Portcullis never ignores a setting silently. Portcullis-only settings are marked as such in
docs/configuration.md.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import ssl
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from portcullis.config.durations import parse_duration

# --------------------------------------------------------------------------------------------
# Reusable field types
# --------------------------------------------------------------------------------------------


def _duration(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, int | float):
        # A bare number is ambiguous in Dex's format; demand a unit.
        raise ValueError(f"not a duration: {value!r} (add a unit, e.g. '{value}s')")
    if not isinstance(value, str):
        raise ValueError("not a duration")
    return parse_duration(value)


Duration = Annotated[float, BeforeValidator(_duration)]


def _absolute_url(value: str) -> str:
    parts = urlsplit(value)
    if not parts.scheme or not parts.netloc:
        raise ValueError("not an absolute URL")
    return value


def _http_url(value: str) -> str:
    parts = urlsplit(_absolute_url(value))
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http or https URL")
    return value


#: Schemes a browser would run or read locally instead of navigating to: a code or token sent
#: there is handed to script or the file system, never to the client.
_DANGEROUS_SCHEMES = ("javascript", "data", "file", "vbscript", "blob", "about")


def _redirect_uri(value: str) -> str:
    # Matching is exact (RFC 9700 §4.1.3), so a URI that means something else to the browser
    # than to the matcher is refused here, once, rather than trusted at every login.
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in value) or "\\" in value:
        raise ValueError("must not contain spaces, control characters or backslashes")
    parts = urlsplit(value)
    if parts.scheme.lower() in _DANGEROUS_SCHEMES:
        raise ValueError(f"the {parts.scheme.lower()}: scheme is not allowed for a redirect URI")
    if parts.fragment:
        raise ValueError("must not contain a fragment (RFC 6749 §3.1.2)")
    # Dex allows the out-of-band URN and the device callback as a path: Dex's own constant
    # (`/device/callback`) or the same under the issuer path (Dex's examples write
    # `/dex/device/callback`); config.load checks the prefix against the issuer.
    if value == "urn:ietf:wg:oauth:2.0:oob" or is_device_callback_path(value):
        return value
    if value.startswith("/"):
        raise ValueError(
            "a relative redirect URI is only accepted for the device callback "
            "('/device/callback' or '<issuer path>/device/callback', as in Dex)"
        )
    _absolute_url(value)
    if "*" in value:
        raise ValueError("wildcards are not supported: redirect URIs are matched exactly")
    if "@" in parts.netloc:
        raise ValueError("must not contain userinfo (user@host): it disguises the real host")
    try:
        parts.port  # noqa: B018 - raises on a port outside 0..65535 or not a number
    except ValueError:
        raise ValueError("has an invalid port") from None
    return value


DEVICE_CALLBACK_PATH = "/device/callback"


def is_device_callback_path(value: str) -> bool:
    """A relative device-callback redirect URI (the prefix is checked against the issuer)."""
    return value.startswith("/") and value.endswith(DEVICE_CALLBACK_PATH) and "?" not in value


def _listen_address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("not a listen address (use host:port, e.g. 127.0.0.1:5556)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host and host not in ("localhost",):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not all(part.isalnum() or "-" in part for part in host.split(".")):
                raise ValueError("not a listen address (use host:port)") from None
    return value


def _cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError("not an IP address or CIDR range") from None
    return value


def _resource_uri(value: str) -> str:
    """RFC 8707 §2: an absolute URI without a fragment (the access token's ``aud``)."""
    if not value or any(ch.isspace() for ch in value):
        raise ValueError("must be an absolute URI without spaces")
    parts = urlsplit(value)
    if not parts.scheme or not (parts.netloc or parts.path):
        raise ValueError("must be an absolute URI (e.g. https://mcp.example.com)")
    if "#" in value:
        raise ValueError("must not contain a fragment")
    return value


HttpURL = Annotated[str, AfterValidator(_http_url)]
ResourceURI = Annotated[str, AfterValidator(_resource_uri)]
RedirectURI = Annotated[str, AfterValidator(_redirect_uri)]
ListenAddress = Annotated[str, AfterValidator(_listen_address)]
CIDR = Annotated[str, AfterValidator(_cidr)]


def _version_text(value: object) -> object:
    # Go's YAML decoder turns an unquoted 1.2 into the string "1.2"; do the same.
    return str(value) if isinstance(value, float) else value


TLSVersion = Annotated[Literal["1.2", "1.3"], BeforeValidator(_version_text)]
GrantType = Literal[
    "authorization_code",
    "refresh_token",
    "password",
    "client_credentials",
    "implicit",
    "urn:ietf:params:oauth:grant-type:device_code",
    "urn:ietf:params:oauth:grant-type:token-exchange",
]
ResponseType = Literal["code", "token", "id_token"]
SigningAlgorithm = Literal["RS256", "PS256", "ES256", "ES384"]

# S256 only unless an operator opts into plain (RFC 9700 §2.1.1: plain protects nothing once the
# authorization request leaks); Dex's default also lists plain.
_PKCE_METHODS: tuple[Literal["S256", "plain"], ...] = ("S256",)
_CODE_ONLY: tuple[ResponseType, ...] = ("code",)

#: The RFC 8628 device grant and the RFC 8693 token-exchange grant (Dex's names).
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
SUPPORTED_GRANT_TYPES = (
    "authorization_code",
    "refresh_token",
    "password",
    "client_credentials",
    DEVICE_CODE_GRANT,
    TOKEN_EXCHANGE_GRANT,
)


class Section(BaseModel):
    """Base for every config section: camelCase keys, unknown keys rejected, immutable."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        str_strip_whitespace=False,
        defer_build=True,
    )


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


class StorageSection(Section):
    # Validated against STORAGE_TYPES (below), the one list of storage type names.
    type: str
    config: dict[str, Any] = Field(default_factory=dict)

    @field_validator("type", mode="before")
    @classmethod
    def _known(cls, value: object) -> object:
        known = (*STORAGE_TYPES, *DEX_ONLY_STORAGE_TYPES)
        if value not in known:
            quoted = [repr(name) for name in known]
            raise ValueError(f"must be {', '.join(quoted[:-1])} or {quoted[-1]}")
        return value

    @model_validator(mode="after")
    def _check_backend(self) -> StorageSection:
        if self.type in DEX_ONLY_STORAGE_TYPES:
            raise ValueError(
                f"storage type {self.type!r} is not supported by this Portcullis version "
                f"(supported: {', '.join(STORAGE_TYPES)})"
            )
        return self

    def backend_config(self) -> Section | None:
        """``storage.config`` validated by its backend's model (None for a backend without
        settings); raises pydantic's ValidationError."""
        model = STORAGE_TYPES[self.type]
        return None if model is None else model.model_validate(self.config)


class SQLiteConfig(Section):
    file: str = Field(min_length=1)
    # Portcullis-only. FULL (default) fsyncs every commit, so a consumed code or a revocation
    # survives power loss; NORMAL (WAL) survives process crashes only and writes ~3x faster.
    synchronous: Literal["FULL", "NORMAL"] = "FULL"


PostgresSSLMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


class PostgresSSL(Section):
    """Dex's ``storage.config.ssl`` for postgres (key names and default as Dex)."""

    # Dex assumes the strictest mode when none is given; so do we.
    mode: PostgresSSLMode = "verify-full"
    # Empty with verify-full: the system trust store (as Dex's Go driver does).
    ca_file: str = ""
    key_file: str = ""
    cert_file: str = ""

    @model_validator(mode="after")
    def _check_files(self) -> PostgresSSL:
        if bool(self.key_file) != bool(self.cert_file):
            raise ValueError("keyFile and certFile must be given together (client certificate)")
        if self.mode == "verify-ca" and not self.ca_file:
            # libpq trusts the system store only with verify-full, which also checks the name.
            raise ValueError("mode verify-ca needs caFile (or use verify-full with system CAs)")
        return self


class PostgresConfig(Section):
    """Dex's postgres storage settings. Times are whole seconds, as in Dex."""

    # A unix-socket directory, a name/address, or "host:port" (Dex's backwards-compatible form).
    host: str = ""
    port: int = Field(default=5432, ge=0, le=65535)  # 0: the default, as in Dex
    # Optional as in Dex, which leaves them out of the connection string when empty: libpq's
    # defaults apply (PGDATABASE/PGUSER, else the user the process runs as; the database named
    # like the user).
    database: str = ""
    user: str = ""
    # Never logged or echoed in errors; usually "$DB_PASSWORD" (expanded from the environment).
    password: SecretStr = SecretStr("")
    ssl: PostgresSSL = Field(default_factory=PostgresSSL)
    # 0 (Dex's default) means Portcullis's bounded default, so a dead database never hangs
    # start-up or the readiness probe forever (Dex would wait for the OS TCP timeout).
    connection_timeout: int = Field(default=0, ge=0)
    # Go database/sql pool tunables in Dex; 0 means Dex's default: 5 open, 5 idle, connections
    # never recycled. More idle than open connections is capped, as Go does.
    max_open_conns: int = Field(default=0, ge=0)
    max_idle_conns: int = Field(default=0, ge=0)
    conn_max_lifetime: int = Field(default=0, ge=0)


#: The storage types this version serves, each with the model of its ``storage.config`` (None:
#: the backend takes no settings: memory). The one list of storage names: the storage factory
#: picks a backend by the type of the resolved settings, never by name.
STORAGE_TYPES: dict[str, type[Section] | None] = {
    "memory": None,
    "sqlite3": SQLiteConfig,
    "postgres": PostgresConfig,
}
#: Dex storage types refused with a clear error rather than an "unknown type" one.
DEX_ONLY_STORAGE_TYPES = ("mysql", "etcd", "kubernetes")


#: The length of a storage sealing key (AES-256), given as base64.
SEALING_KEY_BYTES = 32


def _sealing_key(value: SecretStr) -> SecretStr:
    """32 random bytes in base64; the message never quotes the value (it is a secret)."""
    text = value.get_secret_value().strip()
    if not text:
        raise ValueError("is empty (an environment variable that is not set?)")
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != SEALING_KEY_BYTES:
        raise ValueError(
            f"must be {SEALING_KEY_BYTES} random bytes in base64 (`openssl rand -base64 32`)"
        )
    return value


SealingKeyText = Annotated[SecretStr, AfterValidator(_sealing_key)]


class StorageSealingSection(Section):
    """Portcullis-only top-level key: the key that seals connector data (upstream access and
    refresh tokens) in SQL storage (``storage.sealing``). Without it, sqlite3 uses a key file
    it creates beside the database; postgres stores connector data unsealed, with a warning."""

    # The current key, base64; usually "$PORTCULLIS_SEALING_KEY" (expanded from the
    # environment, like storage.config). Seals every write and opens what it sealed.
    key: SealingKeyText | None = None
    # Or a file holding it (a mounted Kubernetes Secret).
    key_file: str = ""
    # Older keys, still accepted for reading after a rotation.
    previous_keys: list[SealingKeyText] = Field(default_factory=list)
    previous_key_files: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_current_key(self) -> StorageSealingSection:
        if self.key is not None and self.key_file:
            raise ValueError("give the current key as key or keyFile, not both")
        if not self.configured and (self.previous_keys or self.previous_key_files):
            raise ValueError(
                "previousKeys/previousKeyFiles need a current key (key or keyFile) to seal with"
            )
        return self

    @property
    def configured(self) -> bool:
        return self.key is not None or bool(self.key_file)


class ClientRemoteIP(Section):
    header: str = ""
    trusted_proxies: list[CIDR] = Field(default_factory=list)


class SecurityHeaders(BaseModel):
    """Response headers, keyed by header name exactly as Dex's config writes them."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    content_security_policy: str | None = Field(None, alias="Content-Security-Policy")
    x_frame_options: str | None = Field(None, alias="X-Frame-Options")
    x_content_type_options: str | None = Field(None, alias="X-Content-Type-Options")
    x_xss_protection: str | None = Field(None, alias="X-XSS-Protection")
    strict_transport_security: str | None = Field(None, alias="Strict-Transport-Security")


class PasswordThrottle(Section):
    """Portcullis-only: limits on password attempts inside a sliding window (the policy is in
    ``oidc/throttle.py`` and docs/configuration.md). ``maxFailuresPerUser`` is a hard limit
    per (user, client address) and, for the user from every address together, where the
    progressive delay (``userDelay`` doubling up to ``maxUserDelay``) starts: a stranger's
    guesses never lock the owner out."""

    max_failures_per_user: int = Field(5, ge=1)
    max_failures_per_ip: int = Field(20, ge=1, alias="maxFailuresPerIP")
    window: Duration = 900.0
    user_delay: Duration = Field(1.0, gt=0)
    max_user_delay: Duration = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _check_delays(self) -> PasswordThrottle:
        if self.max_user_delay < self.user_delay:
            raise ValueError(
                "web.passwordThrottle.maxUserDelay is shorter than web.passwordThrottle.userDelay"
            )
        return self


class ConnectionTimeouts(Section):
    """Portcullis-only: how long a client may take, so slow clients cannot hold connections
    (slowloris). Dex (Go's net/http with no timeouts set) has none."""

    #: No request on an open connection (a new one, or kept alive after a response).
    idle: Duration = 15.0
    #: From a request's first byte until its last header line.
    read_header: Duration = 10.0
    #: From the end of the headers until the last byte of the body.
    read_body: Duration = 30.0

    @field_validator("idle", "read_header", "read_body")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0 or value > 3600:
            raise ValueError("must be between 1s and 1h")
        return value


class RequestLimits(Section):
    """Portcullis-only: bounds on what one request may make the server hold."""

    #: Header lines per request (431 above).
    max_headers: int = Field(100, ge=10, le=1000)
    #: Bytes of one header line, name and value (431 above).
    max_header_line_bytes: int = Field(8192, ge=1024, le=65536)
    #: Bytes of the request line and all header lines together (431 above).
    max_header_bytes: int = Field(16384, ge=4096, le=262144)
    #: Logins (stored authorization requests) one client IP may start per window (429 above).
    pending_auth_requests_per_ip: int = Field(200, ge=1, alias="pendingAuthRequestsPerIP")
    pending_auth_requests_window: Duration = 600.0


class WebSection(Section):
    http: ListenAddress | None = None
    https: ListenAddress | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_min_version: TLSVersion | None = None
    tls_max_version: TLSVersion | None = None
    allowed_origins: list[str] = Field(default_factory=list)
    allowed_headers: list[str] = Field(default_factory=list)
    client_remote_ip: ClientRemoteIP = Field(
        default_factory=lambda: ClientRemoteIP(), alias="clientRemoteIP"
    )
    headers: SecurityHeaders = Field(default_factory=lambda: SecurityHeaders())
    password_throttle: PasswordThrottle = Field(default_factory=lambda: PasswordThrottle())
    timeouts: ConnectionTimeouts = Field(default_factory=lambda: ConnectionTimeouts())
    limits: RequestLimits = Field(default_factory=lambda: RequestLimits())

    @model_validator(mode="after")
    def _check_listeners(self) -> WebSection:
        if not self.http and not self.https:
            raise ValueError("one of web.http or web.https is required")
        if self.https and not (self.tls_cert and self.tls_key):
            raise ValueError("web.https needs web.tlsCert and web.tlsKey")
        if (
            self.tls_min_version
            and self.tls_max_version
            and self.tls_min_version > self.tls_max_version
        ):
            raise ValueError("web.tlsMinVersion is greater than web.tlsMaxVersion")
        return self


class TelemetrySection(Section):
    http: ListenAddress | None = None
    enable_profiling: Literal[False] = False


class GRPCSection(Section):
    """The Dex-compatible gRPC admin API (docs/admin-api.md)."""

    addr: ListenAddress | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = Field(None, alias="tlsClientCA")
    tls_min_version: TLSVersion | None = None
    tls_max_version: TLSVersion | None = None
    reflection: bool = False
    # Portcullis-only: serve the admin API without TLS on a non-loopback address. The API can
    # create clients and users, so the default refuses that.
    allow_insecure: bool = False

    @model_validator(mode="after")
    def _secure(self) -> GRPCSection:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tlsCert and tlsKey must be set together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("tlsClientCA (mutual TLS) needs tlsCert and tlsKey")
        # grpcio has no setting for TLS versions: its TLS stack always offers 1.2 and 1.3.
        if self.tls_min_version == "1.3":
            raise ValueError(
                "tlsMinVersion 1.3 cannot be enforced by the gRPC server (grpcio always offers "
                "TLS 1.2 and 1.3); remove it or set 1.2"
            )
        if self.tls_max_version == "1.2":
            raise ValueError(
                "tlsMaxVersion 1.2 cannot be enforced by the gRPC server (grpcio always offers "
                "TLS 1.2 and 1.3); remove it or set 1.3"
            )
        if (
            self.addr
            and not self.tls_cert
            and not self.allow_insecure
            and not _is_loopback_address(self.addr)
        ):
            raise ValueError(
                f"refusing to serve the admin API on {self.addr} without TLS: set tlsCert and "
                "tlsKey (and tlsClientCA for client certificates), listen on a loopback "
                "address, or set allowInsecure: true (Portcullis-only) if the network is "
                "protected some other way"
            )
        return self


class RefreshTokenExpiry(Section):
    disable_rotation: bool = False
    reuse_interval: Duration = 3.0
    valid_if_not_used_for: Duration = 0.0  # 0 = no idle limit (Dex default)
    absolute_lifetime: Duration = 0.0  # 0 = no absolute limit (Dex default)


class ExpirySection(Section):
    signing_keys: Duration | None = None  # deprecated in Dex: signer.config.keysRotationPeriod
    id_tokens: Duration = 24 * 3600.0
    auth_requests: Duration = 24 * 3600.0
    device_requests: Duration = 300.0
    auth_codes: Duration = 600.0  # Portcullis-only (Dex hard-codes 30 minutes)
    refresh_tokens: RefreshTokenExpiry = Field(default_factory=lambda: RefreshTokenExpiry())

    @field_validator("id_tokens", "auth_requests", "auth_codes")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be a positive duration")
        return value


class PKCESection(Section):
    enforce: bool = False
    code_challenge_methods_supported: list[Literal["S256", "plain"]] = Field(
        default_factory=lambda: list(_PKCE_METHODS), min_length=1
    )


class OAuth2Section(Section):
    grant_types: list[GrantType] = Field(default_factory=list)
    response_types: list[ResponseType] = Field(
        default_factory=lambda: list(_CODE_ONLY), min_length=1
    )
    skip_approval_screen: bool = False
    always_show_login_screen: bool = False
    password_connector: str = ""
    pkce: PKCESection = Field(default_factory=lambda: PKCESection())

    @field_validator("grant_types")
    @classmethod
    def _implemented(cls, value: list[str]) -> list[str]:
        for grant in value:
            if grant not in (*SUPPORTED_GRANT_TYPES, "implicit"):
                raise ValueError(
                    f"grant type {grant!r} is not available in this Portcullis version "
                    f"(supported: {', '.join(SUPPORTED_GRANT_TYPES)}, implicit)"
                )
        return value

    def enabled_grant_types(self) -> tuple[str, ...]:
        """The grants the server offers: ``grantTypes`` when set, else Dex's defaults (the
        code and refresh grants, plus password with a passwordConnector and implicit with a
        token response type). The one home of those defaults: oidc settings and the client
        checks in config.load both read them here."""
        if self.grant_types:
            return tuple(self.grant_types)
        grants = ["authorization_code", "refresh_token"]
        if self.password_connector:
            grants.append("password")
        if any(t in self.response_types for t in ("token", "id_token")):
            grants.append("implicit")
        return tuple(grants)


class LocalSignerConfig(Section):
    keys_rotation_period: Duration = 6 * 3600.0
    algorithm: SigningAlgorithm = "RS256"

    @field_validator("keys_rotation_period")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value < 60:
            raise ValueError("must be at least 1m")
        return value


class SignerSection(Section):
    type: Literal["local", "vault"] = "local"
    config: LocalSignerConfig = Field(default_factory=lambda: LocalSignerConfig())

    @model_validator(mode="before")
    @classmethod
    def _vault_first(cls, data: object) -> object:
        # Refuse vault before its config (addr, transitKey...) is read as a local signer's,
        # which would report an unknown key instead of the real reason.
        if isinstance(data, dict) and data.get("type") == "vault":
            raise ValueError("signer type 'vault' is not available in this Portcullis version")
        return data

    @model_validator(mode="after")
    def _local_only(self) -> SignerSection:
        if self.type != "local":
            raise ValueError("signer type 'vault' is not available in this Portcullis version")
        return self


#: The connector id of the password database (``enablePasswordDB``), as in Dex. A config-level
#: name: it is reserved in ``connectors[].id`` and usable in ``oauth2.passwordConnector``.
LOCAL_CONNECTOR_ID = "local"


class ConnectorSection(Section):
    type: str = Field(min_length=1)
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    name: str = Field(min_length=1)
    config: dict[str, Any] = Field(default_factory=dict)
    # Dex after 2.45: the grants a connector may be used with. Served: the token endpoint
    # refuses a grant the connector does not list (checked against oauth2 in config.load).
    grant_types: list[GrantType] = Field(default_factory=list)


class StaticClient(Section):
    id: str | None = None
    id_env: str | None = None
    secret: SecretStr | None = None
    secret_env: str | None = None
    redirect_uris: list[RedirectURI] = Field(default_factory=list, alias="redirectURIs")
    # Dex master's key: where RP-initiated logout may send the browser (exact match).
    post_logout_redirect_uris: list[HttpURL] = Field(
        default_factory=list, alias="postLogoutRedirectURIs"
    )
    trusted_peers: list[str] = Field(default_factory=list)
    public: bool = False
    name: str = ""
    logo_url: str = Field("", alias="logoURL")
    # Dex master / Portcullis additions.
    allowed_connectors: list[str] = Field(default_factory=list)
    grant_types: list[GrantType] = Field(default_factory=list)
    response_types: list[ResponseType] = Field(default_factory=list)
    id_tokens_valid_for: Duration | None = None
    refresh_token_lifetime: Duration | None = None
    # Portcullis-only: may introspect (RFC 7662) access tokens issued to other clients, e.g. an
    # API gateway; every other client sees only tokens it is an audience of.
    introspect_any_token: bool = False
    # Portcullis-only: the RFC 8707 resources (the access token's ``aud``) this client may ask
    # for with ``resource``; empty = none, so no client can mint tokens for a resource server
    # unless the operator says so.
    allowed_resources: list[ResourceURI] = Field(default_factory=list)
    # Back-channel logout (Dex after 2.45): recognised so a newer Dex config gets a precise
    # refusal from config.load instead of "unknown key".
    backchannel_logout_uri: str = Field("", alias="backchannelLogoutURI")


class StaticPassword(Section):
    email: str = Field(min_length=3)
    hash: SecretStr | None = None
    hash_from_env: str | None = None
    username: str = Field(min_length=1)
    name: str = ""
    preferred_username: str = ""
    email_verified: bool = True
    user_id: str = Field(min_length=1, alias="userID")
    groups: list[str] = Field(default_factory=list)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        if "@" not in value or value.startswith("@") or value.endswith("@"):
            raise ValueError("not an email address")
        return value


class FrontendSection(Section):
    dir: str = ""
    issuer: str = "Portcullis"
    logo_url: str = Field("", alias="logoURL")
    theme: str = "light"
    extra: dict[str, str] = Field(default_factory=dict)


class LoggerSection(Section):
    level: Literal["debug", "info", "warn", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
    exclude_fields: list[str] = Field(default_factory=list)


class KubeAPIAccess(Section):
    """Portcullis-only: how the webhook reaches the Kubernetes API to check its callers.
    Every field defaults to the pod's in-cluster service account (KUBERNETES_SERVICE_HOST/PORT,
    /var/run/secrets/kubernetes.io/serviceaccount/{token,ca.crt})."""

    server: HttpURL | None = None
    token_file: str = ""
    ca_file: str = Field("", alias="caFile")


def _is_loopback_address(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TokenReviewSection(Section):
    """Portcullis-only: the Kubernetes TokenReview authentication webhook (docs/kubernetes.md)."""

    enabled: bool = False
    addr: ListenAddress | None = None
    path: str = "/tokenreview"
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_min_version: TLSVersion | None = None
    tls_max_version: TLSVersion | None = None
    # Token `aud` values accepted (at least one must match): normally the kubectl client's ID.
    audiences: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    # Require spec.audiences of a review to overlap the token's aud (see docs/kubernetes.md).
    strict_review_audiences: bool = False
    # Check each caller's bearer token with the Kubernetes TokenReview and SubjectAccessReview
    # APIs (what the chart's system:auth-delegator binding grants).
    authenticate_callers: bool = False
    kube_api: KubeAPIAccess = Field(default_factory=lambda: KubeAPIAccess(), alias="kubeAPI")
    # Claim mapping, like kube-apiserver's --oidc-username-claim/-prefix, --oidc-groups-*.
    username_claim: str = Field("email", min_length=1)
    username_prefix: str = "oidc:"
    groups_claim: str = Field("groups", min_length=1)
    groups_prefix: str = "oidc:"

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or "?" in value or "#" in value:
            raise ValueError("must be an absolute URL path such as /tokenreview")
        return value

    @model_validator(mode="after")
    def _check_listener(self) -> TokenReviewSection:
        if not self.enabled:
            return self
        if not self.addr:
            raise ValueError("addr is required when enabled")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tlsCert and tlsKey must be given together")
        if not self.tls_cert and not _is_loopback_address(self.addr):
            # kube-apiserver only calls webhooks over HTTPS; plain HTTP is for local tests.
            raise ValueError(
                "tlsCert and tlsKey are required unless addr is a loopback address "
                "(kube-apiserver calls webhooks over HTTPS only)"
            )
        if (
            self.tls_min_version
            and self.tls_max_version
            and self.tls_min_version > self.tls_max_version
        ):
            raise ValueError("tlsMinVersion is greater than tlsMaxVersion")
        if not self.audiences:
            raise ValueError(
                "audiences: at least one is required (the client ID kubectl signs in with), "
                "or any client's token would authenticate to the cluster"
            )
        return self


_PEM_BASE64 = "must be base64 of a PEM certificate (as in a kubeconfig)"


def _check_pem_base64(value: str) -> str:
    if not value:
        return value
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be base64 of a PEM certificate (as in a kubeconfig)") from None
    if b"-----BEGIN CERTIFICATE-----" not in decoded:
        raise ValueError("must be base64 of a PEM certificate (as in a kubeconfig)")
    return value


#: What the kubeconfig page asks another issuer for unless a cluster's `scopes` say otherwise
#: (dex-k8s-authenticator's default set): the claims kube-apiserver maps, and a refresh token for
#: kubectl's legacy oidc auth provider.
DEFAULT_FOREIGN_SCOPES = ("openid", "profile", "email", "groups", "offline_access")


class KubeCluster(Section):
    name: str
    server: HttpURL
    certificate_authority_data: str = ""
    # The client kubectl signs in with for this cluster (the ID token's aud, the API server's
    # --oidc-client-id); "" means kubernetes.kubeconfigPage.clientID.
    client_id: str = Field("", alias="clientID")
    # Only for a confidential client: written into the exec kubeconfigs (kubelogin and
    # kubectl-portcullis need it to redeem codes), so every user of the page sees it.
    client_secret: str = ""
    # Another OpenID provider this cluster trusts (another Portcullis, Dex, any OIDC issuer),
    # as dex-k8s-authenticator's per-cluster `issuer`; "" means this issuer. The page then
    # signs the user in there as a relying party with clientID/clientSecret and hands out
    # kubeconfigs naming that issuer.
    issuer: str = ""
    # Base64 PEM of the CA that verifies `issuer`'s HTTPS certificate (the page's own calls
    # trust it beside the system roots) and is embedded in this cluster's kubeconfigs.
    issuer_certificate_authority_data: str = ""
    # What the page asks `issuer` for; [] means DEFAULT_FOREIGN_SCOPES.
    scopes: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        # `kubectl config set clusters.<name>.…` splits on dots, so names must not have any.
        if not re.fullmatch(r"[A-Za-z0-9_:@-]+", value):
            raise ValueError("use letters, digits, '-', '_', ':' or '@' only (no dots or spaces)")
        return value

    @field_validator("certificate_authority_data", "issuer_certificate_authority_data")
    @classmethod
    def _pem_base64(cls, value: str) -> str:
        return _check_pem_base64(value)

    @field_validator("issuer_certificate_authority_data")
    @classmethod
    def _issuer_ca_loads(cls, value: str) -> str:
        # The page's own TLS calls load it: refuse here what OpenSSL would refuse there.
        if value:
            try:
                ssl.create_default_context().load_verify_locations(
                    cadata=base64.b64decode(value).decode("ascii", "replace")
                )
            except (ssl.SSLError, ValueError):
                raise ValueError(_PEM_BASE64) from None
        return value

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute https URL (the issuer's `iss`, byte for byte)")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment (OpenID Connect Discovery §3)")
        if parts.scheme == "http" and not _is_loopback_address(f"{parts.hostname}:0"):
            # Tokens and codes would cross the network in the clear, and kube-apiserver only
            # trusts https issuers anyway; plain http is for a loopback test issuer.
            raise ValueError("must be an https URL (http only for a loopback address)")
        return value

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: list[str]) -> list[str]:
        if value and "openid" not in value:
            raise ValueError("must include openid (the page needs an ID token)")
        if any(not s or " " in s for s in value):
            raise ValueError("each scope is one non-empty word")
        return value

    @model_validator(mode="after")
    def _foreign_issuer(self) -> KubeCluster:
        if self.issuer and not self.client_id:
            raise ValueError(
                "clientID: required with issuer (the client registered at that issuer; "
                "kubernetes.kubeconfigPage.clientID is a client of this issuer)"
            )
        if not self.issuer:
            if self.issuer_certificate_authority_data:
                raise ValueError(
                    "issuerCertificateAuthorityData: only with issuer (this issuer's CA is "
                    "kubernetes.kubeconfigPage.issuerCertificateAuthorityData)"
                )
            if self.scopes:
                raise ValueError("scopes: only with issuer (this issuer's login asks for them)")
        return self


class KubeconfigPageSection(Section):
    """Portcullis-only: the kubeconfig page at {issuer}/kubeconfig (docs/kubernetes.md)."""

    enabled: bool = False
    client_id: str = Field("kubernetes", min_length=1, alias="clientID")
    clusters: list[KubeCluster] = Field(default_factory=list)
    # Base64 PEM of the CA that verifies the issuer's HTTPS certificate (a private CA or the
    # chart's self-signed one): embedded in the kubeconfigs handed out, and the default CA of
    # `portcullis kube apiserver-config`. "" when a public CA signed it.
    issuer_certificate_authority_data: str = ""
    # Where kubectl-portcullis binaries are published (links to
    # <base>/kubectl-portcullis-<os>-<arch>); "" shows no download links.
    plugin_download_url: str = Field("", alias="pluginDownloadURL")

    @field_validator("issuer_certificate_authority_data")
    @classmethod
    def _issuer_ca(cls, value: str) -> str:
        return _check_pem_base64(value)

    @field_validator("plugin_download_url")
    @classmethod
    def _download_url(cls, value: str) -> str:
        if value and not value.startswith("https://"):
            raise ValueError(
                "must be an https URL (binaries fetched over plain HTTP can be swapped)"
            )
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_clusters(self) -> KubeconfigPageSection:
        if self.enabled and not self.clusters:
            raise ValueError("clusters: at least one is required when the page is enabled")
        names = [c.name for c in self.clusters]
        if len(set(names)) != len(names):
            raise ValueError("clusters: names must be unique")
        return self


class KubernetesSection(Section):
    """Portcullis-only top-level key: Kubernetes integration features."""

    token_review: TokenReviewSection = Field(default_factory=lambda: TokenReviewSection())
    kubeconfig_page: KubeconfigPageSection = Field(default_factory=lambda: KubeconfigPageSection())


def _registration_prefix(value: str) -> str:
    """An https redirect-URI prefix for registered clients. It must end in "/" after a path:
    "https://app.example" would also match "https://app.example.evil.com/"."""
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError("must be an https URL prefix (e.g. https://app.example.com/callback/)")
    if not parts.path.endswith("/") or parts.query or parts.fragment:
        raise ValueError("must end with '/' and carry no query or fragment")
    return value


class ClientIDMetadataDocuments(Section):
    """OAuth Client ID Metadata Documents: a client id that is an https URL whose JSON
    document the issuer fetches (oidc.client_metadata). Off by default."""

    enabled: bool = False
    timeout: Duration = Field(5.0, gt=0, le=30.0)
    max_bytes: int = Field(16384, ge=256, le=262144)
    max_cache_age: Duration = Field(86400.0, ge=0)
    # TEST ONLY: trust this CA file and allow loopback addresses, so tests can serve a
    # document from a loopback HTTPS server. Never set it in production: it lets client ids
    # point at services on the issuer's own host.
    test_only_loopback_ca: str = Field("", alias="testOnlyLoopbackCA")


class RegistrationSection(Section):
    """Portcullis-only: RFC 7591 dynamic client registration (for MCP clients and other
    software that registers itself). Off by default: anyone who can reach the issuer could
    otherwise create clients."""

    enabled: bool = False
    # Redirect URIs a registered client may use: loopback (http://127.0.0.1, [::1] or
    # localhost, any port; what native apps and MCP clients on a workstation use, RFC 8252)
    # and any https URL under one of ``redirectURIPrefixes``.
    allow_loopback_redirect_uris: bool = Field(True, alias="allowLoopbackRedirectURIs")
    redirect_uri_prefixes: list[Annotated[str, AfterValidator(_registration_prefix)]] = Field(
        default_factory=list, alias="redirectURIPrefixes"
    )
    # RFC 8707 resources every registered client may name (its ``allowedResources``).
    allowed_resources: list[ResourceURI] = Field(default_factory=list)
    # Whether a client may register with a secret (client_secret_basic/post). Registered
    # clients are public by default: software on a user's machine cannot keep a secret.
    allow_confidential_clients: bool = False
    # Registrations per client address inside ``rateLimitWindow`` (counted in storage, so
    # shared by every worker and replica).
    rate_limit: int = Field(10, ge=1)
    rate_limit_window: Duration = Field(3600.0, gt=0, le=86400.0)
    # A registered client not used for this long is deleted (its every use extends it).
    unused_client_expiry: Duration = Field(30 * 86400.0, gt=0)
    # Client ID Metadata Documents, governed by the same redirect-URI and resource policy.
    client_id_metadata_documents: ClientIDMetadataDocuments = Field(
        default_factory=lambda: ClientIDMetadataDocuments(), alias="clientIDMetadataDocuments"
    )


class RawConfig(Section):
    """The document as written (after ${ENV} expansion), before cross-field resolution."""

    issuer: HttpURL
    storage: StorageSection
    storage_sealing: StorageSealingSection = Field(default_factory=lambda: StorageSealingSection())
    web: WebSection
    telemetry: TelemetrySection = Field(default_factory=lambda: TelemetrySection())
    grpc: GRPCSection = Field(default_factory=lambda: GRPCSection())
    expiry: ExpirySection = Field(default_factory=lambda: ExpirySection())
    oauth2: OAuth2Section = Field(default_factory=lambda: OAuth2Section())
    signer: SignerSection = Field(default_factory=lambda: SignerSection())
    connectors: list[ConnectorSection] = Field(default_factory=list)
    static_clients: list[StaticClient] = Field(default_factory=list)
    enable_password_db: bool = Field(False, alias="enablePasswordDB")
    static_passwords: list[StaticPassword] = Field(default_factory=list)
    frontend: FrontendSection = Field(default_factory=lambda: FrontendSection())
    logger: LoggerSection = Field(default_factory=lambda: LoggerSection())
    kubernetes: KubernetesSection = Field(default_factory=lambda: KubernetesSection())
    registration: RegistrationSection = Field(default_factory=lambda: RegistrationSection())
    # Dex after 2.45 (behind DEX_SESSIONS_ENABLED): browser sessions. Recognised, refused in
    # config.load with the reason (no browser-session store here).
    sessions: dict[str, Any] | None = None

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.query or parts.fragment:
            raise ValueError("must not contain a query or fragment (OIDC Discovery §3)")
        return value
