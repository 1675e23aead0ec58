"""SQLite's hot reads on the event loop (``SQLiteStorage._hot_read_async``): the refresh
grant's family lookup runs on the loop's own reader connection, whose busy timeout is zero, so
the loop never sleeps in SQLite's busy handler; a read that would have to wait is retried in a
worker thread with the storage's normal busy timeout, while the loop goes on serving."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from portcullis.storage.base import StorageError
from portcullis.storage.sqlite import SQLiteStorage

NOW = 1_700_000_000.0


def test_a_loop_read_sees_committed_writes(tmp_path: Path, samples: Any) -> None:
    """The loop's reader is a connection of its own: it must see what the writer committed
    after it was opened (no snapshot kept between reads)."""
    storage = SQLiteStorage(str(tmp_path / "db.sqlite"))
    try:
        first = samples.refresh_token("f1")
        storage.create_refresh_token(first)
        assert asyncio.run(storage.get_refresh_token_for_use_async("f1", NOW))[0] == first
        second = samples.refresh_token("f2")
        storage.create_refresh_token(second)
        assert asyncio.run(storage.get_refresh_token_for_use_async("f2", NOW))[0] == second
    finally:
        storage.close()


def test_a_busy_loop_read_is_retried_in_a_worker_thread(tmp_path: Path, samples: Any) -> None:
    """A loop read that SQLite answers "busy" returns at once (busy timeout zero: the loop
    never sleeps in the busy handler) and is retried in a worker thread, through an ordinary
    reader with the storage's busy timeout.

    A WAL reader is kept out only in rare states (WAL-index recovery after a crash) that a
    test cannot bring about on demand while the storage's own connections are open, so the
    busy answer comes from a real SQLite lock on a second file: the loop's reader connection
    is pointed at a database another connection holds exclusively (``locking_mode=EXCLUSIVE``
    keeps even WAL readers out)."""
    storage = SQLiteStorage(str(tmp_path / "db.sqlite"), busy_timeout=10)
    family = samples.refresh_token("f1")
    storage.create_refresh_token(family)
    locked = tmp_path / "locked.sqlite"
    setup = sqlite3.connect(locked, isolation_level=None)
    setup.execute("PRAGMA journal_mode = WAL")
    setup.execute("CREATE TABLE refresh_tokens (id TEXT)")
    setup.close()
    holder = sqlite3.connect(locked, isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO refresh_tokens VALUES ('x')")
    holder.execute("COMMIT")  # the exclusive lock stays: locking_mode=EXCLUSIVE
    loop_reader = sqlite3.connect(locked, isolation_level=None, check_same_thread=False)
    loop_reader.execute("PRAGMA busy_timeout = 0")
    storage._loop_reader = loop_reader  # what the loop reads through
    threads_used: list[str] = []
    original = storage._hot_statement

    def recorded(*args: Any, **kwargs: Any) -> Any:  # the worker thread's ordinary read
        threads_used.append(threading.current_thread().name)
        return original(*args, **kwargs)

    storage._hot_statement = recorded  # type: ignore[method-assign]

    async def timed_read() -> tuple[Any, float]:
        started = time.monotonic()
        result = await storage.get_refresh_token_for_use_async("f1", NOW)
        return result, time.monotonic() - started

    try:
        (found, _), took = asyncio.run(timed_read())
        assert found == family  # read from the real database
        assert len(threads_used) == 1
        assert threads_used[0] != threading.main_thread().name
        assert took < 5  # the busy answer came at once, not after the 10 s busy timeout
        holder.close()
        # Once the other connection let go, the loop's own reader reads without waiting.
        assert loop_reader.execute("SELECT id FROM refresh_tokens").fetchall() == [("x",)]
    finally:
        holder.close()
        loop_reader.close()
        storage.close()


def test_the_loop_reader_busy_fallback_is_not_taken_for_other_errors(
    tmp_path: Path, samples: Any
) -> None:
    """Only "busy" is retried in a thread: any other driver error is the StorageError every
    sqlite read raises, naming the file."""
    storage = SQLiteStorage(str(tmp_path / "db.sqlite"))
    empty = sqlite3.connect(tmp_path / "empty.sqlite", isolation_level=None)
    storage._loop_reader = empty  # no refresh_tokens table there: "no such table"
    try:
        with pytest.raises(StorageError, match=r"db\.sqlite: no such table"):
            asyncio.run(storage.get_refresh_token_for_use_async("f1", NOW))
    finally:
        empty.close()
        storage.close()
