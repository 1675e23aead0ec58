"""SQLite's group commit of hot-path statements (``SQLiteStorage._run_statement``): statements
from many threads at once each get their own result, and every one of them is committed (seen
by another process's connection) by the time its caller returns."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from portcullis.storage.base import CodeReplayedError
from portcullis.storage.sqlite import SQLiteStorage

NOW = 1_700_000_000.0


def test_concurrent_consumes_each_commit_before_returning(tmp_path: Path, samples: Any) -> None:
    path = tmp_path / "group.db"
    storage = SQLiteStorage(str(path))
    try:
        ids = [f"code-{i}" for i in range(32)]
        for code_id in ids:
            storage.create_auth_code(samples.auth_code(code_id))
        start = threading.Barrier(16)

        def consume(code_id: str) -> tuple[str, float]:
            if code_id in ids[:16]:
                start.wait()
            used = storage.consume_auth_code(code_id, NOW + 1)
            # A separate connection (as another worker process would open) sees it used.
            with sqlite3.connect(path) as other:
                (used_at,) = other.execute(
                    "SELECT used_at FROM auth_codes WHERE id = ?", (code_id,)
                ).fetchone()
            assert used_at == NOW + 1
            return used.id, used.used_at

        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(consume, ids))
        assert results == [(code_id, NOW + 1) for code_id in ids]
        with pytest.raises(CodeReplayedError):
            storage.consume_auth_code(ids[0], NOW + 2)
    finally:
        storage.close()


def test_a_failing_group_fails_every_statement_in_it(tmp_path: Path, samples: Any) -> None:
    """No partial commit: a statement that raises rolls its whole group back."""
    storage = SQLiteStorage(str(tmp_path / "group.db"))
    try:
        storage.create_auth_code(samples.auth_code("c1"))

        def boom(conn: Any) -> None:
            conn.exec_driver_sql("UPDATE auth_codes SET used_at = 5 WHERE id = 'c1'")
            raise RuntimeError("statement failed")

        with pytest.raises(RuntimeError, match="statement failed"):
            storage._run_statement(boom)
        assert storage.consume_auth_code("c1", NOW).used_at == NOW
    finally:
        storage.close()
