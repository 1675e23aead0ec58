"""Spread a listener's connections evenly over the workers that share its socket.

Why: the workers of ``serve --workers N`` accept from one listening socket, and an event loop
woken for it accepts every connection queued (asyncio up to the backlog, uvloop until none is
left). A burst of connections — an ingress opening its keep-alive pool, the API server's
webhook client, a load generator — lands mostly on whichever worker woke first and stays there
for the connections' lives: 50 connections split 31/19, 33/17, 43/7 between two workers in
runs of ``bench.run``. Every request costs the same CPU wherever it lands, so the fuller
worker's requests wait longer: PostgreSQL refresh p99 50-64 ms at those splits against 43 ms
at 25/25 (bench/README.md, "seventh round").

How: each worker publishes how many connections of the listener it holds (set up or being set
up) in its slot of a small shared mapping made by the parent before it forks (one writer per
slot). A worker accepts one connection at a time, and only while it holds no more than the
least loaded other serving worker; otherwise it stops watching the socket until it lets one of
its own connections go, or for ``RETRY`` seconds at most, and looks again. Connections
therefore stay within one of each other across the workers, whichever wakes first. Resuming
on a release matters with short connections (one request each): two workers that paused in
turn, each over its share when it looked, otherwise sat out their pauses while connections
queued (measured: 22k -> 1.1k connections a second).

Never starve a client: a worker that died is marked as not serving by the parent
(:meth:`ConnectionShares.retire`) and a draining worker marks itself; a worker that is alive
but does not accept (stopped, or stuck in a long call) is waited for at most ``DEFER_LIMIT``
per connection, after which any worker accepts. A single worker never uses any of this.

This module only decides *who* accepts; the connection is then set up by the event loop
(``loop.connect_accepted_socket``) with the same protocol and TLS context uvicorn would use.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import mmap
import select
import socket
import ssl
from collections.abc import Callable

log = logging.getLogger("portcullis.balance")

#: A slot's value while its worker is not accepting (not started yet, draining, or dead).
NOT_SERVING = -1
#: Seconds a worker that holds more than its share waits before looking at the socket again.
RETRY = 0.002
#: Seconds a queued connection waits at most for a less loaded worker to take it.
DEFER_LIMIT = 0.05
#: Seconds accepting pauses when the process or system is out of descriptors or memory
#: (asyncio's own retry delay for the same errors).
RESOURCE_RETRY = 1.0
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class ConnectionShares:
    """One listener's connection counts per worker, shared by the parent and its forked workers.

    An anonymous ``MAP_SHARED`` mapping of one signed 64-bit integer per worker: made before
    the fork, the same pages in every process. Each slot is written by its worker only (and by
    the parent once that worker is dead); a reader may see a count one change old, which only
    moves one decision by one connection."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._map = mmap.mmap(-1, 8 * workers)
        self._slots = memoryview(self._map).cast("q")
        for index in range(workers):
            self._slots[index] = NOT_SERVING

    @property
    def workers(self) -> int:
        return len(self._slots)

    def counts(self) -> list[int]:
        """Every worker's connections (``NOT_SERVING`` for a worker that is not accepting)."""
        return list(self._slots)

    def retire(self, index: int) -> None:
        """Worker ``index`` is gone: the others stop leaving connections to it."""
        self._slots[index] = NOT_SERVING

    def slot(self, index: int) -> WorkerSlot:
        """Worker ``index``'s view: its own count to keep, the others' to compare with."""
        if not 0 <= index < len(self._slots):
            raise IndexError(f"worker index {index} outside 0..{len(self._slots) - 1}")
        return WorkerSlot(self._slots, index)


class WorkerSlot:
    """What one worker holds of one listener, published to its slot while it is serving."""

    def __init__(self, slots: memoryview, index: int) -> None:
        self._slots = slots
        self._index = index
        self._serving = False
        #: Connections of this listener this worker holds or is setting up.
        self.held = 0
        #: Called when this worker lets a connection go (its acceptor resumes at once).
        self.on_release: Callable[[], None] | None = None

    def serve(self) -> None:
        """Start publishing: from now on the other workers count this one in."""
        self._serving = True
        self._slots[self._index] = self.held

    def stop(self) -> None:
        """Stop accepting: the other workers no longer leave connections to this one."""
        self._serving = False
        self._slots[self._index] = NOT_SERVING

    def change(self, delta: int) -> None:
        """A connection was opened or is being set up (+1), or has been set up (-1: its
        protocol counts it from then on)."""
        self.held += delta
        if self._serving:
            self._slots[self._index] = self.held

    def release(self) -> None:
        """A connection was lost: one fewer, and the acceptor may take a new one at once."""
        self.change(-1)
        if self.on_release is not None:
            self.on_release()

    def over_share(self) -> bool:
        """Whether this worker holds more than the least loaded other serving worker."""
        least = -1
        for index, count in enumerate(self._slots):
            if index != self._index and count != NOT_SERVING and (least < 0 or count < least):
                least = count
        return 0 <= least < self.held


class BalancedAcceptor:
    """Accepts from a listening socket shared with other workers, in step with them.

    Stands in for the ``asyncio.Server`` uvicorn would make for the socket: uvicorn calls only
    ``close()`` and ``wait_closed()`` on it. ``protocol_factory`` is uvicorn's; the protocol
    reports its connections' opening and loss to the same :class:`WorkerSlot`
    (web.connection), so the count published is what this worker holds."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        slot: WorkerSlot,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._factory = protocol_factory
        self._slot = slot
        self._ssl = ssl_context
        self._watching = False
        self._closed = False
        self._resume: asyncio.TimerHandle | None = None
        # Since when the connection at the head of the queue has been left to other workers.
        self._deferring_since: float | None = None
        self._setting_up: set[asyncio.Task[None]] = set()
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)
        slot.on_release = self._released

    def start(self) -> BalancedAcceptor:
        self._sock.setblocking(False)
        self._slot.serve()
        self._watch()
        return self

    # -- asyncio.Server's part that uvicorn uses ----------------------------------------------
    def close(self) -> None:
        """Stop accepting (the socket itself is the parent's and stays open)."""
        if self._closed:
            return
        self._closed = True
        self._slot.stop()
        self._unwatch()
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None

    async def wait_closed(self) -> None:
        """Connections still being set up when accepting stopped are finished or dropped."""
        if self._setting_up:
            await asyncio.gather(*self._setting_up, return_exceptions=True)

    # -- accepting -------------------------------------------------------------------------------
    def _watch(self) -> None:
        if not self._watching and not self._closed:
            self._loop.add_reader(self._fd, self._readable)
            self._watching = True

    def _unwatch(self) -> None:
        if self._watching:
            self._loop.remove_reader(self._fd)
            self._watching = False

    def _pause(self, seconds: float) -> None:
        self._unwatch()
        self._resume = self._loop.call_later(seconds, self._resumed)

    def _released(self) -> None:
        # Holding one connection fewer, this worker may be within its share again: with
        # short connections (one request each) waiting out the pause left it idle while
        # connections queued.
        if self._resume is not None:
            self._resume.cancel()
            self._resumed()

    def _resumed(self) -> None:
        self._resume = None
        if self._closed:
            return
        if not self._poll.poll(0):
            # The queue emptied while paused (another worker took the connection): the next
            # connection starts a new wait.
            self._deferring_since = None
        self._watch()

    def _readable(self) -> None:
        if self._slot.over_share():
            now = self._loop.time()
            if self._deferring_since is None:
                self._deferring_since = now
            if now - self._deferring_since < DEFER_LIMIT:
                self._pause(RETRY)
                return
        self._deferring_since = None
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # another worker took it, or the client gave up while queued
        except OSError as exc:
            if exc.errno in _OUT_OF_RESOURCES:
                log.error("cannot accept connections (%s): retrying in %.0f s", exc, RESOURCE_RETRY)
            else:
                log.exception("accepting a connection failed: retrying in %.0f s", RESOURCE_RETRY)
            self._pause(RESOURCE_RETRY)
            return
        conn.setblocking(False)
        self._slot.change(+1)
        task = self._loop.create_task(self._set_up(conn))
        self._setting_up.add(task)
        task.add_done_callback(self._setting_up.discard)

    async def _set_up(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn, ssl=self._ssl)
        except OSError as exc:  # ssl.SSLError and TimeoutError among them
            # A TLS handshake that failed or timed out, or a client gone before set-up: the
            # same cases asyncio's own server drops quietly.
            log.debug("connection dropped while being set up: %s", exc.__class__.__name__)
            conn.close()
        finally:
            # The protocol counted the connection itself once it was made.
            self._slot.change(-1)
