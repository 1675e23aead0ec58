"""SQLite's own driver connections for the hot statements (``SQLiteStorage._reader``): as
many as reads ran at once, not one per thread that ever read, because the server's worker
threads come and go (anyio ends idle ones), and all of them closed by ``close()``."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from portcullis.storage.sqlite import SQLiteStorage


def test_threads_that_come_and_go_reuse_the_read_connections(tmp_path: Path, samples: Any) -> None:
    storage = SQLiteStorage(str(tmp_path / "portcullis.db"))
    try:
        storage.create_refresh_token(samples.refresh_token("rt-1"))  # opens the writer's
        for _ in range(50):
            reader = threading.Thread(target=storage.get_refresh_token, args=("rt-1",))
            reader.start()
            reader.join(10)
        # The group-commit writer and one reader: every thread ran its read alone.
        assert len(storage._raw_all) == 2
        opened = list(storage._raw_all)
    finally:
        storage.close()
    assert storage._raw_all == []
    for conn in opened:  # closed: using one fails
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            conn.execute("SELECT 1")
