"""web.balance: workers sharing a listening socket take its connections in turn.

The shares are real shared memory (checked across a real fork); the acceptors run on real
event loops (asyncio's and uvloop's) against a real listening socket and real clients. Two
acceptors in one loop, each with its own slot, stand for two workers: a burst of connections
ends up split evenly whatever the order the loop wakes them in; a worker that holds more than
its share leaves new connections to the other; one that holds more but finds the other not
accepting takes the connection after ``DEFER_LIMIT``, at once if the other is not serving at
all. TLS connections are set up through the acceptor too, and a failed handshake is dropped
without a trace in the count.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop
from portcullis.web import balance
from portcullis.web.balance import (
    DEFER_LIMIT,
    NOT_SERVING,
    BalancedAcceptor,
    ConnectionShares,
    WorkerSlot,
)

from tests.support.kube import make_serving_cert

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def _run(loop_name: str, scenario: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        runner.run(asyncio.wait_for(scenario, 30))


def _listening() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


class _Counted(asyncio.Protocol):
    """Counts its connection in the slot as web.connection's protocol does, and answers
    ``hello`` with ``hi`` so a client knows it was set up."""

    def __init__(self, slot: WorkerSlot, made: list[_Counted]) -> None:
        self.slot = slot
        self.made = made
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.slot.change(+1)
        self.made.append(self)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if data == b"hello":
            self.transport.write(b"hi")

    def connection_lost(self, exc: Exception | None) -> None:
        self.slot.release()


class _Worker:
    """One acceptor with its slot: a stand-in for one worker of ``serve --workers N``. Each
    watches its own descriptor of the shared socket, as each worker does after the fork (one
    event loop watches a descriptor once)."""

    def __init__(
        self,
        shares: ConnectionShares,
        index: int,
        sock: socket.socket,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.slot = shares.slot(index)
        self.made: list[_Counted] = []
        self.sock = sock.dup()
        self.acceptor = BalancedAcceptor(
            asyncio.get_running_loop(),
            self.sock,
            lambda: _Counted(self.slot, self.made),
            self.slot,
            ssl_context=tls,
        )


async def _hello(port: int, tls: ssl.SSLContext | None = None) -> asyncio.StreamWriter:
    """A client connection that has been set up by some worker (it got its answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    writer.write(b"hello")
    await writer.drain()
    assert await reader.readexactly(2) == b"hi"
    return writer


async def _close(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()
    await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)


# -- the shared counts ------------------------------------------------------------------------
def test_slots_start_not_serving_and_publish_only_while_serving() -> None:
    shares = ConnectionShares(3)
    assert shares.workers == 3
    assert shares.counts() == [NOT_SERVING] * 3
    slot = shares.slot(1)
    slot.change(+2)  # held before serving (a connection still being set up): not published
    assert shares.counts() == [NOT_SERVING] * 3
    slot.serve()
    assert shares.counts() == [NOT_SERVING, 2, NOT_SERVING]
    slot.change(-1)
    assert shares.counts()[1] == 1
    slot.stop()
    slot.change(-1)
    assert shares.counts()[1] == NOT_SERVING
    assert slot.held == 0


def test_over_share_compares_with_the_least_loaded_serving_other() -> None:
    shares = ConnectionShares(3)
    mine, second, third = shares.slot(0), shares.slot(1), shares.slot(2)
    mine.serve()
    mine.change(+5)
    assert not mine.over_share()  # nobody else serves: every connection is ours
    second.serve()
    second.change(+7)
    assert not mine.over_share()
    third.serve()
    third.change(+4)
    assert mine.over_share()  # 5 against the third's 4
    third.change(+1)
    assert not mine.over_share()  # a tie is not more than a share
    shares.retire(2)  # the third died: only the second counts
    assert not mine.over_share()
    second.change(-3)
    assert mine.over_share()


def test_bad_worker_counts_and_indexes_are_refused() -> None:
    with pytest.raises(ValueError, match="workers must be at least 1"):
        ConnectionShares(0)
    with pytest.raises(IndexError, match=r"worker index 2 outside 0\.\.1"):
        ConnectionShares(2).slot(2)


def test_the_counts_are_shared_with_a_forked_worker() -> None:
    shares = ConnectionShares(2)
    pid = os.fork()
    if pid == 0:  # the worker: publishes, then leaves without running any pytest code
        try:
            slot = shares.slot(1)
            slot.serve()
            slot.change(+3)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert shares.counts() == [NOT_SERVING, 3]
    shares.retire(1)
    assert shares.counts() == [NOT_SERVING, NOT_SERVING]


# -- accepting ---------------------------------------------------------------------------------
class _Workers:
    """A listening socket and ``count`` workers sharing it (acceptors not started yet)."""

    def __init__(self, count: int, tls: ssl.SSLContext | None = None) -> None:
        self.sock = _listening()
        self.port: int = self.sock.getsockname()[1]
        self.shares = ConnectionShares(count)
        self.workers = [_Worker(self.shares, index, self.sock, tls) for index in range(count)]
        self.writers: list[asyncio.StreamWriter] = []

    async def hello(self, tls: ssl.SSLContext | None = None) -> float:
        """Open a connection that some worker set up; returns the seconds that took."""
        started = time.monotonic()
        self.writers.append(await _hello(self.port, tls))
        return time.monotonic() - started

    async def close(self) -> None:
        await _close(self.writers)
        for worker in self.workers:
            worker.acceptor.close()
            await worker.acceptor.wait_closed()
            worker.sock.close()
        self.sock.close()


def _scenario(
    count: int, body: Callable[[_Workers], Coroutine[Any, Any, None]], tls: ssl.SSLContext | None
) -> Callable[[], Coroutine[Any, Any, None]]:
    async def scenario() -> None:
        workers = _Workers(count, tls)
        try:
            await body(workers)
        finally:
            await workers.close()

    return scenario


def _run_with(
    loop_name: str,
    count: int,
    body: Callable[[_Workers], Coroutine[Any, Any, None]],
    tls: ssl.SSLContext | None = None,
) -> None:
    _run(loop_name, _scenario(count, body, tls)())


async def _until(condition: Callable[[], bool], what: Callable[[], object]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, what()
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_burst_of_connections_is_split_evenly(loop_name: str) -> None:
    async def body(pool: _Workers) -> None:
        first, second = pool.workers
        # Queued before anyone accepts, as when both workers are busy when a burst arrives.
        raw = [socket.create_connection(("127.0.0.1", pool.port)) for _ in range(30)]
        first.acceptor.start()
        second.acceptor.start()
        await asyncio.gather(*(pool.hello() for _ in range(10)))

        def made() -> tuple[int, int]:
            return len(first.made), len(second.made)

        await _until(lambda: sum(made()) == 40, made)
        assert abs(len(first.made) - len(second.made)) <= 1, made()
        assert pool.shares.counts() == list(made())
        for conn in raw:
            conn.close()
        await _close(pool.writers)
        # every loss is counted too
        await _until(lambda: pool.shares.counts() == [0, 0], pool.shares.counts)
        first.acceptor.close()
        second.acceptor.close()
        assert pool.shares.counts() == [NOT_SERVING, NOT_SERVING]

    _run_with(loop_name, 2, body)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_worker_over_its_share_leaves_new_connections_to_the_other(loop_name: str) -> None:
    async def body(pool: _Workers) -> None:
        busy, light = pool.workers
        busy.slot.change(+4)  # holds four connections already
        busy.acceptor.start()
        light.acceptor.start()
        for _ in range(4):
            await pool.hello()
        assert (len(busy.made), len(light.made)) == (0, 4)
        for _ in range(2):  # now even: either may take them
            await pool.hello()
        assert len(busy.made) + len(light.made) == 6
        assert abs(pool.shares.counts()[0] - pool.shares.counts()[1]) <= 1
        busy.slot.change(-4)

    _run_with(loop_name, 2, body)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_worker_that_does_not_accept_holds_a_connection_up_at_most_the_defer_limit(
    loop_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ten times the real limit, so "at once" and "after the limit" stay apart on a loaded
    # machine, where a loopback round trip can take tens of milliseconds.
    limit = DEFER_LIMIT * 10
    monkeypatch.setattr(balance, "DEFER_LIMIT", limit)

    async def body(pool: _Workers) -> None:
        running = pool.workers[0]
        stuck = pool.shares.slot(1)
        stuck.serve()  # serving, holding nothing, but never accepting (a stopped process)
        running.acceptor.start()
        assert await pool.hello() < limit * 0.8  # 0 against 0: taken at once
        for _ in range(3):  # over its share each time: waits for the other, then takes it
            waited = await pool.hello()
            assert limit <= waited < limit + 5.0, waited
        assert len(running.made) == 4
        stuck.stop()  # it is draining, or the parent saw it die: no waiting any more
        assert await pool.hello() < limit * 0.8

    _run_with(loop_name, 2, body)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_paused_worker_resumes_as_soon_as_it_lets_a_connection_go(
    loop_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Short connections (one request each): waiting out the whole pause left a worker idle
    # while connections queued.
    monkeypatch.setattr(balance, "RETRY", 30.0)
    monkeypatch.setattr(balance, "DEFER_LIMIT", 60.0)

    async def body(pool: _Workers) -> None:
        running = pool.workers[0]
        pool.shares.slot(1).serve()  # holds nothing and never accepts
        running.acceptor.start()
        await pool.hello()  # 0 against 0: taken at once
        queued = asyncio.ensure_future(_hello(pool.port))  # 1 against 0: left to the other
        await asyncio.sleep(0.2)
        assert not queued.done()
        assert len(running.made) == 1
        first = pool.writers.pop()
        first.close()  # back to 0 against 0: taken now, not after the 30 s pause
        pool.writers.append(await asyncio.wait_for(queued, 5))
        assert len(running.made) == 2

    _run_with(loop_name, 2, body)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_closed_acceptor_takes_no_connection(loop_name: str) -> None:
    async def body(pool: _Workers) -> None:
        worker = pool.workers[0]
        worker.acceptor.start()
        await pool.hello()
        worker.acceptor.close()
        worker.acceptor.close()  # twice is harmless
        await worker.acceptor.wait_closed()
        assert pool.shares.counts() == [NOT_SERVING]
        late = socket.create_connection(("127.0.0.1", pool.port))  # queued in the backlog only
        await asyncio.sleep(0.1)
        assert len(worker.made) == 1
        late.close()

    _run_with(loop_name, 1, body)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_tls_connections_are_set_up_and_failed_handshakes_dropped(
    loop_name: str, tmp_path: Path
) -> None:
    cert = make_serving_cert(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert.cert, cert.key)
    client_tls = ssl.create_default_context(cafile=str(cert.ca))

    async def body(pool: _Workers) -> None:
        worker = pool.workers[0]
        worker.acceptor.start()
        for _ in range(3):
            await pool.hello(client_tls)
        assert len(worker.made) == 3
        assert pool.shares.counts() == [3]
        # A client that speaks plain text to the TLS port: the handshake fails, the
        # connection is closed, and nothing stays counted for it.
        reader, writer = await asyncio.open_connection("127.0.0.1", pool.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) is not None  # closed by the server
        writer.close()
        await _until(lambda: pool.shares.counts() == [3], pool.shares.counts)
        assert len(worker.made) == 3

    _run_with(loop_name, 1, body, server_tls)
