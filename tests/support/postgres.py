"""A real, throwaway PostgreSQL 15 cluster for tests (Debian's ``postgresql`` package).

One cluster per test session (per xdist worker): ``initdb`` into a private temp dir, the server
listening on 127.0.0.1 on a free port with its unix socket in that dir, password (SCRAM) auth
for TCP so tests exercise a real login, TLS available (a throwaway CA in ``ca_file``) but not
required, and durability switched off (fsync) because test data is disposable. A test gets either
a session database emptied for it (``postgres_database``: fastest) or a database of its own
cloned from an already migrated template (``fresh_postgres_database``), and the server is
stopped by its PID.

PostgreSQL refuses to run as root, so as root every server binary runs as the ``postgres`` user
that the Debian package creates (``runuser``); as any other user it runs as that user.

Use from a conftest::

    from tests.support.postgres import (  # noqa: F401
        _reusable_database, fresh_postgres_database, postgres_cluster, postgres_database,
    )
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import itertools
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SUPERUSER = "portcullis_admin"
TEMPLATE = "portcullis_template"
_counter = itertools.count()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


def _write_tls_material(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost (EC P-256, one day)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "portcullis test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (directory / n for n in ("ca.crt", "server.crt", "server.key"))
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


@dataclass
class PostgresCluster:
    """A running server; ``config(db)`` gives a Dex-format ``storage.config`` for a database."""

    root: Path
    port: int
    password: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    ca_file: Path  # the CA that signed the server's certificate (TLS is on, but optional)
    databases: list[str] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)  # how the postmaster was started

    def halt(self) -> None:
        """Stop the postmaster (fast shutdown) but keep the data: ``resume`` starts it again
        on the same port, as an operator restarting the database would."""
        pid_file = self.root / "data" / "postmaster.pid"
        if self.proc.poll() is None and pid_file.exists():
            postmaster = int(pid_file.read_text().split()[0])
            with contextlib.suppress(ProcessLookupError):
                os.kill(postmaster, signal.SIGINT)
        self.proc.wait(timeout=30)

    def resume(self, timeout: float = 30.0) -> None:
        assert self.argv, "this cluster was not started by start_cluster"
        assert self.proc.poll() is not None, "still running"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.root
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                with self.admin():
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres not ready after {timeout}s") from None
                time.sleep(0.05)

    def config(self, database: str, **overrides: Any) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "database": database,
            "user": SUPERUSER,
            "password": self.password,
            "ssl": {"mode": "disable"},
            "connectionTimeout": 5,
        }
        settings.update(overrides)
        return settings

    def admin(self, database: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=SUPERUSER,
            password=self.password,
            dbname=database,
            autocommit=True,
            connect_timeout=5,
        )

    def create_database(self, template: str | None = TEMPLATE) -> str:
        name = f"test_{os.getpid()}_{next(_counter)}"
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        with self.admin() as conn:
            conn.execute(statement)
        self.databases.append(name)
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        """Fast shutdown of the postmaster by its PID, SIGKILL if it does not go."""
        pid_file = self.root / "data" / "postmaster.pid"
        if self.proc.poll() is None and pid_file.exists():
            postmaster = int(pid_file.read_text().split()[0])
            with contextlib.suppress(ProcessLookupError):
                os.kill(postmaster, signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(*, fsync: bool = False, max_connections: int = 100) -> PostgresCluster:
    """initdb + start; raises with the server log if it does not come up in 30 s."""
    for tool in ("initdb", "postgres"):
        if not (PG_BIN / tool).exists():
            raise RuntimeError(f"{PG_BIN / tool} missing: `make test` installs Debian postgresql")
    root = Path(tempfile.mkdtemp(prefix="portcullis-pg-"))
    if os.geteuid() == 0:
        server_user = pwd.getpwnam("postgres")
        os.chown(root, server_user.pw_uid, server_user.pw_gid)
    password = secrets.token_urlsafe(18)
    pwfile = root / "pw"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        os.chown(pwfile, server_user.pw_uid, server_user.pw_gid)
    data = root / "data"
    initdb = subprocess.run(
        _as_server_user(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ]
        ),
        capture_output=True,
        text=True,
        cwd=root,  # the server user may not be allowed into the caller's directory
        check=False,
    )
    pwfile.unlink()
    if initdb.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed ({initdb.returncode}):\n{initdb.stderr}")
    ca_file, cert_file, key_file = _write_tls_material(root)
    if os.geteuid() == 0:
        os.chown(key_file, server_user.pw_uid, server_user.pw_gid)
    port = _free_port()
    log_path = root / "server.log"
    argv = _as_server_user(
        [
            str(PG_BIN / "postgres"),
            "-D",
            str(data),
            "-k",
            str(root),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-c",
            f"fsync={'on' if fsync else 'off'}",
            "-c",
            f"synchronous_commit={'on' if fsync else 'off'}",
            "-c",
            f"full_page_writes={'on' if fsync else 'off'}",
            "-c",
            f"max_connections={max_connections}",
            "-c",
            "ssl=on",
            "-c",
            f"ssl_cert_file={cert_file}",
            "-c",
            f"ssl_key_file={key_file}",
        ]
    )
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=root)
    cluster = PostgresCluster(root, port, password, proc, log_path, ca_file, argv=argv)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            logs = cluster.logs()
            shutil.rmtree(root, ignore_errors=True)
            raise RuntimeError(f"postgres exited with {proc.returncode}:\n{logs}")
        try:
            with cluster.admin():
                break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                logs = cluster.logs()
                cluster.stop()
                raise RuntimeError(f"postgres not ready after 30 s:\n{logs}") from None
            time.sleep(0.05)
    return cluster


def prepare_template(cluster: PostgresCluster) -> None:
    """A migrated database to clone for every test (the migration itself is tested apart)."""
    from portcullis.config.model import PostgresConfig
    from portcullis.storage.postgres import PostgresStorage

    with cluster.admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
    PostgresStorage(PostgresConfig.model_validate(cluster.config(TEMPLATE))).close()


class _Shared:
    """The one cluster of this test process. Each conftest that imports the fixtures gets its
    own copy of the session fixture (pytest scopes fixtures by directory), so the copies share
    this instance and the last one to finish stops the server."""

    cluster: PostgresCluster | None = None
    users = 0


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    if _Shared.cluster is None:
        cluster = start_cluster()
        try:
            prepare_template(cluster)
        except BaseException:
            cluster.stop()
            raise
        _Shared.cluster = cluster
    _Shared.users += 1
    try:
        yield _Shared.cluster
    finally:
        _Shared.users -= 1
        if _Shared.users == 0:
            _Shared.cluster.stop()
            _Shared.cluster = None


class ReusableDatabase:
    """One migrated database per session, emptied before each test: deleting a few rows takes
    a millisecond where cloning a database takes ~0.2 s, and the conformance suite opens one
    per test. A test that changed the migration history gets a new clone instead."""

    def __init__(self, cluster: PostgresCluster) -> None:
        from portcullis.storage import sql_schema

        self.cluster = cluster
        self.name = cluster.create_database()
        self._conn = cluster.admin(self.name)
        self._history = self._migrations()
        data_tables = [
            table.name
            for table in reversed(sql_schema.metadata.sorted_tables)
            if table.name not in (sql_schema.schema_migrations.name, sql_schema.signing_keys.name)
        ]
        # The keys row back to what the first migration creates (no key, never rotated).
        self._reset: list[sql.SQL | sql.Composed] = [
            sql.SQL("DELETE FROM {}").format(sql.Identifier(t)) for t in data_tables
        ]
        self._reset.append(
            sql.SQL(
                "UPDATE signing_keys SET signing_key = NULL, verification_keys = '[]', "
                "next_rotation = 0"
            )
        )

    def _migrations(self) -> list[tuple[Any, ...]]:
        return self._conn.execute(
            "SELECT version, name FROM schema_migrations ORDER BY version"
        ).fetchall()

    def emptied(self) -> str:
        try:
            pristine = self._migrations() == self._history
        except psycopg.Error:
            pristine = False
        if not pristine:
            self.close()
            self.name = self.cluster.create_database()
            self._conn = self.cluster.admin(self.name)
            return self.name
        with self._conn.transaction():
            for statement in self._reset:
                self._conn.execute(statement)
        return self.name

    def close(self) -> None:
        self._conn.close()
        self.cluster.drop_database(self.name)


@pytest.fixture(scope="session")
def _reusable_database(postgres_cluster: PostgresCluster) -> Iterator[ReusableDatabase]:
    database = ReusableDatabase(postgres_cluster)
    try:
        yield database
    finally:
        database.close()


@pytest.fixture
def postgres_database(_reusable_database: ReusableDatabase) -> dict[str, Any]:
    """A migrated, empty database for one test, as a Dex-format ``storage.config``. Tests that
    change the schema or drop the database use ``fresh_postgres_database``."""
    return _reusable_database.cluster.config(_reusable_database.emptied())


@pytest.fixture
def fresh_postgres_database(postgres_cluster: PostgresCluster) -> Iterator[dict[str, Any]]:
    """A newly cloned, migrated database of the test's own, dropped afterwards."""
    name = postgres_cluster.create_database()
    try:
        yield postgres_cluster.config(name)
    finally:
        postgres_cluster.drop_database(name)
