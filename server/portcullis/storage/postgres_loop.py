"""PostgreSQL connections owned by an event loop, for the hot statements awaited on it.

Why a pool of our own: the token paths' statements (rotate a refresh family, consume a code,
start a family, read a family for use) are one autocommit round trip each. Run through
SQLAlchemy's pool in a worker thread, each paid a thread hand-off and the pool's check-out
machinery on top of psycopg: about as much CPU as the database work. Here they are awaited on
the loop through psycopg's own :class:`psycopg.AsyncConnection`; psycopg_pool is not a
dependency, and what is needed is small: a stack of idle connections per loop, a bound shared
by every loop of the process, and the same liveness check at check-out as the thread pool's
(``postgres._check_out``).

A connection belongs to the loop that opened it (psycopg waits on its socket with that loop),
so each running loop gets its own :class:`LoopPool`, created on first use; storage objects are
built before the server's loop starts. The bound (:class:`Budget`) is one count across loops,
so ``maxOpenConns`` holds however many loops use the storage. A loop that closed cannot run
anything any more: its connections are closed (synchronously, ``PGconn.finish``) when the next
loop's pool is created or the storage closes.

This module only pools; ``postgres.py`` opens the connections (with the session limits) and
turns psycopg's errors into the storage's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import select
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

AsyncConnection = psycopg.AsyncConnection[Any]


_TIMED_OUT = object()  # what _wait returns when its time ran out


class PoolExhaustedError(Exception):
    """No connection became free, and none could be opened within the bound, in time."""


class Pooled:
    """One open connection and the times the liveness check needs."""

    __slots__ = ("conn", "created", "returned")

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.created = self.returned = time.monotonic()

    def close(self) -> None:
        # Synchronous on purpose: it must also work once the owning loop has closed. Closing
        # the libpq connection is all AsyncConnection.close() does (outside psycopg_pool).
        self.conn.pgconn.finish()


class Budget:
    """How many loop-owned connections may be open at once, over every loop (thread-safe)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open = 0
        self._lock = threading.Lock()
        self._hungry: set[LoopPool] = set()  # pools with tasks waiting for a connection

    @property
    def open(self) -> int:
        return self._open

    def take(self) -> bool:
        with self._lock:
            if self._open >= self.limit:
                return False
            self._open += 1
            return True

    def give_back(self, pool: LoopPool | None) -> None:
        """One connection closed (by ``pool`` on its loop; None: from another thread): wake a
        waiter of every pool that has some (another loop's through that loop), since any of
        them may now open one."""
        with self._lock:
            self._open -= 1
            hungry = list(self._hungry)
        for other in hungry:
            if other is pool:
                other.wake()
            else:
                other.wake_threadsafe()

    def hunger(self, pool: LoopPool, waiting: bool) -> None:
        with self._lock:
            if waiting:
                self._hungry.add(pool)
            else:
                self._hungry.discard(pool)

    def others_hungry(self, pool: LoopPool) -> bool:
        if not self._hungry:  # the common case, without the lock
            return False
        with self._lock:
            return any(other is not pool for other in self._hungry)


class LoopPool:
    """The connections of one event loop. Every method but :meth:`close_all` and
    :meth:`wake_threadsafe` runs on that loop, so the lists need no lock."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        budget: Budget,
        connect: Callable[[], Awaitable[AsyncConnection]],
        *,
        idle_limit: int,
        lifetime: float,
        ping_after_idle: Callable[[], float],
    ) -> None:
        self.loop = loop
        self._budget = budget
        self._connect = connect
        self._idle_limit = idle_limit
        self._lifetime = lifetime
        self._ping_after_idle = ping_after_idle
        self._idle: list[Pooled] = []  # a stack: the most recently used first
        self._all: set[Pooled] = set()
        self._waiters: collections.deque[asyncio.Future[Pooled | None]] = collections.deque()

    async def acquire(self, timeout: float) -> Pooled:
        """A live connection: an idle one that passes the check, else a new one within the
        budget, else the first to come back within ``timeout`` seconds (PoolExhaustedError).

        First come, first served: while tasks wait, a newcomer queues behind them, and a
        connection given back goes straight to the longest-waiting task (``release``), so no
        task can take it between the hand-over and the waiter's turn to run."""
        deadline: float | None = None
        may_take = not self._waiters  # a task that waited is woken to take, not to requeue
        while True:
            if may_take:
                while self._idle:
                    pooled = self._idle.pop()
                    try:
                        usable = await self._usable(pooled)
                    except BaseException:  # cancelled during the ping: do not leak the slot
                        self._discard(pooled)
                        raise
                    if usable:
                        return pooled
                    self._discard(pooled)
                if self._budget.take():
                    try:
                        conn = await self._connect()
                    except BaseException:
                        self._budget.give_back(self)
                        raise
                    pooled = Pooled(conn)
                    self._all.add(pooled)
                    return pooled
            now = self.loop.time()
            if deadline is None:
                deadline = now + timeout
            if now >= deadline:
                raise PoolExhaustedError()
            handed = await self._wait(deadline - now)
            if handed is _TIMED_OUT:
                raise PoolExhaustedError()
            if isinstance(handed, Pooled):
                return handed  # given back by a task that just used it: no check needed
            may_take = True  # woken because the budget has room (or a connection was closed)

    async def _usable(self, pooled: Pooled) -> bool:
        """``postgres._check_out`` for a loop's connection: a connection the server closed
        (restart, fail-over, ``pg_terminate_backend``) has data or EOF waiting on its idle
        socket, seen without a round trip; one idle for long, whose peer may have vanished
        silently, is pinged; one older than ``connMaxLifetime`` is retired."""
        now = time.monotonic()
        if self._lifetime and now - pooled.created > self._lifetime:
            return False
        pgconn = pooled.conn.pgconn
        if pgconn.status != psycopg.pq.ConnStatus.OK:
            return False
        try:
            readable, _, _ = select.select([pgconn.socket], [], [], 0)
        except (OSError, ValueError, psycopg.OperationalError):
            return False
        if readable:  # an idle connection has nothing to read unless the server hung up
            return False
        if now - pooled.returned > self._ping_after_idle():
            try:
                await pooled.conn.execute("SELECT 1")
            except psycopg.Error:
                return False
        return True

    async def _wait(self, seconds: float) -> Pooled | object | None:
        """Wait in line: a connection handed over by ``release``, None when woken to try the
        budget and the idle list again (``wake``), or _TIMED_OUT."""
        waiter: asyncio.Future[Pooled | None] = self.loop.create_future()
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            self._budget.hunger(self, True)
        try:
            async with asyncio.timeout(seconds):
                return await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                # Handed a connection or a wake-up, but leaving (timed out or cancelled at
                # the same moment): it goes to the next in line.
                handed = waiter.result()
                if handed is None:
                    self.wake()
                else:
                    self.release(handed, reusable=True)
            if isinstance(exc, TimeoutError):
                return _TIMED_OUT
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            if not self._waiters:
                self._budget.hunger(self, False)

    def wake(self) -> None:
        """Wake the longest-waiting task to try again, if any (on this pool's loop)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def wake_threadsafe(self) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits on it any more
            self.loop.call_soon_threadsafe(self.wake)

    def release(self, pooled: Pooled, *, reusable: bool) -> None:
        """Take a connection back; ``reusable`` False (it failed mid-statement, was cancelled,
        or the server broke it) closes it instead."""
        pgconn = pooled.conn.pgconn
        if (
            not reusable
            or pgconn.status != psycopg.pq.ConnStatus.OK
            or pgconn.transaction_status != psycopg.pq.TransactionStatus.IDLE
        ):
            self._discard(pooled)
            return
        pooled.returned = time.monotonic()
        while self._waiters:  # straight to the longest-waiting task
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(pooled)
                return
        if len(self._idle) >= self._idle_limit or self._budget.others_hungry(self):
            # Beyond maxIdleConns, or another loop is starved of the budget: close it.
            self._discard(pooled)
        else:
            self._idle.append(pooled)

    def _discard(self, pooled: Pooled, *, on_loop: bool = True) -> None:
        if pooled in self._all:
            self._all.discard(pooled)
            pooled.close()
            self._budget.give_back(self if on_loop else None)

    def close_all(self) -> None:
        """Close every connection of this pool, idle or not, from any thread: its loop has
        closed, or the storage is closing (when nothing may use it any more)."""
        self._budget.hunger(self, False)  # a closed loop's waiters are gone with it
        self._idle = []
        for pooled in list(self._all):
            self._discard(pooled, on_loop=False)


class LoopConnections:
    """The loop-owned connections of one storage: a :class:`LoopPool` per running loop,
    created on first use, all within one :class:`Budget`."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[AsyncConnection]],
        *,
        max_open: int,
        max_idle: int,
        lifetime: float,
        ping_after_idle: Callable[[], float],
    ) -> None:
        self.budget = Budget(max_open)
        self._connect = connect
        self._max_idle = max_idle
        self._lifetime = lifetime
        self._ping_after_idle = ping_after_idle
        self._pools: dict[asyncio.AbstractEventLoop, LoopPool] = {}
        self._lock = threading.Lock()
        self._last: LoopPool | None = None

    def pool(self) -> LoopPool:
        """The running loop's pool (RuntimeError outside a running loop)."""
        loop = asyncio.get_running_loop()
        last = self._last
        if last is not None and last.loop is loop:
            return last
        with self._lock:
            pool = self._pools.get(loop)
            if pool is None:
                for gone in [other for other in self._pools if other.is_closed()]:
                    self._pools.pop(gone).close_all()
                pool = self._pools[loop] = LoopPool(
                    loop,
                    self.budget,
                    self._connect,
                    idle_limit=self._max_idle,
                    lifetime=self._lifetime,
                    ping_after_idle=self._ping_after_idle,
                )
            self._last = pool
        return pool

    def close(self) -> None:
        with self._lock:
            pools, self._pools, self._last = list(self._pools.values()), {}, None
        for pool in pools:
            pool.close_all()
