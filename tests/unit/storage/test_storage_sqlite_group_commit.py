"""SQLite's group commit of hot-path statements (``SQLiteStorage._group_commit``): statements
from many threads at once each get their own result, every one of them is committed (seen by
another process's connection) by the time its caller returns, and one that fails fails alone."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from portcullis.storage.base import AlreadyExistsError, CodeReplayedError
from portcullis.storage.sqlite import SQLiteStorage

NOW = 1_700_000_000.0


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the group commit's queue"
        time.sleep(0.005)


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

        storage.create_auth_code(samples.auth_code("c0"))
        with storage._write_lock:  # a commit in progress, so both statements queue behind it
            leader = threading.Thread(
                target=storage.consume_auth_code, args=("c0", NOW, "example-app")
            )
            leader.start()
            _wait_for(lambda: storage._leading and not storage._pending)
            threads = [threading.Thread(target=failing), threading.Thread(target=consuming)]
            for thread in threads:
                thread.start()
            _wait_for(lambda: len(storage._pending) == 2)
        for thread in [leader, *threads]:
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


def test_followers_return_without_taking_the_write_lock(tmp_path: Path, samples: Any) -> None:
    """Statements queued behind a commit in progress are committed by ONE of their threads
    (the next leader takes the write lock and the lock file once for the group); the others
    wait for that commit and return, instead of each taking the write lock and the lock file
    in turn after their statement was already committed."""
    storage = SQLiteStorage(str(tmp_path / "group.db"))
    try:
        ids = [f"code-{i}" for i in range(9)]
        for code_id in ids:
            storage.create_auth_code(samples.auth_code(code_id))
        results: dict[str, float] = {}

        def consume(code_id: str) -> None:
            results[code_id] = storage.consume_auth_code(code_id, NOW, "example-app").used_at

        original = storage._writer
        entered: list[str] = []

        @contextlib.contextmanager
        def counting_writer() -> Iterator[None]:
            entered.append(threading.current_thread().name)
            with original():
                yield

        with storage._write_lock:  # the first statement's commit is in progress
            first = threading.Thread(target=consume, args=(ids[0],))
            first.start()
            _wait_for(lambda: storage._leading and not storage._pending)
            followers = [threading.Thread(target=consume, args=(i,)) for i in ids[1:]]
            for thread in followers:
                thread.start()
            _wait_for(lambda: len(storage._pending) == len(followers))
            storage._writer = counting_writer  # type: ignore[method-assign]
        for thread in [first, *followers]:
            thread.join(10)
        assert results == dict.fromkeys(ids, NOW)
        assert len(entered) == 1
    finally:
        storage.close()


def test_awaited_and_threaded_statements_share_group_commits(tmp_path: Path, samples: Any) -> None:
    """Statements awaited on an event loop (the refresh grant's) and statements of threads
    join the same group commits; an awaited one is committed (seen by another connection, as
    another worker process would look) when its caller resumes, one that fails fails alone,
    and close() lets the committer thread finish."""
    path = tmp_path / "group.db"
    storage = SQLiteStorage(str(path))
    try:
        ids = [f"code-{i}" for i in range(24)]
        for code_id in ids:
            storage.create_auth_code(samples.auth_code(code_id))

        def consume(code_id: str) -> Callable[[sqlite3.Connection], str]:
            def run(conn: sqlite3.Connection) -> str:
                conn.execute("UPDATE auth_codes SET used_at = ? WHERE id = ?", (NOW, code_id))
                return code_id

            return run

        def boom(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE auth_codes SET used_at = 5 WHERE id = 'code-0'")
            raise RuntimeError("statement failed")

        def used_at(code_id: str) -> float:
            with sqlite3.connect(path) as other:
                (value,) = other.execute(
                    "SELECT used_at FROM auth_codes WHERE id = ?", (code_id,)
                ).fetchone()
            return float(value)

        async def awaited(code_id: str) -> str:
            done = await storage._group_commit_async(consume(code_id))
            assert used_at(code_id) == NOW
            return done

        async def failing() -> str:
            try:
                await storage._group_commit_async(boom)
            except RuntimeError as exc:
                return str(exc)
            return "no error"

        async def everything() -> list[str]:
            threaded = asyncio.gather(
                *(asyncio.to_thread(storage._group_commit, consume(i)) for i in ids[12:])
            )
            results = await asyncio.gather(failing(), *(awaited(i) for i in ids[1:12]), threaded)
            return [*results[:-1], *results[-1]]

        results = asyncio.run(everything())
        assert results == ["statement failed", *ids[1:]]
        assert used_at("code-0") == 0  # rolled back alone
        assert all(used_at(i) == NOW for i in ids[1:])
    finally:
        storage.close()
    assert storage._committer is not None
    assert not storage._committer.is_alive()
