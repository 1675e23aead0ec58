"""PostgreSQL-specific behaviour, against the session's real PostgreSQL 15 server: processes
racing on one database, migrations applied once under an advisory lock, row locks held while an
updater runs, TLS, pool limits, and connection errors that name the setting but never the
password."""

from __future__ import annotations

import dataclasses
import json
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from portcullis.config.load import ConfigError
from portcullis.config.model import PostgresConfig
from portcullis.issuer import parse_config
from portcullis.storage import sql_schema
from portcullis.storage.base import StorageError
from portcullis.storage.factory import open_storage
from portcullis.storage.migrations import (
    Migration,
    MigrationError,
    SchemaTooNewError,
    load_migrations,
)
from portcullis.storage.postgres import (
    MIGRATION_LOCK_KEY,
    DatabaseUnavailableError,
    PostgresStorage,
    connect_arguments,
    split_host_port,
)
from test_storage_sqlite import _overlapped, _race

from tests.support.postgres import PostgresCluster

NOW = 1_700_000_000.0


def _open(settings: dict[str, Any], **changes: Any) -> PostgresStorage:
    return PostgresStorage(PostgresConfig.model_validate({**settings, **changes}))


@pytest.fixture
def empty_database(postgres_cluster: PostgresCluster) -> Iterator[dict[str, Any]]:
    """A new, never migrated database (``storage.config`` for it)."""
    name = postgres_cluster.create_database(template=None)
    try:
        yield postgres_cluster.config(name)
    finally:
        postgres_cluster.drop_database(name)


def _sql(cluster: PostgresCluster, settings: dict[str, Any], query: str) -> list[tuple[Any, ...]]:
    with cluster.admin(settings["database"]) as conn:
        return conn.execute(query).fetchall()  # type: ignore[arg-type]


def _messages(exc: BaseException) -> str:
    """Everything an operator could see of an exception: its chain, str and repr."""
    parts = []
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


# -- several processes sharing one database ---------------------------------------------------
def test_processes_racing_on_one_database_never_double_spend(
    postgres_database: dict[str, Any], samples: Any
) -> None:
    workers, codes, increments, rounds, failures = 3, 100, 40, 60, 25
    setup = _open(postgres_database)
    for i in range(codes):
        setup.create_auth_code(samples.auth_code(f"code-{i}"))
    setup.create_refresh_token(samples.refresh_token("counter", last_used=0.0))
    setup.close()

    reports = _race(json.dumps(postgres_database), workers, codes, increments, rounds, failures)

    assert _overlapped(reports["consume"])
    assert _overlapped(reports["increment"])
    winners: dict[int, int] = {}
    for report in reports["consume"]:
        for i in report["result"]["won"]:
            assert i not in winners, f"code-{i} consumed twice"
            winners[i] = report["pid"]
        assert sorted(report["result"]["won"] + report["result"]["replayed"]) == list(range(codes))
    assert sorted(winners) == list(range(codes))
    rotated = sorted(rnd for report in reports["rotate"] for rnd in report["result"])
    assert rotated == list(range(1, rounds + 1))
    counts = sorted(c for report in reports["failures"] for c in report["result"])
    assert counts == list(range(1, workers * failures + 1))

    check = _open(postgres_database)
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


def test_processes_opening_a_new_database_together_migrate_it_once(
    postgres_cluster: PostgresCluster, empty_database: dict[str, Any]
) -> None:
    """Hold the migration lock while three processes start, release it once all three wait on
    it: they really race, and exactly one applies the schema. The wait outlasts a statement
    timeout (1 s here): waiting for another replica's migration is not a hung query."""
    script = (
        "import sys, json; from portcullis.config.model import PostgresConfig; "
        "import portcullis.storage.postgres as pg; pg.STATEMENT_TIMEOUT = 1.0; "
        "from portcullis.storage.postgres import PostgresStorage; "
        "s = PostgresStorage(PostgresConfig.model_validate(json.loads(sys.argv[1]))); "
        "print(json.dumps(s.applied_migrations)); s.close()"
    )
    spec = json.dumps(empty_database)
    with postgres_cluster.admin(empty_database["database"]) as gate:
        gate.autocommit = False
        gate.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", script, spec], stdout=subprocess.PIPE, text=True
            )
            for _ in range(3)
        ]
        try:
            deadline = time.monotonic() + 30
            with postgres_cluster.admin(empty_database["database"]) as watcher:
                while True:
                    waiting = watcher.execute(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    ).fetchone()
                    assert waiting is not None
                    if waiting[0] == 3:
                        time.sleep(1.5)  # longer than their statement timeout
                        break
                    assert time.monotonic() < deadline, "the processes never queued on the lock"
                    assert all(p.poll() is None for p in procs), "a process exited early"
                    time.sleep(0.02)
        finally:
            gate.commit()  # releases the lock: all three go at once
        applied = []
        for proc in procs:
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0
            applied.append(json.loads(out))
    everything = [m.version for m in load_migrations("postgres")]
    assert sorted(applied) == [[], [], everything]
    history = _sql(postgres_cluster, empty_database, "SELECT version FROM schema_migrations")
    assert history == [(v,) for v in everything]
    assert _sql(postgres_cluster, empty_database, "SELECT count(*) FROM signing_keys") == [(1,)]


def test_threads_opening_a_new_database_together_migrate_it_once(
    empty_database: dict[str, Any],
) -> None:
    barrier = threading.Barrier(4)
    opened: list[PostgresStorage] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        barrier.wait()
        try:
            opened.append(_open(empty_database))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert errors == []
        everything = [m.version for m in load_migrations("postgres")]
        assert sorted(s.applied_migrations for s in opened) == [[], [], [], everything]
    finally:
        for store in opened:
            store.close()


# -- migrations -----------------------------------------------------------------------------
def test_migrations_apply_once_and_are_recorded(
    postgres_cluster: PostgresCluster, empty_database: dict[str, Any]
) -> None:
    known = load_migrations("postgres")
    first = PostgresStorage(PostgresConfig.model_validate(empty_database), clock=_Clock(NOW))
    first.close()
    second = _open(empty_database)
    second.close()
    assert first.applied_migrations == [m.version for m in known]
    assert second.applied_migrations == []
    history = _sql(
        postgres_cluster,
        empty_database,
        "SELECT version, name, applied_at FROM schema_migrations ORDER BY version",
    )
    assert history == [(m.version, m.name, NOW) for m in known]


def test_migrations_mean_the_same_on_both_dialects() -> None:
    sqlite, postgres = load_migrations("sqlite"), load_migrations("postgres")
    assert [(m.version, m.name) for m in postgres] == [(m.version, m.name) for m in sqlite]


def test_database_newer_than_the_code_is_refused(
    postgres_cluster: PostgresCluster, fresh_postgres_database: dict[str, Any]
) -> None:
    _sql(
        postgres_cluster,
        fresh_postgres_database,
        "INSERT INTO schema_migrations VALUES (999, 'from_the_future', 0) RETURNING version",
    )
    with pytest.raises(SchemaTooNewError, match="999"):
        _open(fresh_postgres_database)


def test_a_failing_migration_leaves_no_trace(
    postgres_cluster: PostgresCluster,
    empty_database: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DDL is transactional on PostgreSQL: a half-applied schema is impossible."""
    good = load_migrations("postgres")
    broken = (
        *good,
        Migration(len(good) + 1, "broken", ("CREATE TABLE extra (x INTEGER)", "NOT VALID SQL")),
    )
    monkeypatch.setattr("portcullis.storage.postgres.load_migrations", lambda _dialect: broken)
    with pytest.raises(StorageError, match="syntax error"):
        _open(empty_database)
    tables = _sql(
        postgres_cluster,
        empty_database,
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
    )
    assert tables == []


def test_a_foreign_database_is_refused_untouched(
    postgres_cluster: PostgresCluster, empty_database: dict[str, Any]
) -> None:
    with postgres_cluster.admin(empty_database["database"]) as conn:  # what Dex leaves behind
        conn.execute("CREATE TABLE migrations (num INTEGER NOT NULL, at TEXT NOT NULL)")
        conn.execute("CREATE TABLE client (id TEXT PRIMARY KEY)")
    with pytest.raises(MigrationError, match="not a Portcullis database"):
        _open(empty_database)
    tables = _sql(
        postgres_cluster,
        empty_database,
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
    )
    assert {t for (t,) in tables} == {"migrations", "client"}


def test_migrated_schema_matches_the_table_definitions(
    postgres_cluster: PostgresCluster, postgres_database: dict[str, Any]
) -> None:
    engine = sa.create_engine(
        "postgresql+psycopg://",
        connect_args={
            "host": "127.0.0.1",
            "port": postgres_cluster.port,
            "user": postgres_database["user"],
            "password": postgres_cluster.password,
            "dbname": postgres_database["database"],
        },
    )
    expected_types = {
        sa.JSON: "JSONB",
        sa.Double: "DOUBLE PRECISION",
        sa.LargeBinary: "BYTEA",
        sa.Boolean: "BOOLEAN",
        sa.Text: "TEXT",
    }
    try:
        inspector = sa.inspect(engine)
        assert set(inspector.get_table_names()) == set(sql_schema.metadata.tables)
        for table in sql_schema.metadata.tables.values():
            columns = {c["name"]: c for c in inspector.get_columns(table.name)}
            assert list(columns) == [c.name for c in table.columns], table.name
            for column in table.columns:
                where = f"{table.name}.{column.name}"
                assert columns[column.name]["nullable"] == column.nullable, where
                for kind, name in expected_types.items():
                    if type(column.type) is kind:
                        assert str(columns[column.name]["type"]).startswith(name), where
            assert inspector.get_pk_constraint(table.name)["constrained_columns"] == [
                c.name for c in table.primary_key
            ]
            indexes = {i["name"]: i["column_names"] for i in inspector.get_indexes(table.name)}
            assert indexes == {i.name: [c.name for c in i.columns] for i in table.indexes}
    finally:
        engine.dispose()


# -- locking --------------------------------------------------------------------------------
def _row_is_locked(cluster: PostgresCluster, database: str, query: str) -> bool:
    """Try to lock the row from another session without waiting."""
    with cluster.admin(database) as other:
        other.autocommit = False
        try:
            other.execute(query + " FOR UPDATE NOWAIT")
            return False
        except psycopg.errors.LockNotAvailable:
            return True
        finally:
            other.rollback()


def test_read_modify_write_holds_the_row_lock_while_the_updater_runs(
    postgres_cluster: PostgresCluster, postgres_database: dict[str, Any], samples: Any
) -> None:
    store = _open(postgres_database)
    store.create_client(samples.client("locked"))
    store.create_client(samples.client("free"))
    database = postgres_database["database"]
    observed: dict[str, bool] = {}

    def updater(client: Any) -> Any:
        observed["same row"] = _row_is_locked(
            postgres_cluster, database, "SELECT id FROM clients WHERE id = 'locked'"
        )
        observed["other row"] = _row_is_locked(
            postgres_cluster, database, "SELECT id FROM clients WHERE id = 'free'"
        )
        return dataclasses.replace(client, name="changed")

    try:
        store.update_client("locked", updater)
        assert observed == {"same row": True, "other row": False}
        assert store.get_client("locked").name == "changed"
        assert not _row_is_locked(
            postgres_cluster, database, "SELECT id FROM clients WHERE id = 'locked'"
        )
    finally:
        store.close()


def test_key_rotation_holds_the_keys_row_lock(
    postgres_cluster: PostgresCluster, postgres_database: dict[str, Any]
) -> None:
    store = _open(postgres_database)
    database = postgres_database["database"]
    observed: list[bool] = []

    def rotate(keys: Any) -> Any:
        observed.append(
            _row_is_locked(postgres_cluster, database, "SELECT id FROM signing_keys WHERE id = 1")
        )
        return dataclasses.replace(keys, next_rotation=NOW)

    try:
        store.update_keys(rotate)
        assert observed == [True]
        assert store.get_keys().next_rotation == NOW
    finally:
        store.close()


def test_a_write_stuck_behind_a_lock_fails_after_the_statement_timeout(
    postgres_cluster: PostgresCluster,
    postgres_database: dict[str, Any],
    samples: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another session (a replica frozen mid-transaction) holds the row: the request fails
    after statement_timeout instead of hanging, and nothing is changed."""
    monkeypatch.setattr("portcullis.storage.postgres.STATEMENT_TIMEOUT", 0.5)
    store = _open(postgres_database)
    store.create_client(samples.client())
    holder = postgres_cluster.admin(postgres_database["database"])
    holder.autocommit = False
    holder.execute("SELECT id FROM clients WHERE id = 'example-app' FOR UPDATE")
    try:
        started = time.monotonic()
        with pytest.raises(StorageError, match="statement timeout"):
            store.update_client("example-app", lambda c: dataclasses.replace(c, name="changed"))
        assert 0.4 < time.monotonic() - started < 5
    finally:
        holder.rollback()
        holder.close()
    try:
        assert store.get_client("example-app") == samples.client()
        with store._read() as conn:
            limits = conn.execute(
                sa.text(
                    "SELECT current_setting('statement_timeout'), "
                    "current_setting('idle_in_transaction_session_timeout')"
                )
            ).one()
        assert tuple(limits) == ("500ms", "1min")
    finally:
        store.close()


def test_a_code_exchange_waits_for_a_concurrent_one_and_then_sees_it_used(
    postgres_cluster: PostgresCluster, postgres_database: dict[str, Any], samples: Any
) -> None:
    """The second exchange blocks on the row lock and, once the first commits, must see the
    code as used (READ COMMITTED re-reads the locked row)."""
    from portcullis.storage.base import CodeReplayedError

    store = _open(postgres_database)
    store.create_auth_code(samples.auth_code("c1"))
    holder = postgres_cluster.admin(postgres_database["database"])
    holder.autocommit = False
    holder.execute("SELECT id FROM auth_codes WHERE id = 'c1' FOR UPDATE")
    outcome: list[object] = []

    def exchange() -> None:
        try:
            outcome.append(store.consume_auth_code("c1", NOW, "example-app"))
        except CodeReplayedError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=exchange)
    worker.start()
    try:
        time.sleep(0.3)
        assert outcome == [], "the exchange did not wait for the row lock"
        holder.execute("UPDATE auth_codes SET used_at = %s WHERE id = 'c1'", (NOW - 1,))
        holder.commit()
        worker.join(10)
        assert len(outcome) == 1
        assert isinstance(outcome[0], CodeReplayedError)
        assert outcome[0].code.used_at == NOW - 1
    finally:
        holder.close()
        worker.join(10)
        store.close()


def test_replicas_collecting_garbage_together_delete_each_record_once(
    postgres_database: dict[str, Any], samples: Any
) -> None:
    """GC passes of several replicas overlap; SKIP LOCKED lets them share the work, and the
    counts they report add up to exactly what expired."""
    expired = 600
    setup = _open(postgres_database)
    for i in range(expired):
        setup.create_auth_code(samples.auth_code(f"old-{i}", expiry=NOW - 10))
    setup.create_auth_code(samples.auth_code("live", expiry=NOW + 3600))
    setup.close()
    stores = [_open(postgres_database) for _ in range(3)]
    barrier = threading.Barrier(len(stores))
    deleted: list[int] = []
    errors: list[BaseException] = []

    def collect(store: PostgresStorage) -> None:
        barrier.wait()
        try:
            while True:
                n = store.garbage_collect(NOW, batch_size=25).auth_codes
                deleted.append(n)
                if n == 0:
                    return
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=collect, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert errors == []
        assert sum(deleted) == expired
        assert stores[0].consume_auth_code("live", NOW, "example-app").id == "live"
    finally:
        for store in stores:
            store.close()


# -- connections ----------------------------------------------------------------------------
def test_wrong_password_is_a_clear_error_without_the_password(
    postgres_database: dict[str, Any],
) -> None:
    wrong = "not-the-password-" + secrets.token_urlsafe(12)
    with pytest.raises(DatabaseUnavailableError) as caught:
        _open(postgres_database, password=wrong)
    message = str(caught.value)
    assert "password authentication failed" in message
    assert "storage.config.password" in message
    assert "storage.config.user" in message
    assert postgres_database["database"] in message
    assert wrong not in _messages(caught.value)


def test_wrong_password_from_the_environment_through_serve_config(
    postgres_database: dict[str, Any],
) -> None:
    """The operator's path: $VAR in storage.config, loaded and opened like `portcullis serve`."""
    wrong = "env-secret-" + secrets.token_urlsafe(12)
    storage = {**postgres_database, "password": "$PORTCULLIS_TEST_DB_PASSWORD"}
    config = parse_config(
        json.dumps(
            {
                "issuer": "http://127.0.0.1:5556/dex",
                "web": {"http": "127.0.0.1:5556"},
                "storage": {"type": "postgres", "config": storage},
                "enablePasswordDB": True,
            }
        ),
        environ={"PORTCULLIS_TEST_DB_PASSWORD": wrong},
    )
    assert wrong not in repr(config.storage_config)
    with pytest.raises(DatabaseUnavailableError, match=r"storage\.config\.password") as caught:
        open_storage(config)
    assert wrong not in _messages(caught.value)


def test_unreachable_server_names_host_and_port(postgres_database: dict[str, Any]) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError) as caught:
        _open(postgres_database, port=port)
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "storage.config.host" in message
    assert "storage.config.port" in message
    assert f":{port}" in message
    assert postgres_database["password"] not in _messages(caught.value)


def test_missing_database_names_the_database_setting(postgres_database: dict[str, Any]) -> None:
    with pytest.raises(DatabaseUnavailableError, match=r"storage\.config\.database"):
        _open(postgres_database, database="no_such_database")


@pytest.mark.parametrize("form", ["host:port", "unix socket directory"])
def test_dex_host_forms_connect(
    postgres_cluster: PostgresCluster, postgres_database: dict[str, Any], form: str
) -> None:
    """Dex's ``host: "name:port"`` (port then unused) and a socket directory (local trust)."""
    if form == "host:port":
        changes = {"host": f"127.0.0.1:{postgres_cluster.port}", "port": 1}
    else:
        changes = {"host": str(postgres_cluster.root), "password": ""}
    store = _open(postgres_database, **changes)
    try:
        store.ping()
        with store._read() as conn:
            peer = conn.execute(sa.text("SELECT inet_client_addr()")).scalar_one()
        assert (peer is None) == (form == "unix socket directory")
    finally:
        store.close()


def test_a_user_who_may_not_create_tables_gets_a_clear_error(
    postgres_cluster: PostgresCluster, empty_database: dict[str, Any]
) -> None:
    """PostgreSQL 15 no longer lets every user create tables in ``public``."""
    role, password = f"reader_{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    with postgres_cluster.admin() as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    try:
        with pytest.raises(StorageError) as caught:
            _open(empty_database, user=role, password=password)
        message = str(caught.value)
        assert "permission denied for schema public" in message
        assert "storage.config.user must own the database" in message
        assert password not in _messages(caught.value)
    finally:
        with postgres_cluster.admin() as admin:
            admin.execute(f"DROP ROLE {role}")


def test_tls_verify_full_with_the_ca_file_connects_encrypted(
    postgres_cluster: PostgresCluster, postgres_database: dict[str, Any]
) -> None:
    store = _open(
        postgres_database, ssl={"mode": "verify-full", "caFile": str(postgres_cluster.ca_file)}
    )
    try:
        with store._read() as conn:
            encrypted = conn.execute(
                sa.text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            ).scalar_one()
        assert encrypted is True
        store.ping()
    finally:
        store.close()


def test_tls_with_an_untrusted_server_certificate_names_the_ssl_settings(
    postgres_database: dict[str, Any], tmp_path: Path
) -> None:
    from tests.support.postgres import _write_tls_material

    other_ca, _, _ = _write_tls_material(tmp_path)  # a CA that did not sign the server's cert
    with pytest.raises(DatabaseUnavailableError, match=r"storage\.config\.ssl"):
        _open(postgres_database, ssl={"mode": "verify-full", "caFile": str(other_ca)})


def test_pooled_connections_killed_by_the_server_are_replaced(
    postgres_cluster: PostgresCluster, postgres_database: dict[str, Any], samples: Any
) -> None:
    """A database restart or fail-over kills every pooled connection; the next call must work."""
    store = _open(postgres_database)
    try:
        store.create_client(samples.client())
        killed = _sql(
            postgres_cluster,
            postgres_database,
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            "WHERE application_name = 'portcullis' AND datname = current_database()",
        )
        assert killed
        assert all(ok for (ok,) in killed)
        assert store.get_client("example-app") == samples.client()
        store.ping()
    finally:
        store.close()


@pytest.mark.parametrize("ping_after_idle", [10.0, 0.0])
def test_healthy_pooled_connections_are_reused_not_reopened(
    postgres_database: dict[str, Any],
    samples: Any,
    monkeypatch: pytest.MonkeyPatch,
    ping_after_idle: float,
) -> None:
    """The liveness check at checkout (socket state, and a ping after idling) must not discard
    good connections: one backend serves every call."""
    monkeypatch.setattr("portcullis.storage.postgres.PING_AFTER_IDLE", ping_after_idle)
    store = _open(postgres_database, maxOpenConns=1)

    def backend() -> int:
        with store._read() as conn:
            return int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())

    try:
        first = backend()
        for i in range(20):
            store.create_client(samples.client(f"client-{i}"))
            assert store.get_client(f"client-{i}").id == f"client-{i}"
        assert backend() == first
    finally:
        store.close()


def test_ping_fails_clearly_when_the_database_is_gone(
    postgres_cluster: PostgresCluster, samples: Any
) -> None:
    name = postgres_cluster.create_database()
    store = _open(postgres_cluster.config(name))
    try:
        store.ping()
        postgres_cluster.drop_database(name)
        with pytest.raises(DatabaseUnavailableError, match=r"storage\.config\.database"):
            store.ping()
    finally:
        store.close()


def test_connections_never_exceed_max_open_conns(
    postgres_cluster: PostgresCluster, postgres_database: dict[str, Any], samples: Any
) -> None:
    store = _open(postgres_database, maxOpenConns=2, maxIdleConns=1)
    store.create_refresh_token(samples.refresh_token("counter", last_used=0.0))
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        with postgres_cluster.admin(postgres_database["database"]) as conn:
            while not stop.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'portcullis'"
                    " AND datname = current_database()"
                ).fetchone()
                assert row is not None
                peak = max(peak, row[0])

    def bump(token: Any) -> Any:
        time.sleep(0.002)  # hold the connection a little so the threads really contend
        return dataclasses.replace(token, last_used=token.last_used + 1)

    def hammer() -> None:
        for _ in range(20):
            store.update_refresh_token("counter", bump)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=hammer) for _ in range(6)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        stop.set()
        watcher.join(10)
    try:
        assert store.get_refresh_token("counter").last_used == 6 * 20
        assert 1 <= peak <= 2
    finally:
        store.close()


# -- settings -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("db.example", 5433, ("db.example", 5433)),
        ("db.example:6543", 5432, ("db.example", 6543)),  # Dex's backwards-compatible form
        ("10.0.0.1:65432", 0, ("10.0.0.1", 65432)),
        ("[2001:db8::1]:5444", 5432, ("2001:db8::1", 5444)),
        ("2001:db8::1", 5432, ("2001:db8::1", 5432)),
        ("/var/run/postgresql", 0, ("/var/run/postgresql", 5432)),
        ("", 0, ("", 5432)),
    ],
)
def test_host_and_port_are_read_like_dex(host: str, port: int, expected: tuple[str, int]) -> None:
    assert split_host_port(host, port) == expected


def _config(**changes: Any) -> PostgresConfig:
    base: dict[str, Any] = {"host": "db", "database": "dex", "user": "dex", "password": "pw"}
    return PostgresConfig.model_validate({**base, **changes})


def test_tls_defaults_to_verify_full_against_the_system_store_like_dex() -> None:
    args = connect_arguments(_config())
    assert args["sslmode"] == "verify-full"
    assert args["sslrootcert"] == "system"
    assert "sslcert" not in args


def test_tls_files_and_disable_are_passed_to_libpq() -> None:
    ssl = {"mode": "verify-ca", "caFile": "/ca.pem", "certFile": "/c.pem", "keyFile": "/k.pem"}
    args = connect_arguments(_config(ssl=ssl))
    assert (args["sslmode"], args["sslrootcert"], args["sslcert"], args["sslkey"]) == (
        "verify-ca",
        "/ca.pem",
        "/c.pem",
        "/k.pem",
    )
    plain = connect_arguments(_config(ssl={"mode": "disable", "caFile": "/ca.pem"}))
    assert plain["sslmode"] == "disable"
    assert "sslrootcert" not in plain


def test_connection_timeout_defaults_to_a_bounded_wait() -> None:
    assert connect_arguments(_config())["connect_timeout"] == 10
    assert connect_arguments(_config(connectionTimeout=3))["connect_timeout"] == 3


def _problems(storage_config: dict[str, Any]) -> list[str]:
    document = {
        "issuer": "http://127.0.0.1:5556/dex",
        "web": {"http": "127.0.0.1:5556"},
        "storage": {"type": "postgres", "config": storage_config},
        "enablePasswordDB": True,
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(json.dumps(document), environ={})
    return caught.value.problems


def test_dex_postgres_config_loads_with_dex_key_names() -> None:
    config = parse_config(
        json.dumps(
            {
                "issuer": "http://127.0.0.1:5556/dex",
                "web": {"http": "127.0.0.1:5556"},
                "storage": {
                    "type": "postgres",
                    "config": {
                        "host": "10.0.0.1",
                        "port": 65432,
                        "database": "dex",
                        "user": "dex",
                        "password": "$DB_PASSWORD",
                        "ssl": {"mode": "require", "caFile": "/etc/ca.pem"},
                        "maxOpenConns": 5,
                        "maxIdleConns": 3,
                        "connMaxLifetime": 30,
                        "connectionTimeout": 3,
                    },
                },
                "enablePasswordDB": True,
            }
        ),
        environ={"DB_PASSWORD": "from-env"},
    )
    settings = config.storage_config
    assert isinstance(settings, PostgresConfig)
    assert settings.password.get_secret_value() == "from-env"
    assert (settings.max_open_conns, settings.max_idle_conns, settings.conn_max_lifetime) == (
        5,
        3,
        30,
    )
    assert settings.ssl.mode == "require"
    assert settings.ssl.ca_file == "/etc/ca.pem"


def test_postgres_config_errors_name_the_yaml_path() -> None:
    problems = _problems(
        {
            "host": "db",
            "user": "dex",
            "port": 70000,
            "ssl": {"mode": "verify-ca"},
            "maxOpenConns": -1,
            "serverName": "db",
        }
    )
    assert any(p.startswith("storage.config.port:") for p in problems)
    assert any(p.startswith("storage.config.ssl: mode verify-ca needs caFile") for p in problems)
    assert any(p.startswith("storage.config.maxOpenConns:") for p in problems)
    assert any(p.startswith("storage.config.serverName: unknown key") for p in problems)
    assert any(
        p.startswith("storage.config.ssl.mode:")
        for p in _problems({"database": "d", "user": "u", "ssl": {"mode": "on"}})
    )


class _Clock:
    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now
