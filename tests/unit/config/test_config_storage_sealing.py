"""``storageSealing`` (Portcullis-only): the key that seals upstream tokens in SQL storage.

Dex configs load unchanged (no key: sqlite3 makes a key file, postgres warns that connector
data is stored unsealed and how to fix it); a key comes from the environment like other
secrets; a malformed key is refused with its YAML path and never echoed; check-config prints
the postgres warning.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from pathlib import Path

import pytest
from portcullis.cli import main
from portcullis.config.load import ConfigError
from portcullis.issuer import parse_config

# Fixed, not random: it appears in parametrize ids, which every xdist worker must collect alike.
KEY = base64.b64encode(hashlib.sha256(b"portcullis config test key").digest()).decode()


def _config(storage: str, sealing: str = "") -> str:
    return (
        "issuer: http://127.0.0.1:5556/dex\n"
        f"storage: {storage}\n"
        "web: {http: 127.0.0.1:5556}\n"
        "enablePasswordDB: true\n"
    ) + (f"storageSealing: {sealing}\n" if sealing else "")


POSTGRES = "{type: postgres, config: {host: db.example, password: $DB_PASSWORD}}"
SQLITE = "{type: sqlite3, config: {file: /var/lib/portcullis/portcullis.db}}"


def _problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "test.yaml", environ or {})
    return caught.value.problems


def test_postgres_without_a_key_loads_with_a_warning_naming_the_fix() -> None:
    config = parse_config(_config(POSTGRES), "test.yaml", {"DB_PASSWORD": "pw"})
    (warning,) = config.warnings
    assert warning.startswith("storageSealing: no key configured")
    assert "unsealed in PostgreSQL" in warning
    assert "storageSealing.keyFile" in warning
    assert "openssl rand -base64 32" in warning


@pytest.mark.parametrize("storage", [SQLITE, "{type: memory}"])
def test_sqlite_and_memory_without_a_key_need_nothing(storage: str) -> None:
    assert parse_config(_config(storage), "test.yaml", {}).warnings == ()


def test_key_from_the_environment_and_key_files() -> None:
    text = _config(
        POSTGRES,
        "{key: $SEALING_KEY, previousKeys: [$OLD_KEY], previousKeyFiles: [/keys/older]}",
    )
    old = base64.b64encode(secrets.token_bytes(32)).decode()
    environ = {"DB_PASSWORD": "pw", "SEALING_KEY": KEY, "OLD_KEY": old}
    config = parse_config(text, "test.yaml", environ)
    sealing = config.raw.storage_sealing
    assert sealing.key is not None
    assert sealing.key.get_secret_value() == KEY
    assert [k.get_secret_value() for k in sealing.previous_keys] == [old]
    assert sealing.previous_key_files == ["/keys/older"]
    assert config.warnings == ()
    assert KEY not in repr(config.raw)
    by_file = parse_config(
        _config(POSTGRES, "{keyFile: /etc/portcullis/sealing/key}"), "t", {"DB_PASSWORD": "p"}
    )
    assert by_file.raw.storage_sealing.key_file == "/etc/portcullis/sealing/key"


@pytest.mark.parametrize(
    ("sealing", "environ", "problem"),
    [
        (
            "{key: $UNSET}",
            {},
            "storageSealing.key: is empty (an environment variable that is not set?)",
        ),
        ("{key: c2hvcnQ=}", {}, "storageSealing.key: must be 32 random bytes in base64"),
        (
            "{key: not-base64-at-all-not-base64-at-all-not-base64!}",
            {},
            "storageSealing.key: must be 32 random bytes in base64",
        ),
        (
            f"{{key: {KEY}, keyFile: /k}}",
            {},
            "storageSealing: give the current key as key or keyFile, not both",
        ),
        (
            f"{{previousKeys: [{KEY}]}}",
            {},
            "storageSealing: previousKeys/previousKeyFiles need a current key",
        ),
        ('{keyFile: "${DIR}/key"}', {}, "storageSealing.keyFile: environment variable DIR"),
        ("{keyfile: /k}", {}, "storageSealing.keyfile: unknown key"),
    ],
)
def test_malformed_settings_are_refused_with_their_path(
    sealing: str, environ: dict[str, str], problem: str
) -> None:
    problems = _problems(_config(SQLITE, sealing), environ)
    assert any(p.startswith(problem) for p in problems), problems
    assert not any(KEY in p for p in problems)


def test_a_key_that_is_not_a_key_is_never_echoed() -> None:
    wrong = base64.b64encode(b"sixteen byte key").decode()
    problems = _problems(_config(SQLITE, f"{{key: {wrong}}}"))
    assert not any(wrong in p for p in problems)


def test_memory_with_a_key_warns_that_it_is_unused() -> None:
    config = parse_config(_config("{type: memory}", f"{{key: {KEY}}}"), "test.yaml", {})
    assert config.warnings == (
        "storageSealing: the memory storage keeps nothing at rest, so the key is not used",
    )


def test_check_config_prints_the_postgres_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(_config(POSTGRES))
    monkeypatch.setenv("DB_PASSWORD", "pw")
    assert main(["check-config", str(path)]) == 0
    err = capsys.readouterr().err
    assert "warning: storageSealing: no key configured" in err
