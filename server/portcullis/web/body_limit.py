"""Request-body size limits per route, enforced before anything parses the body.

Starlette's form parser reads the whole body into memory; without a bound one unauthenticated
request of 51 MB grew the process by 74 MB for good. This middleware answers 413 as soon as the
body is known to be too large: from ``Content-Length`` before a byte of it is read, or, for a
chunked body, from the running count of what the app has received, at which point reading
stops. The 413 carries ``Connection: close`` so the server does not go on draining the rest.

Limits (docs/endpoints.md): the token endpoints 64 KiB (a token-exchange subject token is the
largest legitimate field), the callback 512 KiB (a SAML response POSTed by the browser),
everything else (``/auth``, the login and approval forms, ``/userinfo``) 16 KiB.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

KIB = 1024
DEFAULT_LIMIT = 16 * KIB
TOKEN_LIMIT = 64 * KIB
CALLBACK_LIMIT = 512 * KIB


def route_limits(base: str) -> tuple[tuple[str, int], ...]:
    """(path prefix, limit) pairs for an issuer served under ``base``: a prefix matches the
    path itself and everything below it."""
    return (
        (f"{base}/token", TOKEN_LIMIT),
        (f"{base}/callback", CALLBACK_LIMIT),
    )


class BodyTooLargeError(Exception):
    """Raised into the app from ``receive`` once the body passes its limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body over {limit} bytes")
        self.limit = limit


def _message(limit: int) -> str:
    return f"request body too large (at most {limit} bytes on this endpoint)\n"


async def too_large_handler(request: Request, exc: Exception) -> Response:
    """Exception handler for every Starlette app the routes run in: a mounted app answers the
    exception itself (with a 500 by default) before the middleware outside it could."""
    limit = exc.limit if isinstance(exc, BodyTooLargeError) else 0
    return PlainTextResponse(
        _message(limit),
        status_code=413,
        headers={"Connection": "close", "Cache-Control": "no-store"},
    )


class BodyLimitMiddleware:
    """413 for a body over its route's limit; see the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        limits: Sequence[tuple[str, int]],
        default: int = DEFAULT_LIMIT,
    ) -> None:
        self.app = app
        self.limits = tuple(limits)
        self.default = default

    def limit_for(self, path: str) -> int:
        for prefix, limit in self.limits:
            if path == prefix or path.startswith(prefix + "/"):
                return limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = limit + 1  # the server's parser refuses these; never trust one
                if declared > limit:
                    await _too_large(send, limit)
                    return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLargeError(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLargeError:
            if started:
                raise
            await _too_large(send, limit)


async def _too_large(send: Send, limit: int) -> None:
    body = _message(limit).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
