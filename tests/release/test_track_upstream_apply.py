"""`track-upstream --apply` end to end, without network: the real pip-compile (pip-tools, the
venv `make lock` uses) resolves against a loopback PEP 503 index that serves the real h11 0.15.0
and 0.16.0 wheels (fetched by `make test`'s set-up, scripts/fetch-test-wheels.sh, and checked
against the sha256 in the recorded PyPI JSON), and the Debian pins move by the recorded
archive indexes. Then: the locks, the version (semver), every generated file and the CHANGELOG
move together; and when pip-compile fails, or its output does not match what PyPI publishes,
nothing is applied.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from portcullis_release import REPO_ROOT
from portcullis_release.attest import sbom
from portcullis_release.build.packages_lock import load_lock
from portcullis_release.cli import main
from portcullis_release.distribute import generated
from portcullis_release.manifest import load_manifest
from portcullis_release.upstream.apply import bump_version
from portcullis_release.upstream.track import Change, Plan

from tests.support.upstream_feeds import FIXTURES, TEST_WHEELS, FeedServer, deb822, feed_server
from tests.support.upstream_repo import (
    LOCK_HEADER,
    TODAY,
    lock_entry,
    make_repo,
    published,
    track_args,
    tree,
)

PIP_COMPILE = REPO_ROOT / ".cache" / "lockenv" / "bin" / "pip-compile"
WHEELS = ("h11-0.15.0-py3-none-any.whl", "h11-0.16.0-py3-none-any.whl")
# The wheel's digest as PyPI publishes it (tests/release/fixtures/upstream/pypi/h11.json).
H11_016_WHEEL = "63cf8bbe7522de3bf65932fda1d9c2772064ffb3dae62d55932da54b31cb6c86"


@pytest.fixture(scope="module")
def pip_compile() -> str:
    if not PIP_COMPILE.is_file():
        pytest.fail(f"{PIP_COMPILE} missing: run `make release-test-deps` (part of `make test`)")
    return str(PIP_COMPILE)


@pytest.fixture(scope="module")
def wheels() -> list[Path]:
    paths = [TEST_WHEELS / name for name in WHEELS]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        pytest.fail(f"{missing} missing: run `make release-test-deps` (part of `make test`)")
    return paths


@pytest.fixture
def feeds(wheels: list[Path]) -> Iterator[FeedServer]:
    with feed_server() as server:
        server.serve_recorded()
        server.serve_index("h11", wheels)
        yield server


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", lock_entry("h11", "0.15.0"), "h11\n")


def _apply(feeds: FeedServer, repo: Path, pip_compile: str) -> int:
    return main(track_args(feeds, repo, "--apply", "--pip-compile", pip_compile))


def _applied_files(repo: Path) -> dict[Path, bytes]:
    """Everything but the plan's own outputs (the plan and the SLA ledger are written before
    --apply starts, and are right whether or not it succeeds)."""
    skip = {repo / "release/upstream-seen.json"}
    return {
        p: b for p, b in tree(repo).items() if p not in skip and not p.is_relative_to(repo / "dist")
    }


def test_apply_moves_locks_version_generated_files_and_changelog_together(
    repo: Path, feeds: FeedServer, pip_compile: str
) -> None:
    assert _apply(feeds, repo, pip_compile) == 0

    # Python: pip-compile fetched the real 0.16.0 wheel from the loopback index and locked it
    # with its hash, in the layout `make lock` writes (no index URL leaks into the header)
    runtime = (repo / "requirements/runtime.txt").read_text()
    (h11,) = sbom.parse_requirements_lock(runtime)
    assert (h11.name, h11.version, h11.hashes) == ("h11", "0.16.0", [H11_016_WHEEL])
    assert set(h11.hashes) <= set(published("h11", "0.16.0"))
    assert runtime.startswith(LOCK_HEADER)
    assert feeds.url not in runtime
    assert "GET /files/h11-0.16.0-py3-none-any.whl" in feeds.requests

    # Debian: versions and the .deb sha256 the archive's (recorded) index gives
    # (the security update of libssl3 and the vanished libc6 pin land exactly on the pins the
    # real lock, which `make image` checks every download against, holds today)
    lock = {d.name: d for d in load_lock(repo / "images/portcullis/packages.lock").debs}
    real = {d.name: d for d in load_lock(REPO_ROOT / "images/portcullis/packages.lock").debs}
    assert lock["libssl3"].version == "3.0.22-1~deb12u2"
    assert lock["libssl3"] == real["libssl3"]
    assert lock["libc6"].version == "2.36-9+deb12u14"
    assert lock["libc6"] == real["libc6"]
    assert lock["tzdata"].sha256 == "2" * 64  # not in the plan: untouched

    # semver: no dependency moved to a new major version -> patch
    manifest = load_manifest(repo / "release/manifest.yaml")
    assert (manifest.image.tag, manifest.chart.version) == ("0.1.1", "0.1.1")
    assert 'version = "0.1.1"' in (repo / "pyproject.toml").read_text()
    assert '__version__ = "0.1.1"' in (repo / "server/portcullis/__init__.py").read_text()
    assert '__version__ = "0.1.1"' in (repo / "server/kubectl_portcullis/__init__.py").read_text()
    assert generated.check(manifest, repo) == []
    assert yaml.safe_load((repo / generated.CHART_YAML).read_text())["appVersion"] == "0.1.1"

    changelog = (repo / "CHANGELOG.md").read_text()
    assert changelog.startswith(f"# Changelog\n\n## 0.1.1 ({TODAY})\n")
    assert "- pypi `h11` 0.15.0 -> 0.16.0" in changelog
    assert "fixes CVE-2025-43859 (critical)" in changelog
    assert "deb `libssl3` 3.0.20-1~deb12u2 -> 3.0.22-1~deb12u2" in changelog
    assert "CVE-2026-63072 (high)" in changelog
    assert "requirements/runtime.txt: h11==0.16.0" in changelog
    # listed, not applied: the FIPS provider's source and Dex
    assert "deb-source `openssl` 3.0.20-1~deb12u2 -> 3.0.22-1~deb12u2" in changelog
    assert "dex `dex` v2.45.1 -> v2.46.0" in changelog
    assert changelog.count("not applied: needs a person") == 2


def test_a_failing_pip_compile_leaves_nothing_applied(
    repo: Path, feeds: FeedServer, pip_compile: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The runtime lock compiles; the test lock (compiled after it) cannot be resolved. The
    runtime lock, the Debian lock, the version and the CHANGELOG all stay as they were."""
    (repo / "requirements/test.in").write_text("h11\nportcullis-no-such-distribution\n")
    (repo / "requirements/test.txt").write_text(
        LOCK_HEADER.replace("runtime", "test") + lock_entry("h11", "0.15.0")
    )
    before = _applied_files(repo)
    assert _apply(feeds, repo, pip_compile) == 2
    err = capsys.readouterr().err
    assert "pip-compile test.in failed" in err
    assert "portcullis-no-such-distribution" in err
    assert "(nothing applied)" in err
    assert _applied_files(repo) == before
    # it did get as far as compiling the runtime lock (in its scratch copy)
    assert "GET /files/h11-0.16.0-py3-none-any.whl" in feeds.requests
    assert not list(repo.rglob("*.track-upstream.tmp"))


def test_a_lock_with_hashes_pypi_does_not_publish_is_refused(
    repo: Path, feeds: FeedServer, pip_compile: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mirror serving other bytes under the published file name, its index page agreeing
    with them (so pip's own check of the page's #sha256 passes): pip-compile locks what it is
    served; the check against the digests PyPI's JSON API publishes catches it."""
    other = feeds.routes["/files/h11-0.16.0-py3-none-any.whl"][1] + b"\0"
    feeds.routes["/files/h11-0.16.0-py3-none-any.whl"] = (200, other)
    page = feeds.routes["/simple/h11/"][1].replace(
        H11_016_WHEEL.encode(), hashlib.sha256(other).hexdigest().encode()
    )
    feeds.routes["/simple/h11/"] = (200, page)
    before = _applied_files(repo)
    assert _apply(feeds, repo, pip_compile) == 2
    err = capsys.readouterr().err
    assert "requirements/runtime.txt: h11 0.16.0: hash(es)" in err
    assert "are not digests PyPI publishes" in err
    assert _applied_files(repo) == before


def test_pip_compile_sees_only_the_configured_index(
    repo: Path,
    feeds: FeedServer,
    pip_compile: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pip configuration file or PIP_* variable naming another index is shut out: the lock is
    resolved from the index the plan was read from."""
    other = tmp_path / "other-index"
    other.mkdir()
    config = tmp_path / "pip.conf"
    config.write_text(f"[global]\nindex-url = file://{other}\nno-index = true\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(other))
    assert _apply(feeds, repo, pip_compile) == 0
    (h11,) = sbom.parse_requirements_lock((repo / "requirements/runtime.txt").read_text())
    assert h11.version == "0.16.0"
    assert json.loads((repo / "dist/upstream/plan.json").read_text())["changes"]


@pytest.mark.parametrize(
    ("ecosystem", "current", "proposed", "expected"),
    [
        ("pypi", "0.28.1", "1.0.0", "0.2.0"),  # a dependency's new major version: minor
        ("pypi", "0.15.0", "0.16.0", "0.1.1"),
        ("deb", "2.36-9+deb12u13", "2.36-9+deb12u14", "0.1.1"),
    ],
)
def test_semver_bump(ecosystem: str, current: str, proposed: str, expected: str) -> None:
    plan = Plan(TODAY, [Change(ecosystem, "x", current, proposed)])
    assert bump_version("0.1.0", plan) == expected


def _arm64(repo: Path, feeds: FeedServer, *, with_security_update: bool) -> Path:
    """packages-arm64.lock beside packages.lock (the same pins, arm64 builds), and arm64
    indexes derived from the recorded amd64 ones: the same paragraphs with Architecture arm64
    and a digest of their own (what differs between two architectures' indexes). Without the
    security update, bookworm-security has not built libssl3 3.0.22 for arm64 yet."""
    doc = json.loads((repo / "images/portcullis/packages.lock").read_text())
    doc["architecture"] = "arm64"
    for deb in doc["debs"]:
        if deb["architecture"] == "amd64":
            deb["architecture"] = "arm64"
    path = repo / "images/portcullis/packages-arm64.lock"
    path.write_text(json.dumps(doc, indent=2))
    for recorded in sorted((FIXTURES / "debian").glob("*_Packages.txt")):
        suite = recorded.stem.split("_")[0]
        paragraphs = []
        for block in recorded_text(recorded).split("\n\n"):
            fields = dict(
                line.split(": ", 1)
                for line in block.splitlines()
                if ": " in line and line[0] != " "
            )
            if not fields.get("Package"):
                continue
            if fields.get("Architecture") == "amd64":
                fields["Architecture"] = "arm64"
                fields["SHA256"] = arm64_digest(fields["Package"], fields["Version"])
            if (
                not with_security_update
                and suite.endswith("-security")
                and fields["Package"] == "libssl3"
            ):
                continue
            paragraphs.append(fields)
        base = "security" if suite.endswith("-security") else "debian"
        feeds.routes[f"/{base}/dists/{suite}/main/binary-arm64/Packages.xz"] = (
            200,
            deb822(paragraphs),
        )
    return path


def arm64_digest(package: str, version: str) -> str:
    return hashlib.sha256(f"{package} {version} arm64".encode()).hexdigest()


def recorded_text(path: Path) -> str:
    return "".join(line for line in path.read_text().splitlines(True) if line[:1] != "#")


def test_apply_moves_every_architectures_lock_to_the_same_versions(
    repo: Path, feeds: FeedServer, pip_compile: str
) -> None:
    """The arm64 image must carry the same Debian versions as the amd64 one, each pin with the
    digest of its own architecture's .deb."""
    arm64_path = _arm64(repo, feeds, with_security_update=True)
    assert _apply(feeds, repo, pip_compile) == 0
    amd64 = load_lock(repo / "images/portcullis/packages.lock")
    arm64 = load_lock(arm64_path)
    assert {d.name: d.version for d in arm64.debs} == {d.name: d.version for d in amd64.debs}
    libssl3 = next(d for d in arm64.debs if d.name == "libssl3")
    assert (libssl3.version, libssl3.architecture) == ("3.0.22-1~deb12u2", "arm64")
    assert libssl3.sha256 == arm64_digest("libssl3", "3.0.22-1~deb12u2")
    assert arm64.architecture == "arm64"
    assert "images/portcullis/packages-arm64.lock: libssl3" in (repo / "CHANGELOG.md").read_text()


def test_apply_changes_no_lock_when_one_architecture_lacks_the_version(
    repo: Path, feeds: FeedServer, pip_compile: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _arm64(repo, feeds, with_security_update=False)
    before = _applied_files(repo)
    assert _apply(feeds, repo, pip_compile) == 2
    err = capsys.readouterr().err
    assert "packages-arm64.lock: libssl3 3.0.22-1~deb12u2" in err
    assert "nothing applied" in err
    assert _applied_files(repo) == before
