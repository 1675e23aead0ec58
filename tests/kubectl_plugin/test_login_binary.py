"""`make login-binary`: the frozen single-file plugin is byte-reproducible, works as the plugin
(a full browser login against a real issuer), and its krew manifest describes its archive."""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml
from kubectl_portcullis.jwt import decode_claims
from portcullis_release.build import login_binary

from tests.support.issuer import Issuer
from tests.support.plugin import (
    KREW_HOMEPAGE,
    KREW_URI_TEMPLATE,
    REPO_ROOT,
    Plugin,
    complete_login,
    exec_credential,
)

SDE = 1_700_000_000


@pytest.mark.slow
@pytest.mark.integration
def test_frozen_plugin_is_byte_reproducible_and_logs_in(
    frozen_plugin: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    issuer: Issuer,
    tmp_path: Path,
) -> None:
    again = login_binary.build(
        REPO_ROOT,
        tmp_path_factory.mktemp("login-again"),
        REPO_ROOT / ".cache" / "login",
        SDE,
        work=tmp_path_factory.mktemp("login-work-again"),
        uri_template=KREW_URI_TEMPLATE,
        homepage=KREW_HOMEPAGE,
    )

    for name in ("binary", "archive", "manifest", "sha256", "contents"):
        assert again[name].read_bytes() == frozen_plugin[name].read_bytes(), name
    binary = frozen_plugin["binary"]
    assert binary.name == "kubectl-portcullis-linux-amd64"
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()
    assert frozen_plugin["sha256"].read_text() == f"{digest}  {binary.name}\n"
    assert os.access(binary, os.X_OK)

    # The binary is the plugin: a full login through the issuer's forms, from a clean HOME.
    home = tmp_path / "home"
    home.mkdir()
    plugin = Plugin(home, command=[str(binary)])
    running = plugin.start(
        [
            "get-token",
            f"--issuer={issuer.issuer}",
            "--client-id=kubectl",
            "--listen-address=127.0.0.1:0",
            "--skip-open-browser",
        ]
    )
    assert complete_login(issuer, running.login_url()).status_code == 200
    code, stdout, stderr = running.finish()
    assert code == 0, stderr
    token = exec_credential(stdout)["status"]["token"]
    issuer.remember(token)
    assert decode_claims(token)["iss"] == issuer.issuer


@pytest.mark.slow
def test_frozen_plugin_holds_no_third_party_python_package(frozen_plugin: dict[str, Path]) -> None:
    # PyInstaller's onefile archive lists its modules; pyi-archive_viewer is in the freeze venv.
    venv_python = next((REPO_ROOT / ".cache" / "login").glob("freeze-venv-*/bin/python"))
    listing = subprocess.run(
        [
            str(venv_python),
            "-m",
            "PyInstaller.utils.cliutils.archive_viewer",
            "-l",
            "-r",
            str(frozen_plugin["binary"]),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = set(re.findall(r"'([^']+)'\s*$", listing, re.M))
    assert "kubectl_portcullis.cli" in names
    top_level = {name.split(".")[0].split("/")[0] for name in names}
    foreign = {"portcullis", "httpx", "yaml", "pydantic", "cryptography", "PyInstaller", "pip"}
    assert not top_level & foreign, sorted(top_level & foreign)


@pytest.mark.slow
def test_krew_archive_holds_the_binary_and_matches_the_manifest(
    frozen_plugin: dict[str, Path],
) -> None:
    archive = frozen_plugin["archive"].read_bytes()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        (member,) = tar.getmembers()
        assert member.name == "kubectl-portcullis"
        assert member.mode == 0o755
        assert (member.uid, member.gid, member.mtime) == (0, 0, SDE)
        extracted = tar.extractfile(member)
        assert extracted is not None
        assert extracted.read() == frozen_plugin["binary"].read_bytes()

    manifest = yaml.safe_load(frozen_plugin["manifest"].read_text())
    assert frozen_plugin["manifest"].name == "portcullis.yaml"
    (entry,) = manifest["spec"]["platforms"]
    assert entry["sha256"] == hashlib.sha256(archive).hexdigest()
    assert entry["uri"].endswith("/v0.1.0/kubectl-portcullis-linux-amd64.tar.gz")
    assert entry["selector"] == {"matchLabels": {"os": "linux", "arch": "amd64"}}


def test_krew_manifest_has_the_fields_krew_validates() -> None:
    text = login_binary.krew_manifest(
        "1.2.3",
        [
            login_binary.KrewPlatform("linux", "arm64", "https://x.example/b.tar.gz", "b" * 64),
            login_binary.KrewPlatform("darwin", "amd64", "https://x.example/a.tar.gz", "a" * 64),
        ],
        "https://portcullis.example",
    )
    manifest = yaml.safe_load(text)

    assert manifest["apiVersion"] == "krew.googlecontainertools.github.com/v1alpha2"
    assert manifest["kind"] == "Plugin"
    assert manifest["metadata"] == {"name": "portcullis"}
    spec = manifest["spec"]
    assert spec["version"] == "v1.2.3"
    assert spec["homepage"] == "https://portcullis.example"
    assert spec["shortDescription"]
    assert "description: |" in text
    assert [p["selector"]["matchLabels"] for p in spec["platforms"]] == [
        {"os": "darwin", "arch": "amd64"},
        {"os": "linux", "arch": "arm64"},
    ]
    for platform in spec["platforms"]:
        assert platform["bin"] == "kubectl-portcullis"
        assert platform["files"] == [{"from": "kubectl-portcullis", "to": "."}]


@pytest.mark.parametrize(
    ("version", "platform", "message"),
    [
        ("1.2", ("linux", "amd64", "https://x/a.tgz", "a" * 64), "not semantic"),
        ("1.2.3", ("linux", "amd64", "http://x/a.tgz", "a" * 64), "https only"),
        ("1.2.3", ("linux", "amd64", "https://x/a.tgz", "A" * 64), "sha256"),
    ],
)
def test_krew_manifest_refuses_what_krew_would_reject(
    version: str, platform: tuple[str, str, str, str], message: str
) -> None:
    with pytest.raises(login_binary.LoginBinaryError, match=message):
        login_binary.krew_manifest(version, [login_binary.KrewPlatform(*platform)], "https://h")


def test_lock_subset_takes_only_the_named_entries_with_their_hashes() -> None:
    lock = (REPO_ROOT / "requirements" / "release.txt").read_text()
    subset = login_binary.lock_subset(lock, login_binary.FREEZE_DISTRIBUTIONS)
    names = sorted(line.split("==")[0] for line in subset.splitlines() if "==" in line)
    assert names == sorted(login_binary.FREEZE_DISTRIBUTIONS)
    assert subset.count("--hash=sha256:") >= len(names)
    with pytest.raises(login_binary.LoginBinaryError, match="no entry for not-locked"):
        login_binary.lock_subset(lock, ["not-locked"])
