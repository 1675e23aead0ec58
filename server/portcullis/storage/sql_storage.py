"""The queries of every SQL backend, written once in SQLAlchemy Core.

A dialect module (``sqlite.py``, ``postgres.py``) subclasses :class:`SQLStorage` and
supplies only what really differs: how a transaction is opened and locked (:meth:`_read`,
:meth:`_write`), how a duplicate key is recognised, and the dialect's ``INSERT ... ON CONFLICT``.

Concurrency model: every read-modify-write runs in one :meth:`_write` transaction and selects the
row ``FOR UPDATE`` (rendered on PostgreSQL, ignored by SQLite whose ``BEGIN IMMEDIATE`` already
holds the database write lock), so two workers never both consume a code or both rotate keys.
The two hottest writes, consuming a code and rotating a refresh family, are instead ONE
conditional ``UPDATE ... RETURNING`` each (the condition in the ``WHERE``, so a concurrent
writer makes it match nothing), run through :meth:`_run_statement`: autocommit on PostgreSQL,
group commit on SQLite. Their ``*_async`` forms (what the grants await on the event loop) go
through :meth:`_hot_write_async` / :meth:`_hot_read_async`: a worker thread by default, the
group-commit queue on SQLite, a loop-owned psycopg ``AsyncConnection`` on PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import functools
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, NoReturn, TypeVar, cast

import sqlalchemy as sa

from portcullis.storage import sql_rows as rows
from portcullis.storage import sql_schema as t
from portcullis.storage.base import (
    AlreadyExistsError,
    CodeClientMismatchError,
    CodeReplayedError,
    NotFoundError,
    Storage,
)
from portcullis.storage.models import (
    AuthCode,
    AuthRequest,
    Client,
    DeviceRequest,
    GCResult,
    ImportBatch,
    ImportResult,
    Keys,
    Password,
    RefreshRotation,
    RefreshToken,
)
from portcullis.storage.sealing import UNSEALED, Sealer
from portcullis.storage.throttling import ThrottleRule, verdict

M = TypeVar("M")

# Failed-login records older than this are useless to any sane throttle window (same as memory).
LOGIN_ATTEMPT_RETENTION = 24 * 3600.0


@functools.cache
def _rotation_statement(
    *, rotating: bool, absolute: bool, idle: bool, identity: bool, connectors: int
) -> sa.Update:
    """The refresh hot path as ONE ``UPDATE ... RETURNING`` (see RefreshRotation): the check
    that the presented secret is the current one, the client, the connector and the expiry all
    sit in its WHERE, so no separate read and no row lock are needed and a concurrent rotation
    simply makes it match nothing. Built once per shape and reused, so SQLAlchemy compiles it
    once (its compiled cache is keyed by the statement's structure); the allowed connectors
    are ``connectors`` plain parameters ``p_c0 …`` rather than one expanding list, so the SQL
    text is fixed too and a backend can run it through its driver directly (see
    ``_hot_statement``). Digests are compared in
    SQL, not in constant time: timing could at most reveal a SHA-256 digest, which gives no
    secret."""
    rt = t.refresh_tokens
    now = sa.bindparam("p_now", type_=sa.Double)
    absolute_deadline = rt.c.created_at + sa.bindparam("p_absolute", type_=sa.Double)
    idle_deadline = sa.bindparam("p_idle_deadline", type_=sa.Double)
    expires: sa.ColumnElement[Any]
    if absolute and idle:
        expires = sa.case(
            (idle_deadline < absolute_deadline, idle_deadline), else_=absolute_deadline
        )
    elif absolute:
        expires = absolute_deadline
    else:
        expires = idle_deadline  # 0 (never) when there is no idle limit either
    values: dict[str, Any] = {"last_used": now, "expires_at": expires}
    if identity:
        values.update(
            user_id=sa.bindparam("p_user_id", type_=sa.Text),
            identity=sa.bindparam("p_identity", type_=rt.c.identity.type),
            connector_data=sa.bindparam("p_connector_data", type_=sa.LargeBinary),
        )
    if rotating:
        values.update(
            token_hash=sa.bindparam("p_new_hash", type_=sa.Text),
            obsolete_token_hash=rt.c.token_hash,
            successor_sealed=sa.bindparam("p_sealed", type_=sa.Text),
        )
    return (
        sa.update(rt)
        .where(
            rt.c.id == sa.bindparam("p_id", type_=sa.Text),
            rt.c.token_hash == sa.bindparam("p_presented", type_=sa.Text),
            rt.c.client_id == sa.bindparam("p_client", type_=sa.Text),
            rt.c.connector_id.in_(
                [sa.bindparam(f"p_c{i}", type_=sa.Text) for i in range(connectors)]
            ),
            sa.or_(rt.c.expires_at == 0, rt.c.expires_at >= now),
            # Any live denial newer than the family sends it to the precise check of the
            # general path (see RefreshRotation); the table is tiny and indexed on expiry.
            ~sa.exists().where(
                t.denied_subjects.c.expiry >= now,
                t.denied_subjects.c.revoked_at >= rt.c.created_at,
            ),
        )
        .values(**values)
        .returning(*rt.c)
    )


@functools.cache
def _rotation_or_read_statement(
    *, rotating: bool, absolute: bool, idle: bool, identity: bool, connectors: int
) -> sa.Select[Any]:
    """The rotation statement of the same shape as a data-modifying CTE, answered by ONE
    statement: the family as rotated (``rotated`` true), or, when the rotation matched
    nothing, the family as it was with the deny-list hint of ``_GET_REFRESH_FOR_USE``
    (``rotated`` false), or no row when there is no such family. PostgreSQL only (SQLite
    has no DML in a WITH clause). The outer query sees the statement's snapshot, so the
    second branch reads the row as it was before a concurrent rotation it waited for; the
    general path's compare-and-swap then finds it overtaken, as after a separate read."""
    rt = t.refresh_tokens
    rotated = _rotation_statement(
        rotating=rotating, absolute=absolute, idle=idle, identity=identity, connectors=connectors
    ).cte("rotated")
    after = sa.select(sa.true().label("rotated"), *rotated.c, sa.false().label("denied_since"))
    before = sa.select(
        sa.false(),
        *rt.c,
        sa.exists().where(
            t.denied_subjects.c.expiry >= sa.bindparam("p_now", type_=sa.Double),
            t.denied_subjects.c.revoked_at >= rt.c.created_at,
        ),
    ).where(
        rt.c.id == sa.bindparam("p_id", type_=sa.Text),
        ~sa.exists(sa.select(rotated.c.id)),
    )
    return sa.select(sa.union_all(after, before).subquery("family"))


# Consuming an authorization code, built once (compiled once): mark it used only if unused.
CONSUME_CODE = (
    sa.update(t.auth_codes)
    .where(
        t.auth_codes.c.id == sa.bindparam("p_id", type_=sa.Text),
        t.auth_codes.c.client_id == sa.bindparam("p_client", type_=sa.Text),
        t.auth_codes.c.used_at == 0,
    )
    .values(used_at=sa.bindparam("p_now", type_=sa.Double))
    .returning(*t.auth_codes.c)
)


# The other hot-path statements, built once (see _hot_statement).
INSERT_REFRESH = t.refresh_tokens.insert()
_GET_REFRESH = sa.select(t.refresh_tokens).where(
    t.refresh_tokens.c.id == sa.bindparam("p_id", type_=sa.Text)
)
# The family and, in the same round trip, whether a live denial postdates it (see
# Storage.get_refresh_token_for_use; the same test as the rotation statement's guard).
_GET_REFRESH_FOR_USE = sa.select(
    t.refresh_tokens,
    sa.exists()
    .where(
        t.denied_subjects.c.expiry >= sa.bindparam("p_now", type_=sa.Double),
        t.denied_subjects.c.revoked_at >= t.refresh_tokens.c.created_at,
    )
    .label("denied_since"),
).where(t.refresh_tokens.c.id == sa.bindparam("p_id", type_=sa.Text))


@functools.cache
def _revoked_at_statement(subjects: int) -> sa.Select[Any]:
    """The latest live denial among ``subjects`` (kind, value) pairs, ``p_k0``/``p_v0`` …
    Callers pad the pairs to a power of two (repeating one: harmless in an OR), so a user's
    group count, which comes from upstream, yields a handful of statements, not one each."""
    ds = t.denied_subjects
    return sa.select(sa.func.max(ds.c.revoked_at).label("latest")).where(
        sa.or_(
            *(
                sa.and_(
                    ds.c.kind == sa.bindparam(f"p_k{i}", type_=sa.Text),
                    ds.c.value == sa.bindparam(f"p_v{i}", type_=sa.Text),
                )
                for i in range(subjects)
            )
        ),
        ds.c.expiry >= sa.bindparam("p_now", type_=sa.Double),
    )


class SQLStorage(Storage):
    """Storage over SQLAlchemy Core; subclasses provide the dialect-specific transaction bits.

    ``_sealer`` seals connector data into rows and opens it out of them (``storage.sealing``);
    a subclass sets the one it was given. Every read or write of a ``connector_data`` column
    goes through the row codec with it, or through ``_sealer`` directly (the rotation)."""

    _sealer: Sealer = UNSEALED

    # -- dialect hooks -----------------------------------------------------------------------
    @abstractmethod
    def _read(self) -> AbstractContextManager[sa.Connection]:
        """A read transaction (a consistent snapshot; never blocks writers on SQLite WAL)."""

    @abstractmethod
    def _write(self) -> AbstractContextManager[sa.Connection]:
        """A write transaction that commits on success and rolls back on any exception."""

    @abstractmethod
    def _is_duplicate_key(self, error: sa.exc.IntegrityError) -> bool:
        """True when the insert failed on a primary-key/unique constraint."""

    @abstractmethod
    def _insert_if_absent(self, table: sa.Table, **values: Any) -> sa.Insert:
        """INSERT ... ON CONFLICT DO NOTHING."""

    @abstractmethod
    def _upsert_revoked(self, jti: str, expiry: float) -> sa.Executable:
        """INSERT ... ON CONFLICT (jti) DO UPDATE keeping the later expiry."""

    def _run_statement(self, run: Callable[[sa.Connection], M]) -> M:
        """Run ``run`` (ONE atomic statement, an ``UPDATE ... RETURNING``, and reading its
        rows) durably: in a write transaction of its own by default. PostgreSQL runs it in
        autocommit, saving the BEGIN and COMMIT round trips; SQLite commits concurrent ones
        together (group commit). ``run`` may therefore share a transaction with other such
        statements and must not depend on anything but its own statement."""
        with self._write() as conn:
            return run(conn)

    def _hot_statement(
        self, stmt: sa.Executable, table: sa.Table, params: Mapping[str, Any], *, write: bool
    ) -> Mapping[str, Any] | None:
        """Run one hot-path statement (built once, module level) and return its first row,
        or None when it returns none: durably through :meth:`_run_statement` when ``write``,
        else through :meth:`_run_read`. A duplicate key raises AlreadyExistsError naming
        ``table``. Backends may run the same statement through their DBAPI driver directly
        (SQLite does), skipping SQLAlchemy's per-call work; the statement stays the one SQL
        source, written once here."""

        def run(conn: sa.Connection) -> Mapping[str, Any] | None:
            try:
                result = conn.execute(stmt, params)
            except sa.exc.IntegrityError as exc:
                if self._is_duplicate_key(exc):
                    raise AlreadyExistsError(f"{table.name}: record already exists") from None
                raise
            row = result.mappings().first() if result.returns_rows else None
            return None if row is None else cast(Mapping[str, Any], row)

        return self._run_statement(run) if write else self._run_read(run)

    def _run_read(self, run: Callable[[sa.Connection], M]) -> M:
        """Run ``run`` (ONE read-only statement): in a read transaction by default; PostgreSQL
        runs it in autocommit (one round trip; one statement sees one snapshot anyway)."""
        with self._read() as conn:
            return run(conn)

    @abstractmethod
    def _identity_has_group(self, group: str) -> sa.ColumnElement[bool]:
        """refresh_tokens.identity's groups contain group (JSON is dialect-specific)."""

    def _lock_name(self, conn: sa.Connection, name: str) -> None:
        """Serialise write transactions about one logical name that has no row to lock (e.g.
        counting failed logins for a throttle key). A no-op where a write transaction already
        holds a database-wide write lock (SQLite); PostgreSQL takes an advisory lock."""

    # -- generic helpers ---------------------------------------------------------------------
    def _insert(self, table: sa.Table, row: Mapping[Any, Any]) -> None:
        with self._write() as conn:
            try:
                conn.execute(table.insert().values(**row))
            except sa.exc.IntegrityError as exc:
                if self._is_duplicate_key(exc):
                    raise AlreadyExistsError(f"{table.name}: record already exists") from None
                raise

    @staticmethod
    def _select_one(
        conn: sa.Connection, table: sa.Table, key_col: sa.Column[Any], key: str, *, lock: bool
    ) -> Mapping[Any, Any]:
        query = sa.select(table).where(key_col == key)
        if lock:
            query = query.with_for_update()
        row = conn.execute(query).mappings().first()
        if row is None:
            raise NotFoundError(f"{table.name}: record not found")
        return row

    def _get(
        self,
        table: sa.Table,
        key_col: sa.Column[Any],
        key: str,
        decode: Callable[[Mapping[Any, Any]], M],
    ) -> M:
        return self._run_read(
            lambda conn: decode(self._select_one(conn, table, key_col, key, lock=False))
        )

    def _list(
        self,
        query: sa.Select[Any],
        decode: Callable[[Mapping[Any, Any]], M],
    ) -> list[M]:
        with self._read() as conn:
            return [decode(r) for r in conn.execute(query).mappings()]

    def _update(
        self,
        table: sa.Table,
        key_col: sa.Column[Any],
        key: str,
        decode: Callable[[Mapping[Any, Any]], M],
        encode: Callable[[M], dict[str, Any]],
        updater: Callable[[M], M],
    ) -> M:
        """Read, run the updater and write back, all in one locked transaction."""
        with self._write() as conn:
            current = decode(self._select_one(conn, table, key_col, key, lock=True))
            new = updater(current)
            row = encode(new)
            if row[key_col.name] != key:
                raise ValueError(
                    f"{table.name}: updater changed the record key; create a new record instead"
                )
            conn.execute(sa.update(table).where(key_col == key).values(**row))
            return new

    def _delete(self, table: sa.Table, key_col: sa.Column[Any], key: str) -> None:
        with self._write() as conn:
            if conn.execute(sa.delete(table).where(key_col == key)).rowcount == 0:
                raise NotFoundError(f"{table.name}: record not found")

    def _delete_batch(self, table: sa.Table, key_col: sa.Column[Any], expired: Any, n: int) -> int:
        """Delete at most n expired rows in one short transaction (Dex #4979: no long GC lock)."""
        # SKIP LOCKED (PostgreSQL; SQLite renders nothing): replicas collecting at the same
        # time share the work instead of queueing or deadlocking on the same rows.
        doomed = sa.select(key_col).where(expired).limit(n).with_for_update(skip_locked=True)
        with self._write() as conn:
            return int(conn.execute(sa.delete(table).where(key_col.in_(doomed))).rowcount)

    # -- lifecycle ---------------------------------------------------------------------------
    def ping(self) -> None:
        with self._read() as conn:
            conn.execute(sa.select(t.signing_keys.c.id).limit(1)).all()

    # -- clients -----------------------------------------------------------------------------
    def create_client(self, client: Client) -> None:
        self._insert(t.clients, rows.client_row(client))

    def get_client(self, client_id: str) -> Client:
        return self._get(t.clients, t.clients.c.id, client_id, rows.client_from)

    def list_clients(self) -> list[Client]:
        return self._list(sa.select(t.clients).order_by(t.clients.c.id), rows.client_from)

    def update_client(self, client_id: str, updater: Callable[[Client], Client]) -> Client:
        return self._update(
            t.clients, t.clients.c.id, client_id, rows.client_from, rows.client_row, updater
        )

    def delete_client(self, client_id: str) -> None:
        self._delete(t.clients, t.clients.c.id, client_id)

    # -- auth requests -----------------------------------------------------------------------
    def create_auth_request(self, request: AuthRequest) -> None:
        self._insert(t.auth_requests, rows.auth_request_row(request, self._sealer))

    def _auth_request_from(self, row: Mapping[Any, Any]) -> AuthRequest:
        return rows.auth_request_from(row, self._sealer)

    def _auth_request_row(self, request: AuthRequest) -> dict[str, Any]:
        return rows.auth_request_row(request, self._sealer)

    def get_auth_request(self, request_id: str) -> AuthRequest:
        return self._get(t.auth_requests, t.auth_requests.c.id, request_id, self._auth_request_from)

    def update_auth_request(
        self, request_id: str, updater: Callable[[AuthRequest], AuthRequest]
    ) -> AuthRequest:
        return self._update(
            t.auth_requests,
            t.auth_requests.c.id,
            request_id,
            self._auth_request_from,
            self._auth_request_row,
            updater,
        )

    def delete_auth_request(self, request_id: str) -> None:
        self._delete(t.auth_requests, t.auth_requests.c.id, request_id)

    # -- auth codes --------------------------------------------------------------------------
    def create_auth_code(self, code: AuthCode) -> None:
        self._insert(t.auth_codes, rows.auth_code_row(code, self._sealer))

    def consume_auth_code(self, code_id: str, now: float, client_id: str) -> AuthCode:
        # One statement on the hot path: the guards on used_at and client_id make it single-use
        # and bound to its client whatever the dialect's locking; only a failed consume (unknown,
        # replayed or another client's code) reads afterwards to say which.
        params = {"p_id": code_id, "p_now": now, "p_client": client_id}
        row = self._hot_statement(CONSUME_CODE, t.auth_codes, params, write=True)
        if row is None:
            self._code_not_consumed(code_id, client_id)
        return rows.auth_code_from(row, self._sealer)

    def _code_not_consumed(self, code_id: str, client_id: str) -> NoReturn:
        """Why the consuming statement matched nothing: unknown, another client's, replayed."""
        codes = t.auth_codes
        with self._read() as conn:
            code = rows.auth_code_from(
                self._select_one(conn, codes, codes.c.id, code_id, lock=False), self._sealer
            )
        if code.client_id != client_id:
            # Left untouched: the right client can still redeem it.
            raise CodeClientMismatchError()
        raise CodeReplayedError(code)

    def delete_auth_code(self, code_id: str) -> None:
        self._delete(t.auth_codes, t.auth_codes.c.id, code_id)

    # -- refresh tokens ----------------------------------------------------------------------
    def create_refresh_token(self, token: RefreshToken) -> None:
        # On the code-exchange hot path: one statement, so it can share a group commit.
        row = rows.refresh_token_row(token, self._sealer)
        self._hot_statement(INSERT_REFRESH, t.refresh_tokens, row, write=True)

    def _refresh_token_from(self, row: Mapping[Any, Any]) -> RefreshToken:
        return rows.refresh_token_from(row, self._sealer)

    def _refresh_token_row(self, token: RefreshToken) -> dict[str, Any]:
        return rows.refresh_token_row(token, self._sealer)

    def get_refresh_token(self, token_id: str) -> RefreshToken:
        row = self._hot_statement(_GET_REFRESH, t.refresh_tokens, {"p_id": token_id}, write=False)
        if row is None:
            raise NotFoundError("refresh_tokens: record not found")
        return self._refresh_token_from(row)

    def get_refresh_token_for_use(self, token_id: str, now: float) -> tuple[RefreshToken, bool]:
        params = {"p_id": token_id, "p_now": now}
        row = self._hot_statement(_GET_REFRESH_FOR_USE, t.refresh_tokens, params, write=False)
        if row is None:
            raise NotFoundError("refresh_tokens: record not found")
        return self._refresh_token_from(row), bool(row["denied_since"])

    async def get_refresh_token_for_use_async(
        self, token_id: str, now: float
    ) -> tuple[RefreshToken, bool]:
        params = {"p_id": token_id, "p_now": now}
        row = await self._hot_read_async(_GET_REFRESH_FOR_USE, t.refresh_tokens, params)
        if row is None:
            raise NotFoundError("refresh_tokens: record not found")
        return self._refresh_token_from(row), bool(row["denied_since"])

    def update_refresh_token(
        self, token_id: str, updater: Callable[[RefreshToken], RefreshToken]
    ) -> RefreshToken:
        return self._update(
            t.refresh_tokens,
            t.refresh_tokens.c.id,
            token_id,
            self._refresh_token_from,
            self._refresh_token_row,
            updater,
        )

    def rotate_refresh_token(self, rotation: RefreshRotation) -> RefreshToken | None:
        statement = self._rotation(rotation)
        if statement is None:
            return None
        row = self._hot_statement(statement[0], t.refresh_tokens, statement[1], write=True)
        return None if row is None else self._refresh_token_from(row)

    def _rotation(
        self, rotation: RefreshRotation, *, or_read: bool = False
    ) -> tuple[sa.Executable, dict[str, Any]] | None:
        """The rotation statement and its parameters; None when it cannot match anything.
        ``or_read``: its rotate-or-read form (``_rotation_or_read_statement``)."""
        if not rotation.presented_hash or not rotation.connector_ids:
            return None
        build = _rotation_or_read_statement if or_read else _rotation_statement
        stmt = build(
            rotating=bool(rotation.new_token_hash),
            absolute=rotation.absolute_lifetime > 0,
            idle=rotation.idle_deadline > 0,
            identity=rotation.identity is not None,
            connectors=len(rotation.connector_ids),
        )
        params: dict[str, Any] = {
            "p_id": rotation.family_id,
            "p_presented": rotation.presented_hash,
            "p_client": rotation.client_id,
            "p_now": rotation.now,
            "p_new_hash": rotation.new_token_hash,
            "p_sealed": rotation.successor_sealed,
            "p_absolute": rotation.absolute_lifetime,
            "p_idle_deadline": rotation.idle_deadline,
        }
        if rotation.identity is not None:
            params["p_user_id"] = rotation.identity.user_id
            params["p_identity"] = rows.identity_json(rotation.identity)
            params["p_connector_data"] = self._sealer.seal(
                rows.REFRESH_TOKENS, rotation.family_id, rotation.identity.connector_data
            )
        params.update((f"p_c{i}", c) for i, c in enumerate(rotation.connector_ids))
        return stmt, params

    async def rotate_refresh_token_async(self, rotation: RefreshRotation) -> RefreshToken | None:
        statement = self._rotation(rotation)
        if statement is None:
            return None
        row = await self._hot_write_async(statement[0], t.refresh_tokens, statement[1])
        return None if row is None else self._refresh_token_from(row)

    async def _hot_write_async(
        self, stmt: sa.Executable, table: sa.Table, params: Mapping[str, Any]
    ) -> Mapping[str, Any] | None:
        """``_hot_statement(..., write=True)`` awaited from the event loop: in a worker thread
        here; SQLite queues it for its group commit instead, PostgreSQL awaits it on a
        connection of the loop's own (``postgres_loop``)."""
        from anyio import to_thread  # the event-loop side only

        return await to_thread.run_sync(
            lambda: self._hot_statement(stmt, table, params, write=True)
        )

    async def _hot_read_async(
        self, stmt: sa.Executable, table: sa.Table, params: Mapping[str, Any]
    ) -> Mapping[str, Any] | None:
        """``_hot_statement(..., write=False)`` awaited from the event loop: in a worker
        thread here; SQLite reads on the loop itself, PostgreSQL awaits it on a connection
        of the loop's own (see their overrides)."""
        from anyio import to_thread  # the event-loop side only

        return await to_thread.run_sync(
            lambda: self._hot_statement(stmt, table, params, write=False)
        )

    def delete_refresh_token(self, token_id: str) -> None:
        self._delete(t.refresh_tokens, t.refresh_tokens.c.id, token_id)

    def list_refresh_tokens(self, user_id: str = "", connector_id: str = "") -> list[RefreshToken]:
        rt = t.refresh_tokens
        query = sa.select(rt).order_by(rt.c.created_at, rt.c.id)
        if user_id:
            query = query.where(rt.c.user_id == user_id)
        if connector_id:
            query = query.where(rt.c.connector_id == connector_id)
        return self._list(query, self._refresh_token_from)

    def refresh_tokens_issued_by_code(self, code_id: str) -> list[RefreshToken]:
        rt = t.refresh_tokens
        query = (
            sa.select(rt).where(rt.c.issued_by_code == code_id).order_by(rt.c.created_at, rt.c.id)
        )
        return self._list(query, self._refresh_token_from)

    # -- device requests ---------------------------------------------------------------------
    def create_device_request(self, request: DeviceRequest) -> None:
        self._insert(t.device_requests, rows.device_request_row(request, self._sealer))

    def _device_request_from(self, row: Mapping[Any, Any]) -> DeviceRequest:
        return rows.device_request_from(row, self._sealer)

    def _device_request_row(self, request: DeviceRequest) -> dict[str, Any]:
        return rows.device_request_row(request, self._sealer)

    def get_device_request(self, request_id: str) -> DeviceRequest:
        dr = t.device_requests
        return self._get(dr, dr.c.id, request_id, self._device_request_from)

    def get_device_request_by_user_code(self, user_code: str) -> DeviceRequest:
        dr = t.device_requests
        return self._get(dr, dr.c.user_code, user_code, self._device_request_from)

    def update_device_request(
        self, request_id: str, updater: Callable[[DeviceRequest], DeviceRequest]
    ) -> DeviceRequest:
        def checked(current: DeviceRequest) -> DeviceRequest:
            new = updater(current)
            if new.user_code != current.user_code:
                raise ValueError(
                    "device_requests: updater changed the record key; create a new record instead"
                )
            return new

        dr = t.device_requests
        return self._update(
            dr, dr.c.id, request_id, self._device_request_from, self._device_request_row, checked
        )

    # -- passwords ---------------------------------------------------------------------------
    def create_password(self, password: Password) -> None:
        self._insert(t.passwords, rows.password_row(password))

    def get_password(self, email: str) -> Password:
        pw = t.passwords
        return self._get(pw, pw.c.email_key, rows.email_key(email), rows.password_from)

    def list_passwords(self) -> list[Password]:
        return self._list(
            sa.select(t.passwords).order_by(t.passwords.c.email_key), rows.password_from
        )

    def update_password(self, email: str, updater: Callable[[Password], Password]) -> Password:
        pw = t.passwords
        return self._update(
            pw,
            pw.c.email_key,
            rows.email_key(email),
            rows.password_from,
            rows.password_row,
            updater,
        )

    def delete_password(self, email: str) -> None:
        self._delete(t.passwords, t.passwords.c.email_key, rows.email_key(email))

    # -- signing keys ------------------------------------------------------------------------
    def _keys_query(self, *, lock: bool) -> sa.Select[Any]:
        query = sa.select(t.signing_keys).where(t.signing_keys.c.id == t.KEYS_ROW_ID)
        return query.with_for_update() if lock else query

    def get_keys(self) -> Keys:
        with self._read() as conn:
            return rows.keys_from(conn.execute(self._keys_query(lock=False)).mappings().one())

    def update_keys(self, updater: Callable[[Keys], Keys]) -> Keys:
        with self._write() as conn:
            current = rows.keys_from(conn.execute(self._keys_query(lock=True)).mappings().one())
            new = updater(current)  # RotationNotDueError propagates and rolls back
            conn.execute(
                sa.update(t.signing_keys)
                .where(t.signing_keys.c.id == t.KEYS_ROW_ID)
                .values(**rows.keys_row(new))
            )
            return new

    # -- import ------------------------------------------------------------------------------
    def import_batch(self, batch: ImportBatch) -> ImportResult:
        with self._write() as conn:

            def insert_all(table: sa.Table, records: list[Mapping[str, Any]]) -> int:
                inserted = 0
                key = next(iter(table.primary_key.columns))
                for row in records:
                    # RETURNING, not rowcount: drivers disagree on rowcount for DO NOTHING.
                    statement = self._insert_if_absent(table, **row).returning(key)
                    inserted += len(conn.execute(statement).all())
                return inserted

            clients = insert_all(t.clients, [rows.client_row(c) for c in batch.clients])
            passwords = insert_all(t.passwords, [rows.password_row(p) for p in batch.passwords])
            tokens = insert_all(
                t.refresh_tokens, [self._refresh_token_row(r) for r in batch.refresh_tokens]
            )
            current = rows.keys_from(conn.execute(self._keys_query(lock=True)).mappings().one())
            known = {k.jwk.get("kid") for k in current.verification_keys}
            new_keys = tuple(k for k in batch.verification_keys if k.jwk.get("kid") not in known)
            if new_keys:
                merged = dataclasses.replace(
                    current, verification_keys=current.verification_keys + new_keys
                )
                conn.execute(
                    sa.update(t.signing_keys)
                    .where(t.signing_keys.c.id == t.KEYS_ROW_ID)
                    .values(**rows.keys_row(merged))
                )
            return ImportResult(
                clients=clients,
                passwords=passwords,
                refresh_tokens=tokens,
                verification_keys=len(new_keys),
            )

    # -- revocation --------------------------------------------------------------------------
    def revoke_token(self, jti: str, expiry: float) -> None:
        with self._write() as conn:
            conn.execute(self._upsert_revoked(jti, expiry))

    def is_token_revoked(self, jti: str) -> bool:
        rv = t.revoked_tokens
        with self._read() as conn:
            return conn.execute(sa.select(rv.c.jti).where(rv.c.jti == jti)).first() is not None

    def delete_refresh_tokens_matching(
        self, *, user_id: str = "", connector_id: str = "", client_id: str = "", group: str = ""
    ) -> list[str]:
        rt = t.refresh_tokens
        conditions: list[sa.ColumnElement[bool]] = []
        if user_id:
            conditions.append(rt.c.user_id == user_id)
        if connector_id:
            conditions.append(rt.c.connector_id == connector_id)
        if client_id:
            conditions.append(rt.c.client_id == client_id)
        if group:
            conditions.append(self._identity_has_group(group))
        if not conditions:
            raise ValueError("at least one filter is required")
        with self._write() as conn:
            deleted = conn.execute(sa.delete(rt).where(*conditions).returning(rt.c.id))
            return sorted(row[0] for row in deleted)

    def deny_subject(self, kind: str, value: str, revoked_at: float, expiry: float) -> None:
        ds = t.denied_subjects
        key = sa.and_(ds.c.kind == kind, ds.c.value == value)
        with self._write() as conn:
            # Serialises concurrent denials of one subject on PostgreSQL (SQLite's write
            # transaction already holds the database lock), so the insert cannot race.
            self._lock_name(conn, f"denied-subject:{kind}:{value}")
            row = conn.execute(sa.select(ds.c.revoked_at, ds.c.expiry).where(key)).first()
            if row is None:
                conn.execute(
                    ds.insert().values(kind=kind, value=value, revoked_at=revoked_at, expiry=expiry)
                )
            else:
                conn.execute(
                    sa.update(ds)
                    .where(key)
                    .values(revoked_at=max(row[0], revoked_at), expiry=max(row[1], expiry))
                )

    def subjects_revoked_at(self, subjects: Sequence[tuple[str, str]], now: float) -> float:
        if not subjects:
            return 0.0
        # A statement per (padded) number of subjects, built once.
        pairs = list(dict.fromkeys(subjects))
        pairs += pairs[-1:] * ((1 << (len(pairs) - 1).bit_length()) - len(pairs))
        params: dict[str, Any] = {"p_now": now}
        for i, (kind, value) in enumerate(pairs):
            params[f"p_k{i}"], params[f"p_v{i}"] = kind, value
        stmt = _revoked_at_statement(len(pairs))
        row = self._hot_statement(stmt, t.denied_subjects, params, write=False)
        latest = None if row is None else row["latest"]
        return float(latest) if latest is not None else 0.0

    # -- single-use values -------------------------------------------------------------------
    def claim_once(self, key: str, expiry: float) -> bool:
        su = t.single_use_keys
        # RETURNING rather than rowcount: drivers disagree on rowcount for ON CONFLICT DO NOTHING.
        claim = self._insert_if_absent(su, key=key, expiry=expiry).returning(su.c.key)
        with self._write() as conn:
            return conn.execute(claim).first() is not None

    # -- throttling --------------------------------------------------------------------------
    @staticmethod
    def _count_failures(conn: sa.Connection, key: str, now: float, window: float) -> int:
        la = t.login_attempts
        query = (
            sa.select(sa.func.count())
            .select_from(la)
            .where(la.c.throttle_key == key, la.c.at > now - window)
        )
        return int(conn.execute(query).scalar_one())

    def throttle_attempt(self, rules: Sequence[ThrottleRule], now: float, window: float) -> float:
        la = t.login_attempts
        with self._write() as conn:
            # Sorted, so two transactions locking overlapping keys cannot deadlock.
            for key in sorted({rule.key for rule in rules}):
                self._lock_name(conn, f"login_attempts:{key}")
            times = [
                [
                    float(at)
                    for at in conn.execute(
                        sa.select(la.c.at)
                        .where(la.c.throttle_key == rule.key, la.c.at > now - window)
                        .order_by(la.c.at)
                    ).scalars()
                ]
                for rule in rules
            ]
            wait = verdict(rules, times, now, window)
            if wait == 0:
                conn.execute(la.insert(), [{"throttle_key": r.key, "at": now} for r in rules])
            return wait

    def forget_attempt(self, key: str, at: float) -> None:
        la = t.login_attempts
        # Attempts with the same key and time are indistinguishable: removing any one is exact.
        one = sa.select(la.c.id).where(la.c.throttle_key == key, la.c.at == at).limit(1)
        with self._write() as conn:
            self._lock_name(conn, f"login_attempts:{key}")
            conn.execute(sa.delete(la).where(la.c.id.in_(one.scalar_subquery())))

    def record_login_failure(self, key: str, now: float, window: float) -> int:
        with self._write() as conn:
            self._lock_name(conn, f"login_attempts:{key}")
            conn.execute(t.login_attempts.insert().values(throttle_key=key, at=now))
            return self._count_failures(conn, key, now, window)

    def login_failures(self, key: str, now: float, window: float) -> int:
        with self._read() as conn:
            return self._count_failures(conn, key, now, window)

    def clear_login_failures(self, key: str) -> None:
        la = t.login_attempts
        with self._write() as conn:
            conn.execute(sa.delete(la).where(la.c.throttle_key == key))

    # -- garbage collection ------------------------------------------------------------------
    def garbage_collect(self, now: float, batch_size: int = 500) -> GCResult:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        ar, ac, rt, rv, la = (
            t.auth_requests,
            t.auth_codes,
            t.refresh_tokens,
            t.revoked_tokens,
            t.login_attempts,
        )
        requests = self._delete_batch(ar, ar.c.id, ar.c.expiry < now, batch_size)
        codes = self._delete_batch(ac, ac.c.id, ac.c.expiry < now, batch_size)
        refresh = self._delete_batch(
            rt, rt.c.id, sa.and_(rt.c.expires_at > 0, rt.c.expires_at < now), batch_size
        )
        revoked = self._delete_batch(rv, rv.c.jti, rv.c.expiry < now, batch_size)
        denied = self._delete_expired_denials(now, batch_size)
        su = t.single_use_keys
        used = self._delete_batch(su, su.c.key, su.c.expiry < now, batch_size)
        dr = t.device_requests
        device = self._delete_batch(dr, dr.c.id, dr.c.expiry < now, batch_size)
        cl = t.clients
        clients = self._delete_batch(
            cl, cl.c.id, sa.and_(cl.c.expires_at > 0, cl.c.expires_at < now), batch_size
        )
        attempts = self._delete_batch(
            la, la.c.id, la.c.at <= now - LOGIN_ATTEMPT_RETENTION, batch_size
        )
        return GCResult(
            auth_requests=requests,
            auth_codes=codes,
            refresh_tokens=refresh,
            revoked_tokens=revoked,
            verification_keys=self._drop_expired_verification_keys(now),
            login_attempts=attempts,
            single_use_keys=used,
            device_requests=device,
            denied_subjects=denied,
            clients=clients,
        )

    def _delete_expired_denials(self, now: float, n: int) -> int:
        """Like _delete_batch for the two-column key of denied_subjects."""
        ds = t.denied_subjects
        with self._write() as conn:
            doomed = conn.execute(
                sa.select(ds.c.kind, ds.c.value)
                .where(ds.c.expiry < now)
                .limit(n)
                .with_for_update(skip_locked=True)
            ).all()
            if not doomed:
                return 0
            pairs = [(row[0], row[1]) for row in doomed]
            result = conn.execute(sa.delete(ds).where(sa.tuple_(ds.c.kind, ds.c.value).in_(pairs)))
            return int(result.rowcount)

    def _drop_expired_verification_keys(self, now: float) -> int:
        # Cheap unlocked look first: almost every GC pass has nothing to drop.
        if all(k.expiry >= now for k in self.get_keys().verification_keys):
            return 0
        dropped = 0

        def prune(keys: Keys) -> Keys:
            nonlocal dropped
            kept = tuple(k for k in keys.verification_keys if k.expiry >= now)
            dropped = len(keys.verification_keys) - len(kept)
            return dataclasses.replace(keys, verification_keys=kept)

        self.update_keys(prune)
        return dropped
