"""Config loading: Dex-format YAML, every problem reported with its YAML path, env expansion."""

from __future__ import annotations

import textwrap
from pathlib import Path

import bcrypt
import pytest
from portcullis.config.load import ConfigError
from portcullis.issuer import load_config, parse_config

HASH = bcrypt.hashpw(b"password", bcrypt.gensalt(rounds=10)).decode()

VALID = f"""
issuer: http://127.0.0.1:5556/dex
storage:
  type: memory
web:
  http: 127.0.0.1:5556
expiry:
  idTokens: 1h
  refreshTokens:
    reuseInterval: 3s
staticClients:
  - id: example-app
    secret: app-secret
    redirectURIs: [http://127.0.0.1:5555/callback]
  - id: kubectl
    public: true
enablePasswordDB: true
staticPasswords:
  - email: admin@example.com
    hash: "{HASH}"
    username: admin
    userID: "1"
"""


def _problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(textwrap.dedent(text), "test.yaml", environ or {})
    return caught.value.problems


def _with(replace: str, by: str) -> str:
    assert replace in VALID
    return VALID.replace(replace, by, 1)


def test_valid_config_resolves() -> None:
    config = parse_config(VALID, "test.yaml", {})
    assert config.issuer == "http://127.0.0.1:5556/dex"
    assert config.issuer_path == "/dex"
    assert [c.id for c in config.clients] == ["example-app", "kubectl"]
    assert config.raw.expiry.id_tokens == 3600.0
    assert config.raw.expiry.refresh_tokens.reuse_interval == 3.0


def test_bad_redirect_uri_is_reported_at_its_index() -> None:
    problems = _problems(
        _with(
            "redirectURIs: [http://127.0.0.1:5555/callback]",
            "redirectURIs: [http://127.0.0.1:5555/callback, not-a-url]",
        )
    )
    assert problems == ["staticClients[0].redirectURIs[1]: not an absolute URL"]


def test_unknown_key_is_an_error_not_silence() -> None:
    problems = _problems(_with("web:\n", "web:\n  allowedOrigns: ['*']\n"))
    assert problems == ["web.allowedOrigns: unknown key (not a Dex or Portcullis setting)"]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("ten", "not a duration"), ("10", "add a unit"), ("0s", "positive"), ("true", "duration")],
)
def test_bad_durations_name_the_field(value: str, fragment: str) -> None:
    problems = _problems(_with("idTokens: 1h", f"idTokens: {value}"))
    assert len(problems) == 1
    assert problems[0].startswith("expiry.idTokens: ")
    assert fragment in problems[0]


def test_every_schema_problem_is_listed() -> None:
    text = _with("idTokens: 1h", "idTokens: soon")
    text = text.replace("http: 127.0.0.1:5556", "http: nowhere")
    text = text.replace("type: memory", "type: memory\n  bogus: 1")
    problems = _problems(text)
    paths = sorted(p.split(":")[0] for p in problems)
    assert paths == ["expiry.idTokens", "storage.bogus", "web.http"]


def test_cross_field_problems_are_listed_together() -> None:
    text = VALID.replace(
        "  - id: kubectl\n    public: true\n",
        "  - id: kubectl\n    public: true\n    secret: oops\n    trustedPeers: [ghost]\n",
    )
    text = text.replace(f'hash: "{HASH}"', 'hash: "plain"')
    problems = _problems(text)
    assert "staticClients[1].trustedPeers[0]: no static client with id 'ghost'" in problems
    assert any(p.startswith("staticPasswords[0].hash: not a bcrypt") for p in problems)
    # The rejected value itself is never echoed (it could be a real password).
    assert not any("plain" in p for p in problems)


def test_unsupported_storage_and_signer_are_clear_errors() -> None:
    problems = _problems(_with("type: memory", "type: etcd"))
    assert len(problems) == 1
    assert problems[0].startswith("storage")
    assert "not supported" in problems[0]


def test_env_expansion_in_storage_config_only() -> None:
    text = _with("type: memory", "type: sqlite3\n  config:\n    file: ${DB_DIR}/x.db")
    config = parse_config(text, "t.yaml", {"DB_DIR": "/var/lib/p"})
    assert config.storage_config is not None
    assert config.storage_config.model_dump()["file"] == "/var/lib/p/x.db"
    # Not expanded outside the sections Dex expands.
    literal = parse_config(
        _with("secret: app-secret", "secret: $NOT_EXPANDED"), "t.yaml", {"NOT_EXPANDED": "x"}
    )
    assert literal.clients[0].secret == "$NOT_EXPANDED"


def test_secret_env_id_env_and_hash_from_env() -> None:
    text = _with(
        "id: example-app\n    secret: app-secret", "idEnv: APP_ID\n    secretEnv: APP_SECRET"
    )
    text = text.replace(f'hash: "{HASH}"', "hashFromEnv: ADMIN_HASH")
    config = parse_config(
        text, "t.yaml", {"APP_ID": "from-env", "APP_SECRET": "s" * 20, "ADMIN_HASH": HASH}
    )
    assert config.clients[0].id == "from-env"
    assert config.clients[0].secret == "s" * 20
    assert config.passwords[0].hash == HASH
    problems = _problems(text, {"APP_ID": "from-env"})
    assert (
        "staticClients[0].secretEnv: environment variable APP_SECRET is not set or empty"
        in problems
    )
    assert (
        "staticPasswords[0].hashFromEnv: environment variable ADMIN_HASH is not set or empty"
        in problems
    )


def test_signer_rotation_period_minimum() -> None:
    text = VALID + "signer:\n  type: local\n  config:\n    keysRotationPeriod: 30s\n"
    problems = _problems(text)
    assert problems == ["signer.config.keysRotationPeriod: must be at least 1m"]


def test_load_config_reports_unreadable_files_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as missing:
        load_config(tmp_path / "nope.yaml", {})
    assert "cannot read" in missing.value.problems[0]
    broken = tmp_path / "broken.yaml"
    broken.write_text("issuer: [\n")
    with pytest.raises(ConfigError) as bad:
        load_config(broken, {})
    assert "not valid YAML (line" in bad.value.problems[0]
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError) as top:
        load_config(scalar, {})
    assert "top level must be a mapping" in top.value.problems[0]


def test_the_dev_example_loads() -> None:
    example = Path(__file__).resolve().parents[3] / "examples" / "config-dev.yaml"
    config = load_config(example, {})
    assert config.issuer == "http://127.0.0.1:5556/dex"
    assert {c.id for c in config.clients} == {"example-app", "kubectl"}
