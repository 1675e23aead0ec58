"""`portcullis-release track-upstream` against loopback feeds in the services' own formats (no
network): a new version, a security update, a vanished pin, a CVE past its SLA, a yanked
release, VEX honoured, a malformed feed (clear error, nothing written or applied), and --apply.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from portcullis_release import REPO_ROOT
from portcullis_release.build.packages_lock import load_lock
from portcullis_release.cli import main
from portcullis_release.distribute import generated
from portcullis_release.manifest import load_manifest

from tests.support.upstream_feeds import FeedServer, atom, deb822, feed_server

TODAY = "2026-11-30"
SUITE = "bookworm"
SHA_NEW = hashlib.sha256(b"libssl3 3.0.21-1~deb12u1").hexdigest()  # as the index says
LOCK = {
    "format": 1,
    "suite": SUITE,
    "architecture": "amd64",
    "debs": [
        {
            "name": "libssl3",
            "version": "3.0.20-1~deb12u2",
            "architecture": "amd64",
            "sha256": "1" * 64,
        },
        {"name": "tzdata", "version": "2025b-0+deb12u2", "architecture": "all", "sha256": "2" * 64},
        {
            "name": "zlib1g",
            "version": "1:1.2.13.dfsg-1",
            "architecture": "amd64",
            "sha256": "3" * 64,
        },
    ],
    "fips_provider": {
        "source_package": "openssl",
        "source_version": "3.0.20-1~deb12u2",
        "fips_so_sha256": "4" * 64,
    },
}
RUNTIME = (
    "h11==0.16.0 \\\n    --hash=sha256:" + "a" * 64 + "\n"
    "idna==3.20 \\\n    --hash=sha256:" + "b" * 64 + "\n"
    "anyio==4.16.0 \\\n    --hash=sha256:" + "c" * 64 + "\n"
)


def _pypi(name: str, latest: str, releases: dict[str, bool]) -> bytes:
    """PyPI's /pypi/<name>/json: info.version and releases -> files (with ``yanked``)."""
    return json.dumps(
        {
            "info": {"name": name, "version": latest},
            "releases": {
                version: [
                    {
                        "filename": f"{name}-{version}-py3-none-any.whl",
                        "yanked": yanked,
                        "yanked_reason": "broken metadata" if yanked else None,
                    }
                ]
                for version, yanked in releases.items()
            },
        }
    ).encode()


def _packages(*entries: tuple[str, str, str, str]) -> bytes:
    return deb822(
        [
            {
                "Package": name,
                "Source": source,
                "Version": version,
                "Architecture": arch,
                "Filename": f"pool/main/x/{name}_{version}_{arch}.deb",
                "SHA256": hashlib.sha256(f"{name} {version}".encode()).hexdigest(),
            }
            for name, source, version, arch in entries
        ]
    )


def _serve_all(feeds: FeedServer) -> None:
    r = feeds.routes
    r["/pypi/h11/json"] = (200, _pypi("h11", "0.17.0", {"0.16.0": False, "0.17.0": False}))
    r["/pypi/idna/json"] = (200, _pypi("idna", "3.20", {"3.20": True, "3.19": False}))
    r["/pypi/anyio/json"] = (200, _pypi("anyio", "4.16.0", {"4.16.0": False}))
    feeds.osv[("PyPI", "anyio", "4.16.0")] = [
        {
            "id": "GHSA-xxxx-yyyy-zzzz",
            "aliases": ["CVE-2026-1111"],
            "published": "2026-10-01T00:00:00Z",
            "database_specific": {"severity": "HIGH"},
            "affected": [
                {
                    "package": {"name": "anyio", "ecosystem": "PyPI"},
                    "ranges": [
                        {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "4.16.1"}]}
                    ],
                }
            ],
        }
    ]
    r[f"/debian/dists/{SUITE}/main/binary-amd64/Packages.gz"] = (
        200,
        _packages(
            ("libssl3", "openssl", "3.0.20-1~deb12u2", "amd64"),
            ("tzdata", "tzdata", "2025b-0+deb12u2", "all"),
            ("zlib1g", "zlib", "1:1.2.13.dfsg-1+b1", "amd64"),
        ),
    )
    r[f"/debian/dists/{SUITE}-updates/main/binary-amd64/Packages.gz"] = (200, _packages())
    r[f"/security/dists/{SUITE}-security/main/binary-amd64/Packages.gz"] = (
        200,
        _packages(("libssl3", "openssl", "3.0.21-1~deb12u1", "amd64")),
    )
    r[f"/debian/dists/{SUITE}/main/source/Sources.gz"] = (
        200,
        deb822([{"Package": "openssl", "Version": "3.0.20-1~deb12u2"}]),
    )
    r[f"/security/dists/{SUITE}-security/main/source/Sources.gz"] = (
        200,
        deb822([{"Package": "openssl", "Version": "3.0.21-1~deb12u1"}]),
    )
    r["/tracker/json"] = (
        200,
        json.dumps(
            {
                "openssl": {
                    "CVE-2026-2222": {
                        "description": "example",
                        "releases": {
                            SUITE: {
                                "status": "resolved",
                                "fixed_version": "3.0.21-1~deb12u1",
                                "urgency": "high",
                            }
                        },
                    },
                    "CVE-2025-0001": {
                        "releases": {
                            SUITE: {
                                "status": "resolved",
                                "fixed_version": "3.0.15-1~deb12u1",
                                "urgency": "low",
                            }
                        }
                    },
                }
            }
        ).encode(),
    )
    r["/dex/releases.atom"] = (200, atom(["v2.46.0", "v2.45.1"]))


def _args(feeds: FeedServer, repo: Path, *extra: str) -> list[str]:
    return [
        "track-upstream",
        "--repo",
        str(repo),
        "--today",
        TODAY,
        "--pypi-url",
        feeds.url,
        "--osv-url",
        feeds.url,
        "--debian-url",
        f"{feeds.url}/debian",
        "--debian-security-url",
        f"{feeds.url}/security",
        "--security-tracker-url",
        f"{feeds.url}/tracker/json",
        "--dex-releases-url",
        f"{feeds.url}/dex/releases.atom",
        *extra,
    ]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A tree with the files track-upstream reads and --apply writes."""
    root = tmp_path / "repo"
    for rel in (
        "pyproject.toml",
        "server/portcullis/__init__.py",
        "server/kubectl_portcullis/__init__.py",
        "release/manifest.yaml",
        "release/policy.yaml",
        str(generated.CHART_YAML),
        str(generated.DOCS_PAGE),
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / rel, root / rel)
    shutil.copytree(REPO_ROOT / generated.FLUX_DIR, root / generated.FLUX_DIR)
    (root / "images/portcullis").mkdir(parents=True)
    (root / "images/portcullis/packages.lock").write_text(json.dumps(LOCK, indent=2))
    (root / "requirements").mkdir()
    (root / "requirements/runtime.txt").write_text(RUNTIME)
    return root


@pytest.fixture
def feeds() -> Iterator[FeedServer]:
    with feed_server() as server:
        _serve_all(server)
        yield server


def _plan(repo: Path) -> dict[str, dict[str, object]]:
    plan = json.loads((repo / "dist/upstream/plan.json").read_text())
    return {f"{c['ecosystem']}:{c['name']}": c for c in plan["changes"]} | {"": plan}


def test_plan_reports_every_kind_of_upstream_change(repo: Path, feeds: FeedServer) -> None:
    assert main(_args(feeds, repo)) == 0
    plan = _plan(repo)
    # a new version
    assert plan["pypi:h11"]["proposed"] == "0.17.0"
    assert plan["pypi:h11"]["reasons"] == ["new version 0.17.0"]
    # a yanked release
    assert plan["pypi:idna"]["reasons"] == ["pinned 3.20 was yanked: broken metadata"]
    # a security update from bookworm-security, with the tracker's CVE (the old one is fixed)
    libssl = plan["deb:libssl3"]
    assert libssl["proposed"] == "3.0.21-1~deb12u1"
    assert libssl["reasons"][0] == f"security update 3.0.21-1~deb12u1 in {SUITE}-security"
    (vuln,) = libssl["vulnerabilities"]  # type: ignore[misc]
    assert (vuln["id"], vuln["severity"], vuln["deadline"]) == (
        "CVE-2026-2222",
        "high",
        "2026-12-14",
    )
    assert plan["deb-source:openssl"]["proposed"] == "3.0.21-1~deb12u1"
    # a vanished pin
    assert plan["deb:zlib1g"]["reasons"][0] == "pinned 1:1.2.13.dfsg-1 vanished from the mirror"
    assert plan["deb:zlib1g"]["proposed"] == "1:1.2.13.dfsg-1+b1"
    assert "deb:tzdata" not in plan
    # a CVE past its SLA: published 2026-10-01, high = 14 days
    anyio = plan["pypi:anyio"]
    (osv,) = anyio["vulnerabilities"]  # type: ignore[misc]
    assert (osv["deadline"], osv["past_due"], anyio["proposed"]) == ("2026-10-15", True, "4.16.1")
    assert plan[""]["past_due"] == ["pypi:anyio:CVE-2026-1111"]
    # Dex moved past the compatibility target
    assert plan["dex:dex"]["proposed"] == "v2.46.0"
    table = (repo / "dist/upstream/plan.txt").read_text()
    assert "PAST DUE" in table
    assert "CVE-2026-2222 high, due 2026-12-14" in table
    # the SLA clock is kept: the first sighting is recorded and survives the next run
    seen = json.loads((repo / "release/upstream-seen.json").read_text())
    assert seen["CVE-2026-2222"] == TODAY
    assert main([*_args(feeds, repo)[:4], "2027-01-01", *_args(feeds, repo)[5:]]) == 0
    assert _plan(repo)["deb:libssl3"]["vulnerabilities"][0]["past_due"] is True  # type: ignore[index]


def test_vex_not_affected_takes_a_cve_out_of_the_deadlines(repo: Path, feeds: FeedServer) -> None:
    (repo / "release/vex.json").write_text(
        json.dumps(
            {
                "@context": "https://openvex.dev/ns/v0.2.0",
                "statements": [
                    {
                        "vulnerability": {"name": "CVE-2026-1111"},
                        "products": [{"@id": "pkg:oci/portcullis"}],
                        "status": "not_affected",
                        "justification": "vulnerable_code_not_in_execute_path",
                    }
                ],
            }
        )
    )
    assert main(_args(feeds, repo)) == 0
    (osv,) = _plan(repo)["pypi:anyio"]["vulnerabilities"]  # type: ignore[misc]
    assert osv["past_due"] is False
    assert osv["deadline"] is None
    assert osv["vex"] == "not_affected: vulnerable_code_not_in_execute_path"
    assert _plan(repo)[""]["past_due"] == []


@pytest.mark.parametrize(
    ("route", "body", "message"),
    [
        ("/dex/releases.atom", b"<html>rate limited</html>", "Dex releases"),
        ("/tracker/json", b"[1, 2", "Debian security tracker"),
        (f"/debian/dists/{SUITE}/main/binary-amd64/Packages.gz", b"not gzip", "Debian archive"),
        ("/pypi/h11/json", b'{"info": "x"}', "PyPI"),
        ("/v1/query", b'{"vulns": {"id": 1}}', "OSV"),
    ],
)
def test_a_malformed_feed_is_a_clear_error_and_nothing_is_written(
    repo: Path,
    feeds: FeedServer,
    route: str,
    body: bytes,
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    feeds.routes[route] = (200, body)
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    assert main(_args(feeds, repo, "--apply")) == 2
    err = capsys.readouterr().err
    assert message in err
    assert feeds.url in err
    assert "nothing applied" in err
    assert {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before


def test_apply_updates_the_lock_version_generated_files_and_changelog(
    repo: Path, feeds: FeedServer
) -> None:
    # Only Debian moves here (pip-compile needs PyPI itself; see docs/releasing.md).
    feeds.routes["/pypi/h11/json"] = (200, _pypi("h11", "0.16.0", {"0.16.0": False}))
    feeds.routes["/pypi/idna/json"] = (200, _pypi("idna", "3.20", {"3.20": False}))
    feeds.osv.clear()
    assert main(_args(feeds, repo, "--apply")) == 0
    lock = {d.name: d for d in load_lock(repo / "images/portcullis/packages.lock").debs}
    assert lock["libssl3"].version == "3.0.21-1~deb12u1"
    assert lock["libssl3"].sha256 == SHA_NEW
    assert lock["zlib1g"].version == "1:1.2.13.dfsg-1+b1"
    assert lock["tzdata"].version == "2025b-0+deb12u2"
    manifest = load_manifest(repo / "release/manifest.yaml")
    assert (manifest.image.tag, manifest.chart.version) == ("0.1.1", "0.1.1")
    assert 'version = "0.1.1"' in (repo / "pyproject.toml").read_text()
    assert '__version__ = "0.1.1"' in (repo / "server/portcullis/__init__.py").read_text()
    assert generated.check(manifest, repo) == []
    assert yaml.safe_load((repo / generated.CHART_YAML).read_text())["appVersion"] == "0.1.1"
    changelog = (repo / "CHANGELOG.md").read_text()
    assert f"## 0.1.1 ({TODAY})" in changelog
    assert "deb `libssl3` 3.0.20-1~deb12u2 -> 3.0.21-1~deb12u1" in changelog
    assert "CVE-2026-2222 (high)" in changelog
    assert "dex `dex` v2.45.1 -> v2.46.0" in changelog
    assert "not applied" in changelog


def _arm64_lock(repo: Path, feeds: FeedServer, security_version: str) -> Path:
    """packages-arm64.lock beside packages.lock, and the arm64 indexes to re-pin it from."""
    doc = dict(LOCK, architecture="arm64")
    doc["debs"] = [
        dict(d, architecture="arm64" if d["architecture"] == "amd64" else d["architecture"])
        for d in LOCK["debs"]  # type: ignore[attr-defined]
    ]
    path = repo / "images/portcullis/packages-arm64.lock"
    path.write_text(json.dumps(doc, indent=2))
    r = feeds.routes
    r[f"/debian/dists/{SUITE}/main/binary-arm64/Packages.gz"] = (
        200,
        _packages(
            ("libssl3", "openssl", "3.0.20-1~deb12u2", "arm64"),
            ("tzdata", "tzdata", "2025b-0+deb12u2", "all"),
            ("zlib1g", "zlib", "1:1.2.13.dfsg-1+b1", "arm64"),
        ),
    )
    r[f"/debian/dists/{SUITE}-updates/main/binary-arm64/Packages.gz"] = (200, _packages())
    r[f"/security/dists/{SUITE}-security/main/binary-arm64/Packages.gz"] = (
        200,
        _packages(("libssl3", "openssl", security_version, "arm64")),
    )
    feeds.routes["/pypi/h11/json"] = (200, _pypi("h11", "0.16.0", {"0.16.0": False}))
    feeds.routes["/pypi/idna/json"] = (200, _pypi("idna", "3.20", {"3.20": False}))
    feeds.osv.clear()
    return path


def test_apply_moves_every_architectures_lock_to_the_same_versions(
    repo: Path, feeds: FeedServer
) -> None:
    """The arm64 image must carry the same Debian versions as the amd64 one."""
    arm64_path = _arm64_lock(repo, feeds, "3.0.21-1~deb12u1")
    assert main(_args(feeds, repo, "--apply")) == 0
    amd64 = load_lock(repo / "images/portcullis/packages.lock")
    arm64 = load_lock(arm64_path)
    assert {d.name: d.version for d in arm64.debs} == {d.name: d.version for d in amd64.debs}
    libssl3 = next(d for d in arm64.debs if d.name == "libssl3")
    assert (libssl3.version, libssl3.architecture) == ("3.0.21-1~deb12u1", "arm64")
    assert libssl3.sha256 == SHA_NEW
    assert arm64.architecture == "arm64"


def test_apply_changes_no_lock_when_one_architecture_lacks_the_version(
    repo: Path, feeds: FeedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    arm64_path = _arm64_lock(repo, feeds, "3.0.20-1~deb12u2")  # not yet built for arm64
    before = {p: p.read_bytes() for p in repo.rglob("*.lock")}
    assert main(_args(feeds, repo, "--apply")) == 2
    err = capsys.readouterr().err
    assert "packages-arm64.lock: libssl3 3.0.21-1~deb12u1" in err
    assert "nothing applied" in err
    assert {p: p.read_bytes() for p in repo.rglob("*.lock")} == before
    assert arm64_path in before
