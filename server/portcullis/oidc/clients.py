"""Client lookup (static clients from config over clients in storage) and authentication."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from urllib.parse import unquote_plus

from portcullis.clock import Clock
from portcullis.oidc.errors import OAuthError, invalid_client, invalid_request
from portcullis.storage.base import NotFoundError, Storage
from portcullis.storage.models import Client


def hash_client_secret(secret: str) -> str:
    """Client secrets are high-entropy, so a fast digest suffices and keeps /token fast: on
    this machine class a SHA-256 compare runs at ~1.7M/s, PBKDF2 with 600k iterations at ~6/s
    per core, so a slow password hash never belongs on the token path."""
    return hashlib.sha256(secret.encode()).hexdigest()


class UntrustedAudienceError(ValueError):
    """A cross-client audience (``audience:server:client_id:X``) the requester may not ask
    for. Each endpoint maps it to its own error form (redirect or JSON, both invalid_scope)."""


class ClientRegistry:
    def __init__(
        self,
        storage: Storage,
        static_clients: Iterable[Client],
        *,
        clock: Clock | None = None,
        registered_ttl: float = 0.0,
        documents: Callable[[str], Client | None] | None = None,
    ) -> None:
        """``registered_ttl`` is how long a dynamically registered client lives unused
        (``registration.unusedClientExpiry``); ``clock`` tells when it is used."""
        self._storage = storage
        self._static = {c.id: c for c in static_clients}
        self._clock = clock
        self._registered_ttl = registered_ttl
        # Client ID Metadata Documents (oidc.client_metadata): URL client ids, fetched.
        self._documents = documents

    def get(self, client_id: str) -> Client | None:
        """The client, or None. A registered client past its unused expiry is gone (garbage
        collection deletes it later); one that is used gets its expiry pushed forward, written
        only once half of its lifetime has passed so that a busy client costs no write per
        request."""
        client = self._static.get(client_id)
        if client is not None:
            return client
        try:
            client = self._storage.get_client(client_id)
        except NotFoundError:
            if self._documents is not None and client_id.startswith("https://"):
                # A URL client id (Client ID Metadata Document); a stored client of that id,
                # which only an administrator can create, would have won above.
                return self._documents(client_id)
            return None
        if client.expires_at and self._clock is not None:
            now = self._clock.now()
            if client.expires_at < now:
                return None
            if self._registered_ttl and client.expires_at - now < self._registered_ttl / 2:
                new_expiry = now + self._registered_ttl
                try:
                    client = self._storage.update_client(
                        client_id, lambda c: replace(c, expires_at=max(c.expires_at, new_expiry))
                    )
                except NotFoundError:
                    return None
        return client

    def check_audiences(self, client: Client, audiences: tuple[str, ...]) -> None:
        """Raise UntrustedAudienceError unless every audience is the client itself or a client
        that lists it in trustedPeers (Dex's cross-client trust). May read storage (dynamic
        clients), so callers run it in a worker thread unless ``audiences`` is empty."""
        for peer_id in audiences:
            if peer_id == client.id:
                continue
            peer = self.get(peer_id)
            if peer is None:
                raise UntrustedAudienceError(f"audience {peer_id!r} is not a known client")
            if client.id not in peer.trusted_peers:
                raise UntrustedAudienceError(
                    f"client {peer_id!r} does not trust {client.id!r} (trustedPeers)"
                )

    def is_static_request(self, authorization: str | None, form: Mapping[str, str]) -> bool:
        """True when authenticating this request needs no storage: the client it names comes
        from the config (or the credentials are malformed, which fails without a lookup)."""
        try:
            client_id, _, _ = _credentials(authorization, form)
        except OAuthError:
            return True
        return client_id in self._static

    def all(self) -> list[Client]:
        stored = {c.id: c for c in self._storage.list_clients()}
        stored.update(self._static)
        return [stored[k] for k in sorted(stored)]

    # -- authentication ----------------------------------------------------------------------
    def authenticate(
        self, authorization: str | None, form: Mapping[str, str], *, allow_public: bool
    ) -> Client:
        """client_secret_basic or client_secret_post (RFC 6749 §2.3.1); a public client only
        identifies itself with client_id where allow_public says the endpoint permits it."""
        client_id, secret, method = _credentials(authorization, form)
        if not client_id:
            raise invalid_client("client authentication is required")
        client = self.get(client_id)
        if client is None:
            # Same work as a real check, same answer: do not reveal which ids exist.
            hmac.compare_digest(hash_client_secret(secret or "-"), "0" * 64)
            raise invalid_client()
        if client.public:
            if not allow_public:
                raise OAuthError(
                    "unauthorized_client", "public clients cannot use this endpoint", status=400
                )
            return client
        if method == "none" or not secret:
            raise invalid_client("client secret required")
        if not hmac.compare_digest(hash_client_secret(secret), client.secret_hash):
            raise invalid_client()
        return client


def _credentials(authorization: str | None, form: Mapping[str, str]) -> tuple[str, str | None, str]:
    form_id = form.get("client_id", "")
    form_secret = form.get("client_secret")
    if authorization and authorization[:6].lower() == "basic ":
        if form_secret:
            raise invalid_request("use one client authentication method, not two")
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
            raw_id, _, raw_secret = decoded.partition(":")
        except (ValueError, UnicodeDecodeError):
            raise invalid_client("malformed Basic authorization header") from None
        # RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
        client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
        if form_id and form_id != client_id:
            raise invalid_request("client_id does not match the Basic credentials")
        return client_id, secret, "basic"
    if form_secret is not None:
        return form_id, form_secret, "post"
    return form_id, None, "none"
