"""PostgreSQL storage over verified TLS through the image, in FIPS mode.

The image ships one OpenSSL for its C libraries: psycopg-binary's bundled libssl/libcrypto are
symlinks to the rootfs's Debian libssl3 (images/portcullis/portcullis.spec, ``_system_openssl``).
This runs the image against a real PostgreSQL with ``ssl.mode: verify-full`` and checks that
libpq got there on the Debian OpenSSL, with the FIPS provider the stdlib's OpenSSL loaded, and
that the server sees an AES-GCM TLS session from it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.support.image import StartFn, demo_config, free_port, openssl_files, wait_ready
from tests.support.postgres import start_cluster

pytestmark = pytest.mark.integration

CA_IN_CONTAINER = "/etc/portcullis/postgres-ca.crt"
FIPS_DIR = "/opt/portcullis/_internal/portcullis_fips"


def test_the_image_holds_one_openssl(rootfs: Path) -> None:
    files, links = openssl_files(rootfs)
    system = "usr/lib/x86_64-linux-gnu"
    assert sorted(files) == [f"{system}/libcrypto.so.3", f"{system}/libssl.so.3"]
    bundled = {k: v for k, v in links.items() if k.startswith("opt/portcullis/")}
    assert any("psycopg_binary.libs/libcrypto-" in k for k in bundled), links
    assert set(bundled.values()) == {f"{system}/libcrypto.so.3", f"{system}/libssl.so.3"}


_SQLITE_STORAGE = """\
storage:
  type: sqlite3
  config:
    file: /var/lib/portcullis/portcullis.db
"""


def test_postgres_storage_over_verified_tls_in_fips_mode(
    run_container: StartFn, admin_password_hash: str, tmp_path: Path
) -> None:
    cluster = start_cluster()
    try:
        ca = tmp_path / "postgres-ca.crt"
        shutil.copyfile(cluster.ca_file, ca)
        ca.chmod(0o644)
        storage = cluster.config("postgres", ssl={"mode": "verify-full", "caFile": CA_IN_CONTAINER})
        web, telemetry = free_port(), free_port()
        text = demo_config(web, telemetry, admin_password_hash)
        assert _SQLITE_STORAGE in text
        text = text.replace(
            _SQLITE_STORAGE, f"storage:\n  type: postgres\n  config: {json.dumps(storage)}\n"
        )
        config = tmp_path / "config.yaml"
        config.write_text(text)
        config.chmod(0o644)
        container = run_container(config_file=config, extra_binds={CA_IN_CONTAINER: ca})
        wait_ready(container, f"http://127.0.0.1:{telemetry}/healthz/ready")

        maps = Path(f"/proc/{container.pid()}/maps").read_text()
        assert "/opt/portcullis/_internal/psycopg_binary.libs/libpq-" in maps  # libpq is in use
        # Its OpenSSL is the rootfs's, the one the stdlib uses; no second copy is mapped.
        assert "/usr/lib/x86_64-linux-gnu/libssl.so.3" in maps
        assert "/usr/lib/x86_64-linux-gnu/libcrypto.so.3" in maps
        assert "psycopg_binary.libs/libcrypto-" not in maps
        assert "psycopg_binary.libs/libssl-" not in maps
        # One provider copy per OpenSSL library in the process: the stdlib's (now also
        # libpq's) and cryptography's.
        assert f"{FIPS_DIR}/modules/stdlib/fips.so" in maps
        assert f"{FIPS_DIR}/modules/cryptography/fips.so" in maps

        with cluster.admin() as conn:
            sessions = conn.execute(
                "SELECT s.ssl, s.version, s.cipher FROM pg_stat_ssl s "
                "JOIN pg_stat_activity a USING (pid) "
                "WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()"
            ).fetchall()
        assert sessions, "the issuer holds no connection to PostgreSQL"
        for ssl_on, version, cipher in sessions:
            assert ssl_on, sessions
            assert version in ("TLSv1.2", "TLSv1.3"), sessions
            assert "GCM" in cipher, sessions
        assert container.stop() == 0
    finally:
        cluster.stop()
