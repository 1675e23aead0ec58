"""``portcullis import-dex`` seals the upstream tokens it carries over: Dex keeps a session's
connector data (an upstream refresh token) in clear in its database; after the import into
Portcullis's sqlite3 storage, the database file holds it only sealed, and the imported family
still reads it back for its next upstream refresh."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import yaml
from portcullis.dexmigrate.plan import apply_plan, build_plan
from portcullis.dexmigrate.source import read_source
from portcullis.issuer import load_config
from portcullis.storage.factory import SQLITE_KEY_FILE_SUFFIX, open_storage
from portcullis.storage.sealing import is_sealed

from tests.support.dex_schema import DexData, build_sqlite

UPSTREAM = "upstream-refresh-token-from-dex-" + "9c" * 12


def test_imported_connector_data_is_sealed(tmp_path: Path) -> None:
    data = DexData(now=time.time())
    dex = tmp_path / "dex.db"
    build_sqlite(str(dex), 13, data)
    connector_data = json.dumps({"RefreshToken": UPSTREAM}).encode()
    with sqlite3.connect(dex) as conn:
        conn.execute("update refresh_token set connector_data = ?", (connector_data,))
    conn.close()
    target = tmp_path / "portcullis.db"
    config_file = tmp_path / "portcullis.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "issuer": "http://127.0.0.1:5556/dex",
                "storage": {"type": "sqlite3", "config": {"file": str(target)}},
                "web": {"http": "127.0.0.1:5556"},
                "enablePasswordDB": True,
            }
        )
    )
    config = load_config(config_file)
    storage = open_storage(config)
    try:
        plan = build_plan(read_source(f"sqlite3:{dex}"), config, storage, data.now)
        assert apply_plan(plan, storage).refresh_tokens == 1
        family = storage.get_refresh_token(data.refresh_id)
        assert family.identity.connector_data == connector_data
    finally:
        storage.close()
    assert Path(str(target) + SQLITE_KEY_FILE_SUFFIX).exists()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("portcullis.db*") if "key" not in p.name)
    assert UPSTREAM.encode() not in raw
    with sqlite3.connect(target) as conn:
        (stored,) = conn.execute(
            "select connector_data from refresh_tokens where id = ?", (data.refresh_id,)
        ).fetchone()
    conn.close()
    assert is_sealed(bytes(stored))
