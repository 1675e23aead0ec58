"""The plugin's pieces that need no issuer: its dependency footprint, ExecCredential input,
JWT decoding, refresh timing and the token cache's file handling."""

from __future__ import annotations

import ast
import base64
import json
import os
import stat
import sys
from pathlib import Path

import pytest
from kubectl_portcullis.cache import CachedTokens, TokenCache, cache_key
from kubectl_portcullis.cli import main
from kubectl_portcullis.errors import PluginError
from kubectl_portcullis.execcred import V1, V1BETA1, exec_credential, exec_info
from kubectl_portcullis.jwt import decode_claims, expiry
from kubectl_portcullis.login import Options, refresh_margin

from tests.support.plugin import REPO_ROOT

PACKAGE = REPO_ROOT / "server" / "kubectl_portcullis"


def test_plugin_imports_only_the_standard_library_and_itself() -> None:
    imported: set[str] = set()
    for source in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(source.read_text(), str(source))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    foreign = imported - set(sys.stdlib_module_names) - {"kubectl_portcullis", "__future__"}
    assert foreign == set(), f"the laptop plugin must stay dependency-free: {sorted(foreign)}"
    assert "portcullis" not in imported


def _jwt(claims: dict[str, object]) -> str:
    def part(document: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(document).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


def test_claims_are_decoded_and_junk_is_a_clear_error() -> None:
    assert decode_claims(_jwt({"sub": "a", "exp": 5})) == {"sub": "a", "exp": 5}
    assert expiry({"exp": 5.9}) == 5
    for junk, message in [
        ("abc", "not a JWT"),
        ("a.!!!.c", "not JSON"),
        (_jwt({"exp": 1}).split(".")[0] + ".WzFd.c", "not a JSON object"),
    ]:
        with pytest.raises(PluginError, match=message):
            decode_claims(junk)
    with pytest.raises(PluginError, match="'exp'"):
        expiry({"exp": True})


def test_refresh_margin_is_thirty_seconds_or_a_tenth_of_a_short_lifetime() -> None:
    assert refresh_margin({"iat": 0, "exp": 3600}) == 30
    assert refresh_margin({"iat": 0, "exp": 100}) == 10
    assert refresh_margin({"exp": 100}) == 30


def test_exec_info_follows_kubectl() -> None:
    assert exec_info(None, stdin_is_tty=True) == exec_info("", stdin_is_tty=True)
    assert exec_info(None, stdin_is_tty=False).api_version == V1
    beta = json.dumps({"apiVersion": V1BETA1, "spec": {"interactive": True}})
    assert exec_info(beta, stdin_is_tty=False).api_version == V1BETA1
    assert exec_info(beta, stdin_is_tty=False).interactive is True
    with pytest.raises(PluginError, match="not JSON"):
        exec_info("{", stdin_is_tty=False)
    document = exec_credential(V1, "t", 0)
    assert document["status"] == {"token": "t", "expirationTimestamp": "1970-01-01T00:00:00Z"}


def test_cache_key_separates_issuer_client_and_scopes_but_not_scope_order() -> None:
    base = cache_key("https://a", "kubectl", ["openid", "email"])
    assert base == cache_key("https://a", "kubectl", ["email", "openid"])
    assert base != cache_key("https://b", "kubectl", ["openid", "email"])
    assert base != cache_key("https://a", "other", ["openid", "email"])
    assert base != cache_key("https://a", "kubectl", ["openid"])


def test_cache_tightens_an_open_directory_and_writes_owner_only_files(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    old_umask = os.umask(0)
    try:
        cache = TokenCache(directory, "k")
        with cache.locked():
            cache.store(CachedTokens("id", "refresh"))
    finally:
        os.umask(old_umask)

    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(cache.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.lock_path.stat().st_mode) == 0o600
    assert cache.load() == CachedTokens("id", "refresh")
    assert [p.name for p in directory.iterdir() if p.name.startswith(".")] == []


def test_unreadable_or_foreign_cache_content_counts_as_no_cache(tmp_path: Path) -> None:
    cache = TokenCache(tmp_path, "k")
    for content in ["not json", "[]", '{"format": 99, "id_token": "x"}', '{"format": 1}']:
        cache.path.write_text(content)
        assert cache.load() is None
    assert cache.clear() is True
    assert cache.clear() is False


def test_default_scopes_and_explicit_scopes() -> None:
    assert Options("https://i", "c").requested_scopes == [
        "openid",
        "offline_access",
        "email",
        "profile",
        "groups",
    ]
    assert Options("https://i", "c", scopes=["groups", "openid"]).requested_scopes == [
        "openid",
        "offline_access",
        "groups",
    ]


def test_cli_without_a_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "get-token" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["get-token", "--issuer=https://i", "--client-id=c", "--grant-type=authcode-keyboard"],
            "authcode-keyboard is not supported: use --grant-type device",
        ),
        (
            ["get-token", "--issuer=https://i", "--client-id=c", "--oidc-use-access-token"],
            "--oidc-use-access-token is not supported",
        ),
        (
            ["get-token", "--issuer=https://i", "--client-id=c", "--listen-address=nope"],
            "is not HOST:PORT",
        ),
        (
            [
                "get-token",
                "--issuer=https://i",
                "--client-id=c",
                "--oidc-auth-request-extra-params=novalue",
            ],
            "is not KEY=VALUE",
        ),
        (
            ["get-token", "--issuer=https://i", "--client-id=c", "--certificate-authority=/nope"],
            "--certificate-authority /nope",
        ),
        (["get-token", "--issuer=ftp://i", "--client-id=c"], "is not an http(s) URL"),
    ],
)
def test_bad_flags_are_one_line_errors(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([*argv, f"--token-cache-dir={tmp_path}", "--skip-open-browser"])
    err = capsys.readouterr().err
    assert code in (1, 2)
    assert message in err
    assert "Traceback" not in err
