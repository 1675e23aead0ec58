"""Several workers opening a brand-new sqlite file at once: the WAL switch that one of them
loses with an immediate "database is locked" (SQLite's deadlock avoidance skips the busy
handler) is retried instead of failing the worker's start (seen in CI as a worker exiting 1
with `--workers 2` on a new database)."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from portcullis.storage.sqlite import enable_wal


class _Cursor:
    """A cursor whose WAL switch loses the race ``losses`` times before it succeeds."""

    def __init__(self, losses: int) -> None:
        self.losses = losses
        self.switched = False
        self.statements: list[str] = []

    def execute(self, sql: str) -> Any:
        self.statements.append(sql)
        if sql == "PRAGMA journal_mode = WAL":
            if self.losses:
                self.losses -= 1
                raise sqlite3.OperationalError("database is locked")
            self.switched = True
        mode = "wal" if self.switched else "delete"
        return _Row(mode)


class _Row:
    def __init__(self, mode: str) -> None:
        self.mode = mode

    def fetchone(self) -> tuple[str]:
        return (self.mode,)


def test_a_lost_wal_switch_is_retried() -> None:
    cursor = _Cursor(losses=3)
    assert enable_wal(cursor, timeout=5) == "wal"  # type: ignore[arg-type]
    assert cursor.statements.count("PRAGMA journal_mode = WAL") == 4


def test_a_file_already_in_wal_is_not_switched_again() -> None:
    cursor = _Cursor(losses=0)
    cursor.switched = True
    assert enable_wal(cursor, timeout=5) == "wal"  # type: ignore[arg-type]
    assert cursor.statements == ["PRAGMA journal_mode"]


def test_a_switch_that_stays_locked_fails_after_the_timeout() -> None:
    cursor = _Cursor(losses=10_000)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        enable_wal(cursor, timeout=0.1)  # type: ignore[arg-type]


def test_a_real_new_file_ends_in_wal(tmp_path: Any) -> None:
    with sqlite3.connect(tmp_path / "new.db") as conn:
        assert enable_wal(conn.cursor(), timeout=5) == "wal"
