"""Browser-facing protections: security headers, the per-login browser binding cookie and the
CSRF tokens derived from it, client IP resolution behind trusted proxies."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'"
)

_BINDING_COOKIE_PREFIX = "pcb_"


def default_headers(https: bool) -> dict[str, str]:
    headers = {
        "Content-Security-Policy": DEFAULT_CSP,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
    }
    if https:
        headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
    return headers


class SecurityHeadersMiddleware:
    """Adds the configured security headers to every response that does not set its own."""

    def __init__(self, app: ASGIApp, headers: dict[str, str]) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items() if v]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in self.headers if n not in present]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


# -- browser binding + CSRF ----------------------------------------------------------------


def new_binding() -> str:
    return secrets.token_urlsafe(32)


def binding_digest(binding: str) -> str:
    return hashlib.sha256(binding.encode()).hexdigest()


def binding_cookie_name(request_id: str) -> str:
    # One cookie per login so two tabs logging in at once do not clobber each other.
    return _BINDING_COOKIE_PREFIX + hashlib.sha256(request_id.encode()).hexdigest()[:16]


def browser_owns(request: Request, request_id: str, stored_digest: str) -> bool:
    cookie = request.cookies.get(binding_cookie_name(request_id), "")
    return bool(cookie) and hmac.compare_digest(binding_digest(cookie), stored_digest)


def has_binding_cookie(request: Request, request_id: str) -> bool:
    return bool(request.cookies.get(binding_cookie_name(request_id)))


def csrf_token(request: Request, request_id: str) -> str:
    return csrf_token_for(request.cookies.get(binding_cookie_name(request_id), ""), request_id)


def csrf_token_for(binding: str, request_id: str) -> str:
    """The CSRF token for a binding value (a page that sets the cookie in the same response
    has no cookie in the request yet)."""
    return hmac.new(binding.encode(), f"csrf:{request_id}".encode(), hashlib.sha256).hexdigest()


def csrf_valid(request: Request, request_id: str, submitted: str) -> bool:
    if not request.cookies.get(binding_cookie_name(request_id)):
        return False
    return hmac.compare_digest(csrf_token(request, request_id), submitted)


# -- client IP -------------------------------------------------------------------------------


class ClientIPResolver:
    """The client address, trusting the forwarding header only from configured proxies."""

    def __init__(self, header: str, trusted_proxies: list[str]) -> None:
        self._header = header.lower()
        self._trusted = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)

    def resolve(self, request: Request) -> str:
        peer = request.client.host if request.client else "unknown"
        if not self._header or not self._is_trusted(peer):
            return peer
        value = request.headers.get(self._header, "")
        hops = [h.strip() for h in value.split(",") if h.strip()]
        # Walk from the nearest hop outwards; the first untrusted address is the client.
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                try:
                    return str(ipaddress.ip_address(hop))
                except ValueError:
                    return peer
        return hops[0] if hops else peer
