"""A config written for Dex 2.45 loads unchanged, and what Portcullis does not implement is a
clear error at its YAML path, never silence."""

from __future__ import annotations

from pathlib import Path

import pytest
from portcullis.config.load import ConfigError
from portcullis.issuer import load_config, parse_config

FIXTURE = Path(__file__).parent / "fixtures" / "dex-2.45.yaml"
OPS_HASH = "$2b$10$abcdefghijklmnopqrstuu4rGCS0n6hOcxB7Kq8hhYJ6w7pZb6aSa"
ENV = {
    "DEX_DATA_DIR": "/var/lib/dex",
    "DEX_CLIENT_ID": "prod-app",
    "DEX_CLIENT_SECRET": "prod-secret",
    "DEX_OPS_HASH": OPS_HASH,
}


def test_dex_245_config_loads_unchanged() -> None:
    config = load_config(FIXTURE, environ=ENV)
    assert config.issuer == "https://dex.example.com/dex"
    assert config.issuer_path == "/dex"
    assert config.storage_config is not None
    assert config.storage_config.model_dump()["file"] == "/var/lib/dex/dex.db"
    clients = {c.id: c for c in config.clients}
    assert clients["prod-app"].secret == "prod-secret"
    assert clients["prod-app"].trusted_peers == ("example-app",)
    assert clients["kubectl"].public
    ops = next(p for p in config.passwords if p.email == "ops@example.com")
    assert ops.hash == OPS_HASH
    assert ops.groups == ("ops", "admins")
    assert not ops.email_verified
    raw = config.raw
    assert raw.expiry.refresh_tokens.valid_if_not_used_for == 2160 * 3600
    assert raw.web.headers.x_frame_options == "DENY"
    assert raw.logger.format == "json"
    assert raw.frontend.extra["tagline"].startswith("Log in")


def test_missing_env_for_secret_env_names_the_path() -> None:
    env = {k: v for k, v in ENV.items() if k != "DEX_CLIENT_SECRET"}
    with pytest.raises(ConfigError) as caught:
        load_config(FIXTURE, environ=env)
    assert "staticClients[1].secretEnv: environment variable DEX_CLIENT_SECRET is not set" in str(
        caught.value
    )


BASE = """
issuer: http://127.0.0.1:5556/dex
storage: {type: memory}
web: {http: 127.0.0.1:5556}
enablePasswordDB: true
"""


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("grpc: {addr: 0.0.0.0:5557}", "grpc: refusing to serve the admin API on 0.0.0.0:5557"),
        ("signer: {type: vault}", "signer: signer type 'vault' is not available"),
        ("sessions: {cookieName: x}", "sessions: Dex's browser sessions (after 2.45"),
        (
            "connectors: [{type: myspace, id: k, name: K}]",
            "connectors[0].type: connector type 'myspace'",
        ),
        ("connectors: [{type: ldap, id: l, name: L}]", "connectors[0].config.host: required"),
        (
            "oauth2: {grantTypes: [urn:ietf:params:oauth:grant-type:jwt-bearer]}",
            "oauth2.grantTypes",
        ),
        ("telemetry: {enableProfiling: true}", "telemetry.enableProfiling"),
        ("expiry: {idTokens: 10}", "expiry.idTokens: not a duration: 10 (add a unit"),
        ("web: {http: nonsense}", "web.http: not a listen address"),
    ],
)
def test_unimplemented_or_invalid_keys_are_errors_with_paths(extra: str, expected: str) -> None:
    text = BASE + extra + "\n"
    if extra.startswith("web:"):
        text = text.replace("web: {http: 127.0.0.1:5556}\n", "")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environ={})
    assert expected in str(caught.value), caught.value.problems


def test_every_problem_is_listed_with_its_path() -> None:
    text = (
        BASE
        + """
staticClients:
  - id: a
    secret: s
    redirectURIs: ['https://ok.example.com/cb', 'not-a-url']
  - id: b
    redirectURIs: ['https://b.example.com/cb#frag']
"""
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environ={})
    problems = caught.value.problems
    assert "staticClients[0].redirectURIs[1]: not an absolute URL" in problems
    assert any(
        p.startswith("staticClients[1].redirectURIs[0]: must not contain a fragment")
        for p in problems
    )


def test_fips_mode_refuses_grpc_tls_outside_the_provider(tmp_path: Path) -> None:
    cert = tmp_path / "tls.crt"
    key = tmp_path / "tls.key"
    cert.write_text("x")
    key.write_text("x")
    text = BASE + f"grpc: {{addr: 127.0.0.1:5557, tlsCert: {cert}, tlsKey: {key}}}\n"
    parse_config(text, environ={})  # fine outside FIPS mode
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environ={}, fips_mode=True)
    assert any(p.startswith("grpc.tlsCert: in FIPS mode") for p in caught.value.problems)
