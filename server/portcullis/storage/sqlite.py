"""SQLite backend (the embedded default): one file that several worker processes can share.

What makes sharing safe:

* WAL journal, so readers never block the writer nor each other;
* a busy timeout, so a writer waits for the lock instead of failing at once;
* every write runs in ``BEGIN IMMEDIATE``: the write lock is taken before the first read, so a
  read-modify-write (consume a code, rotate keys, count a failed login) can never interleave
  with another process's. A plain deferred transaction would upgrade from read to write lock
  mid-way and fail with SQLITE_BUSY without waiting.

The pysqlite driver's own transaction handling is switched off (``isolation_level = None``) and
``BEGIN`` is emitted by us, the recipe SQLAlchemy documents for pysqlite.

What makes it fast on the token paths (a refresh, a code exchange):

* one writer at a time across every worker process, queued on a lock file (``<file>-lock``,
  ``flock``) instead of on SQLite's busy handler, whose back-off sleeps 1 to 100 ms a try:
  writers of two processes meeting on the database lock made the p99 of refreshes hundreds of
  milliseconds; a lock-file waiter gets the lock within a millisecond of its release;
* group commit of the hot statements (``_group_commit``): many in one transaction and one
  fsync, each caller returning only after that commit;
* the hot statements (written once in SQLAlchemy Core in ``sql_storage``) compiled once and
  run through the sqlite3 driver directly, on one writer connection per process and one
  reader connection per thread, without SQLAlchemy's per-call work.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.pool import StaticPool

from portcullis.clock import Clock, SystemClock
from portcullis.storage import sql_rows as rows
from portcullis.storage import sql_schema as t
from portcullis.storage.base import AlreadyExistsError, StorageError
from portcullis.storage.migrations import apply_migrations, load_migrations
from portcullis.storage.models import AuthCode, RefreshToken
from portcullis.storage.sealing import Sealer
from portcullis.storage.sql_hot import CompiledStatement, StatementCache
from portcullis.storage.sql_storage import CONSUME_CODE, INSERT_REFRESH, SQLStorage

# Execution option read by the "begin" hook: which BEGIN flavour this connection wants.
_BEGIN_MODE = "portcullis_sqlite_begin"
_DUPLICATE_KEY_ERRORS = frozenset({"SQLITE_CONSTRAINT_PRIMARYKEY", "SQLITE_CONSTRAINT_UNIQUE"})
# A reader that would have to wait (the busy handler) instead of reading at once.
_BUSY_ERRORS = frozenset({"SQLITE_BUSY", "SQLITE_BUSY_RECOVERY", "SQLITE_BUSY_SNAPSHOT"})
_SYNCHRONOUS_MODES = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})
MEMORY = ":memory:"
M = TypeVar("M")


# How often a writer waiting for another process's writer looks at the lock file again, in
# seconds: from the first value doubling up to the last (a blocking flock cannot time out).
_LOCK_POLL_FIRST, _LOCK_POLL_MAX = 0.0001, 0.001


class _Pending:
    """One statement waiting for a group commit, and what became of it. ``future`` is set
    for a caller awaiting it on an event loop (``_group_commit_async``)."""

    __slots__ = ("done", "error", "future", "result", "run")

    def __init__(
        self,
        run: Callable[[sqlite3.Connection], Any],
        future: asyncio.Future[Any] | None = None,
    ) -> None:
        self.run = run
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.future = future


def _settle(batch: list[_Pending]) -> None:
    """Hand committed statements' outcomes to their awaiting callers (on their loop)."""
    for pending in batch:
        future = pending.future
        if future is None or future.done():  # a caller that went away (cancelled)
            continue
        if pending.error is not None:
            future.set_exception(pending.error)
        else:
            future.set_result(pending.result)


def _execute(
    conn: sqlite3.Connection,
    compiled: CompiledStatement,
    args: tuple[Any, ...] | dict[str, Any],
    table: sa.Table,
) -> Mapping[str, Any] | None:
    """Run a compiled hot statement on a driver connection; its first row, or None."""
    try:
        cursor = conn.execute(compiled.sql, args)
        try:
            # fetchall, not fetchone: the statement must finish (a reader's implicit
            # transaction ends, a write's RETURNING completes) before it is left.
            return compiled.row(cursor.fetchall())
        finally:
            cursor.close()
    except sqlite3.IntegrityError as exc:
        if getattr(exc, "sqlite_errorname", "") in _DUPLICATE_KEY_ERRORS:
            raise AlreadyExistsError(f"{table.name}: record already exists") from None
        raise


def _create_private_file(path: str) -> None:
    """Create the database 0600 before SQLite does: it holds private signing keys. SQLite gives
    its -wal and -shm files the same mode as the database file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def _on_begin(conn: sa.Connection) -> None:
    mode = conn.get_execution_options().get(_BEGIN_MODE, "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


def enable_wal(cursor: sqlite3.Cursor, timeout: float) -> str:
    """Switch a new database file to WAL and return the journal mode.

    WAL is persistent: once one process switched, later connections only read the mode. The
    switch needs an exclusive lock, and when several worker processes open a brand-new file at
    once, two of them can each hold a shared lock while wanting the exclusive one; SQLite
    then answers one of them "database is locked" at once instead of running the busy handler
    (it would deadlock otherwise). So the switch is retried until ``timeout`` has passed."""
    mode = str(cursor.execute("PRAGMA journal_mode").fetchone()[0])
    deadline = time.monotonic() + timeout
    while mode.lower() != "wal":
        try:
            mode = str(cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
            mode = str(cursor.execute("PRAGMA journal_mode").fetchone()[0])
    return mode


class SQLiteStorage(SQLStorage):
    """Storage in one SQLite file, migrated to the current schema when opened.

    ``path`` may be ``":memory:"`` for a private in-process database (one shared connection,
    serialised by a lock); that is for tests only, like the memory backend. ``sealer`` seals
    connector data (``storage.sealing``; the factory gives one with the configured key or the
    key file beside the database); without one, values are stored as they are.
    """

    def __init__(
        self,
        path: str,
        *,
        busy_timeout: float = 30.0,
        synchronous: str = "FULL",
        clock: Clock | None = None,
        sealer: Sealer | None = None,
    ) -> None:
        if sealer is not None:
            self._sealer = sealer
        if synchronous.upper() not in _SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {sorted(_SYNCHRONOUS_MODES)}")
        self.path = path
        self._in_memory = path == MEMORY
        self._busy_timeout_ms = int(busy_timeout * 1000)
        self._synchronous = synchronous.upper()
        if not self._in_memory:
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                raise StorageError(f"sqlite3 file {path!r}: directory {parent!r} does not exist")
            _create_private_file(path)
        engine_args: dict[str, Any] = {}
        if self._in_memory:
            engine_args["poolclass"] = StaticPool
        self._engine = sa.create_engine(
            sa.URL.create("sqlite+pysqlite", database=path),
            # Parameters can be token hashes or connector data: keep them out of error messages.
            hide_parameters=True,
            connect_args={"check_same_thread": False, "timeout": busy_timeout},
            **engine_args,
        )
        self._write_lock = threading.Lock()
        self._pending: list[_Pending] = []
        # Guards _pending and _leading; followers of a group commit wait on it (see
        # _group_commit) instead of queueing for the write lock and the lock file.
        pending_lock = threading.Lock()
        self._pending_changed = threading.Condition(pending_lock)
        self._leading = False
        # The committer thread (started on the first awaited statement) leads group commits
        # for callers on an event loop, which wait on a future instead of in a thread of
        # their own; it waits on this condition for work.
        self._commit_wanted = threading.Condition(pending_lock)
        self._committer: threading.Thread | None = None
        self._closing = False
        # Opened here, in the process that uses it: flock excludes open file descriptions,
        # and a description inherited over fork would be shared with the parent.
        self._lock_fd = -1 if self._in_memory else self._open_lock_file()
        self._statements = StatementCache(self._engine.dialect)
        self._raw_writer: sqlite3.Connection | None = None
        # Driver connections: every one opened (closed by close()), and the idle readers.
        self._raw_all: list[sqlite3.Connection] = []
        self._raw_idle: list[sqlite3.Connection] = []
        self._raw_lock = threading.Lock()
        # The event loop's own reader (see _hot_read_async), busy timeout zero.
        self._loop_reader: sqlite3.Connection | None = None
        self._loop_reader_lock = threading.Lock()
        # One shared connection in memory mode: transactions from two threads must not mix.
        self._serial: contextlib.AbstractContextManager[Any] = (
            threading.RLock() if self._in_memory else contextlib.nullcontext()
        )
        sa.event.listen(self._engine, "connect", self._on_connect)
        sa.event.listen(self._engine, "begin", _on_begin)
        try:
            with self._write() as conn:
                self.applied_migrations = apply_migrations(
                    conn, load_migrations("sqlite"), (clock or SystemClock()).now()
                )
        except BaseException:
            self._engine.dispose()
            raise

    def _open_lock_file(self) -> int:
        lock_path = f"{self.path}-lock"
        try:
            return os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StorageError(
                f"sqlite3 file {self.path!r}: cannot open {lock_path!r}: {exc}"
            ) from None

    @contextlib.contextmanager
    def _writer(self) -> Iterator[None]:
        """Be the one writer: of this process (a thread lock), then of every process sharing
        the file (the lock file). SQLite's own lock still guards the data; this only makes
        writers queue where a release wakes the next one at once. Bounded like SQLite's busy
        timeout, so a writer stuck in another process fails a request instead of hanging it."""
        with self._write_lock:
            if self._lock_fd < 0:
                yield
                return
            deadline = time.monotonic() + self._busy_timeout_ms / 1000
            pause = _LOCK_POLL_FIRST
            while True:
                try:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StorageError(
                            f"sqlite3 {self.path}: another process held the write lock for "
                            f"{self._busy_timeout_ms / 1000:g}s"
                        ) from None
                    time.sleep(pause)
                    pause = min(pause * 2, _LOCK_POLL_MAX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _raw_connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout_ms / 1000,
            check_same_thread=False,  # used by one thread at a time, but not always the same
            isolation_level=None,
        )
        try:
            self._on_connect(conn, None)
        except BaseException:
            conn.close()
            raise
        with self._raw_lock:
            self._raw_all.append(conn)
        return conn

    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """A read connection of this storage's own (WAL: reads never wait for the writer),
        taken from the idle ones or opened, and given back: as many as reads ran at once,
        never one per thread that ever read (worker threads come and go)."""
        with self._raw_lock:
            conn = self._raw_idle.pop() if self._raw_idle else None
        if conn is None:
            conn = self._raw_connect()
        try:
            yield conn
        finally:
            with self._raw_lock:
                self._raw_idle.append(conn)

    def _on_connect(self, dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            if not self._in_memory:
                mode = enable_wal(cursor, self._busy_timeout_ms / 1000)
                if str(mode).lower() != "wal":
                    raise StorageError(
                        f"sqlite3 file {self.path!r}: cannot enable WAL journal (got {mode!r}); "
                        "is it on a network filesystem?"
                    )
            cursor.execute(f"PRAGMA synchronous = {self._synchronous}")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    # -- dialect hooks -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _translate_errors(self) -> Iterator[None]:
        try:
            yield
        except sa.exc.DBAPIError as exc:
            raise StorageError(f"sqlite3 {self.path}: {exc.orig}") from exc

    @contextlib.contextmanager
    def _transaction(self, begin_mode: str) -> Iterator[sa.Connection]:
        with self._serial, self._translate_errors(), self._engine.connect() as conn:
            conn.execution_options(**{_BEGIN_MODE: begin_mode})
            with conn.begin():
                yield conn

    def _read(self) -> contextlib.AbstractContextManager[sa.Connection]:
        return self._transaction("DEFERRED")

    @contextlib.contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        # Writers queue on _writer() (this process's lock, then the lock file) instead of on
        # SQLite's busy handler, whose back-off sleeps (up to 100 ms a try) made the tail
        # latency of concurrent refreshes seconds long.
        with self._writer(), self._transaction("IMMEDIATE") as conn:
            yield conn

    def _hot_statement(
        self, stmt: sa.Executable, table: sa.Table, params: Mapping[str, Any], *, write: bool
    ) -> Mapping[str, Any] | None:
        if self._in_memory:  # one shared SQLAlchemy connection: no driver connections of ours
            return super()._hot_statement(stmt, table, params, write=write)
        compiled = self._statements.get(stmt)
        args = compiled.parameters(params)

        def run(conn: sqlite3.Connection) -> Mapping[str, Any] | None:
            return _execute(conn, compiled, args, table)

        if write:
            return self._group_commit(run)
        try:
            with self._reader() as conn:
                return run(conn)
        except sqlite3.Error as exc:
            raise StorageError(f"sqlite3 {self.path}: {exc}") from exc

    async def _hot_read_async(
        self, stmt: sa.Executable, table: sa.Table, params: Mapping[str, Any]
    ) -> Mapping[str, Any] | None:
        """A hot read on the event loop itself, without a worker thread: the refresh grant's
        family lookup is a primary-key read of one row, which under WAL never waits for the
        writer and is answered from the page cache in tens of microseconds, less than the
        thread hand-off around it costs. It runs on a reader connection of the loop's own with
        a busy timeout of zero, so the loop can never sleep in SQLite's busy handler: in the
        rare cases where a WAL reader must wait (another connection recovering the WAL index
        after a crash), SQLite answers "busy" at once and the read is retried in a worker
        thread with the normal timeout."""
        if self._in_memory:
            return await super()._hot_read_async(stmt, table, params)
        compiled = self._statements.get(stmt)
        args = compiled.parameters(params)
        if self._loop_reader_lock.acquire(blocking=False):  # another loop thread: see below
            try:
                conn = self._loop_reader
                if conn is None:
                    conn = self._loop_reader = self._raw_connect()
                    conn.execute("PRAGMA busy_timeout = 0")
                return _execute(conn, compiled, args, table)
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorname", "") not in _BUSY_ERRORS:
                    raise StorageError(f"sqlite3 {self.path}: {exc}") from exc
            except sqlite3.Error as exc:
                raise StorageError(f"sqlite3 {self.path}: {exc}") from exc
            finally:
                self._loop_reader_lock.release()
        # Busy, or the loop reader in use by another event loop of this process (tests run
        # several): the ordinary read in a worker thread.
        return await super()._hot_read_async(stmt, table, params)

    def exchange_auth_code(
        self,
        code_id: str,
        now: float,
        client_id: str,
        start_family: Callable[[AuthCode], RefreshToken | None],
    ) -> tuple[AuthCode, RefreshToken | None]:
        """Both writes of a code exchange in ONE group-commit item: one commit to wait for
        instead of two. The family insert has a savepoint of its own, so the code stays
        consumed when it fails, as the base class documents."""
        if self._in_memory:
            return super().exchange_auth_code(code_id, now, client_id, start_family)
        run, outcome = self._exchange_item(code_id, now, client_id, start_family)
        self._group_commit(run)
        if not outcome:
            self._code_not_consumed(code_id, client_id)
        return self._exchanged(outcome[0])

    async def exchange_auth_code_async(
        self,
        code_id: str,
        now: float,
        client_id: str,
        start_family: Callable[[AuthCode], RefreshToken | None],
    ) -> tuple[AuthCode, RefreshToken | None]:
        """The same group-commit item, awaited (see ``_group_commit_async``)."""
        if self._in_memory:
            return await super().exchange_auth_code_async(code_id, now, client_id, start_family)
        run, outcome = self._exchange_item(code_id, now, client_id, start_family)
        await self._group_commit_async(run)
        if not outcome:
            from anyio import to_thread  # the event-loop side only

            await to_thread.run_sync(self._code_not_consumed, code_id, client_id)
        return self._exchanged(outcome[0])

    @staticmethod
    def _exchanged(
        outcome: tuple[AuthCode, RefreshToken | None, Exception | None],
    ) -> tuple[AuthCode, RefreshToken | None]:
        code, family, error = outcome
        if error is not None:
            raise error
        return code, family

    def _exchange_item(
        self,
        code_id: str,
        now: float,
        client_id: str,
        start_family: Callable[[AuthCode], RefreshToken | None],
    ) -> tuple[
        Callable[[sqlite3.Connection], None],
        list[tuple[AuthCode, RefreshToken | None, Exception | None]],
    ]:
        """The group-commit item of a code exchange, and the list it leaves its outcome in
        (empty: the code was not consumed)."""
        consume = self._statements.get(CONSUME_CODE)
        insert = self._statements.get(INSERT_REFRESH)
        consume_args = consume.parameters({"p_id": code_id, "p_now": now, "p_client": client_id})
        outcome: list[tuple[AuthCode, RefreshToken | None, Exception | None]] = []

        def run(conn: sqlite3.Connection) -> None:
            outcome.clear()  # a failed group is not retried, but stay exact
            row = _execute(conn, consume, consume_args, t.auth_codes)
            if row is None:
                return
            code = rows.auth_code_from(row, self._sealer)
            try:
                family = start_family(code)
            except Exception as exc:  # the caller's error; the code stays consumed
                outcome.append((code, None, exc))
                return
            if family is not None:
                conn.execute("SAVEPOINT family")
                try:
                    values = insert.parameters(rows.refresh_token_row(family, self._sealer))
                    _execute(conn, insert, values, t.refresh_tokens)
                except AlreadyExistsError as exc:
                    conn.execute("ROLLBACK TO family")
                    outcome.append((code, None, exc))
                    return
                finally:
                    conn.execute("RELEASE family")
            outcome.append((code, family, None))

        return run, outcome

    def _writer_connection(self) -> sqlite3.Connection:
        """The process's one driver connection for group commits (used under _writer())."""
        if self._raw_writer is None:
            self._raw_writer = self._raw_connect()
        return self._raw_writer

    def _group_commit(self, run: Callable[[sqlite3.Connection], M]) -> M:
        """Run ``run`` (ONE statement) durably, committed with whatever else is queued.

        With ``synchronous=FULL`` every commit waits for an fsync (a few ms on this machine's
        disks), so one commit per refresh caps a server at a few hundred refreshes a second.
        Statements that arrive while another commit is in progress queue up; when that commit
        ends, one waiting thread becomes the leader, takes the writer lock and runs ALL queued
        statements in one transaction and one fsync, and each caller returns only after the
        commit holding its statement, so durability is that of FULL. Each statement runs in a
        savepoint of its own, so one that fails (a duplicate key) is rolled back alone and its
        caller alone gets the error; when the commit itself fails, every statement of the group
        fails with it (no partial commit).

        Followers wait on a condition, not on the writer lock: a thread whose statement another
        thread committed returns at once, without taking the write lock and the lock file in
        turn (which made every member of a group queue behind the other process's writer
        before it could return, and polled the lock file while it did)."""
        mine = _Pending(run)
        batch: list[_Pending] = []
        with self._pending_changed:
            self._pending.append(mine)
            while self._leading and not mine.done:
                self._pending_changed.wait()
            if not mine.done:  # no commit in progress and ours not committed: lead the next
                self._leading = True
                batch, self._pending = self._pending, []
        if batch:
            self._lead(batch)
        if mine.error is not None:
            raise mine.error
        result: M = mine.result
        return result

    async def _hot_write_async(
        self, stmt: sa.Executable, table: sa.Table, params: Mapping[str, Any]
    ) -> Mapping[str, Any] | None:
        if self._in_memory:
            return await super()._hot_write_async(stmt, table, params)
        compiled = self._statements.get(stmt)
        args = compiled.parameters(params)
        row: Mapping[str, Any] | None = await self._group_commit_async(
            lambda conn: _execute(conn, compiled, args, table)
        )
        return row

    async def _group_commit_async(self, run: Callable[[sqlite3.Connection], M]) -> M:
        """``_group_commit`` for a caller on an event loop: the statement joins the queue and
        the caller awaits a future, set (on its loop) once the commit holding the statement
        returned — the same durability, without a worker thread per request. The committer
        thread leads the group commits that such statements need; threads calling
        ``_group_commit`` still lead or follow as before, and settle whatever they commit."""
        future: asyncio.Future[M] = asyncio.get_running_loop().create_future()
        with self._pending_changed:
            if self._closing:
                raise StorageError(f"sqlite3 {self.path}: storage is closed")
            self._pending.append(_Pending(run, future))
            if self._committer is None or not self._committer.is_alive():
                self._committer = threading.Thread(
                    target=self._commit_loop, name="sqlite-group-commit", daemon=True
                )
                self._committer.start()
            self._commit_wanted.notify()
        return await future

    def _commit_loop(self) -> None:
        while True:
            with self._pending_changed:
                while self._leading or not self._pending:
                    if self._closing and not self._pending:
                        return
                    self._commit_wanted.wait()
                self._leading = True
                batch, self._pending = self._pending, []
            self._lead(batch)

    def _lead(self, batch: list[_Pending]) -> None:
        """Commit ``batch`` as its leader (``_leading`` is set), then release every member."""
        try:
            with self._writer():
                self._commit_group(batch)
        except BaseException as exc:  # the writer lock timed out: the whole group fails
            for pending in batch:
                if pending.error is None:
                    pending.error = exc
        finally:
            awaited: dict[asyncio.AbstractEventLoop, list[_Pending]] = {}
            with self._pending_changed:
                for pending in batch:
                    pending.done = True
                    if pending.future is not None:
                        awaited.setdefault(pending.future.get_loop(), []).append(pending)
                self._leading = False
                self._pending_changed.notify_all()
                if self._pending:  # queued meanwhile: the committer leads if no thread does
                    self._commit_wanted.notify()
            for loop, members in awaited.items():
                # One wake-up of each loop for the whole group; a closed loop (RuntimeError)
                # has nobody waiting any more.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_settle, members)

    def _commit_group(self, batch: list[_Pending]) -> None:
        try:
            conn = self._writer_connection()
            # A group of one (no concurrency) needs no savepoint: its failure is the group's.
            alone = len(batch) == 1
            conn.execute("BEGIN IMMEDIATE")
            try:
                for pending in batch:
                    if not alone:
                        conn.execute("SAVEPOINT hot")
                    try:
                        pending.result = pending.run(conn)
                    except Exception as exc:  # this caller's, not the group's
                        conn.execute("ROLLBACK" if alone else "ROLLBACK TO hot")
                        pending.error = exc
                        if isinstance(exc, sqlite3.Error):
                            pending.error = StorageError(f"sqlite3 {self.path}: {exc}")
                            pending.error.__cause__ = exc
                    if not alone:
                        conn.execute("RELEASE hot")
                if conn.in_transaction:
                    conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except BaseException as exc:
            failure: BaseException = exc
            if isinstance(exc, sqlite3.Error):
                failure = StorageError(f"sqlite3 {self.path}: {exc}")
                failure.__cause__ = exc
            for pending in batch:
                pending.error = failure

    def _is_duplicate_key(self, error: sa.exc.IntegrityError) -> bool:
        return getattr(error.orig, "sqlite_errorname", "") in _DUPLICATE_KEY_ERRORS

    def _insert_if_absent(self, table: sa.Table, **values: Any) -> sa.Insert:
        return sqlite_insert(table).values(**values).on_conflict_do_nothing()

    def _upsert_revoked(self, jti: str, expiry: float) -> sa.Executable:
        rv = t.revoked_tokens
        stmt = sqlite_insert(rv).values(jti=jti, expiry=expiry)
        later = sa.case(
            (stmt.excluded.expiry > rv.c.expiry, stmt.excluded.expiry), else_=rv.c.expiry
        )
        return stmt.on_conflict_do_update(index_elements=[rv.c.jti], set_={"expiry": later})

    def _identity_has_group(self, group: str) -> sa.ColumnElement[bool]:
        return sa.text(
            "EXISTS (SELECT 1 FROM json_each(refresh_tokens.identity, '$.groups') AS g "
            "WHERE g.value = :denied_group)"
        ).bindparams(denied_group=group)  # type: ignore[return-value]

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        with self._pending_changed:
            self._closing = True
            self._commit_wanted.notify_all()
            committer = self._committer
        if committer is not None and committer is not threading.current_thread():
            committer.join()  # commits what is still queued first
        with self._raw_lock:
            raw, self._raw_all, self._raw_idle = self._raw_all, [], []
        for conn in raw:
            conn.close()
        self._raw_writer = None
        with self._loop_reader_lock:
            self._loop_reader = None  # opened through _raw_connect: closed above
        self._engine.dispose()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
