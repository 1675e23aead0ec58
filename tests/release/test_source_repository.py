"""The source repository comes from one place (SOURCE_REPOSITORY in CI, the manifest's
``source.repository``, or the git remote ``origin``); without one the release says so and
invents nothing: no placeholder in the image labels, the provenance or the krew manifest."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from portcullis_release import REPO_ROOT, manifest
from portcullis_release.attest.provenance import BuildRun, SourceInfo, build_statement

from tests.release.conftest import SyntheticRelease

PLACEHOLDER = "github.com/portcullis-oidc"


def _git_repo(path: Path, remote: str | None) -> Path:
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    subprocess.run(
        [
            "git",
            "-C",
            str(path),
            "-c",
            "user.email=t@t",
            "-c",
            "user.name=t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "x",
        ],
        check=True,
    )
    if remote:
        subprocess.run(["git", "-C", str(path), "remote", "add", "origin", remote], check=True)
    return path


def test_no_tracked_file_carries_the_placeholder_source() -> None:
    for rel in ("images/portcullis/image.json", "scripts/portcullis_release"):
        root = REPO_ROOT / rel
        for path in [root] if root.is_file() else sorted(root.rglob("*.py")):
            assert PLACEHOLDER not in path.read_text(encoding="utf-8"), path


def test_source_comes_from_the_git_remote_or_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SOURCE_REPOSITORY", raising=False)
    with_remote = _git_repo(tmp_path / "a", "https://forge.example/team/portcullis.git")
    assert manifest.source_repository(with_remote) == "https://forge.example/team/portcullis.git"
    bare = _git_repo(tmp_path / "b", None)
    assert manifest.source_repository(bare) is None
    (bare / "release").mkdir()
    (bare / "release" / "manifest.yaml").write_text(
        (REPO_ROOT / "release" / "manifest.yaml").read_text()
        + "source:\n  repository: https://forge.example/other/portcullis\n"
    )
    assert manifest.source_repository(bare) == "https://forge.example/other/portcullis"
    monkeypatch.setenv("SOURCE_REPOSITORY", "https://ci.example/x/portcullis")
    assert manifest.source_repository(bare) == "https://ci.example/x/portcullis"


def test_provenance_without_a_source_invents_none(
    release_inputs: SyntheticRelease, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SOURCE_REPOSITORY", raising=False)
    bare = _git_repo(tmp_path / "bare", None)
    source = SourceInfo.detect(bare)
    assert source.repository is None
    statement = build_statement(release_inputs.plan("127.0.0.1:5000/p"), bare, BuildRun(), source)
    text = json.dumps(statement)
    assert PLACEHOLDER not in text
    params = statement["predicate"]["buildDefinition"]["externalParameters"]["source"]
    assert params["repository"] is None
    git_dep = statement["predicate"]["buildDefinition"]["resolvedDependencies"][0]
    assert "uri" not in git_dep
    assert git_dep["digest"]["gitCommit"] == source.commit
