"""Issue 9, finding 10: what `check-config` refuses (wrong) and warns about (risky).

Each test feeds the loader a config an attacker or a careless operator could write and checks
the exact problem reported, with its YAML path, or the warning.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import bcrypt
import pytest
from portcullis.cli import main
from portcullis.config.load import ConfigError
from portcullis.issuer import parse_config

HASH = bcrypt.hashpw(b"password", bcrypt.gensalt(rounds=10)).decode()
SECRET = "ZXhhbXBsZS1hcHAtc2VjcmV0"  # Dex's example-app secret (24 characters)

BASE = f"""\
issuer: http://127.0.0.1:5556/dex
storage:
  type: memory
web:
  http: 127.0.0.1:5556
staticClients:
  - id: example-app
    secret: {SECRET}
    redirectURIs: [http://127.0.0.1:5555/callback]
enablePasswordDB: true
staticPasswords:
  - email: admin@example.com
    hash: "{HASH}"
    username: admin
    userID: "1"
"""


def _problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "test.yaml", environ or {})
    return caught.value.problems


def _redirect(uri: str) -> str:
    return BASE.replace("[http://127.0.0.1:5555/callback]", f"['{uri}']")


def test_the_base_config_is_valid_without_warnings() -> None:
    assert parse_config(BASE, "test.yaml", {}).warnings == ()


# -- duplicate keys ----------------------------------------------------------------------------


def test_a_duplicate_top_level_key_is_refused_with_both_lines() -> None:
    text = BASE + "issuer: http://127.0.0.1:9999/other\n"
    problems = _problems(text)
    assert problems == [
        "issuer: duplicate key (line 1 and line 16); YAML would keep only the last"
    ], problems


def test_a_duplicate_nested_key_is_refused_with_its_path() -> None:
    text = BASE.replace("    secret: ", "    name: one\n    name: two\n    secret: ")
    problems = _problems(text)
    assert problems == [
        "staticClients[0].name: duplicate key (line 8 and line 9); YAML would keep only the last"
    ], problems


# -- environment expansion ---------------------------------------------------------------------


def test_an_unset_variable_inside_a_path_is_an_error_naming_the_field() -> None:
    text = BASE.replace(
        "storage:\n  type: memory\n",
        "storage:\n  type: sqlite3\n  config:\n    file: ${DATA_DIR}/portcullis.db\n",
    )
    problems = _problems(text)
    assert problems == [
        "storage.config.file: environment variable DATA_DIR is not set or empty, which would "
        "leave a broken path or URL"
    ], problems
    config = parse_config(text, "test.yaml", {"DATA_DIR": "/var/lib/portcullis"})
    assert config.storage_config is not None
    assert config.storage_config.model_dump()["file"] == "/var/lib/portcullis/portcullis.db"


def test_an_unset_variable_inside_a_connector_url_is_an_error() -> None:
    text = BASE + textwrap.dedent("""\
        connectors:
          - type: oidc
            id: upstream
            name: Upstream
            config:
              issuer: https://$UPSTREAM_HOST/realms/main
              clientID: portcullis
              clientSecret: $UPSTREAM_SECRET
              redirectURI: http://127.0.0.1:5556/dex/callback
        """)
    problems = _problems(text, {"UPSTREAM_SECRET": "s3cr3t-value-from-env"})
    assert (
        "connectors[0].config.issuer: environment variable UPSTREAM_HOST is not set or empty, "
        "which would leave a broken path or URL"
    ) in problems, problems


def test_a_whole_value_variable_still_expands_as_dex_does() -> None:
    # Dex-compatible: a whole value that is an unset variable becomes "" (the model decides).
    text = BASE.replace(
        "storage:\n  type: memory\n",
        "storage:\n  type: sqlite3\n  config:\n    file: $DB_FILE\n",
    )
    config = parse_config(text, "test.yaml", {"DB_FILE": "/tmp/x.db"})
    assert config.storage_config is not None
    assert config.storage_config.model_dump()["file"] == "/tmp/x.db"


# -- redirect URIs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("javascript://example.com/%0aalert(1)", "the javascript: scheme is not allowed"),
        ("data://text/html,hi", "the data: scheme is not allowed"),
        ("file://host/etc/passwd", "the file: scheme is not allowed"),
        ("https://*.example.com/callback", "wildcards are not supported"),
        ("https://app.example.com/*", "wildcards are not supported"),
        ("https://evil.example@app.example.com/cb", "must not contain userinfo"),
        ("http://evil.example\\@127.0.0.1:5555/cb", "backslashes"),
        ("https://app.example.com:99999/cb", "has an invalid port"),
    ],
)
def test_dangerous_redirect_uris_are_refused(uri: str, message: str) -> None:
    problems = _problems(_redirect(uri))
    assert len(problems) == 1, problems
    assert problems[0].startswith("staticClients[0].redirectURIs[0]: "), problems
    assert message in problems[0], problems


# -- client secrets ----------------------------------------------------------------------------


def test_a_one_character_client_secret_is_refused() -> None:
    problems = _problems(BASE.replace(SECRET, "x"))
    assert problems == [
        "staticClients[0].secret: the client secret is 1 character(s); at least 8 are required "
        "(16+ random characters recommended)"
    ], problems


def test_a_short_client_secret_is_a_warning() -> None:
    config = parse_config(BASE.replace(SECRET, "app-secret"), "test.yaml", {})
    assert config.warnings == (
        "staticClients[0].secret: the client secret is only 10 characters; use 16 or more "
        "random characters",
    )


def test_a_short_secret_from_the_environment_names_secret_env() -> None:
    text = BASE.replace(f"secret: {SECRET}", "secretEnv: APP_SECRET")
    problems = _problems(text, {"APP_SECRET": "abc"})
    assert problems[0].startswith("staticClients[0].secretEnv: the client secret is 3"), problems


# -- exposure warnings -------------------------------------------------------------------------


def test_an_http_issuer_on_a_public_host_is_warned_and_loopback_is_not() -> None:
    public = BASE.replace("issuer: http://127.0.0.1:5556/dex", "issuer: http://sso.example.com/dex")
    warnings = parse_config(public, "test.yaml", {}).warnings
    assert len(warnings) == 1
    assert warnings[0].startswith("issuer: 'http://sso.example.com/dex'")
    for host in ("localhost:5556", "[::1]:5556", "127.0.0.2"):
        local = BASE.replace("127.0.0.1:5556/dex", f"{host}/dex")
        assert parse_config(local, "test.yaml", {}).warnings == (), host


def test_allowed_origins_star_is_warned() -> None:
    text = BASE.replace(
        "  http: 127.0.0.1:5556\n", "  http: 127.0.0.1:5556\n  allowedOrigins: ['*']\n"
    )
    warnings = parse_config(text, "test.yaml", {}).warnings
    assert len(warnings) == 1
    assert warnings[0].startswith("web.allowedOrigins[0]: '*' lets"), warnings


# -- the command line --------------------------------------------------------------------------


def test_check_config_prints_warnings_on_stderr_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(BASE.replace(SECRET, "app-secret"))
    assert main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "valid" in out
    assert "warning: staticClients[0].secret: the client secret is only 10 characters" in err


def test_check_config_on_a_file_that_is_not_utf8_exits_2_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(BASE.encode() + "# réglages\n".encode("latin-1"))
    assert main(["check-config", str(path)]) == 2
    _, err = capsys.readouterr()
    assert "Traceback" not in err
    assert f"{path}: not UTF-8 text (byte 0xe9 on line 16); save the file as UTF-8" in err, err


def test_check_config_reports_a_duplicate_key_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(BASE + "web:\n  http: 0.0.0.0:5556\n")
    assert main(["check-config", str(path)]) == 2
    _, err = capsys.readouterr()
    assert "web: duplicate key (line 4 and line 16)" in err, err
