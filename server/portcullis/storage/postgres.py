"""PostgreSQL backend: what makes several issuer replicas sharing one database safe.

* Every read-modify-write (consume a code, rotate keys, run an updater) selects its row
  ``FOR UPDATE`` inside one READ COMMITTED transaction (the queries are in ``sql_storage.py``):
  a second replica blocks on the row lock and then sees the committed result, so nothing is
  consumed twice and no update is lost. Rows that do not exist yet (a throttle key's failure
  count) are serialised by a transaction-scoped advisory lock on a hash of their name.
* Migrations run under ``pg_advisory_xact_lock``: replicas starting together queue on it and
  exactly one applies the schema; DDL is transactional, so a failure leaves nothing behind.
* Nothing waits forever: a statement stuck behind a lock fails after ``STATEMENT_TIMEOUT``, a
  session idle inside a transaction (a frozen replica) loses its locks after
  ``IDLE_IN_TRANSACTION_TIMEOUT``, TCP keepalives notice a vanished server, and a pooled
  connection the server closed is replaced at checkout instead of failing a request.
* Connection problems become :class:`DatabaseUnavailableError` messages that name the
  ``storage.config`` field to check and never contain the password.
* The token paths' hot statements (rotate a refresh family, consume a code and start its
  family, read a family for use) are awaited on the event loop through psycopg's
  ``AsyncConnection`` (``postgres_loop.py``), with the same SQL, session limits, liveness check
  and errors as the thread pool that serves everything else. ``maxOpenConns`` bounds both
  together: see :func:`split_budget`.

The password and other connection settings go to psycopg as keyword arguments, never into a URL
or a logged DSN.
"""

from __future__ import annotations

import contextlib
import math
import re
import select
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, TypeVar

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from portcullis.clock import Clock, SystemClock
from portcullis.config.model import PostgresConfig
from portcullis.storage import sql_rows as rows
from portcullis.storage import sql_schema as t
from portcullis.storage.base import AlreadyExistsError, NotFoundError, StorageError
from portcullis.storage.migrations import apply_migrations, load_migrations
from portcullis.storage.models import AuthCode, RefreshRotation, RefreshToken, RotationOrRead
from portcullis.storage.postgres_loop import LoopConnections, PoolExhaustedError
from portcullis.storage.sealing import Sealer
from portcullis.storage.sql_hot import StatementCache
from portcullis.storage.sql_storage import CONSUME_CODE, INSERT_REFRESH, SQLStorage

M = TypeVar("M")

# pg_advisory_xact_lock key for schema migrations: any constant unlikely to clash with another
# application's advisory locks in the same database ("portcullis" in ASCII, truncated).
MIGRATION_LOCK_KEY = 0x706F727463756C6C
# Dex's defaults (Go database/sql settings): 5 open connections, 5 idle, no lifetime limit.
DEFAULT_MAX_OPEN = 5
DEFAULT_MAX_IDLE = 5
# Used when connectionTimeout is 0 (Dex's default, which waits for the OS TCP timeout).
DEFAULT_CONNECT_TIMEOUT = 10
# How long a request waits for a free pooled connection before failing.
POOL_TIMEOUT = 30.0

# Server-side limits per session (see _session_limits), in seconds.
STATEMENT_TIMEOUT = 30.0
IDLE_IN_TRANSACTION_TIMEOUT = 60.0
# A pooled connection idle longer than this is pinged before use (see _check_out).
PING_AFTER_IDLE = 10.0
_LAST_CHECKIN = "portcullis_last_checkin"
_UNIQUE_VIOLATION = "23505"
_INSUFFICIENT_PRIVILEGE = "42501"
_LIBPQ_PREFIX = re.compile(
    r"^(?:connection failed: )?(?:connection to server (?:at|on) .*? failed: )?"
    r"(?:(?:FATAL|ERROR): +)?"
)
_FIELD = "storage.config"


class DatabaseUnavailableError(StorageError):
    """PostgreSQL could not be reached or refused the login; the message names the setting."""


def split_host_port(host: str, port: int) -> tuple[str, int]:
    """Dex accepts ``host: "db:5433"`` for backwards compatibility; a bare host (or a unix
    socket directory, or an unbracketed IPv6 address) uses ``port``."""
    port = port or 5432
    if host.startswith("["):
        address, sep, rest = host[1:].partition("]")
        if sep and rest.startswith(":") and rest[1:].isdigit():
            return address, int(rest[1:])
        return address if sep and not rest else host, port
    name, sep, tail = host.rpartition(":")
    if sep and name and ":" not in name and tail.isdigit():
        return name, int(tail)
    return host, port


def connect_arguments(config: PostgresConfig) -> dict[str, Any]:
    """libpq connection parameters for the config (the password included: never log this)."""
    host, port = split_host_port(config.host, config.port)
    timeout = config.connection_timeout or DEFAULT_CONNECT_TIMEOUT
    args: dict[str, Any] = {
        "port": port,
        "connect_timeout": timeout,
        "sslmode": config.ssl.mode,
        "application_name": "portcullis",
        # TCP keepalives: a database that vanished without closing the connection (node lost,
        # network partition) is noticed in about a minute instead of the kernel's two hours.
        # Client-side only, so poolers such as PgBouncer accept them.
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }
    if host:
        args["host"] = host
    # Left out when empty, as Dex does: libpq's defaults (PGDATABASE/PGUSER, else the OS user).
    if config.database:
        args["dbname"] = config.database
    if config.user:
        args["user"] = config.user
    password = config.password.get_secret_value()
    if password:
        args["password"] = password
    if config.ssl.mode != "disable":
        if config.ssl.ca_file:
            args["sslrootcert"] = config.ssl.ca_file
        elif config.ssl.mode == "verify-full":
            # Dex's Go driver trusts the system CAs when no caFile is given; libpq must be
            # told to (libpq >= 16, bundled by psycopg-binary).
            args["sslrootcert"] = "system"
        if config.ssl.cert_file:
            args["sslcert"] = config.ssl.cert_file
            args["sslkey"] = config.ssl.key_file
    return args


def describe_target(config: PostgresConfig) -> str:
    host, port = split_host_port(config.host, config.port)
    where = host or "the default unix socket"
    database = repr(config.database) if config.database else "(libpq default)"
    user = repr(config.user) if config.user else "(libpq default)"
    return f"postgres database {database} on {where}:{port} as user {user}"


def _libpq_reason(exc: BaseException) -> str:
    """The driver's own words, first line only: later lines are hints or DETAIL, which can
    quote row values."""
    orig = getattr(exc, "orig", None) or exc
    diag = getattr(orig, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = (primary or str(orig)).strip()
    if not text:
        return type(orig).__name__
    # libpq repeats the target ("connection to server at ..., port ... failed: FATAL:  ...");
    # our message names it already, so keep the reason only.
    return _LIBPQ_PREFIX.sub("", text.splitlines()[0]) or text.splitlines()[0]


def _connect_hint(reason: str, sqlstate: str | None) -> str:
    lowered = reason.lower()
    if sqlstate in ("28P01", "28000") or "authentication" in lowered or "password" in lowered:
        return f"check {_FIELD}.user and {_FIELD}.password"
    if sqlstate == "3D000" or ("database" in lowered and "does not exist" in lowered):
        return f"check {_FIELD}.database"
    if "ssl" in lowered or "certificate" in lowered or "tls" in lowered:
        return f"check {_FIELD}.ssl (mode, caFile, certFile, keyFile)"
    if "timeout" in lowered or "timed out" in lowered:
        return f"check {_FIELD}.host and {_FIELD}.port, or raise {_FIELD}.connectionTimeout"
    return f"check {_FIELD}.host and {_FIELD}.port"


def split_budget(max_open: int, max_idle: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """``maxOpenConns`` and ``maxIdleConns`` shared out as ((open, idle) of the thread pool,
    (open, idle) of the event-loop connections).

    Dex's ``maxOpenConns`` bounds a process's connections to the database, and it still does:
    the two pools split it rather than each taking it whole. The thread pool (every statement
    but the hot ones, and all of them while no loop runs) keeps half, rounded down but at least
    one; the hot statements, most of the load, get the rest, rounded up. ``maxIdleConns`` is
    split the same way, each side keeping at least one idle connection when it has any. With
    ``maxOpenConns: 1`` there is nothing to split: the hot statements then run in worker
    threads on the thread pool, as every statement did before (loop side ``(0, 0)``)."""
    threads_open = max(1, max_open // 2)
    loop_open = max_open - threads_open
    threads_idle = min(threads_open, max(1, max_idle // 2))
    loop_idle = min(loop_open, max(1, max_idle - threads_idle))
    return (threads_open, threads_idle), (loop_open, loop_idle)


def _session_limits(dbapi_conn: Any, _record: Any) -> None:
    """Bound how long anything can hang on the database, once per new connection.

    Storage calls run on the request path, so a statement stuck behind a lock (another
    replica frozen mid-transaction) must fail rather than wait forever, and a replica that
    froze mid-transaction must not keep its row locks forever. Plain ``SET`` rather than
    startup ``options``, which connection poolers such as PgBouncer refuse.
    """
    dbapi_conn.autocommit = True
    try:
        dbapi_conn.execute(_session_limits_sql())
    finally:
        dbapi_conn.autocommit = False


def _session_limits_sql() -> str:
    # Read when a connection opens (tests shorten the limits).
    return (
        f"SET statement_timeout = {int(STATEMENT_TIMEOUT * 1000)}; "
        f"SET idle_in_transaction_session_timeout = {int(IDLE_IN_TRANSACTION_TIMEOUT * 1000)}"
    )


def _checked_in(_dbapi_conn: Any, record: Any) -> None:
    record.info[_LAST_CHECKIN] = time.monotonic()


def _check_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
    """Refuse a pooled connection that is dead, so the pool opens a new one.

    SQLAlchemy's ``pool_pre_ping`` costs a round trip on every transaction (a fifth of a
    refresh-token update on loopback). Cheaper and almost as good: a connection the server
    closed (restart, fail-over, ``pg_terminate_backend``) has data or EOF waiting on an idle
    socket, seen without a round trip; only a connection idle for a while, whose peer may have
    vanished silently, pays for a real ping.
    """
    pgconn = dbapi_conn.pgconn
    if pgconn.status != psycopg.pq.ConnStatus.OK:
        raise sa.exc.DisconnectionError()
    try:
        readable, _, _ = select.select([pgconn.socket], [], [], 0)
    except (OSError, ValueError, psycopg.OperationalError):
        raise sa.exc.DisconnectionError() from None
    if readable:  # an idle connection has nothing to read unless the server hung up
        raise sa.exc.DisconnectionError()
    idle = time.monotonic() - record.info.get(_LAST_CHECKIN, time.monotonic())
    if idle > PING_AFTER_IDLE:
        result = pgconn.exec_(b";")
        if result.status not in (
            psycopg.pq.ExecStatus.EMPTY_QUERY,
            psycopg.pq.ExecStatus.COMMAND_OK,
        ):
            raise sa.exc.DisconnectionError()


class _Lease:
    """A loop connection lent to one task (``PostgresStorage._loop_lease``); ``busy`` while a
    statement of it is in flight, so one cut off mid-way is not handed to the next task."""

    __slots__ = ("busy", "conn")

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn
        self.busy = False


class PostgresStorage(SQLStorage):
    """Storage in a PostgreSQL database shared by every replica, migrated when opened."""

    def __init__(
        self, config: PostgresConfig, *, clock: Clock | None = None, sealer: Sealer | None = None
    ) -> None:
        if sealer is not None:
            self._sealer = sealer
        self._config = config
        self._target = describe_target(config)
        self._password = config.password.get_secret_value()
        max_open = config.max_open_conns or DEFAULT_MAX_OPEN
        max_idle = min(config.max_idle_conns or DEFAULT_MAX_IDLE, max_open)
        (max_open, max_idle), (loop_open, loop_idle) = split_budget(max_open, max_idle)
        self._loop_connections: LoopConnections | None = None
        if loop_open:
            self._loop_connections = LoopConnections(
                self._connect_async,
                max_open=loop_open,
                max_idle=loop_idle,
                lifetime=config.conn_max_lifetime or math.inf,
                ping_after_idle=lambda: PING_AFTER_IDLE,
            )
        self._engine = sa.create_engine(
            "postgresql+psycopg://",
            connect_args=connect_arguments(config),
            # Parameters can be token hashes or connector data: keep them out of error messages.
            hide_parameters=True,
            isolation_level="READ COMMITTED",
            pool_size=max_idle,
            max_overflow=max_open - max_idle,
            pool_timeout=POOL_TIMEOUT,
            pool_recycle=config.conn_max_lifetime or -1,
        )
        # A replica outlives database restarts and fail-overs: a pooled connection is checked
        # before it is handed out (see _check_out), so a dead one is replaced, not used.
        sa.event.listen(self._engine, "connect", _session_limits)
        sa.event.listen(self._engine, "checkout", _check_out)
        sa.event.listen(self._engine, "checkin", _checked_in)
        self._statements = StatementCache(self._engine.dialect, typed_results=True)
        try:
            with self._write() as conn:
                # Replicas starting together queue here; the first applies, the rest see it done.
                # Waiting for another replica's migration, or a long one, is not a hung query.
                conn.execute(sa.text("SET LOCAL statement_timeout = 0"))
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
                self.applied_migrations = apply_migrations(
                    conn, load_migrations("postgres"), (clock or SystemClock()).now()
                )
        except BaseException:
            self._engine.dispose()
            raise

    # -- errors ------------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        """Defence in depth (libpq does not echo passwords). Very short passwords are not
        substituted: masking every "p" in a message would garble it and hint at the secret."""
        if len(self._password) < 6:
            return text
        return text.replace(self._password, "********")

    def _unavailable(self, exc: BaseException) -> DatabaseUnavailableError:
        reason = _libpq_reason(exc)
        sqlstate = getattr(getattr(exc, "orig", None) or exc, "sqlstate", None)
        hint = _connect_hint(reason, sqlstate)
        return DatabaseUnavailableError(
            self._scrub(f"cannot connect to {self._target}: {reason} ({hint})")
        )

    def _exhausted(self) -> DatabaseUnavailableError:
        return DatabaseUnavailableError(
            f"{self._target}: no free connection after {POOL_TIMEOUT:.0f}s "
            f"(raise {_FIELD}.maxOpenConns?)"
        )

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sa.Connection]:
        try:
            conn = self._engine.connect()
        except sa.exc.TimeoutError:
            raise self._exhausted() from None
        except (sa.exc.DBAPIError, psycopg.Error) as exc:
            raise self._unavailable(exc) from None
        with conn:
            yield conn

    # -- dialect hooks -----------------------------------------------------------------------
    def _failure(self, exc: sa.exc.DBAPIError) -> StorageError:
        return self._statement_failure(exc, exc.orig, invalidated=exc.connection_invalidated)

    def _statement_failure(
        self, exc: BaseException, orig: BaseException | None, *, invalidated: bool
    ) -> StorageError:
        """A failed statement's error (``exc``, SQLAlchemy's or psycopg's; ``orig`` the
        driver's): the connection was lost, or the server's reason, first line only."""
        if invalidated:
            return self._unavailable(exc)
        message = f"{self._target}: {_libpq_reason(exc)}"
        if getattr(orig, "sqlstate", None) == _INSUFFICIENT_PRIVILEGE:
            message += (
                f" ({_FIELD}.user must own the database, or hold CREATE on its schema, "
                "so Portcullis can create and migrate its tables)"
            )
        return StorageError(self._scrub(message))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sa.Connection]:
        with self._connection() as conn:
            try:
                with conn.begin():
                    yield conn
            except sa.exc.DBAPIError as exc:
                failure = self._failure(exc)
                if isinstance(failure, DatabaseUnavailableError):
                    raise failure from None
                raise failure from exc

    def _run_statement(self, run: Callable[[sa.Connection], M]) -> M:
        return self._autocommit(run)

    def _run_read(self, run: Callable[[sa.Connection], M]) -> M:
        return self._autocommit(run)

    def _autocommit(self, run: Callable[[sa.Connection], M]) -> M:
        # The statement is its own transaction: one round trip instead of three (BEGIN,
        # statement, COMMIT). The pool restores the isolation level on check-in.
        with self._connection() as conn:
            try:
                return run(conn.execution_options(isolation_level="AUTOCOMMIT"))
            except sa.exc.DBAPIError as exc:
                failure = self._failure(exc)
                if isinstance(failure, DatabaseUnavailableError):
                    raise failure from None
                raise failure from exc

    def _hot_statement(
        self, stmt: sa.Executable, table: sa.Table, params: Mapping[str, Any], *, write: bool
    ) -> Mapping[str, Any] | None:
        # One autocommit round trip as before, but the SQL text compiled once and handed to
        # psycopg as it is (exec_driver_sql keeps the pool's error handling and invalidation);
        # psycopg prepares it server-side after a few uses on a connection.
        compiled = self._statements.get(stmt)
        args = compiled.parameters(params)

        def run(conn: sa.Connection) -> Mapping[str, Any] | None:
            try:
                result = conn.exec_driver_sql(compiled.sql, args)
            except sa.exc.IntegrityError as exc:
                if self._is_duplicate_key(exc):
                    raise AlreadyExistsError(f"{table.name}: record already exists") from None
                raise
            return compiled.row(result.fetchall() if result.returns_rows else [])

        return self._autocommit(run)

    # -- the hot statements on the event loop -----------------------------------------------
    async def _connect_async(self) -> psycopg.AsyncConnection[Any]:
        """A new loop-owned connection, with ``_session_limits``: autocommit, as each hot
        statement is its own transaction (one round trip)."""
        conn = await psycopg.AsyncConnection.connect(
            autocommit=True, **connect_arguments(self._config)
        )
        try:
            await conn.execute(_session_limits_sql())
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _hot_async(
        self, stmt: sa.Executable, table: sa.Table, params: Mapping[str, Any]
    ) -> Mapping[str, Any] | None:
        """``_hot_statement`` awaited on the running loop, on one of its own connections:
        the same compiled SQL and parameters, the same errors."""
        async with self._loop_lease() as lease:
            return await self._run_on(lease, stmt, table, params)

    @contextlib.asynccontextmanager
    async def _loop_lease(self) -> AsyncIterator[_Lease]:
        """One of the running loop's connections for one or more hot statements in a row
        (``_run_on``), given back when the block ends. It is kept for the next task unless a
        statement was cut off mid-way (cancelled) or the connection broke."""
        assert self._loop_connections is not None
        pool = self._loop_connections.pool()
        try:
            pooled = await pool.acquire(POOL_TIMEOUT)
        except PoolExhaustedError:
            raise self._exhausted() from None
        except psycopg.Error as exc:  # opening a connection failed
            raise self._unavailable(exc) from None
        lease = _Lease(pooled.conn)
        try:
            yield lease
        finally:
            conn = pooled.conn
            pool.release(pooled, reusable=not (lease.busy or conn.closed or conn.broken))

    async def _run_on(
        self, lease: _Lease, stmt: sa.Executable, table: sa.Table, params: Mapping[str, Any]
    ) -> Mapping[str, Any] | None:
        """One hot statement on a leased loop connection (autocommit: its own transaction)."""
        compiled = self._statements.get(stmt)
        args = compiled.parameters(params)
        lease.busy = True
        try:
            # Prepared on first use: a handful of fixed statements, each reused all day
            # (psycopg would prepare them after five uses on each connection anyway; not
            # preparing at all cost 15% more CPU and a third of the throughput, measured).
            cursor = await lease.conn.execute(compiled.sql, args, prepare=True)
            # The statement says whether it returns rows (cursor.description would build a
            # Column object per column on every call).
            found = await cursor.fetchall() if compiled.columns else []
        except psycopg.Error as exc:
            conn = lease.conn
            # The server answered (or the connection is gone): nothing is left in flight.
            lease.busy = False
            if isinstance(exc, psycopg.IntegrityError) and exc.sqlstate == _UNIQUE_VIOLATION:
                raise AlreadyExistsError(f"{table.name}: record already exists") from None
            # Not chained: psycopg's message carries the server's DETAIL, which can quote
            # row values (the parameters); the first line is kept, as on the thread path.
            invalidated = conn.closed or conn.broken
            raise self._statement_failure(exc, exc, invalidated=invalidated) from None
        lease.busy = False
        return compiled.row(found)

    async def _hot_write_async(
        self, stmt: sa.Executable, table: sa.Table, params: Mapping[str, Any]
    ) -> Mapping[str, Any] | None:
        if self._loop_connections is None:  # maxOpenConns: 1 (see split_budget)
            return await super()._hot_write_async(stmt, table, params)
        return await self._hot_async(stmt, table, params)

    async def _hot_read_async(
        self, stmt: sa.Executable, table: sa.Table, params: Mapping[str, Any]
    ) -> Mapping[str, Any] | None:
        if self._loop_connections is None:
            return await super()._hot_read_async(stmt, table, params)
        return await self._hot_async(stmt, table, params)

    async def rotate_refresh_token_or_read_async(self, rotation: RefreshRotation) -> RotationOrRead:
        """One statement on the loop (``_rotation_or_read_statement``) instead of the base
        class's rotation then read: a refresh the rotation leaves to the general path (a
        connector that refreshes upstream, a retry) saves a round trip."""
        statement = self._rotation(rotation, or_read=True)
        if self._loop_connections is None or statement is None:
            return await super().rotate_refresh_token_or_read_async(rotation)
        row = await self._hot_async(statement[0], t.refresh_tokens, statement[1])
        if row is None:
            raise NotFoundError("refresh_tokens: record not found")
        return RotationOrRead(
            self._refresh_token_from(row),
            rotated=bool(row["rotated"]),
            denied_since=bool(row["denied_since"]),
        )

    async def exchange_auth_code_async(
        self,
        code_id: str,
        now: float,
        client_id: str,
        start_family: Callable[[AuthCode], RefreshToken | None],
    ) -> tuple[AuthCode, RefreshToken | None]:
        """The base class's two autocommit statements, awaited on the loop on one connection:
        the code stays consumed when ``start_family`` raises or the family cannot be
        stored."""
        if self._loop_connections is None:
            return await super().exchange_auth_code_async(code_id, now, client_id, start_family)
        params = {"p_id": code_id, "p_now": now, "p_client": client_id}
        # One connection for both statements: a second trip through the pool's queue under
        # load doubled the wait of an exchange (its p99 most of all). start_family is checks
        # and building a record, no I/O.
        async with self._loop_lease() as lease:
            row = await self._run_on(lease, CONSUME_CODE, t.auth_codes, params)
            if row is not None:
                code = rows.auth_code_from(row, self._sealer)
                family = start_family(code)
                if family is not None:
                    family_row = rows.refresh_token_row(family, self._sealer)
                    await self._run_on(lease, INSERT_REFRESH, t.refresh_tokens, family_row)
                return code, family
        # The cold path: find out why, in a worker thread (_code_not_consumed always raises).
        from anyio import to_thread

        await to_thread.run_sync(self._code_not_consumed, code_id, client_id)
        raise AssertionError("unreachable: _code_not_consumed raises")

    def _read(self) -> contextlib.AbstractContextManager[sa.Connection]:
        return self._transaction()

    def _write(self) -> contextlib.AbstractContextManager[sa.Connection]:
        return self._transaction()

    def _is_duplicate_key(self, error: sa.exc.IntegrityError) -> bool:
        return getattr(error.orig, "sqlstate", None) == _UNIQUE_VIOLATION

    def _insert_if_absent(self, table: sa.Table, **values: Any) -> sa.Insert:
        return pg_insert(table).values(**values).on_conflict_do_nothing()

    def _upsert_revoked(self, jti: str, expiry: float) -> sa.Executable:
        rv = t.revoked_tokens
        stmt = pg_insert(rv).values(jti=jti, expiry=expiry)
        later = sa.func.greatest(rv.c.expiry, stmt.excluded.expiry)
        return stmt.on_conflict_do_update(index_elements=[rv.c.jti], set_={"expiry": later})

    def _identity_has_group(self, group: str) -> sa.ColumnElement[bool]:
        # jsonb containment of a one-element array: uses the same comparison as equality.
        return sa.text(
            "(refresh_tokens.identity -> 'groups') "
            "@> jsonb_build_array(CAST(:denied_group AS text))"
        ).bindparams(denied_group=group)  # type: ignore[return-value]

    def _lock_name(self, conn: sa.Connection, name: str) -> None:
        # hashtextextended gives a 64-bit key; a rare collision only serialises two names.
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(name, 0))))

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        if self._loop_connections is not None:
            self._loop_connections.close()
        self._engine.dispose()
