"""SQLite-specific behaviour: persistence, migrations, file safety and multi-process races."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from portcullis.storage import sql_schema
from portcullis.storage.base import CodeReplayedError, StorageError
from portcullis.storage.migrations import (
    Migration,
    MigrationError,
    SchemaTooNewError,
    load_migrations,
    split_statements,
)
from portcullis.storage.models import Keys, SigningKey, VerificationKey
from portcullis.storage.sqlite import SQLiteStorage

NOW = 1_700_000_000.0
WORKER = Path(__file__).with_name("storage_race_worker.py")


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "portcullis.db")


def _raw(path: str) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, timeout=0, check_same_thread=False)


# -- persistence -----------------------------------------------------------------------------
def test_every_kind_survives_close_and_reopen(db_path: str, samples: Any) -> None:
    keys = Keys(
        SigningKey({"kid": "k2", "kty": "RSA", "d": "private"}),
        (VerificationKey({"kid": "k1", "kty": "RSA"}, NOW + 60),),
        NOW + 3600,
    )
    store = SQLiteStorage(db_path)
    store.create_client(samples.client())
    store.create_auth_request(samples.auth_request())
    store.create_auth_code(samples.auth_code("used"))
    store.create_auth_code(samples.auth_code("fresh"))
    store.consume_auth_code("used", NOW, "example-app")
    store.create_refresh_token(samples.refresh_token())
    store.create_password(samples.password())
    store.update_keys(lambda _k: keys)
    store.revoke_token("jti", NOW + 60)
    store.record_login_failure("user:admin", NOW, 60)
    store.close()

    reopened = SQLiteStorage(db_path)
    try:
        assert reopened.applied_migrations == []
        assert reopened.get_client("example-app") == samples.client()
        assert reopened.get_auth_request("req-1") == samples.auth_request()
        with pytest.raises(CodeReplayedError):
            reopened.consume_auth_code("used", NOW + 1, "example-app")
        assert reopened.consume_auth_code("fresh", NOW, "example-app").used_at == NOW
        assert reopened.get_refresh_token("rt-1") == samples.refresh_token()
        assert reopened.get_password("admin@example.com") == samples.password()
        assert reopened.get_keys() == keys
        assert reopened.is_token_revoked("jti")
        assert reopened.login_failures("user:admin", NOW, 60) == 1
    finally:
        reopened.close()


def test_two_open_handles_see_each_others_writes(db_path: str, samples: Any) -> None:
    a, b = SQLiteStorage(db_path), SQLiteStorage(db_path)
    try:
        a.create_client(samples.client("from-a"))
        assert b.get_client("from-a") == samples.client("from-a")
        b.delete_client("from-a")
        assert a.list_clients() == []
    finally:
        a.close()
        b.close()


def test_in_memory_database_works_for_tests(samples: Any) -> None:
    store = SQLiteStorage(":memory:")
    try:
        store.create_client(samples.client())
        assert store.list_clients() == [samples.client()]
    finally:
        store.close()


# -- file safety -----------------------------------------------------------------------------
def test_database_file_is_private_and_in_wal_mode(db_path: str) -> None:
    store = SQLiteStorage(db_path)
    try:
        assert stat.S_IMODE(os.stat(db_path).st_mode) == 0o600
        with _raw(db_path) as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        store.close()


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        SQLiteStorage(str(tmp_path / "no-such-dir" / "portcullis.db"))


def test_read_modify_write_holds_the_write_lock_while_the_updater_runs(
    db_path: str, samples: Any
) -> None:
    """BEGIN IMMEDIATE: while an updater runs, no other connection can start writing."""
    store = SQLiteStorage(db_path)
    store.create_client(samples.client())
    observed: list[str] = []

    def updater(client: Any) -> Any:
        other = _raw(db_path)
        try:
            other.execute("BEGIN IMMEDIATE")
            observed.append("other writer got the lock")
            other.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            observed.append(str(exc))
        finally:
            other.close()
        return dataclasses.replace(client, name="changed")

    try:
        store.update_client("example-app", updater)
        assert observed == ["database is locked"]
        assert store.get_client("example-app").name == "changed"
    finally:
        store.close()


def test_writes_wait_for_the_lock_but_reads_do_not(db_path: str, samples: Any) -> None:
    store = SQLiteStorage(db_path, busy_timeout=0.2)
    store.create_auth_code(samples.auth_code("c1"))
    holder = _raw(db_path)
    holder.execute("BEGIN IMMEDIATE")
    try:
        assert store.list_clients() == []  # WAL: readers are not blocked by a writer
        with pytest.raises(StorageError, match="database is locked"):
            store.consume_auth_code("c1", NOW, "example-app")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    try:
        assert (
            store.consume_auth_code("c1", NOW, "example-app").used_at == NOW
        )  # untouched by the failure
    finally:
        store.close()


def test_a_write_waits_for_a_briefly_held_lock(db_path: str, samples: Any) -> None:
    store = SQLiteStorage(db_path, busy_timeout=10)
    holder = _raw(db_path)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        store.create_client(samples.client())  # blocks ~0.3 s, then succeeds
        assert store.get_client("example-app") == samples.client()
    finally:
        release.join()
        holder.close()
        store.close()


# -- migrations ------------------------------------------------------------------------------
def test_migrations_apply_once_and_are_recorded(db_path: str) -> None:
    known = load_migrations("sqlite")
    first = SQLiteStorage(db_path, clock=_Clock(NOW))
    first.close()
    second = SQLiteStorage(db_path, clock=_Clock(NOW + 10))
    second.close()
    assert first.applied_migrations == [m.version for m in known]
    assert second.applied_migrations == []
    with _raw(db_path) as raw:
        history = raw.execute(
            "SELECT version, name, applied_at FROM schema_migrations ORDER BY version"
        ).fetchall()
    assert history == [(m.version, m.name, NOW) for m in known]
    assert history[0][:2] == (1, "initial")


def test_database_newer_than_the_code_is_refused(db_path: str) -> None:
    SQLiteStorage(db_path).close()
    with _raw(db_path) as raw:
        raw.execute("INSERT INTO schema_migrations VALUES (999, 'from_the_future', 0)")
    with pytest.raises(SchemaTooNewError, match="999"):
        SQLiteStorage(db_path)


def test_database_from_another_build_is_refused(db_path: str) -> None:
    SQLiteStorage(db_path).close()
    with _raw(db_path) as raw:
        raw.execute("UPDATE schema_migrations SET name = 'something_else' WHERE version = 1")
    with pytest.raises(MigrationError, match="something_else"):
        SQLiteStorage(db_path)


def test_a_failing_migration_leaves_no_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migrations run in one transaction: a half-applied schema is impossible."""
    good = load_migrations("sqlite")
    broken = (
        *good,
        Migration(len(good) + 1, "broken", ("CREATE TABLE extra (x INTEGER)", "NOT VALID SQL")),
    )
    monkeypatch.setattr("portcullis.storage.sqlite.load_migrations", lambda _dialect: broken)
    path = str(tmp_path / "half.db")
    with pytest.raises(StorageError, match="syntax error"):
        SQLiteStorage(path)
    with _raw(path) as raw:
        tables = raw.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    assert tables == []


def test_a_foreign_database_is_refused_untouched(tmp_path: Path) -> None:
    path = str(tmp_path / "dex.db")
    with _raw(path) as raw:  # what a Dex sqlite3 file looks like: its own tables, no history
        raw.execute("CREATE TABLE migrations (num INTEGER NOT NULL, at TEXT NOT NULL)")
        raw.execute("CREATE TABLE client (id TEXT PRIMARY KEY)")
    with pytest.raises(MigrationError, match="not a Portcullis database"):
        SQLiteStorage(path)
    with _raw(path) as raw:
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"migrations", "client"}


def test_migrated_schema_matches_the_table_definitions(db_path: str) -> None:
    SQLiteStorage(db_path).close()
    engine = sa.create_engine(sa.URL.create("sqlite+pysqlite", database=db_path))
    try:
        inspector = sa.inspect(engine)
        assert set(inspector.get_table_names()) - {"sqlite_sequence"} == set(
            sql_schema.metadata.tables
        )
        for table in sql_schema.metadata.tables.values():
            columns = {c["name"]: c for c in inspector.get_columns(table.name)}
            assert list(columns) == [c.name for c in table.columns], table.name
            for column in table.columns:
                assert columns[column.name]["nullable"] == column.nullable, (
                    f"{table.name}.{column.name}"
                )
            assert inspector.get_pk_constraint(table.name)["constrained_columns"] == [
                c.name for c in table.primary_key
            ]
            indexes = {i["name"]: i["column_names"] for i in inspector.get_indexes(table.name)}
            assert indexes == {i.name: [c.name for c in i.columns] for i in table.indexes}
    finally:
        engine.dispose()


def test_split_statements_follows_the_file_rules() -> None:
    text = "-- comment\nCREATE TABLE a (\n  x INTEGER\n);\n\nINSERT INTO a VALUES (1);\n"
    assert split_statements(text) == (
        "CREATE TABLE a (\n  x INTEGER\n)",
        "INSERT INTO a VALUES (1)",
    )
    with pytest.raises(MigrationError, match="terminating"):
        split_statements("CREATE TABLE b (x INTEGER)")


def test_bundled_migrations_are_numbered_without_gaps() -> None:
    versions = [m.version for m in load_migrations("sqlite")]
    assert versions == list(range(1, len(versions) + 1))
    with pytest.raises(MigrationError, match="no migrations"):
        load_migrations("no-such-dialect")


class _Clock:
    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now


# -- several processes sharing one file ------------------------------------------------------
PHASES = ("consume", "increment", "rotate", "failures")


def _race(db_path: str, workers: int, *counts: int) -> dict[str, list[dict[str, Any]]]:
    """Run the worker script in several processes, releasing them together for every phase;
    return each phase's per-worker reports."""
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), db_path, *map(str, counts)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(workers)
    ]
    reports: dict[str, list[dict[str, Any]]] = {}
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for name in PHASES:
            for proc in procs:  # the barrier: release everyone at once
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            reports[name] = []
            for proc in procs:
                assert proc.stdout is not None
                line = proc.stdout.readline()
                assert line, f"a worker died during phase {name}"
                reports[name].append(json.loads(line))
        for proc in procs:
            assert proc.wait(timeout=60) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return reports


def _overlapped(reports: list[dict[str, Any]]) -> bool:
    """True when every worker was still running when the last one started."""
    return max(r["window"][0] for r in reports) < min(r["window"][1] for r in reports)


def test_processes_racing_on_one_file_never_double_spend(db_path: str, samples: Any) -> None:
    workers, codes, increments, rounds, failures = 3, 100, 40, 60, 25
    setup = SQLiteStorage(db_path)
    for i in range(codes):
        setup.create_auth_code(samples.auth_code(f"code-{i}"))
    setup.create_refresh_token(samples.refresh_token("counter", last_used=0.0))
    setup.close()

    reports = _race(db_path, workers, codes, increments, rounds, failures)

    # The phases that matter really ran concurrently (otherwise this test proves nothing).
    assert _overlapped(reports["consume"])
    assert _overlapped(reports["increment"])

    # Each code was won by exactly one process; every other attempt saw a replay.
    winners: dict[int, int] = {}
    for report in reports["consume"]:
        for i in report["result"]["won"]:
            assert i not in winners, f"code-{i} consumed twice"
            winners[i] = report["pid"]
        assert sorted(report["result"]["won"] + report["result"]["replayed"]) == list(range(codes))
    assert sorted(winners) == list(range(codes))

    # Every round rotated exactly once, by one process: no rotation was lost or doubled.
    rotated = sorted(rnd for report in reports["rotate"] for rnd in report["result"])
    assert rotated == list(range(1, rounds + 1))

    # Failure counts are consistent: each recorded count is unique and they reach the total.
    counts = sorted(c for report in reports["failures"] for c in report["result"])
    assert counts == list(range(1, workers * failures + 1))

    check = SQLiteStorage(db_path)
    try:
        assert check.get_refresh_token("counter").last_used == workers * increments
        keys = check.get_keys()
        assert keys.next_rotation == rounds * 100.0 + 100.0
        assert len(keys.verification_keys) == rounds - 1
        assert keys.signing_key is not None
        assert keys.signing_key.jwk["kid"].startswith(f"round-{rounds}-")
        assert check.login_failures("ip:192.0.2.1", 5000.0, 3600.0) == workers * failures
    finally:
        check.close()


def test_processes_opening_a_new_file_together_migrate_it_once(tmp_path: Path) -> None:
    path = str(tmp_path / "fresh.db")
    script = (
        "import sys, json; from portcullis.storage.sqlite import SQLiteStorage; "
        "s = SQLiteStorage(sys.argv[1]); print(json.dumps(s.applied_migrations)); s.close()"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, path], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    applied = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        applied.append(json.loads(out))
    everything = [m.version for m in load_migrations("sqlite")]
    assert sorted(applied) == [[], [], everything]
    with _raw(path) as raw:
        assert raw.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(
            everything
        )
