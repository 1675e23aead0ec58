"""RFC 7591 dynamic client registration and RFC 7592 read/delete, governed by the
``registration`` config section. Framework-free: the web adapter parses JSON and maps errors.

Why it is shaped this way (the endpoint is open to anyone who can reach the issuer):

* **Off by default**, and when on, registered clients are **public** (PKCE, no secret) unless
  the operator allows confidential ones: software that registers itself on a user's machine
  (an editor, an MCP client) cannot keep a secret anyway.
* **Redirect URIs are constrained**: canonical loopback (``http://127.0.0.1:<port>/…``,
  ``[::1]``) by default, https URLs under an operator's prefix otherwise. A registration cannot
  turn the issuer into an open redirector or a phishing relay for arbitrary sites.
* **Grants are constrained**: ``authorization_code`` and ``refresh_token`` only; never
  ``client_credentials`` or ``password`` (a self-registered client must never obtain tokens
  without a user, nor see a user's password), nor implicit response types.
* **Resources come from policy**: a registered client may name exactly the RFC 8707 resources
  of ``registration.allowedResources``; its own metadata cannot widen that.
* **Rate limited per client address** in storage (``Storage.throttle_attempt``), so every
  worker and replica counts together.
* **Unused clients expire**: ``expires_at`` is pushed forward whenever the client is used
  (``ClientRegistry.get``), and garbage collection deletes the rest.
* **The registration access token** (RFC 7592) is random, returned once, stored only as its
  SHA-256, and compared in constant time. It reads or deletes that one client.

Registered clients are ordinary storage clients: the admin gRPC API lists and deletes them.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from portcullis.clock import Clock
from portcullis.config.load import Config
from portcullis.oidc.clients import hash_client_secret
from portcullis.oidc.redirect import is_canonical_loopback
from portcullis.oidc.tokens import new_id
from portcullis.storage.base import NotFoundError, Storage
from portcullis.storage.models import Client
from portcullis.storage.throttling import ThrottleRule

#: The grants a registered client may have (RFC 7591 §2 ``grant_types``).
ALLOWED_GRANTS = ("authorization_code", "refresh_token")
#: Prefix of registered client ids, so an operator sees at once where a client came from.
CLIENT_ID_PREFIX = "dcr-"
#: Bounds on the metadata a stranger can make us store.
MAX_REDIRECT_URIS = 10
MAX_URI_LENGTH = 2000
MAX_NAME_LENGTH = 200


class RegistrationError(Exception):
    """RFC 7591 §3.2.2: ``invalid_redirect_uri`` or ``invalid_client_metadata``; status 400."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description

    def as_dict(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


class RegistrationRateLimitedError(Exception):
    """Too many registrations from this address: 429 with Retry-After."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"retry after {retry_after}s")
        self.retry_after = retry_after


class RegistrationAccessDeniedError(Exception):
    """RFC 7592 §2: no such client, or a wrong registration access token (never which): 401."""


@dataclass(frozen=True)
class RegistrationPolicy:
    enabled: bool
    allow_loopback: bool
    redirect_uri_prefixes: tuple[str, ...]
    allowed_resources: tuple[str, ...]
    allow_confidential: bool
    rate_limit: int
    rate_window: float
    unused_expiry: float

    @classmethod
    def from_config(cls, config: Config) -> RegistrationPolicy:
        section = config.raw.registration
        return cls(
            enabled=section.enabled,
            allow_loopback=section.allow_loopback_redirect_uris,
            redirect_uri_prefixes=tuple(section.redirect_uri_prefixes),
            allowed_resources=tuple(section.allowed_resources),
            allow_confidential=section.allow_confidential_clients,
            rate_limit=section.rate_limit,
            rate_window=section.rate_limit_window,
            unused_expiry=section.unused_client_expiry,
        )


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _strings(metadata: Mapping[str, Any], name: str) -> list[str] | None:
    value = metadata.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RegistrationError("invalid_client_metadata", f"{name} must be an array of strings")
    return list(value)


def _string(metadata: Mapping[str, Any], name: str, limit: int) -> str:
    value = metadata.get(name, "")
    if not isinstance(value, str) or len(value) > limit:
        raise RegistrationError(
            "invalid_client_metadata", f"{name} must be a string of at most {limit} characters"
        )
    return value


@dataclass(frozen=True)
class _Checked:
    redirect_uris: tuple[str, ...]
    grants: tuple[str, ...]
    method: str
    name: str
    logo: str


class ClientRegistration:
    def __init__(
        self, policy: RegistrationPolicy, endpoint: str, storage: Storage, clock: Clock
    ) -> None:
        """``endpoint`` is the registration endpoint's URL (``{issuer}/register``)."""
        self.policy = policy
        self.endpoint = endpoint
        self._storage = storage
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return self.policy.enabled

    # -- checks -------------------------------------------------------------------------------
    def _redirect_uri_ok(self, uri: str) -> bool:
        if len(uri) > MAX_URI_LENGTH or "#" in uri:
            return False
        if self.policy.allow_loopback and is_canonical_loopback(uri):
            return True
        parts = urlsplit(uri)
        if parts.scheme != "https" or parts.username or parts.password or "\\" in uri:
            return False
        if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in uri):
            return False
        return any(uri.startswith(prefix) for prefix in self.policy.redirect_uri_prefixes)

    def _check(self, metadata: Mapping[str, Any]) -> _Checked:
        """The metadata fields a client may have under the policy, or raise
        RegistrationError."""
        redirect_uris = _strings(metadata, "redirect_uris") or []
        if not redirect_uris:
            raise RegistrationError("invalid_redirect_uri", "redirect_uris is required")
        if len(redirect_uris) > MAX_REDIRECT_URIS:
            raise RegistrationError(
                "invalid_redirect_uri", f"at most {MAX_REDIRECT_URIS} redirect_uris"
            )
        for uri in redirect_uris:
            if not self._redirect_uri_ok(uri):
                allowed = ["http://127.0.0.1:<port>/…"] if self.policy.allow_loopback else []
                allowed += [f"{p}…" for p in self.policy.redirect_uri_prefixes]
                raise RegistrationError(
                    "invalid_redirect_uri",
                    f"redirect URI {uri!r} is not allowed for registered clients "
                    f"(allowed: {', '.join(allowed) or 'none'})",
                )
        grants = _strings(metadata, "grant_types") or ["authorization_code"]
        for grant in grants:
            if grant not in ALLOWED_GRANTS:
                raise RegistrationError(
                    "invalid_client_metadata",
                    f"grant_types: {grant!r} is not available to registered clients "
                    f"(allowed: {', '.join(ALLOWED_GRANTS)})",
                )
        if "authorization_code" not in grants:
            raise RegistrationError(
                "invalid_client_metadata", "grant_types must include authorization_code"
            )
        response_types = _strings(metadata, "response_types") or ["code"]
        if response_types != ["code"]:
            raise RegistrationError(
                "invalid_client_metadata", "response_types: only 'code' is available"
            )
        method = metadata.get("token_endpoint_auth_method", "none")
        if method not in ("none", "client_secret_basic", "client_secret_post"):
            raise RegistrationError(
                "invalid_client_metadata",
                f"token_endpoint_auth_method {method!r} is not supported",
            )
        if method != "none" and not self.policy.allow_confidential:
            raise RegistrationError(
                "invalid_client_metadata",
                "only public clients may register (token_endpoint_auth_method none)",
            )
        name = _string(metadata, "client_name", MAX_NAME_LENGTH)
        logo = _string(metadata, "logo_uri", MAX_URI_LENGTH)
        if logo and urlsplit(logo).scheme != "https":
            raise RegistrationError("invalid_client_metadata", "logo_uri must be an https URL")
        return _Checked(tuple(redirect_uris), tuple(dict.fromkeys(grants)), method, name, logo)

    def _client_from(self, metadata: Mapping[str, Any]) -> tuple[Client, str]:
        """The client to store and its secret ("" for a public client), or raise
        RegistrationError."""
        checked = self._check(metadata)
        method, name, logo = checked.method, checked.name, checked.logo
        secret = "" if method == "none" else secrets.token_urlsafe(32)
        client_id = CLIENT_ID_PREFIX + new_id()
        now = self._clock.now()
        client = Client(
            id=client_id,
            secret_hash=hash_client_secret(secret) if secret else "",
            redirect_uris=checked.redirect_uris,
            public=not secret,
            name=name or client_id,
            logo_url=logo,
            grant_types=checked.grants,
            response_types=("code",),
            allowed_resources=self.policy.allowed_resources,
            registered_at=now,
            expires_at=now + self.policy.unused_expiry,
        )
        return client, secret

    def client_from_document(self, url: str, document: Mapping[str, Any]) -> Client:
        """The client a Client ID Metadata Document describes (``oidc.client_metadata``), under
        the same policy as a registered one, but always public: Portcullis never learns a
        secret for it. Raises ValueError saying what is refused."""
        if document.get("token_endpoint_auth_method", "none") != "none":
            raise ValueError("token_endpoint_auth_method must be none")
        try:
            checked = self._check(document)
        except RegistrationError as exc:
            raise ValueError(exc.description) from None
        return Client(
            id=url,
            redirect_uris=checked.redirect_uris,
            public=True,
            name=checked.name or url,
            logo_url=checked.logo,
            grant_types=checked.grants,
            response_types=("code",),
            allowed_resources=self.policy.allowed_resources,
        )

    # -- RFC 7591 §3 ----------------------------------------------------------------------
    def register(self, metadata: Mapping[str, Any], client_ip: str) -> dict[str, Any]:
        """Register a client; the 201 response body. Raises RegistrationError or
        RegistrationRateLimitedError. Storage: run in a worker thread."""
        client, secret = self._client_from(metadata)
        wait = self._storage.throttle_attempt(
            [ThrottleRule(f"register-ip:{client_ip}", limit=self.policy.rate_limit)],
            self._clock.now(),
            self.policy.rate_window,
        )
        if wait > 0:
            raise RegistrationRateLimitedError(max(1, math.ceil(wait)))
        token = secrets.token_urlsafe(32)
        client = _with_token(client, _digest(token))
        self._storage.create_client(client)
        body = self._describe(client)
        body["registration_access_token"] = token
        if secret:
            body["client_secret"] = secret
            body["client_secret_expires_at"] = 0
        return body

    # -- RFC 7592 §2.1 and §2.3 --------------------------------------------------------------
    def read(self, client_id: str, token: str) -> dict[str, Any]:
        """The client's current registration. Raises RegistrationAccessDeniedError."""
        return self._describe(self._authorized(client_id, token))

    def delete(self, client_id: str, token: str) -> None:
        """Delete the client (its tokens stop being refreshable: the client is gone).
        Raises RegistrationAccessDeniedError."""
        self._authorized(client_id, token)
        try:
            self._storage.delete_client(client_id)
        except NotFoundError:
            raise RegistrationAccessDeniedError() from None

    def _authorized(self, client_id: str, token: str) -> Client:
        try:
            client = self._storage.get_client(client_id)
        except NotFoundError:
            client = None
        expected = client.registration_token_hash if client else ""
        # Constant-time, and the same work for an unknown client as for a wrong token.
        ok = hmac.compare_digest(_digest(token or "-"), expected or "0" * 64)
        if client is None or not expected or not ok:
            raise RegistrationAccessDeniedError()
        if 0 < client.expires_at < self._clock.now():
            raise RegistrationAccessDeniedError()
        return client

    def _describe(self, client: Client) -> dict[str, Any]:
        body: dict[str, Any] = {
            "client_id": client.id,
            "client_id_issued_at": int(client.registered_at),
            "client_name": client.name,
            "redirect_uris": list(client.redirect_uris),
            "grant_types": list(client.grant_types),
            "response_types": list(client.response_types),
            "token_endpoint_auth_method": "none" if client.public else "client_secret_basic",
            "registration_client_uri": f"{self.endpoint}/{client.id}",
        }
        if client.logo_url:
            body["logo_uri"] = client.logo_url
        return body


def _with_token(client: Client, token_hash: str) -> Client:
    return replace(client, registration_token_hash=token_hash)
