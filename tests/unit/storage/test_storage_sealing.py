"""Connector data sealed at rest (``storage.sealing``), on the real SQL backends.

What a reader of the database gets is read directly (the SQLite file through ``sqlite3``, the
PostgreSQL rows through psycopg), never through the storage under test: no upstream token in
any row of any table that carries connector data (auth requests, auth codes, refresh families,
device requests, also when written by the rotation statement and by ``import_batch``); a value
copied to another row does not open; after a key rotation the older key still opens what it
sealed and new writes use the current key; rows written before sealing still read and are
sealed when next written; a value no configured key opens is handed up still sealed, logged
with the reason and never as the token.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from portcullis.config.model import PostgresConfig
from portcullis.storage.models import ImportBatch, RefreshRotation
from portcullis.storage.postgres import PostgresStorage, connect_arguments
from portcullis.storage.sealing import (
    MAGIC,
    UNSEALED,
    Sealer,
    SealingKey,
    generate_key,
    is_sealed,
    key_id,
)
from portcullis.storage.sql_storage import SQLStorage
from portcullis.storage.sqlite import SQLiteStorage

SECRET = b"upstream-refresh-" + b"7f3a9c" * 6
DATA = b'{"refreshToken":"' + SECRET + b'"}'
TABLES = ("auth_requests", "auth_codes", "refresh_tokens", "device_requests")


def _key(name: str = "k") -> SealingKey:
    return SealingKey(generate_key(), name)


# -- the envelope on its own ----------------------------------------------------------------


def test_seal_opens_only_for_its_own_table_and_row() -> None:
    sealer = Sealer(_key())
    sealed = sealer.seal("refresh_tokens", "rt-1", DATA)
    assert is_sealed(sealed)
    assert SECRET not in sealed
    assert sealer.open("refresh_tokens", "rt-1", sealed) == DATA
    assert sealer.open("refresh_tokens", "rt-2", sealed) == sealed
    assert sealer.open("auth_codes", "rt-1", sealed) == sealed
    # Fresh salt and nonce every time: equal data gives unrelated envelopes.
    assert sealer.seal("refresh_tokens", "rt-1", DATA) != sealed


def test_tampered_truncated_or_unknown_envelopes_stay_sealed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sealer = Sealer(_key())
    sealed = sealer.seal("auth_codes", "c", DATA)
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    caplog.set_level(logging.WARNING, "portcullis.storage")
    assert sealer.open("auth_codes", "c", flipped) == flipped
    assert "fails authentication" in caplog.text
    assert sealer.open("auth_codes", "c", sealed[:20]) == sealed[:20]
    assert "truncated" in caplog.text
    future = MAGIC + b"\x09" + sealed[len(MAGIC) + 1 :]
    assert sealer.open("auth_codes", "c", future) == future
    assert "version 9" in caplog.text
    assert SECRET.decode() not in caplog.text


def test_empty_legacy_and_unopened_values_are_stored_as_they_are() -> None:
    sealer = Sealer(_key())
    assert sealer.seal("refresh_tokens", "r", b"") == b""
    assert sealer.open("refresh_tokens", "r", None) == b""
    assert sealer.open("refresh_tokens", "r", DATA) == DATA  # legacy plaintext
    foreign = Sealer(_key()).seal("refresh_tokens", "r", DATA)
    assert sealer.open("refresh_tokens", "r", foreign) == foreign
    # Written back unchanged: sealing it again would lose it for good.
    assert sealer.seal("refresh_tokens", "r", foreign) == foreign
    assert UNSEALED.seal("refresh_tokens", "r", DATA) == DATA


def test_key_repr_and_id_never_show_the_key() -> None:
    key = _key("storageSealing.key")
    assert key.material.hex() not in repr(key)
    assert len(key.id) == 4
    assert key.id == key_id(key.material)
    assert key.id not in key.material


# -- on the SQL backends --------------------------------------------------------------------


@dataclass
class Backend:
    """Opens the same database with a given sealer, and reads and writes its rows directly."""

    open: Callable[[Sealer], SQLStorage]
    raw: Callable[[str, str], bytes | None]
    write_raw: Callable[[str, str, bytes], None]
    opened: list[SQLStorage] = dataclasses.field(default_factory=list)

    def store(self, sealer: Sealer) -> SQLStorage:
        store = self.open(sealer)
        self.opened.append(store)
        return store


def _sqlite(tmp_path: Path) -> Backend:
    path = tmp_path / "portcullis.db"

    def run(query: str, *args: Any) -> list[Any]:
        conn = sqlite3.connect(path)
        try:
            with conn:
                return conn.execute(query, args).fetchall()
        finally:
            conn.close()

    return Backend(
        open=lambda sealer: SQLiteStorage(str(path), sealer=sealer),
        raw=lambda table, key: run(f"SELECT connector_data FROM {table} WHERE id = ?", key)[0][0],  # noqa: S608
        write_raw=lambda table, key, value: (
            run(f"UPDATE {table} SET connector_data = ? WHERE id = ?", value, key),  # noqa: S608
            None,
        )[1],
    )


def _postgres(settings: dict[str, Any]) -> Backend:
    config = PostgresConfig.model_validate(settings)

    def run(query: str, *args: Any) -> list[Any]:
        with psycopg.connect(**connect_arguments(config)) as conn:
            cursor = conn.execute(query.replace("?", "%s"), args)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []

    return Backend(
        open=lambda sealer: PostgresStorage(config, sealer=sealer),
        raw=lambda table, key: run(f"SELECT connector_data FROM {table} WHERE id = ?", key)[0][0],  # noqa: S608
        write_raw=lambda table, key, value: (
            run(f"UPDATE {table} SET connector_data = ? WHERE id = ?", value, key),  # noqa: S608
            None,
        )[1],
    )


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        opened = _sqlite(tmp_path)
    else:
        opened = _postgres(request.getfixturevalue("postgres_database"))
    try:
        yield opened
    finally:
        for store in opened.opened:
            store.close()


def _raw(backend: Backend, table: str, key: str) -> bytes:
    value = backend.raw(table, key)
    assert value is not None
    return bytes(value)


def _write_every_kind(store: SQLStorage, samples: Any, data: bytes = DATA) -> None:
    identity = samples.identity(connector_data=data)
    store.create_auth_request(samples.auth_request("req-1", identity=identity))
    store.create_auth_code(samples.auth_code("code-1", identity=identity))
    store.create_refresh_token(samples.refresh_token("rt-1", identity=identity))
    store.create_device_request(samples.device_request("dev-1", identity=identity))


def _ids() -> dict[str, str]:
    return {
        "auth_requests": "req-1",
        "auth_codes": "code-1",
        "refresh_tokens": "rt-1",
        "device_requests": "dev-1",
    }


def test_rows_hold_no_upstream_token_and_read_back(backend: Backend, samples: Any) -> None:
    store = backend.store(Sealer(_key()))
    _write_every_kind(store, samples)
    for table, key in _ids().items():
        stored = _raw(backend, table, key)
        assert is_sealed(stored), table
        assert SECRET not in stored, table
    assert store.get_auth_request("req-1").identity.connector_data == DATA  # type: ignore[union-attr]
    assert store.get_refresh_token("rt-1").identity.connector_data == DATA
    assert store.get_device_request("dev-1").identity.connector_data == DATA  # type: ignore[union-attr]
    code = store.consume_auth_code("code-1", 1_700_000_001.0, "example-app")
    assert code.identity.connector_data == DATA
    assert [t.identity.connector_data for t in store.list_refresh_tokens()] == [DATA]


def test_every_write_path_seals(backend: Backend, samples: Any) -> None:
    store = backend.store(Sealer(_key()))
    _write_every_kind(store, samples, data=b"")
    new = samples.identity(connector_data=DATA)
    store.update_auth_request("req-1", lambda r: dataclasses.replace(r, identity=new))
    store.update_device_request("dev-1", lambda r: dataclasses.replace(r, identity=new))
    store.update_refresh_token("rt-1", lambda r: dataclasses.replace(r, identity=new))
    for table in ("auth_requests", "device_requests", "refresh_tokens"):
        stored = _raw(backend, table, _ids()[table])
        assert is_sealed(stored), table
        assert SECRET not in stored, table

    rotated = samples.identity(connector_data=DATA.replace(SECRET, SECRET[::-1]))
    family = store.rotate_refresh_token(
        RefreshRotation(
            family_id="rt-1",
            presented_hash="cd" * 32,
            client_id="example-app",
            connector_ids=("local",),
            now=1_700_000_200.0,
            new_token_hash="01" * 32,
            successor_sealed="s",
            absolute_lifetime=0.0,
            idle_deadline=0.0,
            identity=rotated,
        )
    )
    assert family is not None
    assert family.identity.connector_data == rotated.connector_data
    stored = _raw(backend, "refresh_tokens", "rt-1")
    assert is_sealed(stored)
    assert SECRET[::-1] not in stored

    imported = samples.refresh_token("rt-dex", identity=new)
    store.import_batch(ImportBatch(refresh_tokens=(imported,)))
    stored = _raw(backend, "refresh_tokens", "rt-dex")
    assert is_sealed(stored)
    assert SECRET not in stored
    assert store.get_refresh_token("rt-dex") == imported


def test_value_copied_to_another_row_does_not_open(
    backend: Backend, samples: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = backend.store(Sealer(_key()))
    store.create_refresh_token(samples.refresh_token("victim", identity=samples.identity()))
    store.create_refresh_token(samples.refresh_token("attacker", identity=samples.identity()))
    store.update_refresh_token(
        "victim",
        lambda t: dataclasses.replace(t, identity=samples.identity(connector_data=DATA)),
    )
    backend.write_raw("refresh_tokens", "attacker", _raw(backend, "refresh_tokens", "victim"))
    caplog.set_level(logging.WARNING, "portcullis.storage")
    moved = store.get_refresh_token("attacker").identity.connector_data
    assert is_sealed(moved)
    assert SECRET not in moved
    assert "copied from another row" in caplog.text
    assert SECRET.decode() not in caplog.text
    assert store.get_refresh_token("victim").identity.connector_data == DATA


def test_key_rotation_reads_older_values_and_writes_with_the_current_key(
    backend: Backend, samples: Any, caplog: pytest.LogCaptureFixture
) -> None:
    old, new = _key("old"), _key("new")
    backend.store(Sealer(old)).create_refresh_token(
        samples.refresh_token("rt-1", identity=samples.identity(connector_data=DATA))
    )
    rotated = backend.store(Sealer(new, [old]))
    assert rotated.get_refresh_token("rt-1").identity.connector_data == DATA
    rotated.update_refresh_token("rt-1", lambda t: dataclasses.replace(t, last_used=1.0))
    assert new.id in _raw(backend, "refresh_tokens", "rt-1")[:8]

    backend.store(Sealer(old)).create_refresh_token(
        samples.refresh_token("rt-2", identity=samples.identity(connector_data=DATA))
    )
    caplog.set_level(logging.WARNING, "portcullis.storage")
    forgotten = backend.store(Sealer(new))
    assert is_sealed(forgotten.get_refresh_token("rt-2").identity.connector_data)
    assert f"sealed with storage sealing key {old.id.hex()}, which is not configured" in (
        caplog.text
    )
    assert forgotten.get_refresh_token("rt-1").identity.connector_data == DATA


def test_legacy_plaintext_reads_and_is_sealed_when_next_written(
    backend: Backend, samples: Any
) -> None:
    legacy = backend.store(UNSEALED)
    _write_every_kind(legacy, samples)
    assert _raw(backend, "refresh_tokens", "rt-1") == DATA  # as written before this change
    store = backend.store(Sealer(_key()))
    assert store.get_refresh_token("rt-1").identity.connector_data == DATA
    assert store.get_auth_request("req-1").identity.connector_data == DATA  # type: ignore[union-attr]
    store.update_refresh_token("rt-1", lambda t: dataclasses.replace(t, last_used=2.0))
    stored = _raw(backend, "refresh_tokens", "rt-1")
    assert is_sealed(stored)
    assert SECRET not in stored
    assert store.get_refresh_token("rt-1").identity.connector_data == DATA
