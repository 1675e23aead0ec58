"""Records the issuer persists. Plain frozen dataclasses so every backend stores the same shape.

Times are float Unix seconds from the injected clock. Secrets that must be compared later (refresh
token secrets, client secrets) are stored as SHA-256 digests, never in clear.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Identity:
    """What a connector asserts about a user after a successful login."""

    user_id: str
    username: str
    preferred_username: str = ""
    email: str = ""
    email_verified: bool = False
    groups: tuple[str, ...] = ()
    # Upstream tokens (a refresh token...): kept out of repr, so an identity that reaches a
    # log line, a traceback or an assertion message never carries them.
    connector_data: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class PKCE:
    code_challenge: str = ""
    code_challenge_method: str = ""  # "S256" | "plain" | "" (none)


@dataclass(frozen=True)
class Client:
    """An OAuth2 client (static from config, or created through the admin API)."""

    id: str
    secret_hash: str = ""  # hex SHA-256 of the secret; "" for public clients
    redirect_uris: tuple[str, ...] = ()
    trusted_peers: tuple[str, ...] = ()
    public: bool = False
    name: str = ""
    logo_url: str = ""
    # Portcullis extensions (Dex master has some of them): empty = server defaults.
    grant_types: tuple[str, ...] = ()
    response_types: tuple[str, ...] = ()
    allowed_connectors: tuple[str, ...] = ()
    id_token_ttl: float | None = None
    refresh_token_absolute_lifetime: float | None = None
    # Where RP-initiated logout may send the browser afterwards (exact match, like Dex's
    # ``postLogoutRedirectURIs``).
    post_logout_redirect_uris: tuple[str, ...] = ()
    # RFC 8707 resources this client may name with ``resource`` (see oidc.resources).
    allowed_resources: tuple[str, ...] = ()
    # RFC 7591 dynamic registration (oidc.registration): the SHA-256 of the registration
    # access token ("" = not a registered client), when it registered, and when it is deleted
    # unless used before (0 = never; every use pushes it forward).
    registration_token_hash: str = ""
    registered_at: float = 0.0
    expires_at: float = 0.0


@dataclass(frozen=True)
class AuthRequest:
    """A login in progress: created by /auth, completed by a connector, consumed by approval."""

    id: str
    client_id: str
    response_types: tuple[str, ...]
    scopes: tuple[str, ...]
    redirect_uri: str
    expiry: float
    nonce: str = ""
    state: str = ""
    force_approval_prompt: bool = False
    logged_in: bool = False
    identity: Identity | None = None
    connector_id: str = ""
    pkce: PKCE = field(default_factory=PKCE)
    auth_time: float = 0.0
    # Secret bound to the browser (CSRF cookie) so a leaked request id cannot be replayed.
    browser_binding: str = ""
    # What a callback connector needs to finish this login (the upstream PKCE verifier and
    # nonce, a SAML request id...): opaque to everything but the connector that wrote it.
    connector_state: bytes = b""
    # "fragment" or "query" when the client asked (OAuth 2.0 Multiple Response Types);
    # "" means the response type's default. See ``AuthRequest.uses_fragment``.
    response_mode: str = ""
    # RFC 8707 resources asked for at /auth (the access token's audience).
    resources: tuple[str, ...] = ()

    @property
    def uses_fragment(self) -> bool:
        """Whether the answer travels in the redirect's fragment: always when tokens are in
        it (never in a query string, which leaks into logs and Referer), and for the code flow
        when the client asked for ``response_mode=fragment``."""
        return self.response_types != ("code",) or self.response_mode == "fragment"


@dataclass(frozen=True)
class AuthCode:
    """A single-use authorization code; ``used_at`` is set when it is exchanged."""

    id: str
    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    identity: Identity
    connector_id: str
    expiry: float
    nonce: str = ""
    pkce: PKCE = field(default_factory=PKCE)
    auth_time: float = 0.0
    used_at: float = 0.0
    # RFC 8707 resources granted at /auth; the exchange may narrow them.
    resources: tuple[str, ...] = ()


#: Device request states (RFC 8628): waiting for the user, decided by the user, or redeemed.
DEVICE_PENDING = "pending"
DEVICE_APPROVED = "approved"
DEVICE_DENIED = "denied"
DEVICE_CONSUMED = "consumed"


@dataclass(frozen=True)
class DeviceRequest:
    """One device authorization (RFC 8628): created by ``/device/code``, approved or denied
    through the browser login, redeemed once at the token endpoint.

    One record plays both of Dex's (DeviceRequest and DeviceToken): the id is the SHA-256 of the
    device code, so a storage dump yields no code that can be polled; ``user_code`` is unique
    and is how the verification page finds the request. No tokens are stored: they are minted
    when the approved request is redeemed.
    """

    id: str
    user_code: str
    client_id: str
    scopes: tuple[str, ...]
    expiry: float
    #: Seconds the client must wait between polls; grows by 5 on every ``slow_down``.
    interval: float
    last_poll: float = 0.0
    status: str = DEVICE_PENDING
    #: PKCE verifier of the browser login this request starts, so only an authorization
    #: request started by the verification page can complete it.
    pkce_verifier: str = ""
    identity: Identity | None = None
    connector_id: str = ""
    auth_time: float = 0.0


@dataclass(frozen=True)
class RefreshToken:
    """One refresh-token family (one device session).

    The id is stable across rotations; ``token_hash`` is the digest of the current secret and
    ``obsolete_token_hash`` the one it replaced, accepted again only inside the reuse interval.
    """

    id: str
    token_hash: str
    client_id: str
    connector_id: str
    identity: Identity
    scopes: tuple[str, ...]
    created_at: float
    last_used: float
    obsolete_token_hash: str = ""
    # The current secret sealed (AES-GCM) under a key derived from the obsolete secret: only a
    # client that still holds the obsolete secret can recover it, so a retry inside reuseInterval
    # gets the same successor while a storage dump reveals no usable token (see oidc.refresh).
    successor_sealed: str = ""
    nonce: str = ""
    auth_time: float = 0.0
    # Which auth code issued this family, so a replayed code can revoke it.
    issued_by_code: str = ""
    # When the family dies: min(created + absoluteLifetime, last_used + validIfNotUsedFor),
    # recomputed on every use by the protocol core; 0 means never. GC deletes past it.
    expires_at: float = 0.0
    # RFC 8707 resources granted to this family; a refresh may narrow them, never widen.
    resources: tuple[str, ...] = ()


@dataclass(frozen=True)
class Password:
    """A local-password-DB user (Dex's storage.Password)."""

    email: str
    hash: str
    username: str
    user_id: str
    name: str = ""
    preferred_username: str = ""
    email_verified: bool = True
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class SigningKey:
    """A private signing key as a JWK dict (with kid and alg)."""

    jwk: dict[str, Any]


@dataclass(frozen=True)
class VerificationKey:
    """A retired public key kept until every token it signed has expired."""

    jwk: dict[str, Any]
    expiry: float


@dataclass(frozen=True)
class Keys:
    signing_key: SigningKey | None
    verification_keys: tuple[VerificationKey, ...]
    next_rotation: float


@dataclass(frozen=True)
class GCResult:
    auth_requests: int = 0
    auth_codes: int = 0
    refresh_tokens: int = 0
    revoked_tokens: int = 0
    verification_keys: int = 0
    login_attempts: int = 0
    single_use_keys: int = 0
    device_requests: int = 0
    denied_subjects: int = 0
    # Dynamically registered clients past their unused expiry (RFC 7591, oidc.registration).
    clients: int = 0

    @property
    def total(self) -> int:
        return (
            self.clients
            + self.auth_requests
            + self.auth_codes
            + self.refresh_tokens
            + self.revoked_tokens
            + self.verification_keys
            + self.login_attempts
            + self.single_use_keys
            + self.device_requests
            + self.denied_subjects
        )


@dataclass(frozen=True)
class ImportBatch:
    """Records brought over from another issuer (``portcullis import-dex``), written together.

    Why a storage operation of its own: an import must land all or nothing (a half-imported
    database would leave clients without their users' sessions, or sessions without the key
    that signed their ID tokens), and re-running it must be harmless. ``Storage.import_batch``
    therefore inserts in one transaction and skips every record whose key already exists.
    """

    clients: tuple[Client, ...] = ()
    passwords: tuple[Password, ...] = ()
    refresh_tokens: tuple[RefreshToken, ...] = ()
    verification_keys: tuple[VerificationKey, ...] = ()


@dataclass(frozen=True)
class ImportResult:
    """How many records of each kind an import inserted (the rest already existed)."""

    clients: int = 0
    passwords: int = 0
    refresh_tokens: int = 0
    verification_keys: int = 0


@dataclass(frozen=True)
class RefreshRotation:
    """One use of a refresh family's *current* secret, applied by
    ``Storage.rotate_refresh_token`` as one atomic statement (the refresh hot path).

    Applies only when the family ``family_id`` exists, its ``token_hash`` equals
    ``presented_hash``, it belongs to ``client_id``, its connector is one of ``connector_ids``
    and it is live at ``now`` (``expires_at`` is 0 or ``now <= expires_at``), and no denial
    that is live at ``now`` (``expiry >= now``) was recorded at or after the family's
    ``created_at``, whoever it names: whether a denial concerns the family needs its encoded
    subject, which the statement cannot compute, so the caller's general path decides those
    with the precise deny-list check (denials are rare; the price is a slower refresh for
    older families while one is live, never a denied family refreshed). Applying sets
    ``last_used = now`` and ``expires_at`` to the earlier of ``created_at + absolute_lifetime``
    (when that is > 0) and ``idle_deadline`` (when > 0), 0 when neither; with a non-empty
    ``new_token_hash`` it also rotates: ``token_hash = new_token_hash``,
    ``obsolete_token_hash = presented_hash``, ``successor_sealed = successor_sealed``. An empty
    ``new_token_hash`` means rotation is disabled and the secrets stay as they are. A non-None
    ``identity`` replaces the stored one (the user as the connector's upstream refresh just
    returned it).
    """

    family_id: str
    presented_hash: str
    client_id: str
    connector_ids: tuple[str, ...]
    now: float
    new_token_hash: str
    successor_sealed: str
    absolute_lifetime: float
    idle_deadline: float
    identity: Identity | None = None

    def expiry(self, created_at: float) -> float:
        """The family's new ``expires_at`` (the rule above, for backends that compute it in
        Python; SQL backends express the same rule in the UPDATE)."""
        limits = []
        if self.absolute_lifetime > 0:
            limits.append(created_at + self.absolute_lifetime)
        if self.idle_deadline > 0:
            limits.append(self.idle_deadline)
        return min(limits) if limits else 0.0


@dataclass(frozen=True)
class RotationOrRead:
    """What ``Storage.rotate_refresh_token_or_read_async`` found: the family as stored after
    the rotation (``rotated``), or, when the rotation's conditions did not hold, the family as
    it was and whether a live denial postdates it (``denied_since``, as
    ``Storage.get_refresh_token_for_use`` answers), for the caller's general path."""

    family: RefreshToken
    rotated: bool
    denied_since: bool
