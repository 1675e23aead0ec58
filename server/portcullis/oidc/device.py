"""The device authorization grant's front half (RFC 8628 §3.1-3.3) and its redemption rules.

A device (a headless machine, ``kubectl`` over SSH) asks ``/device/code`` for a device code and a
user code; a person types the user code into ``/device`` on any browser, logs in through the
normal login state machine (``/auth`` with the device's client and Dex's redirect URI
``{issuer}/device/callback``), approves, and the device, polling ``/token``, gets tokens once.

Why the browser leg reuses ``/auth`` instead of a login of its own: every rule of a login (the
client's connectors, throttled passwords, upstream callbacks, approval) then holds for the
device flow too, with no second copy. The leg is bound to the device request by PKCE: the
verification page starts the authorization request with a challenge whose verifier only the
device request holds, so an authorization code for ``/device/callback`` completes exactly the
request whose page started it, never one an attacker started elsewhere.

Storage keeps only the SHA-256 of the device code (a bearer credential while the request
lives), and no tokens: they are minted when the approved request is redeemed, which happens at
most once (the redeeming transaction marks it consumed).

User codes are 8 letters from an alphabet without vowels or look-alikes (Dex's and RFC 8628
§6.1's advice: no 0/O, 1/I, no words), shown as ``XXXX-XXXX``; entry is case-insensitive and the
dash optional. 20^8 is about 2^34.6 codes; with a request living minutes and guesses throttled
per client IP (``web.passwordThrottle.maxFailuresPerIP`` per window, shared through storage),
guessing a live code is out of reach (RFC 8628 §5.1).

Storage methods here run in worker threads (the callers hand them off).
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from portcullis.clock import Clock
from portcullis.config.model import DEVICE_CODE_GRANT
from portcullis.oidc import pkce, scopes
from portcullis.oidc.clients import ClientRegistry, UntrustedAudienceError
from portcullis.oidc.errors import (
    OAuthError,
    access_denied,
    authorization_pending,
    expired_token,
    invalid_grant,
    invalid_scope,
    slow_down,
    unauthorized_client,
)
from portcullis.oidc.settings import ProtocolSettings
from portcullis.oidc.throttle import ThrottledError
from portcullis.storage.base import (
    AlreadyExistsError,
    CodeClientMismatchError,
    CodeReplayedError,
    NotFoundError,
    Storage,
)
from portcullis.storage.models import (
    DEVICE_APPROVED,
    DEVICE_CONSUMED,
    DEVICE_DENIED,
    DEVICE_PENDING,
    Client,
    DeviceRequest,
)

USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
USER_CODE_LENGTH = 8
#: RFC 8628 §3.2's default polling interval, and the §3.5 increase on every ``slow_down``.
POLL_INTERVAL = 5
SLOW_DOWN_STEP = 5
#: Dex's path for the browser leg's redirect URI (relative to the issuer).
DEVICE_CALLBACK_PATH = "/device/callback"
_THROTTLE_PREFIX = "device-ip:"


def new_user_code() -> str:
    return "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_LENGTH))


def format_user_code(code: str) -> str:
    """``XXXX-XXXX``: what people read and type."""
    return f"{code[:4]}-{code[4:]}"


def normalize_user_code(value: str) -> str | None:
    """The stored form of what a person typed (upper case, no dash or spaces), or None when it
    cannot be a user code at all (so it is not worth a storage lookup)."""
    cleaned = "".join(value.split()).replace("-", "").upper()
    if len(cleaned) != USER_CODE_LENGTH or any(c not in USER_CODE_ALPHABET for c in cleaned):
        return None
    return cleaned


def device_code_digest(device_code: str) -> str:
    return hashlib.sha256(device_code.encode()).hexdigest()


class DeviceVerificationError(Exception):
    """The browser leg cannot continue; the message is safe to show to the person."""


class DeviceFlow:
    def __init__(
        self,
        settings: ProtocolSettings,
        storage: Storage,
        clients: ClientRegistry,
        clock: Clock,
    ) -> None:
        self._settings = settings
        self._storage = storage
        self._clients = clients
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return DEVICE_CODE_GRANT in self._settings.grant_types

    @property
    def callback_uri(self) -> str:
        return self._settings.issuer + DEVICE_CALLBACK_PATH

    @property
    def verification_uri(self) -> str:
        return self._settings.issuer + "/device"

    # -- /device/code -----------------------------------------------------------------------
    def start(self, client: Client, scope: str) -> dict[str, Any]:
        """A new device request for an authenticated client: the RFC 8628 §3.2 response.
        Raises OAuthError."""
        if DEVICE_CODE_GRANT not in self._settings.client_grants(client):
            raise unauthorized_client("this client may not use the device flow")
        requested = scopes.parse_scopes(scope or "openid")
        try:
            scope_request = scopes.check_scopes(requested)
        except scopes.ScopeError as exc:
            raise invalid_scope(str(exc)) from None
        try:
            self._clients.check_audiences(client, scope_request.audiences)
        except UntrustedAudienceError as exc:
            raise invalid_scope(str(exc)) from None
        if (
            scopes.OFFLINE_ACCESS in requested
            and "refresh_token" not in self._settings.client_grants(client)
        ):
            raise invalid_scope("offline_access is not allowed for this client")
        now = self._clock.now()
        ttl = self._settings.device_request_ttl
        device_code = secrets.token_urlsafe(32)
        for _ in range(8):
            user_code = new_user_code()
            try:
                self._storage.create_device_request(
                    DeviceRequest(
                        id=device_code_digest(device_code),
                        user_code=user_code,
                        client_id=client.id,
                        scopes=requested,
                        expiry=now + ttl,
                        interval=POLL_INTERVAL,
                        pkce_verifier=secrets.token_urlsafe(48),
                    )
                )
                break
            except AlreadyExistsError:
                continue  # a live request holds this user code: draw another
        else:
            raise OAuthError(
                "temporarily_unavailable", "could not allocate a user code", status=503
            )
        shown = format_user_code(user_code)
        return {
            "device_code": device_code,
            "user_code": shown,
            "verification_uri": self.verification_uri,
            "verification_uri_complete": f"{self.verification_uri}?"
            + urlencode({"user_code": shown}),
            "expires_in": int(ttl),
            "interval": POLL_INTERVAL,
        }

    # -- /device (the person's side) ----------------------------------------------------------
    def verify_user_code(self, typed: str, client_ip: str) -> DeviceRequest:
        """The pending request a typed user code names. Wrong codes count against the
        caller's IP (ThrottledError once over the limit, checked before the lookup), so the
        page cannot be used to enumerate live codes. Raises DeviceVerificationError."""
        now = self._clock.now()
        key = _THROTTLE_PREFIX + client_ip
        window = self._settings.throttle_window
        if self._storage.login_failures(key, now, window) >= self._settings.throttle_per_ip:
            raise ThrottledError(retry_after=int(window))
        user_code = normalize_user_code(typed)
        request: DeviceRequest | None = None
        if user_code is not None:
            try:
                request = self._storage.get_device_request_by_user_code(user_code)
            except NotFoundError:
                request = None
        if request is None or request.expiry < now or request.status != DEVICE_PENDING:
            self._storage.record_login_failure(key, now, window)
            raise DeviceVerificationError(
                "That code is not valid or has expired. Check the code your device shows, or "
                "start again on the device."
            )
        return request

    def authorize_params(self, request: DeviceRequest) -> dict[str, str]:
        """The ``/auth`` parameters of the browser leg: the device's client and scopes, Dex's
        callback, the user code as state, and the PKCE challenge binding the leg to this
        request. ``prompt=consent`` shows the approval page even with
        ``skipApprovalScreen``: a person who followed someone else's link must see that they
        are handing a session to a device before it happens (RFC 8628 §5.4, remote
        phishing)."""
        return {
            "prompt": "consent",
            "client_id": request.client_id,
            "redirect_uri": self.callback_uri,
            "response_type": "code",
            "scope": " ".join(request.scopes),
            "state": request.user_code,
            "code_challenge": pkce.s256(request.pkce_verifier),
            "code_challenge_method": "S256",
        }

    def complete(self, params: Mapping[str, str]) -> DeviceRequest:
        """Finish the browser leg from ``/device/callback``'s parameters: an authorization
        code approves the request (the identity recorded), ``error=access_denied`` denies it.
        Raises DeviceVerificationError."""
        user_code = normalize_user_code(params.get("state", ""))
        if user_code is None:
            raise DeviceVerificationError("This device login is unknown.")
        try:
            request = self._storage.get_device_request_by_user_code(user_code)
        except NotFoundError:
            raise DeviceVerificationError("This device login is unknown or has expired.") from None
        now = self._clock.now()
        if request.expiry < now:
            raise DeviceVerificationError("This device login has expired. Start again.")
        if request.status != DEVICE_PENDING:
            raise DeviceVerificationError("This device login was already finished.")
        error = params.get("error", "")
        if error:
            if error != "access_denied":
                raise DeviceVerificationError("The login failed. Start again on the device.")
            return self._decide(request.id, DEVICE_DENIED)
        code_value = params.get("code", "")
        if not code_value:
            raise DeviceVerificationError("The login did not return a result.")
        try:
            code = self._storage.consume_auth_code(code_value, now, request.client_id)
        except (NotFoundError, CodeReplayedError, CodeClientMismatchError):
            raise DeviceVerificationError("This login result is invalid or was used.") from None
        if (
            code.client_id != request.client_id
            or code.redirect_uri != self.callback_uri
            or code.expiry < now
            or not code.pkce.code_challenge
            or not pkce.verify(
                request.pkce_verifier, code.pkce.code_challenge, code.pkce.code_challenge_method
            )
        ):
            raise DeviceVerificationError("This login result does not belong to this device.")
        return self._decide(
            request.id,
            DEVICE_APPROVED,
            lambda r: dataclasses.replace(
                r,
                identity=code.identity,
                connector_id=code.connector_id,
                auth_time=code.auth_time,
                scopes=code.scopes,
            ),
        )

    def _decide(
        self,
        request_id: str,
        status: str,
        extra: Any = None,
    ) -> DeviceRequest:
        decided = False

        def decide(current: DeviceRequest) -> DeviceRequest:
            nonlocal decided
            # Only a pending request is decided, once (two tabs racing: the first wins).
            if current.status != DEVICE_PENDING:
                decided = False
                return current
            decided = True
            updated = dataclasses.replace(current, status=status)
            return extra(updated) if extra is not None else updated

        try:
            result = self._storage.update_device_request(request_id, decide)
        except NotFoundError:
            raise DeviceVerificationError("This device login has expired. Start again.") from None
        if not decided:
            raise DeviceVerificationError("This device login was already finished.")
        return result

    # -- /token polling -----------------------------------------------------------------------
    def redeem(self, client: Client, device_code: str) -> DeviceRequest:
        """One poll (RFC 8628 §3.4-3.5): the approved request, now consumed, or an OAuthError
        (``authorization_pending``, ``slow_down``, ``expired_token``, ``access_denied``,
        ``invalid_grant``). The decision and the bookkeeping (last poll, a grown interval,
        consumption) happen in one storage transaction, so concurrent polls through several
        workers or replicas redeem a code at most once."""
        now = self._clock.now()
        outcome: OAuthError | None = None

        def poll(current: DeviceRequest) -> DeviceRequest:
            nonlocal outcome
            outcome = None
            if current.client_id != client.id:
                outcome = invalid_grant("the device code was issued to another client")
                return current
            if current.expiry < now:
                outcome = expired_token("the device code has expired; start again")
                return current
            if current.status == DEVICE_CONSUMED:
                outcome = invalid_grant("the device code was already used")
                return current
            if current.last_poll and now - current.last_poll < current.interval:
                interval = current.interval + SLOW_DOWN_STEP
                outcome = slow_down(int(interval))
                return dataclasses.replace(current, interval=interval, last_poll=now)
            polled = dataclasses.replace(current, last_poll=now)
            if current.status == DEVICE_PENDING:
                outcome = authorization_pending()
                return polled
            if current.status == DEVICE_DENIED:
                outcome = access_denied("the user denied the request")
                return polled
            return dataclasses.replace(polled, status=DEVICE_CONSUMED)

        try:
            redeemed = self._storage.update_device_request(device_code_digest(device_code), poll)
        except NotFoundError:
            raise invalid_grant("the device code is invalid") from None
        if outcome is not None:
            raise outcome
        if redeemed.identity is None:  # approved always records one; never issue without
            raise invalid_grant("the device login is incomplete")
        return redeemed
