"""``portcullis import-dex`` logic against Dex databases at every level Dex 2.30-2.45 leaves,
on sqlite3 and the real PostgreSQL, and against a Kubernetes dump of Dex's resources."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from portcullis.config.load import Config
from portcullis.dexmigrate.plan import apply_plan, build_plan
from portcullis.dexmigrate.source import DexSourceError, DexState, read_source
from portcullis.issuer import load_config
from portcullis.oidc.clients import hash_client_secret
from portcullis.oidc.refresh import digest
from portcullis.storage.base import Storage
from portcullis.storage.factory import open_storage

from tests.support.dex_schema import LEVELS, DexData, build_sqlite, kubernetes_dump, populate
from tests.support.postgres import SUPERUSER, PostgresCluster


def _config(tmp_path: Path, storage: dict[str, Any]) -> Config:
    path = tmp_path / "portcullis.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "issuer": "http://127.0.0.1:5556/dex",
                "storage": storage,
                "web": {"http": "127.0.0.1:5556"},
                "enablePasswordDB": True,
            }
        )
    )
    return load_config(path)


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Config, Storage]]:
    if request.param == "sqlite":
        settings = {"type": "sqlite3", "config": {"file": str(tmp_path / "target.db")}}
    else:
        settings = {"type": "postgres", "config": request.getfixturevalue("postgres_database")}
    config = _config(tmp_path, settings)
    storage = open_storage(config)
    try:
        yield config, storage
    finally:
        storage.close()


def _dex_sqlite(tmp_path: Path, level: int, data: DexData) -> str:
    path = tmp_path / f"dex-{level}.db"
    build_sqlite(str(path), level, data)
    return f"sqlite3:{path}"


def _dex_postgres(cluster: PostgresCluster, level: int, data: DexData) -> str:
    name = cluster.create_database(template=None)
    with cluster.admin(name) as conn, conn.cursor() as cursor:
        populate(cursor, level, "postgres", data)
    return (
        f"host=127.0.0.1 port={cluster.port} dbname={name} user={SUPERUSER} "
        f"password={cluster.password} sslmode=disable"
    )


def _check_state(state: DexState, data: DexData, level: int) -> None:
    assert {c.id for c in state.clients} == {"dex-app", "dex-cli"}
    (password,) = state.passwords
    assert password.hash == data.hash
    assert password.user_id == data.user_id
    # Columns a level lacks take Dex's defaults.
    assert password.groups == (("platform",) if level >= 12 else ())
    assert password.name == ("Jane Doe" if level >= 13 else "")
    (token,) = state.refresh_tokens
    assert (token.id, token.token) == (data.refresh_id, data.refresh_token)
    assert token.claims.preferred_username == "jane.doe"
    assert abs(token.created_at - (data.now - 3600)) < 1
    assert [s.refresh_ids for s in state.offline_sessions] == [(data.refresh_id,)]
    assert [k.jwk["kid"] for k in state.keys] == ["dex-active", "dex-retired"]
    assert all("d" not in k.jwk for k in state.keys), "a private key member was read"


@pytest.mark.parametrize("release", sorted(LEVELS))
def test_import_from_dex_sqlite_at_each_level(
    release: str, tmp_path: Path, target: tuple[Config, Storage]
) -> None:
    config, storage = target
    data = DexData(now=time.time())
    level = LEVELS[release]
    state = read_source(_dex_sqlite(tmp_path, level, data))
    _check_state(state, data, level)
    _import_and_check(state, data, config, storage)


@pytest.mark.parametrize("release", ["v2.31", "v2.44", "v2.45"])
def test_import_from_dex_postgres_at_each_level(
    release: str, postgres_cluster: PostgresCluster, target: tuple[Config, Storage]
) -> None:
    config, storage = target
    data = DexData(now=time.time())
    level = LEVELS[release]
    state = read_source("postgres:" + _dex_postgres(postgres_cluster, level, data))
    _check_state(state, data, level)
    _import_and_check(state, data, config, storage)


def test_import_from_kubernetes_dump(tmp_path: Path, target: tuple[Config, Storage]) -> None:
    config, storage = target
    data = DexData(now=time.time())
    dump = tmp_path / "dex.yaml"
    dump.write_text(yaml.safe_dump(kubernetes_dump(data)))
    state = read_source(f"k8s:{dump}")
    assert {c.id for c in state.clients} == {"dex-app"}
    assert state.passwords[0].hash == data.hash
    assert [k.jwk["kid"] for k in state.keys] == ["dex-active", "dex-retired"]
    plan = build_plan(state, config, storage, data.now)
    assert apply_plan(plan, storage).refresh_tokens == 1
    family = storage.get_refresh_token(data.refresh_id)
    assert family.token_hash == digest(data.refresh_token)


def _import_and_check(state: DexState, data: DexData, config: Config, storage: Storage) -> None:
    plan = build_plan(state, config, storage, data.now)
    summary = "\n".join(plan.summary())
    assert "clients: 2 (0 already present)" in summary
    assert "client 'dex-cli' is public: its Dex secret is not used" in summary
    assert "connector 'corp-ldap' (ldap, 'Corporate LDAP')" in summary
    assert data.client_secret not in summary
    assert data.refresh_token not in summary
    # Dry run: nothing written yet.
    assert storage.list_clients() == []

    result = apply_plan(plan, storage)
    assert (result.clients, result.passwords, result.refresh_tokens) == (2, 1, 1)
    assert result.verification_keys == 2
    app = storage.get_client("dex-app")
    assert app.secret_hash == hash_client_secret(data.client_secret)
    assert storage.get_client("dex-cli").secret_hash == ""
    assert storage.get_password(data.email).hash == data.hash
    family = storage.get_refresh_token(data.refresh_id)
    assert family.token_hash == digest(data.refresh_token)
    assert (family.identity.user_id, family.connector_id) == (data.user_id, "local")
    assert family.scopes == ("openid", "email", "groups", "offline_access")
    keys = {k.jwk["kid"]: k for k in storage.get_keys().verification_keys}
    assert set(keys) == {"dex-active", "dex-retired"}
    assert "d" not in keys["dex-active"].jwk
    # The active key outlives Dex's next rotation by the longest ID-token lifetime (24h here).
    assert keys["dex-active"].expiry == pytest.approx(data.now + 3 * 3600 + 24 * 3600, abs=1)
    assert keys["dex-retired"].expiry == pytest.approx(data.now + 7200, abs=1)

    # Idempotent: a second run plans the same records, all already present, and writes none.
    again = build_plan(state, config, storage, data.now)
    assert "clients: 2 (2 already present)" in "\n".join(again.summary())
    assert apply_plan(again, storage).clients == 0
    assert len(storage.get_keys().verification_keys) == 2


def test_unknown_dex_level_is_refused_with_the_level_found(tmp_path: Path) -> None:
    data = DexData(now=time.time())
    source = _dex_sqlite(tmp_path, 13, data)
    path = source.partition(":")[2]
    import sqlite3

    with sqlite3.connect(path) as conn:
        for number in range(14, 24):  # what a newer Dex (sessions, MFA...) leaves
            conn.execute("insert into migrations (num, at) values (?, '2026-01-01')", (number,))
    with pytest.raises(DexSourceError, match=r"migration level 23 \(23 migrations recorded\)"):
        read_source(source)


def test_not_a_dex_database_is_refused(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "other.db"
    sqlite3.connect(path).close()
    with pytest.raises(DexSourceError, match="no Dex migrations table"):
        read_source(f"sqlite3:{path}")


def test_postgres_connection_error_hides_the_dsn(postgres_cluster: PostgresCluster) -> None:
    dsn = f"host=127.0.0.1 port={postgres_cluster.port} user={SUPERUSER} password=wrong-s3cret"
    with pytest.raises(DexSourceError) as error:
        read_source("postgres:" + dsn)
    assert "wrong-s3cret" not in str(error.value)


def test_expired_refresh_token_is_skipped(tmp_path: Path) -> None:
    data = DexData(now=time.time())
    config = _config(tmp_path, {"type": "sqlite3", "config": {"file": str(tmp_path / "t.db")}})
    raw = config.raw.model_copy(
        update={
            "expiry": config.raw.expiry.model_copy(
                update={
                    "refresh_tokens": config.raw.expiry.refresh_tokens.model_copy(
                        update={"valid_if_not_used_for": 60.0}
                    )
                }
            )
        }
    )
    config = Config(
        raw,
        config.source,
        config.clients,
        config.passwords,
        config.connectors,
        config.storage_config,
    )
    storage = open_storage(config)
    try:
        state = read_source(_dex_sqlite(tmp_path, 13, data))
        plan = build_plan(state, config, storage, data.now)
        assert plan.batch.refresh_tokens == ()
        assert any("expired" in line for line in plan.skipped)
    finally:
        storage.close()


def test_missing_sqlite_file_is_an_error_not_a_new_database(tmp_path: Path) -> None:
    missing = tmp_path / "no such dir" / "dex.db"
    with pytest.raises(DexSourceError, match="cannot open"):
        read_source(f"sqlite3:{missing}")
    assert not missing.exists()


def test_dex_database_is_not_modified_by_reading(tmp_path: Path) -> None:
    data = DexData(now=time.time())
    source = _dex_sqlite(tmp_path, 11, data)
    path = Path(source.partition(":")[2])
    before = path.read_bytes()
    read_source(source)
    assert path.read_bytes() == before


@pytest.mark.parametrize("spec", ["mysql:dex", "sqlite3:", "nothing"])
def test_unknown_source_forms_are_refused(spec: str) -> None:
    with pytest.raises(DexSourceError, match="--from"):
        read_source(spec)


def test_a_session_dex_rotated_after_the_import_is_a_conflict(
    tmp_path: Path, target: tuple[Config, Storage]
) -> None:
    import sqlite3

    config, storage = target
    data = DexData(now=time.time())
    source = _dex_sqlite(tmp_path, 13, data)
    apply_plan(build_plan(read_source(source), config, storage, data.now), storage)
    with sqlite3.connect(source.partition(":")[2]) as conn:
        conn.execute("update refresh_token set token = 'rotated-by-dex-later'")
    plan = build_plan(read_source(source), config, storage, data.now)
    assert any(
        f"refresh token {data.refresh_id!r} was imported before and Dex has rotated it" in c
        for c in plan.conflicts
    )
