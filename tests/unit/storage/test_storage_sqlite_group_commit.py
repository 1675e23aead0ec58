"""SQLite's group commit of hot-path statements (``SQLiteStorage._group_commit``): statements
from many threads at once each get their own result, every one of them is committed (seen by
another process's connection) by the time its caller returns, and one that fails fails alone."""

from __future__ import annotations

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from portcullis.storage.base import AlreadyExistsError, CodeReplayedError
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
            used = storage.consume_auth_code(code_id, NOW + 1, "example-app")
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
            storage.consume_auth_code(ids[0], NOW + 2, "example-app")
    finally:
        storage.close()


def test_a_failing_statement_fails_alone(tmp_path: Path, samples: Any) -> None:
    """Two statements queued while the write lock is held commit as one group; the one that
    raises is rolled back to its savepoint and only its caller sees the error."""
    storage = SQLiteStorage(str(tmp_path / "group.db"))
    try:
        storage.create_auth_code(samples.auth_code("c1"))
        storage.create_auth_code(samples.auth_code("c2"))

        def boom(conn: Any) -> None:
            conn.execute("UPDATE auth_codes SET used_at = 5 WHERE id = 'c1'")
            raise RuntimeError("statement failed")

        outcomes: dict[str, Any] = {}

        def failing() -> None:
            try:
                storage._group_commit(boom)
            except RuntimeError as exc:
                outcomes["failing"] = exc

        def consuming() -> None:
            outcomes["consumed"] = storage.consume_auth_code("c2", NOW, "example-app")

        with storage._write_lock:  # hold the writers so both statements queue
            threads = [threading.Thread(target=failing), threading.Thread(target=consuming)]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 10
            while len(storage._pending) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(storage._pending) == 2
        for thread in threads:
            thread.join(10)
        assert str(outcomes["failing"]) == "statement failed"
        assert outcomes["consumed"].used_at == NOW
        # The failing statement was rolled back alone: c1 is still unused.
        assert storage.consume_auth_code("c1", NOW + 1, "example-app").used_at == NOW + 1
        with pytest.raises(CodeReplayedError):
            storage.consume_auth_code("c2", NOW + 2, "example-app")
    finally:
        storage.close()


def test_a_duplicate_refresh_family_fails_only_its_insert(tmp_path: Path, samples: Any) -> None:
    storage = SQLiteStorage(str(tmp_path / "group.db"))
    try:
        storage.create_refresh_token(samples.refresh_token("rt-1"))
        with pytest.raises(AlreadyExistsError):
            storage.create_refresh_token(samples.refresh_token("rt-1"))
        storage.create_refresh_token(samples.refresh_token("rt-2"))
        assert [t.id for t in storage.list_refresh_tokens()] == ["rt-1", "rt-2"]
    finally:
        storage.close()
