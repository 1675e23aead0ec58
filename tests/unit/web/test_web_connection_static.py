"""web.connection answers exact-match discovery and JWKS GETs itself, byte for byte as the app.

Two real uvicorn servers in one uvloop event loop serve the same issuer app over loopback with
the same connection bounds: one with the protocol's static answers (as ``serve`` runs the main
app), one without (every request through uvicorn's request cycle and web.hot_paths). The same
raw requests go to both and the raw responses must be identical, only the Date header's value
masked: 200 and 304 answers, ``Connection: close``, keep-alive and pipelining, requests that
must fall through (a query, a body, an Origin, HEAD, HTTP/1.0, an upgrade, 100-continue), and
the connection bounds of issue 9 (431, one Host, 408 for a late head, the idle timeout after a
static answer). The fast server's app must never see an exact-match GET, the slow one's must;
both count each answer once in the metrics; JWKS follows a key rotation with the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
import uvloop
from portcullis.issuer import Issuer, create_issuer, parse_config
from portcullis.storage.memory import MemoryStorage
from portcullis.web.connection import ConnectionBounds, protocol_class

from tests.support import raw_http

ISSUER = "http://127.0.0.1:5556/dex"
SECRET = "static-secret-0123456789abcdef"
PATHS = (
    "/dex/.well-known/openid-configuration",
    "/dex/.well-known/oauth-authorization-server",
    "/.well-known/oauth-authorization-server/dex",
    "/dex/keys",
)
BOUNDS = ConnectionBounds(
    idle=1.0, read_header=1.0, read_body=1.0, max_headers=20, max_header_line_bytes=512
)
DATE = re.compile(rb"\r\ndate: [^\r]*\r\n")


def _config() -> str:
    return textwrap.dedent(
        f"""
        issuer: {ISSUER}
        storage: {{type: memory}}
        web: {{http: 127.0.0.1:5556, allowedOrigins: ["https://app.example"]}}
        oauth2: {{grantTypes: [authorization_code, refresh_token, client_credentials]}}
        staticClients:
          - id: svc
            secret: {SECRET}
            redirectURIs: ["http://127.0.0.1:5555/callback"]
        connectors: [{{type: mockCallback, id: mock, name: Mock}}]
        """
    )


@dataclass
class Servers:
    issuer: Issuer
    fast: int  # port: protocol with static answers
    slow: int  # port: the same protocol without them
    seen: dict[int, list[str]] = field(default_factory=dict)  # port -> "METHOD path" the app saw

    def both(self, request: bytes, deadline: float = 5.0) -> tuple[bytes, bytes]:
        """The raw answers of the fast and the slow server to ``request`` (sent whole, read
        until the server closes or ``deadline``), the Date header's value masked."""
        return self._one(self.fast, request, deadline), self._one(self.slow, request, deadline)

    @staticmethod
    def _one(port: int, request: bytes, deadline: float) -> bytes:
        with raw_http.connect(port) as sock:
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                sock.sendall(request)
            return DATE.sub(b"\r\ndate: -\r\n", _read_until_closed(sock, deadline))


def _read_until_closed(sock: socket.socket, deadline: float) -> bytes:
    data = b""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        sock.settimeout(max(0.05, end - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
    return data


def _recording(app: Any, seen: list[str]) -> Any:
    async def recording(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append(f"{scope['method']} {scope['path']}")
        await app(scope, receive, send)

    return recording


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    issuer = create_issuer(parse_config(_config()), storage=MemoryStorage())
    assert issuer.static_answers is not None
    sockets = []
    for _ in range(2):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        sockets.append(sock)
    fast_port, slow_port = (sock.getsockname()[1] for sock in sockets)
    result = Servers(issuer, fast_port, slow_port, {fast_port: [], slow_port: []})
    uv_servers = []
    for sock, static, lifespan in (
        (sockets[0], issuer.static_answers, "on"),
        (sockets[1], None, "off"),
    ):
        config = uvicorn.Config(
            _recording(issuer.app, result.seen[sock.getsockname()[1]]),
            http=protocol_class(BOUNDS, static),
            lifespan=lifespan,
            timeout_keep_alive=1,
            access_log=False,
            log_config=None,
            server_header=False,
            proxy_headers=False,
        )
        uv_servers.append((uvicorn.Server(config), sock))
    # As serve's logging set-up leaves it: uvicorn's access log (which prints query strings)
    # is off; the issuer's own access log is the one both servers write.
    access = logging.getLogger("uvicorn.access")
    was_disabled, access.disabled = access.disabled, True
    ready = threading.Event()

    async def serve() -> None:
        tasks = [asyncio.create_task(s.serve(sockets=[sock])) for s, sock in uv_servers]
        while not all(s.started for s, _ in uv_servers):
            await asyncio.sleep(0.01)
        ready.set()
        await asyncio.gather(*tasks)

    def run() -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(20), "the servers did not start"
    try:
        yield result
    finally:
        for s, _ in uv_servers:
            s.should_exit = True
        thread.join(10)
        for sock in sockets:
            sock.close()
        access.disabled = was_disabled


def _get(path: str, *extra: str, version: str = "1.1", method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: 127.0.0.1", *extra, "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _kept_alive(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: h\r\n\r\n".encode()


def _etag(response: bytes) -> str:
    match = re.search(rb"\r\netag: ([^\r]*)\r\n", response)
    assert match, response
    return match.group(1).decode()


def test_static_answers_are_the_apps_byte_for_byte(servers: Servers) -> None:
    for path in PATHS:
        fast, slow = servers.both(_get(path))
        assert fast == slow
        assert fast.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\nconnection: close\r\n" in fast
        assert b"\r\nx-frame-options: DENY\r\n" in fast.lower().replace(b"deny", b"DENY")
        etag = _etag(fast)
        for extra, status in (
            (f"If-None-Match: {etag}", b"304"),
            ('If-None-Match: "other"', b"200"),
            ("Content-Length: 0", b"200"),
            ("X-Anything: at all", b"200"),
        ):
            fast, slow = servers.both(_get(path, extra))
            assert fast == slow, extra
            assert fast.startswith(b"HTTP/1.1 " + status), extra


def test_requests_that_fall_through_get_the_apps_answer(servers: Servers) -> None:
    keys = "/dex/keys"
    for request in (
        _get(keys + "?x=1"),
        _get("/dex/%6beys"),
        _get("http://127.0.0.1/dex/keys"),
        _get(keys, "Content-Length: 5") + b"hello",
        _get(keys, "Origin: https://app.example"),
        _get(keys, "Origin: https://elsewhere.example"),
        _get(keys, method="HEAD"),
        _get(keys, method="POST"),
        _get(keys, version="1.0"),
        b"GET /dex/keys HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n",
        _get(keys, "Expect: 100-continue"),
        _get(keys, "Upgrade: websocket", "Connection: upgrade"),
        _get(keys, "Transfer-Encoding: chunked") + b"0\r\n\r\n",
        _get("/dex/keys/"),
        _get("/dex/healthz"),
    ):
        fast, slow = servers.both(request)
        assert fast == slow, request
        assert fast.startswith(b"HTTP/1."), request


def test_keep_alive_and_pipelining_keep_order_and_bytes(servers: Servers) -> None:
    keys, discovery = PATHS[3], PATHS[0]
    token = (
        b"POST /dex/token HTTP/1.1\r\nHost: h\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 29\r\n\r\n"
        b"grant_type=client_credentials"
    )
    for request in (
        _kept_alive(keys) + _kept_alive(discovery) + _get(keys),  # three in one packet
        token + _kept_alive(keys) + _get(discovery),  # a static GET behind an app request
        _kept_alive(keys) + token + _get("/dex/healthz"),
    ):
        fast, slow = servers.both(request)
        assert fast == slow, request
        assert fast.count(b"HTTP/1.1 ") == 3
    # The same request sent one after the other on one kept-alive connection.
    with raw_http.connect(servers.fast) as sock:
        for _ in range(3):
            sock.sendall(_kept_alive(keys))
            answer = raw_http.read_response(sock, 5)
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"connection: close" not in answer


def test_connection_bounds_apply_before_a_static_answer(servers: Servers) -> None:
    keys = "/dex/keys"
    many = [f"X-H{i}: v" for i in range(BOUNDS.max_headers + 1)]
    for request, status in (
        (_get(keys, *many), b"431"),
        (_get(keys, "X-Long: " + "a" * BOUNDS.max_header_line_bytes), b"431"),
        (_get(keys, "Host: second.example"), b"400"),
        (b"GET /dex/keys HTTP/1.1\r\nConnection: close\r\n\r\n", b"400"),
        (_get(keys)[:-2], b"408"),  # the head never ends
    ):
        fast, slow = servers.both(request)
        assert fast == slow, request
        assert fast.startswith(b"HTTP/1.1 " + status), (request, fast)
    # After a static answer the idle timeout closes a kept-alive connection.
    with raw_http.connect(servers.fast) as sock:
        sock.sendall(b"GET /dex/keys HTTP/1.1\r\nHost: h\r\n\r\n")
        assert raw_http.read_response(sock, 5).startswith(b"HTTP/1.1 200 OK\r\n")
        start = time.monotonic()
        assert _read_until_closed(sock, 10) == b""
        assert time.monotonic() - start < BOUNDS.idle + 2


def test_the_protocol_answers_exact_gets_without_the_app(servers: Servers) -> None:
    for port in (servers.fast, servers.slow):
        servers.seen[port].clear()
    for path in PATHS:
        servers.both(_get(path))
    servers.both(_get("/dex/keys?x=1"))
    assert servers.seen[servers.fast] == ["GET /dex/keys"]  # only the one with a query
    assert servers.seen[servers.slow] == [*(f"GET {p}" for p in PATHS), "GET /dex/keys"]


def test_each_answer_is_counted_once_like_the_apps(servers: Servers) -> None:
    registry = servers.issuer.metrics.registry

    def count(path: str, code: str) -> float:
        labels = {"route": path, "method": "GET", "code": code}
        return registry.get_sample_value("portcullis_http_requests_total", labels) or 0.0

    def latency(path: str) -> float:
        labels = {"route": path}
        return (
            registry.get_sample_value("portcullis_http_request_duration_seconds_count", labels)
            or 0.0
        )

    for path in PATHS:
        for port in (servers.fast, servers.slow):
            before = count(path, "200"), latency(path)
            servers._one(port, _get(path), 5)
            assert (count(path, "200"), latency(path)) == (before[0] + 1, before[1] + 1)


def test_jwks_follows_a_rotation_with_the_next_request(servers: Servers) -> None:
    before, _ = servers.both(_get("/dex/keys"))
    keys = servers.issuer.provider.keys
    assert keys.rotate_if_due(force=True)
    fast, slow = servers.both(_get("/dex/keys"))
    assert fast == slow
    assert _etag(fast) != _etag(before)
    assert keys.cached().signing_kid.encode() in fast
