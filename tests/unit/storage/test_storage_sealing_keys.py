"""Where the storage sealing key comes from (``storage.factory`` + ``storage.sealing``).

sqlite3 without a configured key creates a key file beside the database (0600, atomically, one
key even when several workers start at once, reused on the next start, said once in the log);
a configured key file that is missing or holds no key stops start-up with an error naming the
field and never the content; postgres seals with a configured key and, without one, stores
connector data as it is (the config check warns about that).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import sqlite3
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from portcullis.config.load import Config
from portcullis.config.model import PostgresConfig
from portcullis.issuer import parse_config
from portcullis.storage.base import StorageError
from portcullis.storage.factory import SQLITE_KEY_FILE_SUFFIX, open_storage
from portcullis.storage.postgres import connect_arguments
from portcullis.storage.sealing import is_sealed, load_or_create_key_file

DATA = b'{"rt":"upstream-' + secrets.token_hex(16).encode() + b'"}'


def _config(storage: dict[str, Any], sealing: dict[str, Any] | None = None) -> Config:
    document: dict[str, Any] = {
        "issuer": "http://127.0.0.1:5556/dex",
        "storage": storage,
        "web": {"http": "127.0.0.1:5556"},
        "enablePasswordDB": True,
    }
    if sealing is not None:
        document["storageSealing"] = sealing
    return parse_config(json.dumps(document), "test.yaml", {})


def _sqlite(path: Path, sealing: dict[str, Any] | None = None) -> Config:
    return _config({"type": "sqlite3", "config": {"file": str(path)}}, sealing)


def _key_text() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def test_sqlite_without_a_key_creates_one_beside_the_database_and_reuses_it(
    tmp_path: Path, samples: Any, caplog: pytest.LogCaptureFixture
) -> None:
    database = tmp_path / "portcullis.db"
    caplog.set_level(logging.INFO, "portcullis.storage")
    store = open_storage(_sqlite(database))
    try:
        store.create_refresh_token(
            samples.refresh_token("rt-1", identity=samples.identity(connector_data=DATA))
        )
    finally:
        store.close()
    key_file = Path(str(database) + SQLITE_KEY_FILE_SUFFIX)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(base64.b64decode(key_file.read_text())) == 32
    assert caplog.text.count(f"created {key_file}") == 1
    with sqlite3.connect(database) as conn:
        (stored,) = conn.execute("select connector_data from refresh_tokens").fetchone()
    conn.close()
    assert is_sealed(bytes(stored))

    before = key_file.read_bytes()
    caplog.clear()
    store = open_storage(_sqlite(database))
    try:
        assert store.get_refresh_token("rt-1").identity.connector_data == DATA
    finally:
        store.close()
    assert key_file.read_bytes() == before
    assert "created" not in caplog.text
    assert f"sealing upstream tokens with the key file {key_file}" in caplog.text
    assert base64.b64encode(base64.b64decode(before)).decode() not in caplog.text


def test_workers_starting_together_share_one_key_file(tmp_path: Path) -> None:
    path = str(tmp_path / "portcullis.db") + SQLITE_KEY_FILE_SUFFIX
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: load_or_create_key_file(path), range(16)))
    assert len({key for key, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(path)]  # no temporary left


def test_configured_key_file_is_used_and_must_exist_and_hold_a_key(
    tmp_path: Path, samples: Any
) -> None:
    database = tmp_path / "portcullis.db"
    key_file = tmp_path / "sealing.key"
    with pytest.raises(StorageError, match=r"storageSealing.keyFile: key file .* does not exist"):
        open_storage(_sqlite(database, {"keyFile": str(key_file)}))
    key_file.write_text("not-a-key-but-a-password\n")
    with pytest.raises(StorageError) as caught:
        open_storage(_sqlite(database, {"keyFile": str(key_file)}))
    assert "storageSealing.keyFile" in str(caught.value)
    assert "not-a-key-but-a-password" not in str(caught.value)

    key_file.write_text(_key_text() + "\n")
    store = open_storage(_sqlite(database, {"keyFile": str(key_file)}))
    try:
        store.create_refresh_token(
            samples.refresh_token("rt-1", identity=samples.identity(connector_data=DATA))
        )
    finally:
        store.close()
    assert not Path(str(database) + SQLITE_KEY_FILE_SUFFIX).exists()
    # Opened again with only a different key, the value stays sealed (and is not handed out).
    store = open_storage(_sqlite(database, {"key": _key_text()}))
    try:
        assert is_sealed(store.get_refresh_token("rt-1").identity.connector_data)
    finally:
        store.close()
    rotated = {"key": _key_text(), "previousKeyFiles": [str(key_file)]}
    store = open_storage(_sqlite(database, rotated))
    try:
        assert store.get_refresh_token("rt-1").identity.connector_data == DATA
    finally:
        store.close()


def test_in_memory_sqlite_seals_with_a_key_of_its_own(samples: Any) -> None:
    store = open_storage(_sqlite(Path(":memory:")))
    try:
        store.create_refresh_token(
            samples.refresh_token("rt-1", identity=samples.identity(connector_data=DATA))
        )
        assert store.get_refresh_token("rt-1").identity.connector_data == DATA
    finally:
        store.close()


@pytest.mark.parametrize("keyed", [True, False])
def test_postgres_seals_with_a_configured_key_and_only_then(
    keyed: bool, postgres_database: dict[str, Any], tmp_path: Path, samples: Any
) -> None:
    sealing = None
    if keyed:
        key_file = tmp_path / "key"
        key_file.write_text(_key_text())
        sealing = {"keyFile": str(key_file)}
    config = _config({"type": "postgres", "config": postgres_database}, sealing)
    assert bool(config.warnings) is not keyed
    store = open_storage(config)
    try:
        store.create_refresh_token(
            samples.refresh_token("rt-1", identity=samples.identity(connector_data=DATA))
        )
        assert store.get_refresh_token("rt-1").identity.connector_data == DATA
    finally:
        store.close()
    arguments = connect_arguments(PostgresConfig.model_validate(postgres_database))
    with psycopg.connect(**arguments) as conn:
        row = conn.execute("select connector_data from refresh_tokens").fetchone()
    assert row is not None
    assert is_sealed(bytes(row[0])) is keyed
    assert (DATA in bytes(row[0])) is not keyed
