"""Moving from Dex without logging anyone out, end to end: a Dex database (sqlite3 or the real
PostgreSQL, Dex 2.45's schema) is imported with the real `portcullis import-dex` CLI into the
storage of a real `portcullis serve`, which then accepts Dex's refresh token once (rotating it
into ours), publishes Dex's keys so Dex-signed ID tokens verify, logs the imported user in with
their Dex password and lists the imported clients over the gRPC admin API."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from joserfc import jwt
from joserfc.jwk import KeySet
from portcullis.admin import api_pb2
from portcullis.oidc.dex_refresh import encode_dex_refresh_token

from tests.support.admin import jwt_claims, stub
from tests.support.dex_schema import DexData, build_sqlite, populate
from tests.support.issuer import PORTCULLIS, Issuer, StartIssuer, free_port
from tests.support.postgres import (  # noqa: F401
    SUPERUSER,
    PostgresCluster,
    postgres_cluster,
)


def _dex_sub(user_id: str, connector_id: str) -> str:
    # Dex's sub: base64url(protobuf IDTokenSubject{user_id = 1, conn_id = 2}), the same
    # two-string shape as its refresh token.
    return encode_dex_refresh_token(user_id, connector_id)


def _sqlite_source(tmp_path: Path, data: DexData) -> str:
    path = tmp_path / "dex.db"
    build_sqlite(str(path), 13, data)
    return f"sqlite3:{path}"


def _postgres_source(cluster: PostgresCluster, data: DexData) -> str:
    name = cluster.create_database(template=None)
    with cluster.admin(name) as conn, conn.cursor() as cursor:
        populate(cursor, 13, "postgres", data)
    return (
        f"postgres:host=127.0.0.1 port={cluster.port} dbname={name} user={SUPERUSER} "
        f"password={cluster.password} sslmode=disable"
    )


def _import_dex(issuer: Issuer, source: str, *extra: str) -> subprocess.CompletedProcess[str]:
    issuer.config_path.write_text(yaml.safe_dump(issuer.config, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTCULLIS_")}
    return subprocess.run(
        [str(PORTCULLIS), "import-dex", "--from", source, *extra, str(issuer.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


@pytest.fixture(params=["sqlite3", "postgres"])
def dex_source(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[DexData], str]:
    if request.param == "sqlite3":
        return lambda data: _sqlite_source(tmp_path, data)
    cluster = request.getfixturevalue("postgres_cluster")
    return lambda data: _postgres_source(cluster, data)


def test_dex_sessions_keys_users_and_clients_carry_over(
    start_issuer: StartIssuer, dex_source: Callable[[DexData], str]
) -> None:
    issuer = start_issuer({"grpc": {"addr": f"127.0.0.1:{free_port()}"}}, run=False)
    data = DexData(now=time.time())
    source = dex_source(data)
    issuer.remember(data.client_secret, data.refresh_token, data.password)

    dry = _import_dex(issuer, source)
    assert dry.returncode == 0, dry.stderr
    assert "source: Dex v2.45" in dry.stdout
    assert "refresh tokens (offline sessions): 1 (0 already present)" in dry.stdout
    assert "dry run: nothing written" in dry.stdout
    applied = _import_dex(issuer, source, "--apply")
    assert applied.returncode == 0, applied.stderr
    assert "imported: 2 client(s), 1 password(s), 1 refresh token(s), 2 key(s)" in applied.stdout
    rerun = _import_dex(issuer, source, "--apply")
    assert "imported: 0 client(s), 0 password(s), 0 refresh token(s), 0 key(s)" in rerun.stdout
    for output in (dry, applied, rerun):
        assert data.client_secret not in output.stdout + output.stderr
        assert data.refresh_token not in output.stdout + output.stderr

    issuer.start()
    app = ("dex-app", data.client_secret)

    # 1. The refresh token Dex handed out works once and comes back in our format.
    dex_token = encode_dex_refresh_token(data.refresh_id, data.refresh_token)
    issuer.remember(dex_token)
    first = issuer.token({"grant_type": "refresh_token", "refresh_token": dex_token}, auth=app)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["refresh_token"].startswith("pcr1.")
    claims = jwt_claims(body["id_token"])
    assert claims["sub"] == _dex_sub(data.user_id, "local")  # sub unchanged
    assert claims["iss"] == issuer.issuer
    assert claims["email"] == data.email
    # One-shot: presenting Dex's token again is reuse, and ends the session.
    second = issuer.token({"grant_type": "refresh_token", "refresh_token": dex_token}, auth=app)
    assert second.status_code == 400
    assert second.json()["error"] == "invalid_grant"
    after = issuer.token(
        {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]}, auth=app
    )
    assert after.json()["error"] == "invalid_grant"

    # 2. ID tokens Dex signed (active and retired key) verify against our /keys.
    keyset = KeySet.import_key_set(issuer.jwks())
    for key, kid in ((data.signing_key, "dex-active"), (data.retired_key, "dex-retired")):
        dex_id_token = jwt.encode(
            {"alg": "RS256", "kid": kid},
            {
                "iss": issuer.issuer,
                "sub": _dex_sub(data.user_id, "local"),
                "aud": "dex-app",
                "exp": int(time.time()) + 600,
            },
            key,
        )
        decoded = jwt.decode(dex_id_token, keyset, algorithms=["RS256"])
        assert decoded.claims["sub"] == _dex_sub(data.user_id, "local")
    assert all("d" not in k for k in issuer.jwks()["keys"])

    # 3. The imported user logs in with the password they had at Dex.
    login = issuer.token(
        {
            "grant_type": "password",
            "username": data.email,
            "password": data.password,
            "scope": "openid email",
        },
        auth=issuer.app_auth(),
    )
    assert login.status_code == 200, login.text
    assert jwt_claims(login.json()["id_token"])["sub"] == _dex_sub(data.user_id, "local")

    # 4. The admin API lists the imported clients next to nothing else.
    clients = stub(issuer.config["grpc"]["addr"]).ListClients(api_pb2.ListClientReq())
    assert {c.id for c in clients.clients} >= {"dex-app", "dex-cli"}


def test_import_refuses_a_newer_dex_schema_with_the_level(
    start_issuer: StartIssuer, tmp_path: Path
) -> None:
    import sqlite3

    issuer = start_issuer(run=False)
    data = DexData(now=time.time())
    source = _sqlite_source(tmp_path, data)
    with sqlite3.connect(source.partition(":")[2]) as conn:
        conn.execute("insert into migrations (num, at) values (14, '2026-01-01')")
    result = _import_dex(issuer, source, "--apply")
    assert result.returncode == 2
    assert "Dex schema at migration level 14" in result.stderr
