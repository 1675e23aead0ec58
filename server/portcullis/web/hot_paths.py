"""The hottest requests answered in raw ASGI, in front of the Starlette app.

Discovery, JWKS and the token endpoint are what relying parties, kube-apiservers and kubectl
call all day. Through Starlette each of them crossed seven ASGI layers (three middlewares, the
exception middleware, the router, the mount, the route) and built a Request and a Response; a
profile of /keys under load spent more time there than in answering. This middleware sits
outermost and answers those requests itself, from a table of exact paths:

* **discovery and JWKS** (``GET``): the response head and body are built once — for JWKS once
  per key set, so a rotation (here or in another replica, which the key loop re-reads) changes
  the body and its ETag with the next request — and ``If-None-Match`` gets the 304 (these
  answers live in :class:`StaticAnswers`; the HTTP protocol of web.connection writes them
  itself for an exact-match request, before any ASGI call, and this middleware answers
  the rest, e.g. with a query string);
* **the token endpoint** (``POST``): the body is read under the same limit, parsed as Starlette
  parses a form, and handed to the same ``TokenEndpoint``; OAuth errors and an unavailable
  storage get the same answers as through the app.

It keeps what the layers it skips would have done: the security headers, the request counter
and latency histogram and the access log line of telemetry.AccessLogMiddleware. Anything it is
not sure to answer exactly as the app would goes to the app unchanged: another method, a CORS
request (``Origin``), a GET with a chunked body or one over the limit, a token request without
a Content-Length, over the limit or not a form, one with more fields than Starlette accepts, a
client that goes away mid-body. A request already read is replayed to the app, so nothing is
read twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

import orjson
from prometheus_client import Counter, Histogram
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from portcullis.keys.manager import KeyState
from portcullis.oidc.errors import OAuthError
from portcullis.oidc.provider import Provider
from portcullis.storage.base import StorageError
from portcullis.telemetry import Metrics
from portcullis.web.api import MAX_FORM_FIELDS, form_values, is_form, oauth_error_response
from portcullis.web.body_limit import DEFAULT_LIMIT, TOKEN_LIMIT
from portcullis.web.security import ClientIPResolver

log = logging.getLogger("portcullis.api")
access_log = logging.getLogger("portcullis.access")

Headers = list[tuple[bytes, bytes]]
ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]

_JSON = (b"content-type", b"application/json")
_NO_STORE = [(b"cache-control", b"no-store"), (b"pragma", b"no-cache")]


def parse_form(body: bytes) -> list[tuple[str, str]] | None:
    """An urlencoded body's (name, value) pairs exactly as Starlette's form parser
    (python-multipart's querystring parser) reads them: fields split on ``&``, empty ones
    skipped, a field without ``=`` is a name with an empty value, both sides decoded as
    latin-1 and then ``unquote_plus``. None when there are more fields than Starlette accepts
    (the app then answers as it does)."""
    items: list[tuple[str, str]] = []
    for field in body.split(b"&"):
        if not field:
            continue
        if len(items) == MAX_FORM_FIELDS:
            return None
        name, _, value = field.partition(b"=")
        items.append((unquote_plus(name.decode("latin-1")), unquote_plus(value.decode("latin-1"))))
    return items


@dataclass(frozen=True)
class StaticAnswer:
    """A precomputed GET answer: the 200 and the 304 with their heads, as ASGI header lists and
    as the header lines uvicorn would write for them (for the HTTP protocol's own answer)."""

    etag: bytes
    body: bytes
    ok: Headers
    not_modified: Headers
    ok_lines: bytes
    not_modified_lines: bytes


def _lines(headers: Headers) -> bytes:
    """``headers`` as uvicorn writes them: ``name: value`` and CRLF each, in order."""
    return b"".join(b"%s: %s\r\n" % (name, value) for name, value in headers)


class StaticAnswers:
    """Discovery and JWKS, built once, and the telemetry of every hot answer.

    Shared by :class:`HotPaths` (raw ASGI) and by the HTTP protocol of web.connection, which
    answers an exact-match GET for these paths before uvicorn creates a request task at all.
    ``security_headers`` are the SecurityHeadersMiddleware's (added to each answer unless it
    sets the header itself)."""

    def __init__(
        self, *, base: str, provider: Provider, metrics: Metrics, security_headers: dict[str, str]
    ) -> None:
        self.provider = provider
        self.security = [(k.lower().encode(), v.encode()) for k, v in security_headers.items() if v]
        self._requests = metrics.requests
        self._latency = metrics.latency
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        discovery = (
            f"{base}/.well-known/openid-configuration",
            f"{base}/.well-known/oauth-authorization-server",
            # RFC 8414 §3.1's location outside the issuer path (web.app's root_metadata).
            f"/.well-known/oauth-authorization-server{base}",
        )
        self.get: dict[str, Callable[[], StaticAnswer]] = dict.fromkeys(discovery, self._discovery)
        self.get[f"{base}/keys"] = self._jwks
        #: The same table by request target: only a target that is exactly one of these paths
        #: (no query, no escapes, not absolute-form) is answered by the protocol.
        self.get_raw: dict[bytes, tuple[str, Callable[[], StaticAnswer]]] = {
            path.encode(): (path, answer) for path, answer in self.get.items()
        }
        self._discovery_for: tuple[bytes, StaticAnswer] | None = None
        self._jwks_for: tuple[KeyState, StaticAnswer] | None = None

    # -- precomputed answers -------------------------------------------------------------
    def _static(self, body: bytes, etag: str, cache_control: str) -> StaticAnswer:
        # The heads web.api's Response objects produce, then the security headers.
        head = [(b"cache-control", cache_control.encode()), (b"etag", etag.encode())]
        ok = self.secure([*head, (b"content-length", str(len(body)).encode()), _JSON])
        not_modified = self.secure(head)
        return StaticAnswer(etag.encode(), body, ok, not_modified, _lines(ok), _lines(not_modified))

    def _discovery(self) -> StaticAnswer:
        document = self.provider.discovery
        cached = self._discovery_for
        if cached is None or cached[0] is not document:
            # Rendered by Provider.start(); built again should it ever be rendered again.
            etag = self.provider.discovery_etag
            cached = (document, self._static(document, etag, "public, max-age=3600"))
            self._discovery_for = cached
        return cached[1]

    def _jwks(self) -> StaticAnswer:
        state = self.provider.keys.cached()
        cached = self._jwks_for
        if cached is None or cached[0] is not state:
            # A new key set (rotation here or re-read from storage by the key loop).
            cached = (state, self._static(state.jwks_body, state.jwks_etag, "public, max-age=600"))
            self._jwks_for = cached
        return cached[1]

    def secure(self, headers: Headers) -> Headers:
        present = {name for name, _ in headers}
        return [*headers, *((n, v) for n, v in self.security if n not in present)]

    # -- telemetry -----------------------------------------------------------------------
    def record(
        self, path: str, method: str, status: int, elapsed: float, client: tuple[str, int] | None
    ) -> None:
        """What telemetry.AccessLogMiddleware records for a request (its route label is the
        route's full path, which for these exact paths is the path)."""
        key = (path, method, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self._requests.labels(path, method, str(status)),
                self._latency.labels(path),
            )
            self._children[key] = children
        counter: Counter = children[0]
        histogram: Histogram = children[1]
        counter.inc()
        histogram.observe(elapsed)
        if access_log.isEnabledFor(logging.DEBUG):
            access_log.debug(
                "%s %s %d %.1fms",
                method,
                path,
                status,
                elapsed * 1000,
                extra={
                    "fields": {
                        "method": method,
                        "path": path,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                        "remote": client[0] if client else "",
                    }
                },
            )


class HotPaths:
    """See the module docstring. ``static`` holds the precomputed answers and the telemetry;
    ``storage_unavailable`` is the app's handler for StorageError."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        base: str,
        provider: Provider,
        ip_resolver: ClientIPResolver,
        static: StaticAnswers,
        storage_unavailable: ErrorHandler,
    ) -> None:
        self.app = app
        self.provider = provider
        self.ip = ip_resolver
        self.storage_unavailable = storage_unavailable
        self.static = static
        self._secure = static.secure
        # The security headers a token answer gets (its own head names are fixed).
        self._token_security = self._secure([*_NO_STORE, (b"content-length", b""), _JSON])[4:]
        self._get = static.get
        self._token_path = f"{base}/token"

    # -- ASGI ----------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method = scope["method"]
            if method == "GET":
                static = self._get.get(scope["path"])
                if static is not None and await self._answer_get(scope, send, static):
                    return
            elif method == "POST" and scope["path"] == self._token_path:
                await self._token(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _answer_get(
        self, scope: Scope, send: Send, static: Callable[[], StaticAnswer]
    ) -> bool:
        start = time.perf_counter()
        if_none_match = None
        for name, value in scope["headers"]:
            if name == b"if-none-match":
                if if_none_match is None:
                    if_none_match = value
            elif name == b"content-length":
                # wrk and some clients send "Content-Length: 0" on a GET. A body is never read
                # here (nor by the app's GET routes); only one over the limit gets the app's 413.
                if not value.isdigit() or int(value) > DEFAULT_LIMIT:
                    return False
            elif name in (b"origin", b"transfer-encoding"):
                return False  # CORS headers, or a body of unknown length: the app's job
        answer = static()
        if if_none_match == answer.etag:
            await send(
                {"type": "http.response.start", "status": 304, "headers": answer.not_modified}
            )
            await send({"type": "http.response.body", "body": b""})
            self._record(scope, 304, start)
        else:
            await send({"type": "http.response.start", "status": 200, "headers": answer.ok})
            await send({"type": "http.response.body", "body": answer.body})
            self._record(scope, 200, start)
        return True

    async def _token(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        length = -1
        content_type = ""
        authorization: str | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                # Repeated or malformed: the app decides.
                length = TOKEN_LIMIT + 1 if length != -1 or not value.isdigit() else int(value)
            elif name == b"content-type":
                if not content_type:
                    content_type = value.decode("latin-1")
            elif name == b"authorization":
                if authorization is None:
                    authorization = value.decode("latin-1")
            elif name in (b"origin", b"transfer-encoding"):
                length = TOKEN_LIMIT + 1
        if not 0 <= length <= TOKEN_LIMIT or not is_form(content_type):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        chunks: list[bytes] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                await self.app(scope, _replay(messages, receive), send)  # client went away
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        items = parse_form(b"".join(chunks))
        if items is None:
            await self.app(scope, _replay(messages, receive), send)
            return
        status = 500
        try:
            status = await self._grant(scope, items, authorization, send)
        finally:
            self._record(scope, status, start)

    async def _grant(
        self, scope: Scope, items: list[tuple[str, str]], authorization: str | None, send: Send
    ) -> int:
        """Answer one token request as web.api.ApiRoutes.token does; returns the status."""
        request = Request(scope)
        try:
            form = form_values(items)
            result = await self.provider.tokens.handle(
                form, authorization, self.ip.resolve(request)
            )
        except OAuthError as error:
            log.info("token request refused: %s", error.error)
            return await self._send_response(oauth_error_response(error), scope, send)
        except StorageError as exc:
            return await self._send_response(
                await self.storage_unavailable(request, exc), scope, send
            )
        body = orjson.dumps(result)
        length = (b"content-length", str(len(body)).encode())
        headers = [*_NO_STORE, length, _JSON, *self._token_security]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return 200

    async def _send_response(self, response: Response, scope: Scope, send: Send) -> int:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = self._secure(list(message.get("headers", [])))
            await send(message)

        async def no_body() -> Message:  # Response never reads; here for the signature
            return {"type": "http.disconnect"}

        await response(scope, no_body, with_headers)
        return response.status_code

    def _record(self, scope: Scope, status: int, start: float) -> None:
        self.static.record(
            scope["path"], scope["method"], status, time.perf_counter() - start, scope.get("client")
        )


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that first returns what was already read, then reads on."""
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
