"""web.connection at shutdown: a kept-alive connection whose next request is already in the
socket, unread, when the server starts draining gets that request answered (with
``connection: close``) instead of a reset.

uvicorn's ``Server.shutdown`` asks every connection to shut down synchronously, in one step of
the event loop. A client that sent its next request on a kept-alive connection a moment before
has it in the server's socket buffer, but the loop has not read it yet: closing the socket then
resets the connection, and the client sees its request fail without an answer although the
server had received it. The test makes that moment exact: the request is sent and the shutdown
begun in the same step of the loop, before the loop can read the socket.
"""

from __future__ import annotations

import asyncio
import socket
import textwrap
import time

import uvicorn
import uvloop
from portcullis.issuer import create_issuer, parse_config
from portcullis.storage.memory import MemoryStorage
from portcullis.web.connection import ConnectionBounds, protocol_class

BOUNDS = ConnectionBounds(idle=5.0, read_header=2.0, read_body=2.0)
CONFIG = textwrap.dedent(
    """
    issuer: http://127.0.0.1:5556/dex
    storage: {type: memory}
    web: {http: 127.0.0.1:5556}
    connectors: [{type: mockCallback, id: mock, name: Mock}]
    """
)


def _request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def _read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length body (what these paths answer)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data + b"<reset>"
        if not chunk:
            return data
        data += chunk


def _serve_and_drain(path: str, *, static: bool) -> tuple[bytes, bytes]:
    """A kept-alive connection's first answer, and what it gets for a second request sent in
    the same loop step as the shutdown."""
    issuer = create_issuer(parse_config(CONFIG), storage=MemoryStorage())
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    config = uvicorn.Config(
        issuer.app,
        http=protocol_class(BOUNDS, issuer.static_answers if static else None),
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,
    )
    server = uvicorn.Server(config)

    async def scenario() -> tuple[bytes, bytes]:
        config.load()  # what Server.serve does before its start-up
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[listener])
        client = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            client.sendall(_request(path))
            first = await asyncio.to_thread(_read_response, client)
            client.sendall(_request(path))
            time.sleep(0.1)  # on purpose, on the loop: the request arrives, nobody reads it
            await server.shutdown(sockets=[listener])  # connection.shutdown() before any await
            second = await asyncio.to_thread(_read_until_closed, client)
        finally:
            client.close()
        return first, second

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(scenario())


def test_a_request_waiting_in_a_kept_alive_connection_is_answered_at_shutdown() -> None:
    """Through uvicorn's request cycle (a path the protocol does not answer itself)."""
    first, second = _serve_and_drain("/dex/healthz", static=False)
    assert first.startswith(b"HTTP/1.1 200")
    assert b"connection: close" not in first.lower()  # kept alive
    assert second.startswith(b"HTTP/1.1 200"), second[:200]
    assert b"\r\nconnection: close\r\n" in second.lower()


def test_a_static_answer_waiting_in_a_kept_alive_connection_is_answered_at_shutdown() -> None:
    """Through the protocol's own answers (discovery), which must honour the drain as well."""
    first, second = _serve_and_drain("/dex/.well-known/openid-configuration", static=True)
    assert first.startswith(b"HTTP/1.1 200")
    assert second.startswith(b"HTTP/1.1 200"), second[:200]
    assert b"\r\nconnection: close\r\n" in second.lower()
