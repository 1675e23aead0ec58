"""Bounds on what an unauthenticated caller can make the issuer store.

``/auth`` stores its parameters for the life of an authorization request (24 h by default)
before anyone has logged in, so without bounds one request could park megabytes in storage and a
loop of them could fill it. Two bounds apply, both checked before anything is written:

* :data:`AUTH_PARAMETER_LIMITS`: the length of every parameter the request keeps or acts on
  (generous next to what real clients send: kubelogin's state is 43 characters, a PKCE challenge
  43, a registered redirect URI rarely passes 200);
* :class:`PendingAuthLimit`: how many authorization requests one client IP may start in a
  window, counted in storage so every worker and replica shares the count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from portcullis.clock import Clock
from portcullis.oidc.errors import AuthorizeError
from portcullis.storage.base import Storage

#: Longest accepted value, in characters, of each /auth parameter (docs/endpoints.md).
AUTH_PARAMETER_LIMITS: Mapping[str, int] = {
    "client_id": 256,
    "redirect_uri": 2048,
    "response_type": 64,
    "response_mode": 32,
    "scope": 2048,
    "state": 2048,
    "nonce": 512,
    "code_challenge": 128,  # RFC 7636 §4.2: 43 to 128 characters
    "code_challenge_method": 16,
    "connector_id": 128,
    "login_hint": 256,
    "prompt": 64,
    "max_age": 16,
    "display": 32,
    "ui_locales": 128,
    "acr_values": 256,
}


def check_auth_parameter_lengths(params: Mapping[str, str]) -> None:
    """Raise AuthorizeError (invalid_request, naming the parameter) when one is too long.

    The error never redirects: the offending value may be the redirect URI or the state that a
    redirect would echo back."""
    for name, limit in AUTH_PARAMETER_LIMITS.items():
        value = params.get(name, "")
        if len(value) > limit:
            raise AuthorizeError(
                "invalid_request",
                f"the {name} parameter is too long ({len(value)} characters; at most {limit})",
            )


class TooManyPendingError(Exception):
    """This client IP started too many logins in the window; retry after ``retry_after`` s."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("too many login requests from this address")
        self.retry_after = retry_after


class PendingAuthLimit:
    """At most ``limit`` authorization requests per client IP per ``window`` seconds.

    Each attempt is counted before the request is parsed or stored, in one storage transaction
    (record and count), so parallel requests across workers cannot all slip under the limit.
    The count reuses storage's sliding-window attempt log under its own key prefix."""

    KEY_PREFIX = "pending-auth:ip:"

    def __init__(self, storage: Storage, clock: Clock, *, limit: int, window: float) -> None:
        self._storage = storage
        self._clock = clock
        self._limit = limit
        self._window = window

    def admit(self, client_ip: str) -> None:
        """Count one authorization request from ``client_ip``; raise TooManyPendingError when
        it is over the limit (it is then not stored)."""
        now = self._clock.now()
        count = self._storage.record_login_failure(self.KEY_PREFIX + client_ip, now, self._window)
        if count > self._limit:
            raise TooManyPendingError(retry_after=max(1, math.ceil(self._window)))
