"""web.connection's cork: the writes of one event-loop iteration leave together, in order.

On a real socket pair and a real transport (asyncio's and uvloop's): small writes wait for the
end of the iteration and then arrive whole and in order; ``close`` sends what is held before
closing; a write past ``CORK_LIMIT`` goes out at once, so flow control still sees it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest
import uvloop
from portcullis.web.connection import CORK_LIMIT, _CorkedTransport


def _available(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


async def _scenario() -> None:
    loop = asyncio.get_running_loop()
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
    corked = _CorkedTransport(transport, loop)  # type: ignore[arg-type]

    corked.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
    corked.write(b"body")
    assert _available(peer) == b""  # held until the iteration ends
    await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    assert _available(peer) == b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody"

    big = b"x" * (CORK_LIMIT + 1)
    corked.write(b"head")
    corked.write(big)
    at_once = _available(peer)  # written through, before the iteration ends
    assert at_once.startswith(b"head")
    await asyncio.sleep(0.01)
    assert at_once + _available(peer) == b"head" + big

    corked.write(b"last words")
    corked.close()
    await asyncio.sleep(0.01)
    assert _available(peer) == b"last words"
    assert corked.is_closing()
    peer.close()


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop])
def test_writes_of_one_iteration_leave_together(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_scenario())
