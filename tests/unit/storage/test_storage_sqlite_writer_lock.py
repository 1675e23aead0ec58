"""SQLite's one writer across processes (``SQLiteStorage._writer``): writers of every process
sharing the file queue on ``<file>-lock`` instead of SQLite's busy handler; a writer waits
while another process holds it, proceeds as soon as it is released, and fails with a
StorageError naming the file (never hangs) when it is held past the busy timeout."""

from __future__ import annotations

import fcntl
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from portcullis.storage.base import StorageError
from portcullis.storage.sqlite import SQLiteStorage


def _hold(path: Path) -> int:
    """Take the writer lock as another process's writer would (its own open file)."""
    fd = os.open(f"{path}-lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_the_lock_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "portcullis.db"
    SQLiteStorage(str(path)).close()
    assert stat.S_IMODE(os.stat(f"{path}-lock").st_mode) == 0o600


def test_a_writer_waits_for_another_process_writer(tmp_path: Path, samples: Any) -> None:
    path = tmp_path / "portcullis.db"
    storage = SQLiteStorage(str(path))
    try:
        fd = _hold(path)
        done = threading.Event()

        def write() -> None:
            storage.create_refresh_token(samples.refresh_token("rt-1"))
            done.set()

        writer = threading.Thread(target=write)
        writer.start()
        try:
            assert not done.wait(0.3), "wrote while another process held the writer lock"
        finally:
            released = time.monotonic()
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        assert done.wait(5)
        assert time.monotonic() - released < 1.0
        writer.join(5)
        assert storage.get_refresh_token("rt-1").id == "rt-1"
    finally:
        storage.close()


def test_a_writer_gives_up_after_the_busy_timeout(tmp_path: Path, samples: Any) -> None:
    path = tmp_path / "portcullis.db"
    storage = SQLiteStorage(str(path), busy_timeout=0.2)
    fd = _hold(path)
    try:
        started = time.monotonic()
        with pytest.raises(StorageError, match=r"another process held the write lock for 0.2s"):
            storage.create_refresh_token(samples.refresh_token("rt-1"))
        assert time.monotonic() - started < 5
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        storage.close()
    # The lock is free again: the next write goes through.
    storage = SQLiteStorage(str(path), busy_timeout=0.2)
    try:
        storage.create_refresh_token(samples.refresh_token("rt-2"))
    finally:
        storage.close()
