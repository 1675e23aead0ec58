"""Dex-style configs (fixtures/dex/: Dex's own example shapes and the forms its docs and code
accept) pass `portcullis check-config`, and each compatibility rule behaves as Dex does or is
refused with a precise message."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from portcullis.cli import main
from portcullis.config.load import ConfigError
from portcullis.config.model import PostgresConfig
from portcullis.issuer import load_config, parse_config
from portcullis.oidc.settings import ProtocolSettings
from portcullis.storage.postgres import connect_arguments, describe_target

CORPUS = Path(__file__).parent / "fixtures" / "dex"
HASH = "$2a$10$2b2cU8CPhOTaGrs1HRQuAueS7JTT5ZHsHSzYiFPm1leZck7Mc8T4W"
BASE = """
issuer: http://127.0.0.1:5556/dex
storage: {type: memory}
web: {http: 127.0.0.1:5556}
enablePasswordDB: true
"""


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.yaml")), ids=lambda p: p.name)
def test_dex_style_config_passes_check_config(
    path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DEX_DB_PASSWORD", "from-the-environment")
    assert main(["check-config", str(path)]) == 0, capsys.readouterr().err
    assert ": valid (issuer " in capsys.readouterr().out


def test_issuer_is_kept_byte_for_byte() -> None:
    config = load_config(CORPUS / "issuer-trailing-slash.yaml")
    assert config.issuer_id == "https://auth.example.com/dex/"
    # Endpoints are built on the base without the slash, so none has "//".
    assert config.issuer == "https://auth.example.com/dex"
    assert config.issuer_path == "/dex"
    settings = ProtocolSettings.from_config(config, fips_mode=False)
    assert settings.token_issuer == "https://auth.example.com/dex/"


def test_device_callback_under_the_issuer_path_and_dex_constant() -> None:
    config = load_config(CORPUS / "config-dev.yaml")
    assert "/dex/device/callback" in config.clients[0].redirect_uris
    dist = load_config(CORPUS / "config-yaml-dist.yaml")
    assert dist.clients[0].redirect_uris == ("/device/callback",)


def test_device_callback_under_another_path_is_refused() -> None:
    text = BASE + "staticClients: [{id: a, public: true, redirectURIs: [/other/device/callback]}]"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environ={})
    assert (
        "staticClients[0].redirectURIs[0]: '/other/device/callback' is not this issuer's device "
        "callback (use '/device/callback' or '/dex/device/callback')"
    ) in caught.value.problems


def test_other_relative_redirect_uris_are_refused() -> None:
    text = BASE + "staticClients: [{id: a, public: true, redirectURIs: [/callback]}]"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environ={})
    assert "staticClients[0].redirectURIs[0]: a relative redirect URI is only accepted" in str(
        caught.value
    )


def test_base64_bcrypt_hash_is_decoded() -> None:
    config = load_config(CORPUS / "base64-password-hash.yaml")
    assert config.passwords[0].hash == HASH


def test_base64_of_something_else_is_still_refused() -> None:
    text = BASE + (
        "staticPasswords: [{email: a@example.com, username: a, userID: a, hash: aGVsbG8gd29ybGQ=}]"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environ={})
    assert any(p.startswith("staticPasswords[0].hash: ") for p in caught.value.problems)


def test_public_client_secret_is_accepted_unused_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="portcullis.config"):
        config = load_config(CORPUS / "public-client-with-secret.yaml")
    assert config.clients[0].public
    assert config.clients[0].secret == ""
    assert "staticClients[0] (kubectl): public client has a secret; it is unused" in caplog.text
    assert "left-over-secret" not in caplog.text


def test_postgres_database_and_user_default_as_in_dex() -> None:
    settings = PostgresConfig.model_validate({"host": "db", "ssl": {"mode": "disable"}})
    args = connect_arguments(settings)
    assert "dbname" not in args
    assert "user" not in args
    assert "(libpq default)" in describe_target(settings)


def test_vault_signer_is_refused_with_the_documented_message() -> None:
    text = BASE + "signer: {type: vault, config: {addr: 'https://vault:8200', keyName: dex}}"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environ={})
    assert caught.value.problems == [
        "signer: signer type 'vault' is not available in this Portcullis version"
    ]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "staticClients: [{id: a, secret: a-secret-0123456789, redirectURIs: ['https://a/cb'], "
            "backchannelLogoutURI: 'https://a/bc'}]",
            "staticClients[0].backchannelLogoutURI: back-channel logout (Dex after 2.45)",
        ),
        (
            "sessions: {absoluteLifetime: 24h}",
            "sessions: Dex's browser sessions (after 2.45, behind DEX_SESSIONS_ENABLED)",
        ),
        (
            "connectors: [{type: mockCallback, id: m, name: M, grantTypes: [refresh_token]}]",
            "connectors[0].grantTypes: restricting a connector's grants (Dex after 2.45) is not "
            "available in this Portcullis version; it would also allow authorization_code",
        ),
    ],
)
def test_keys_added_after_dex_245_are_refused_precisely(extra: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + extra + "\n", environ={})
    assert any(p.startswith(expected) for p in caught.value.problems), caught.value.problems


def test_connector_grant_types_listing_every_grant_is_served() -> None:
    config = load_config(CORPUS / "connector-grant-types.yaml")
    assert config.raw.connectors[0].grant_types == ["authorization_code", "refresh_token"]


def test_gomplate_template_gets_a_hint() -> None:
    text = (
        'issuer: {{ getenv "DEX_ISSUER" "http://127.0.0.1:5556/dex" }}\nstorage: {type: memory}\n'
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environ={})
    assert "this looks like a gomplate template (Dex's config.docker.yaml)" in str(caught.value)


def test_getenv_rewritten_as_env_expansion_loads() -> None:
    # The rewrite docs/migrating-from-dex.md gives for config.docker.yaml's
    # `file: {{ getenv "DEX_STORAGE_SQLITE3_CONFIG_FILE" "/var/dex/dex.db" }}`.
    text = BASE.replace(
        "storage: {type: memory}",
        "storage: {type: sqlite3, config: {file: $DEX_STORAGE_SQLITE3_CONFIG_FILE}}",
    )
    config = parse_config(text, environ={"DEX_STORAGE_SQLITE3_CONFIG_FILE": "/data/dex.db"})
    assert config.storage_config is not None
    assert config.storage_config.model_dump()["file"] == "/data/dex.db"
