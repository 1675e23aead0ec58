"""The assembly's seams: the config loader reads connector types from its caller, storage names
have one home, connectors open through ConnectorType/ConnectorEnv, the kubeconfig page registers
its own callback."""

from __future__ import annotations

from pathlib import Path

import bcrypt
import pytest
from portcullis.clock import FrozenClock
from portcullis.config import load as config_load
from portcullis.config.load import ConfigError
from portcullis.config.model import DEX_ONLY_STORAGE_TYPES, STORAGE_TYPES
from portcullis.connectors.base import ConnectorEnv, PasswordConnector, Scopes
from portcullis.connectors.registry import CONNECTOR_TYPES
from portcullis.issuer import build_connectors, connector_models, create_issuer, parse_config
from portcullis.kube.page import KUBECONFIG_CALLBACK_PATH, register_page_client
from portcullis.storage.factory import open_storage
from portcullis.storage.memory import MemoryStorage
from portcullis.storage.sqlite import SQLiteStorage
from pydantic import BaseModel, ConfigDict

HASH = bcrypt.hashpw(b"password", bcrypt.gensalt(rounds=10)).decode()

BASE = """
issuer: https://issuer.example.com/dex
storage: {type: memory}
web: {http: 127.0.0.1:5556}
enablePasswordDB: true
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class ExampleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    server: str


def test_the_loader_validates_connectors_with_the_models_it_is_handed() -> None:
    text = BASE + "connectors: [{type: example, id: ex, name: Ex, config: {server: ldap.test}}]"
    config = config_load.parse_config(text, environ={}, connector_models={"example": ExampleConfig})
    (spec,) = config.connectors
    assert spec.config == ExampleConfig(server="ldap.test")

    with pytest.raises(ConfigError) as caught:
        config_load.parse_config(text, environ={}, connector_models={"other": ExampleConfig})
    assert caught.value.problems == [
        "connectors[0].type: connector type 'example' is not available in this Portcullis "
        "version (available: other)"
    ]


def test_the_assembly_hands_the_loader_every_registered_connector_type() -> None:
    assert connector_models() == {n: t.config_model for n, t in CONNECTOR_TYPES.items()}
    text = BASE + "connectors: [{type: mockPassword, id: m, name: M, config: {username: u}}]"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environ={})
    assert caught.value.problems == ["connectors[0].config.password: required"]


@pytest.mark.parametrize("name", sorted(STORAGE_TYPES))
def test_every_storage_name_config_knows_opens_a_backend(name: str, tmp_path: Path) -> None:
    settings = {
        "memory": "{type: memory}",
        "sqlite3": f"{{type: sqlite3, config: {{file: {tmp_path / 'p.db'}}}}}",
        "postgres": "{type: postgres, config: {database: d, user: u, connectionTimeout: 1}}",
    }[name]
    config = parse_config(BASE.replace("{type: memory}", settings), environ={})
    expected = {"memory": MemoryStorage, "sqlite3": SQLiteStorage}
    if name in expected:
        storage = open_storage(config)
        try:
            assert isinstance(storage, expected[name])
        finally:
            storage.close()
    else:  # the PostgreSQL backend is opened against a real server in tests/unit/storage
        assert type(config.storage_config).__name__ == "PostgresConfig"


@pytest.mark.parametrize("name", DEX_ONLY_STORAGE_TYPES)
def test_dex_only_storage_names_are_refused_by_name(name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE.replace("{type: memory}", f"{{type: {name}}}"), environ={})
    assert caught.value.problems == [
        f"storage: storage type {name!r} is not supported by this Portcullis version "
        "(supported: memory, sqlite3, postgres)"
    ]


def test_unknown_storage_names_list_every_name() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE.replace("{type: memory}", "{type: cassandra}"), environ={})
    assert caught.value.problems == [
        "storage.type: must be 'memory', 'sqlite3', 'postgres', 'mysql', 'etcd' or 'kubernetes'"
    ]


@pytest.mark.anyio
async def test_connectors_open_with_the_environment_the_assembly_gives() -> None:
    text = (
        BASE
        + f'staticPasswords: [{{email: a@example.com, hash: "{HASH}", username: a, userID: "1"}}]\n'
        + "connectors: [{type: mockPassword, id: m, name: Mock, config: {username: u, "
        + "password: p}}]\n"
    )
    config = parse_config(text, environ={})
    env = ConnectorEnv(
        storage=MemoryStorage(), clock=FrozenClock(), issuer=config.issuer, fips_mode=False
    )
    connectors = build_connectors(config, env)
    assert sorted(connectors) == ["local", "m"]
    local = connectors["local"]
    assert isinstance(local, PasswordConnector)
    assert (local.id, local.name, local.type) == ("local", "Email", "local")
    identity = await local.login(Scopes(), "a@example.com", "password")
    assert identity is not None
    assert identity.user_id == "1"
    assert await local.login(Scopes(), "a@example.com", "wrong") is None
    assert connectors["m"].dev_only


def test_the_kubeconfig_page_registers_its_callback_on_its_client_once() -> None:
    text = BASE + (
        "staticClients: [{id: kubernetes, name: K, public: true}, {id: other, public: true}]\n"
        "kubernetes:\n"
        "  kubeconfigPage:\n"
        "    enabled: true\n"
        "    clusters: [{name: a, server: 'https://a:6443'}]\n"
    )
    config = parse_config(text, environ={})
    assert all(c.redirect_uris == () for c in config.clients)  # the loader adds nothing
    callback = "https://issuer.example.com/dex" + KUBECONFIG_CALLBACK_PATH
    registered = register_page_client(config)
    assert {c.id: c.redirect_uris for c in registered.clients} == {
        "kubernetes": (callback,),
        "other": (),
    }
    assert register_page_client(registered) == registered

    issuer = create_issuer(config, storage=MemoryStorage(), clock=FrozenClock())
    try:
        client = issuer.provider.clients.get("kubernetes")
        assert client is not None
        assert client.redirect_uris == (callback,)
    finally:
        issuer.close()


def test_a_development_connector_is_warned_about_once_per_check_not_per_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``serve`` checks the connectors once before it forks; each worker then opens them again
    in ``create_issuer``. The warning belongs to the check, or a 2-worker server says it three
    times and operators learn to ignore it."""
    from portcullis.issuer import check_connectors

    text = BASE + "connectors: [{type: mockCallback, id: mock, name: Mock}]"
    config = parse_config(text, environ={})
    with caplog.at_level("WARNING", logger="portcullis"):
        check_connectors(config, fips_mode=False)
        create_issuer(config, storage=MemoryStorage(), clock=FrozenClock(1_700_000_000))
    warnings = [r.getMessage() for r in caplog.records if "development only" in r.getMessage()]
    assert warnings == [
        "connector 'mock' (mockCallback) is for development only: anyone can log in through it"
    ]
