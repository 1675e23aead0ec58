"""The queries of every SQL backend, written once in SQLAlchemy Core.

A dialect module (``sqlite.py``, ``postgres.py``) subclasses :class:`SQLStorage` and
supplies only what really differs: how a transaction is opened and locked (:meth:`_read`,
:meth:`_write`), how a duplicate key is recognised, and the dialect's ``INSERT ... ON CONFLICT``.

Concurrency model: every read-modify-write runs in one :meth:`_write` transaction and selects the
row ``FOR UPDATE`` (rendered on PostgreSQL, ignored by SQLite whose ``BEGIN IMMEDIATE`` already
holds the database write lock), so two workers never both consume a code or both rotate keys.
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

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
    RefreshToken,
)
from portcullis.storage.throttling import ThrottleRule, verdict

M = TypeVar("M")

# Failed-login records older than this are useless to any sane throttle window (same as memory).
LOGIN_ATTEMPT_RETENTION = 24 * 3600.0


class SQLStorage(Storage):
    """Storage over SQLAlchemy Core; subclasses provide the dialect-specific transaction bits."""

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
        with self._read() as conn:
            return decode(self._select_one(conn, table, key_col, key, lock=False))

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
        self._insert(t.auth_requests, rows.auth_request_row(request))

    def get_auth_request(self, request_id: str) -> AuthRequest:
        return self._get(t.auth_requests, t.auth_requests.c.id, request_id, rows.auth_request_from)

    def update_auth_request(
        self, request_id: str, updater: Callable[[AuthRequest], AuthRequest]
    ) -> AuthRequest:
        return self._update(
            t.auth_requests,
            t.auth_requests.c.id,
            request_id,
            rows.auth_request_from,
            rows.auth_request_row,
            updater,
        )

    def delete_auth_request(self, request_id: str) -> None:
        self._delete(t.auth_requests, t.auth_requests.c.id, request_id)

    # -- auth codes --------------------------------------------------------------------------
    def create_auth_code(self, code: AuthCode) -> None:
        self._insert(t.auth_codes, rows.auth_code_row(code))

    def consume_auth_code(self, code_id: str, now: float, client_id: str) -> AuthCode:
        codes = t.auth_codes
        with self._write() as conn:
            code = rows.auth_code_from(
                self._select_one(conn, codes, codes.c.id, code_id, lock=True)
            )
            if code.client_id != client_id:
                raise CodeClientMismatchError()
            if code.used_at:
                raise CodeReplayedError(code)
            # The guard on used_at keeps this single-use even if a dialect's lock were weaker.
            marked = conn.execute(
                sa.update(codes)
                .where(codes.c.id == code_id, codes.c.used_at == 0)
                .values(used_at=now)
            ).rowcount
            if marked != 1:
                raise CodeReplayedError(code)
            return dataclasses.replace(code, used_at=now)

    def delete_auth_code(self, code_id: str) -> None:
        self._delete(t.auth_codes, t.auth_codes.c.id, code_id)

    # -- refresh tokens ----------------------------------------------------------------------
    def create_refresh_token(self, token: RefreshToken) -> None:
        self._insert(t.refresh_tokens, rows.refresh_token_row(token))

    def get_refresh_token(self, token_id: str) -> RefreshToken:
        return self._get(t.refresh_tokens, t.refresh_tokens.c.id, token_id, rows.refresh_token_from)

    def update_refresh_token(
        self, token_id: str, updater: Callable[[RefreshToken], RefreshToken]
    ) -> RefreshToken:
        return self._update(
            t.refresh_tokens,
            t.refresh_tokens.c.id,
            token_id,
            rows.refresh_token_from,
            rows.refresh_token_row,
            updater,
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
        return self._list(query, rows.refresh_token_from)

    def refresh_tokens_issued_by_code(self, code_id: str) -> list[RefreshToken]:
        rt = t.refresh_tokens
        query = (
            sa.select(rt).where(rt.c.issued_by_code == code_id).order_by(rt.c.created_at, rt.c.id)
        )
        return self._list(query, rows.refresh_token_from)

    # -- device requests ---------------------------------------------------------------------
    def create_device_request(self, request: DeviceRequest) -> None:
        self._insert(t.device_requests, rows.device_request_row(request))

    def get_device_request(self, request_id: str) -> DeviceRequest:
        dr = t.device_requests
        return self._get(dr, dr.c.id, request_id, rows.device_request_from)

    def get_device_request_by_user_code(self, user_code: str) -> DeviceRequest:
        dr = t.device_requests
        return self._get(dr, dr.c.user_code, user_code, rows.device_request_from)

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
            dr, dr.c.id, request_id, rows.device_request_from, rows.device_request_row, checked
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
                t.refresh_tokens, [rows.refresh_token_row(r) for r in batch.refresh_tokens]
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
            clients=clients,
        )

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
