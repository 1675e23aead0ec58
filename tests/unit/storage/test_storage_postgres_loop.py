"""PostgreSQL's hot statements awaited on the event loop (``storage/postgres_loop.py``), against
the session's real PostgreSQL 15 server: the same rows as the thread path, duplicate keys, a
connection the server killed replaced, ``maxOpenConns`` holding over both pools, the wait for a
connection bounded, the statement timeout, cancellation, and errors without secrets."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import secrets
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import psycopg
import pytest
import uvloop
from portcullis.config.model import PostgresConfig
from portcullis.storage.base import AlreadyExistsError, CodeReplayedError, StorageError
from portcullis.storage.models import RefreshRotation, RefreshToken
from portcullis.storage.postgres import DatabaseUnavailableError, PostgresStorage, split_budget
from psycopg import sql

from tests.support.postgres import PostgresCluster

T = TypeVar("T")
NOW = 1_700_000_000.0
CURRENT = "cd" * 32  # the sample family's token_hash


def _open(settings: dict[str, Any], **changes: Any) -> PostgresStorage:
    return PostgresStorage(PostgresConfig.model_validate({**settings, **changes}))


@pytest.fixture
def store(postgres_database: dict[str, Any]) -> Iterator[PostgresStorage]:
    opened = _open(postgres_database)
    try:
        yield opened
    finally:
        opened.close()


def _backends(cluster: PostgresCluster, settings: dict[str, Any]) -> list[int]:
    """The storage's server processes (every connection says application_name=portcullis)."""
    with cluster.admin(settings["database"]) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity "
            "WHERE application_name = 'portcullis' AND datname = current_database()"
        ).fetchall()
    return sorted(pid for (pid,) in rows)


def _kill_all(cluster: PostgresCluster, settings: dict[str, Any]) -> None:
    with cluster.admin(settings["database"]) as conn:
        killed = conn.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            "WHERE application_name = 'portcullis' AND datname = current_database()"
        ).fetchall()
    assert killed
    assert all(ok for (ok,) in killed)


def _rotation(**changes: Any) -> RefreshRotation:
    fields: dict[str, Any] = {
        "family_id": "rt-1",
        "presented_hash": CURRENT,
        "client_id": "example-app",
        "connector_ids": ("local",),
        "now": NOW + 200,
        "new_token_hash": "0a" * 32,
        "successor_sealed": "sealed-next",
        "absolute_lifetime": 0.0,
        "idle_deadline": 0.0,
    }
    fields.update(changes)
    return RefreshRotation(**fields)


def _messages(exc: BaseException) -> str:
    parts = []
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


_LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,  # what `portcullis serve` runs (serve.event_loop_factory)
}
_loop_factory: list[Callable[[], asyncio.AbstractEventLoop]] = [asyncio.new_event_loop]


@pytest.fixture(autouse=True, params=sorted(_LOOPS))
def event_loop_kind(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test runs on asyncio's own loop and on uvloop, the server's."""
    _loop_factory[0] = _LOOPS[request.param]
    try:
        yield
    finally:
        _loop_factory[0] = asyncio.new_event_loop


def _run(make: Callable[[], Awaitable[T]]) -> T:
    """``make()`` awaited on a new event loop of the test's kind, closed afterwards."""

    async def main() -> T:
        return await make()

    with asyncio.Runner(loop_factory=_loop_factory[0]) as runner:
        return runner.run(main())


def test_the_budget_is_split_between_the_two_pools() -> None:
    """maxOpenConns is the process's bound over both pools (docs/configuration.md)."""
    assert split_budget(5, 5) == ((2, 2), (3, 3))  # Dex's defaults
    assert split_budget(2, 2) == ((1, 1), (1, 1))
    assert split_budget(1, 1) == ((1, 1), (0, 0))  # nothing to split: all on the thread pool
    assert split_budget(10, 2) == ((5, 1), (5, 1))
    for max_open in range(1, 40):
        for max_idle in range(1, max_open + 1):
            (threads, threads_idle), (loop, loop_idle) = split_budget(max_open, max_idle)
            assert threads + loop == max_open
            assert 1 <= threads_idle <= threads
            assert loop_idle <= loop
            assert loop_idle >= 1 or loop == 0


def test_with_one_connection_allowed_the_awaited_statements_share_it(
    postgres_cluster: PostgresCluster, postgres_database: dict[str, Any], samples: Any
) -> None:
    """maxOpenConns 1 cannot be split: the awaited statements run in worker threads on the
    thread pool's one connection, and the server sees one connection."""
    store = _open(postgres_database, maxOpenConns=1)
    try:
        store.create_refresh_token(samples.refresh_token("rt-1"))
        assert store._loop_connections is None

        async def awaited() -> RefreshToken | None:
            await store.get_refresh_token_for_use_async("rt-1", NOW)
            return await store.rotate_refresh_token_async(_rotation())

        assert _run(awaited) is not None
        assert len(_backends(postgres_cluster, postgres_database)) == 1
    finally:
        store.close()


def test_awaited_statements_return_what_the_thread_path_returns(
    store: PostgresStorage, samples: Any, postgres_cluster: PostgresCluster
) -> None:
    """Twin families, one rotated and read through each path: identical records (jsonb,
    bytea, floats and the sealed connector data decoded the same way)."""
    for family_id in ("sync", "async"):
        store.create_refresh_token(samples.refresh_token(family_id))
    identity = samples.identity(groups=("ops", "ünïcode"), connector_data=b"\x00\xff")
    rotated_sync = store.rotate_refresh_token(_rotation(family_id="sync", identity=identity))
    read_sync = store.get_refresh_token_for_use("sync", NOW + 300)

    async def awaited() -> tuple[RefreshToken | None, tuple[RefreshToken, bool]]:
        rotated = await store.rotate_refresh_token_async(
            _rotation(family_id="async", identity=identity)
        )
        return rotated, await store.get_refresh_token_for_use_async("async", NOW + 300)

    rotated_async, read_async = _run(awaited)
    assert rotated_sync is not None
    assert rotated_async is not None
    assert dataclasses.replace(rotated_async, id="sync") == rotated_sync
    assert (dataclasses.replace(read_async[0], id="sync"), read_async[1]) == read_sync
    assert store.get_refresh_token("async") == rotated_async
    # The awaited statements ran on the loop's own connection, not the thread pool's.
    assert store._loop_connections is not None
    assert store._loop_connections.budget.open == 1


def test_rotate_or_read_is_one_statement_either_way(
    store: PostgresStorage, samples: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refresh of a family the one-statement rotation must leave alone (here: its
    connector refreshes upstream) costs one round trip, not a rotation and then a read; the
    family comes back as the thread path reads it, denial hint included. A rotation that
    applies is one statement too."""
    identity = samples.identity(groups=("ops",), connector_data=b"\x00\xff")
    store.create_refresh_token(samples.refresh_token("upstream", identity=identity))
    store.create_refresh_token(samples.refresh_token("local", identity=identity))
    store.deny_subject("group", "someone", NOW - 10**6, NOW + 10**6)  # live, older families
    statements: list[str] = []
    hot = store._hot_async

    async def counted(stmt: Any, table: Any, params: Any) -> Any:
        statements.append(table.name)
        return await hot(stmt, table, params)

    monkeypatch.setattr(store, "_hot_async", counted)

    async def both() -> tuple[Any, Any]:
        left = await store.rotate_refresh_token_or_read_async(
            _rotation(family_id="upstream", connector_ids=("ldap",))
        )
        rotated = await store.rotate_refresh_token_or_read_async(_rotation(family_id="local"))
        return left, rotated

    left, rotated = _run(both)
    assert statements == ["refresh_tokens", "refresh_tokens"]
    assert not left.rotated
    assert (left.family, left.denied_since) == store.get_refresh_token_for_use("upstream", NOW)
    assert rotated.rotated
    assert rotated.family == store.get_refresh_token("local")
    assert rotated.family.token_hash == "0a" * 32


def test_a_code_exchange_takes_one_connection_for_both_statements(
    store: PostgresStorage, samples: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Consuming the code and storing its family go through the pool once: a second trip
    through the pool's queue doubled an exchange's wait under load. When the checks between
    the two statements refuse the exchange, the code stays consumed and the connection is
    kept for the next task."""
    store.create_auth_code(samples.auth_code("c1"))
    store.create_auth_code(samples.auth_code("c2"))
    assert store._loop_connections is not None
    acquired: list[int] = []

    async def run() -> tuple[Any, Any]:
        pool = store._loop_connections.pool()  # type: ignore[union-attr]
        acquire = pool.acquire

        async def counted(timeout: float) -> Any:
            acquired.append(1)
            return await acquire(timeout)

        monkeypatch.setattr(pool, "acquire", counted)

        def start_family(code: Any) -> RefreshToken:
            family: RefreshToken = samples.refresh_token("rt-c1", issued_by_code=code.id)
            return family

        exchanged = await store.exchange_auth_code_async("c1", NOW, "example-app", start_family)

        def refuse(code: Any) -> RefreshToken:
            raise ValueError("redirect_uri does not match")

        with pytest.raises(ValueError, match="redirect_uri"):
            await store.exchange_auth_code_async("c2", NOW, "example-app", refuse)
        return exchanged, await store.get_refresh_token_for_use_async("rt-c1", NOW)

    (code, family), (stored, _) = _run(run)
    assert acquired == [1, 1, 1]  # one per exchange, one for the read
    assert code.id == "c1"
    assert family == stored
    with pytest.raises(CodeReplayedError):  # refused by the checks, but consumed
        store.consume_auth_code("c2", NOW + 1, "example-app")
    assert store._loop_connections.budget.open == 1  # the same connection throughout


def test_a_duplicate_family_is_already_exists_and_the_connection_stays_usable(
    store: PostgresStorage, samples: Any
) -> None:
    store.create_refresh_token(samples.refresh_token("rt-1"))
    store.create_auth_code(samples.auth_code("c1"))

    def start_family(code: Any) -> RefreshToken:
        family: RefreshToken = samples.refresh_token("rt-1", token_hash="11" * 32)
        return family

    async def twice() -> tuple[RefreshToken, bool]:
        with pytest.raises(AlreadyExistsError) as caught:
            await store.exchange_auth_code_async("c1", NOW, "example-app", start_family)
        assert str(caught.value) == "refresh_tokens: record already exists"
        assert "11" * 32 not in _messages(caught.value)
        return await store.get_refresh_token_for_use_async("rt-1", NOW)

    family, _ = _run(twice)
    assert family == samples.refresh_token("rt-1")
    with pytest.raises(CodeReplayedError):  # the code stays consumed
        store.consume_auth_code("c1", NOW + 1, "example-app")
    assert store._loop_connections is not None
    assert store._loop_connections.budget.open == 1  # the same connection, kept


def test_a_connection_the_server_killed_is_replaced_between_two_calls(
    postgres_cluster: PostgresCluster,
    postgres_database: dict[str, Any],
    store: PostgresStorage,
    samples: Any,
) -> None:
    """A restart or fail-over kills the loop's idle connection: the next call opens a new one
    and succeeds, as on the thread path."""
    store.create_refresh_token(samples.refresh_token("rt-1"))

    async def across_a_kill() -> tuple[list[int], list[int]]:
        await store.get_refresh_token_for_use_async("rt-1", NOW)
        before = _backends(postgres_cluster, postgres_database)
        _kill_all(postgres_cluster, postgres_database)
        assert (await store.get_refresh_token_for_use_async("rt-1", NOW))[0].id == "rt-1"
        assert await store.rotate_refresh_token_async(_rotation()) is not None
        return before, _backends(postgres_cluster, postgres_database)

    before, after = _run(across_a_kill)
    assert len(after) == 1
    assert not set(after) & set(before)


def test_a_connection_killed_during_a_statement_is_a_clear_unavailable_error(
    postgres_cluster: PostgresCluster,
    postgres_database: dict[str, Any],
    store: PostgresStorage,
    samples: Any,
) -> None:
    """Killed while the statement runs (no check can see it coming): the caller gets the
    thread path's DatabaseUnavailableError, the broken connection is dropped, and the next
    call works."""
    store.create_refresh_token(samples.refresh_token("rt-1"))
    holder = postgres_cluster.admin(postgres_database["database"])
    holder.autocommit = False
    holder.execute("SELECT id FROM refresh_tokens WHERE id = 'rt-1' FOR UPDATE")

    async def killed_mid_statement() -> StorageError:
        await store.get_refresh_token_for_use_async("rt-1", NOW)  # opens the connection
        rotation = asyncio.create_task(store.rotate_refresh_token_async(_rotation()))
        await asyncio.sleep(0.3)  # blocked on the row lock
        _kill_all(postgres_cluster, postgres_database)
        with pytest.raises(DatabaseUnavailableError) as caught:
            await rotation
        return caught.value

    try:
        error = _run(killed_mid_statement)
    finally:
        holder.rollback()
        holder.close()
    assert "storage.config" in str(error)
    assert postgres_database["password"] not in _messages(error)
    assert store._loop_connections is not None
    assert store._loop_connections.budget.open == 0
    assert _run(lambda: store.rotate_refresh_token_async(_rotation())) is not None


def test_maxopenconns_bounds_both_pools_together(
    postgres_cluster: PostgresCluster, postgres_database: dict[str, Any], samples: Any
) -> None:
    """Threads hammering the thread pool while many tasks await hot statements: the server
    never sees more than maxOpenConns connections from the storage."""
    store = _open(postgres_database, maxOpenConns=3, maxIdleConns=3)
    store.create_refresh_token(samples.refresh_token("counter", last_used=0.0))
    store.create_refresh_token(samples.refresh_token("rt-1"))
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, len(_backends(postgres_cluster, postgres_database)))

    def bump(token: Any) -> Any:
        time.sleep(0.002)
        return dataclasses.replace(token, last_used=token.last_used + 1)

    def hammer() -> None:
        for _ in range(10):
            store.update_refresh_token("counter", bump)

    async def awaited() -> None:
        async def read() -> None:
            for _ in range(10):
                await store.get_refresh_token_for_use_async("rt-1", NOW)

        await asyncio.gather(*(read() for _ in range(20)))

    watcher = threading.Thread(target=watch)
    threads = [threading.Thread(target=hammer) for _ in range(4)]
    watcher.start()
    try:
        for thread in threads:
            thread.start()
        _run(awaited)
        for thread in threads:
            thread.join(60)
    finally:
        stop.set()
        watcher.join(10)
    try:
        assert store.get_refresh_token("counter").last_used == 4 * 10
        assert 2 <= peak <= 3
    finally:
        store.close()


def test_a_task_waits_for_a_free_connection_then_gets_the_pool_error(
    postgres_database: dict[str, Any], samples: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """maxOpenConns 2 leaves the loop one connection: a second task waits for it, gets it when
    it comes back, and fails with the thread pool's error once POOL_TIMEOUT passed."""
    monkeypatch.setattr("portcullis.storage.postgres.POOL_TIMEOUT", 0.6)
    store = _open(postgres_database, maxOpenConns=2)
    store.create_refresh_token(samples.refresh_token("rt-1"))

    async def scenario() -> tuple[float, float, str]:
        assert store._loop_connections is not None
        pool = store._loop_connections.pool()
        held = await pool.acquire(1.0)
        started = time.monotonic()
        waiting = asyncio.create_task(store.get_refresh_token_for_use_async("rt-1", NOW))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        pool.release(held, reusable=True)
        assert (await waiting)[0].id == "rt-1"
        waited = time.monotonic() - started
        held = await pool.acquire(1.0)
        started = time.monotonic()
        try:
            with pytest.raises(DatabaseUnavailableError) as caught:
                await store.get_refresh_token_for_use_async("rt-1", NOW)
        finally:
            pool.release(held, reusable=True)
        return waited, time.monotonic() - started, str(caught.value)

    try:
        waited, timed_out, message = _run(scenario)
    finally:
        store.close()
    assert 0.15 < waited < 0.6
    assert 0.5 < timed_out < 3
    assert "no free connection after 1s (raise storage.config.maxOpenConns?)" in message


def test_a_statement_stuck_behind_a_lock_fails_after_the_statement_timeout(
    postgres_cluster: PostgresCluster,
    postgres_database: dict[str, Any],
    samples: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loop's connections carry the session limits too: a rotation blocked by another
    replica's row lock fails after statement_timeout, changes nothing, and the connection is
    reused afterwards."""
    monkeypatch.setattr("portcullis.storage.postgres.STATEMENT_TIMEOUT", 0.5)
    store = _open(postgres_database)
    store.create_refresh_token(samples.refresh_token("rt-1"))
    holder = postgres_cluster.admin(postgres_database["database"])
    holder.autocommit = False
    holder.execute("SELECT id FROM refresh_tokens WHERE id = 'rt-1' FOR UPDATE")

    async def blocked() -> tuple[float, tuple[str, str], int]:
        started = time.monotonic()
        with pytest.raises(StorageError, match="statement timeout") as caught:
            await store.rotate_refresh_token_async(_rotation())
        elapsed = time.monotonic() - started
        assert not isinstance(caught.value, DatabaseUnavailableError)
        assert caught.value.__cause__ is None  # psycopg's DETAIL stays out of the chain
        holder.rollback()
        assert store._loop_connections is not None
        pooled = await store._loop_connections.pool().acquire(1.0)
        try:
            cursor = await pooled.conn.execute(
                "SELECT current_setting('statement_timeout'), "
                "current_setting('idle_in_transaction_session_timeout')"
            )
            limits = await cursor.fetchone()
        finally:
            store._loop_connections.pool().release(pooled, reusable=True)
        assert limits is not None
        return elapsed, (limits[0], limits[1]), store._loop_connections.budget.open

    try:
        elapsed, limits, still_open = _run(blocked)
        assert 0.4 < elapsed < 5
        assert limits == ("500ms", "1min")
        assert still_open == 1  # the timed-out connection was kept, not reopened
        assert store.get_refresh_token("rt-1") == samples.refresh_token("rt-1")
    finally:
        holder.rollback()
        holder.close()
        store.close()


def test_a_cancelled_statement_gives_its_connection_back(
    postgres_cluster: PostgresCluster,
    postgres_database: dict[str, Any],
    store: PostgresStorage,
    samples: Any,
) -> None:
    """A request cancelled mid-statement (the server draining past its timeout): the
    connection, in an unknown state, is closed and its place in the budget freed."""
    store.create_refresh_token(samples.refresh_token("rt-1"))
    holder = postgres_cluster.admin(postgres_database["database"])
    holder.autocommit = False
    holder.execute("SELECT id FROM refresh_tokens WHERE id = 'rt-1' FOR UPDATE")

    async def cancelled() -> None:
        task = asyncio.create_task(store.rotate_refresh_token_async(_rotation()))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        _run(cancelled)
        assert store._loop_connections is not None
        assert store._loop_connections.budget.open == 0
    finally:
        holder.rollback()
        holder.close()
    assert _run(lambda: store.rotate_refresh_token_async(_rotation())) is not None


def test_a_changed_password_is_a_clear_error_without_the_password(
    postgres_cluster: PostgresCluster, postgres_database: dict[str, Any], samples: Any
) -> None:
    """The database password rotated under a running replica: the loop's next connection is
    refused, and the error names the settings but no password (old or new)."""
    role = f"rotating_{secrets.token_hex(4)}"
    password, changed = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    database = postgres_database["database"]
    with postgres_cluster.admin(database) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
        admin.execute(
            sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(role))
        )
    store = _open(postgres_database, user=role, password=password)
    try:
        store.create_refresh_token(samples.refresh_token("rt-1"))
        assert _run(lambda: store.get_refresh_token_for_use_async("rt-1", NOW))[0].id == "rt-1"
        with postgres_cluster.admin(database) as admin:
            admin.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(changed)
                )
            )
        _kill_all(postgres_cluster, postgres_database)
        with pytest.raises(DatabaseUnavailableError) as caught:
            _run(lambda: store.get_refresh_token_for_use_async("rt-1", NOW))
        message = str(caught.value)
        assert "password authentication failed" in message
        assert "storage.config.password" in message
        assert role in message
        for secret in (password, changed):
            assert secret not in _messages(caught.value)
    finally:
        store.close()
        with postgres_cluster.admin(database) as admin:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_connections_of_a_closed_loop_are_closed_and_close_leaves_none(
    postgres_cluster: PostgresCluster,
    postgres_database: dict[str, Any],
    store: PostgresStorage,
    samples: Any,
) -> None:
    """Each asyncio.run is a new loop: the connections of the one that closed are closed
    when the next loop's pool opens, and close() closes the rest, without ResourceWarning."""
    store.create_refresh_token(samples.refresh_token("rt-1"))
    loop_connections = store._loop_connections
    assert loop_connections is not None
    with _no_resource_warning():
        for _ in range(3):
            _run(lambda: store.get_refresh_token_for_use_async("rt-1", NOW))
            assert loop_connections.budget.open == 1
        # One thread-pool connection (create_refresh_token) and the last loop's.
        assert len(_backends(postgres_cluster, postgres_database)) == 2
        store.close()
        assert loop_connections.budget.open == 0
        assert _backends(postgres_cluster, postgres_database) == []


@contextlib.contextmanager
def _no_resource_warning() -> Iterator[None]:
    """Fails when anything in the block leaks a connection (psycopg warns when an open
    connection is garbage-collected)."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", ResourceWarning)
        yield
        gc.collect()
    leaked = [w for w in seen if issubclass(w.category, ResourceWarning)]
    assert not leaked, [str(w.message) for w in leaked]


def test_psycopg_async_connection_is_what_runs(store: PostgresStorage, samples: Any) -> None:
    """The loop's connections are psycopg's own AsyncConnection, in autocommit."""
    store.create_refresh_token(samples.refresh_token("rt-1"))

    async def inspect() -> tuple[type, bool]:
        await store.get_refresh_token_for_use_async("rt-1", NOW)
        assert store._loop_connections is not None
        pooled = await store._loop_connections.pool().acquire(1.0)
        store._loop_connections.pool().release(pooled, reusable=True)
        return type(pooled.conn), pooled.conn.autocommit

    kind, autocommit = _run(inspect)
    assert issubclass(kind, psycopg.AsyncConnection)
    assert autocommit


def test_a_returned_connection_goes_to_the_longest_waiting_task(
    postgres_database: dict[str, Any],
) -> None:
    """First come, first served: a connection given back while tasks wait is handed to the
    one that has waited longest, never taken by a task that asked after it. (Put back as idle
    and merely woken, the waiter could find it gone to a newcomer and queue again at the end:
    under load that starved some requests for the whole wait, the p99 of the token paths.)"""
    store = _open(postgres_database, maxOpenConns=2)  # one loop connection

    async def scenario() -> list[str]:
        assert store._loop_connections is not None
        pool = store._loop_connections.pool()
        order: list[str] = []
        held = await pool.acquire(5.0)

        async def use(name: str) -> None:
            pooled = await pool.acquire(5.0)
            order.append(name)
            await asyncio.sleep(0.01)
            pool.release(pooled, reusable=True)

        first = asyncio.create_task(use("waited longest"))
        await asyncio.sleep(0.05)
        assert not first.done()
        # A newcomer already scheduled when the connection comes back (a request that just
        # arrived): it runs before the woken waiter can.
        newcomer = asyncio.create_task(use("came later"))
        pool.release(held, reusable=True)
        await asyncio.gather(first, newcomer)
        return order

    try:
        assert _run(scenario) == ["waited longest", "came later"]
    finally:
        store.close()
