"""BodyLimitMiddleware in-process: 413 from Content-Length before the body is read, 413 from the
running count of a streamed body with reading stopped, per-route limits (issue 9, finding 3)."""

from __future__ import annotations

import anyio
import pytest
from portcullis.web.body_limit import (
    CALLBACK_LIMIT,
    DEFAULT_LIMIT,
    TOKEN_LIMIT,
    BodyLimitMiddleware,
    route_limits,
)
from starlette.types import Message, Receive, Scope, Send

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Recorder:
    """An app that reads the whole body (as a form parser does) and answers 200."""

    def __init__(self) -> None:
        self.body = b""
        self.called = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.called = True
        while True:
            message = await receive()
            self.body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def _call(
    path: str, chunks: list[bytes], content_length: int | None = None
) -> tuple[Recorder, list[Message], int]:
    app = Recorder()
    middleware = BodyLimitMiddleware(app, route_limits("/dex"))
    headers = [(b"host", b"x")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope: Scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    sent: list[Message] = []
    pulled = 0

    async def receive() -> Message:
        nonlocal pulled
        pulled += 1
        if pulled > len(chunks):
            await anyio.sleep_forever()
        return {
            "type": "http.request",
            "body": chunks[pulled - 1],
            "more_body": pulled < len(chunks),
        }

    async def send(message: Message) -> None:
        sent.append(message)

    await middleware(scope, receive, send)
    return app, sent, pulled


def _status(sent: list[Message]) -> int:
    status: int = sent[0]["status"]
    return status


def test_limits_by_route() -> None:
    middleware = BodyLimitMiddleware(Recorder(), route_limits("/dex"))
    assert middleware.limit_for("/dex/token") == TOKEN_LIMIT
    assert middleware.limit_for("/dex/token/introspect") == TOKEN_LIMIT
    assert middleware.limit_for("/dex/callback") == CALLBACK_LIMIT
    assert middleware.limit_for("/dex/callback/saml") == CALLBACK_LIMIT
    assert middleware.limit_for("/dex/auth") == DEFAULT_LIMIT
    assert middleware.limit_for("/dex/tokens") == DEFAULT_LIMIT
    assert middleware.limit_for("/dex/auth/local/login") == DEFAULT_LIMIT


async def test_a_declared_length_over_the_limit_is_413_before_reading() -> None:
    app, sent, pulled = await _call("/dex/auth", [b"x"], content_length=51 * 1024 * 1024)
    assert _status(sent) == 413
    assert (b"connection", b"close") in sent[0]["headers"]
    assert not app.called
    assert pulled == 0


async def test_a_streamed_body_over_the_limit_is_413_and_reading_stops() -> None:
    chunk = b"a" * 4096
    app, sent, pulled = await _call("/dex/auth", [chunk] * 1000)
    assert _status(sent) == 413
    assert pulled == DEFAULT_LIMIT // len(chunk) + 1  # stopped at the first chunk over
    assert len(app.body) <= DEFAULT_LIMIT  # the app never held more than the limit


async def test_a_body_within_the_limit_reaches_the_app() -> None:
    body = b"grant_type=x&" + b"a" * (TOKEN_LIMIT - 100)
    app, sent, _ = await _call("/dex/token", [body[:1000], body[1000:]], content_length=len(body))
    assert _status(sent) == 200
    assert app.body == body
