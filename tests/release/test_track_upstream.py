"""`portcullis-release track-upstream` against loopback feeds serving the responses recorded
from the real services (tests/release/fixtures/upstream; no network in tests): a new version,
a security update, a vanished pin, a CVE past its SLA, a yanked release, VEX honoured (the
release's own release/vex.json), and a malformed feed (clear error, nothing written or
applied). The pins and what the recordings say about them: tests/support/upstream_repo.py.
--apply: test_track_upstream_apply.py.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from portcullis_release import REPO_ROOT
from portcullis_release.cli import main

from tests.support.upstream_feeds import FeedServer, feed_server
from tests.support.upstream_repo import (
    SUITE,
    TODAY,
    lock_entry,
    make_repo,
    plan_by_input,
    track_args,
    tree,
)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(
        tmp_path / "repo",
        lock_entry("anyio", "4.6.2") + lock_entry("h11", "0.15.0"),
        "anyio\nh11\n",
    )


@pytest.fixture
def feeds() -> Iterator[FeedServer]:
    with feed_server() as server:
        server.serve_recorded()
        yield server


def test_plan_reports_every_kind_of_upstream_change(repo: Path, feeds: FeedServer) -> None:
    assert main(track_args(feeds, repo)) == 0
    plan = plan_by_input(repo)
    # a new version, with an advisory it fixes: critical (7 days) since 2025-04-24, past due
    h11 = plan["pypi:h11"]
    assert h11["proposed"] == "0.16.0"
    assert h11["reasons"] == ["new version 0.16.0", "security: GHSA-vqfr-h8mv-ghfj"]
    (osv,) = h11["vulnerabilities"]  # type: ignore[misc]
    assert (osv["aliases"], osv["severity"], osv["fixed"]) == (
        ["CVE-2025-43859"],
        "critical",
        "0.16.0",
    )
    assert (osv["known_since"], osv["deadline"], osv["past_due"]) == (
        "2025-04-24",
        "2025-05-01",
        True,
    )
    assert plan[""]["past_due"] == ["pypi:h11:CVE-2025-43859"]
    # a yanked release, with PyPI's reason
    anyio = plan["pypi:anyio"]
    assert anyio["reasons"] == [
        "pinned 4.6.2 was yanked: This was 4.5.2 code, mistagged",
        "new version 4.16.0",
    ]
    assert anyio["proposed"] == "4.16.0"
    # a security update from bookworm-security (not bookworm-updates' older build), with the
    # tracker's open CVEs for the pinned version (one the pin already carries is left out)
    libssl = plan["deb:libssl3"]
    assert libssl["proposed"] == "3.0.22-1~deb12u2"
    assert libssl["reasons"][0] == f"security update 3.0.22-1~deb12u2 in {SUITE}-security"
    vulns = {v["id"]: v for v in libssl["vulnerabilities"]}  # type: ignore[attr-defined]
    assert sorted(vulns) == ["CVE-2026-63072", "CVE-2026-75806"]
    assert (vulns["CVE-2026-63072"]["severity"], vulns["CVE-2026-63072"]["deadline"]) == (
        "high",
        "2026-12-14",
    )
    # the tracker's "not yet assigned" urgency counts as medium (unknown is not harmless)
    assert vulns["CVE-2026-75806"]["severity"] == "medium"
    # a vanished pin: the newest build still listed is proposed, and its CVEs are still found
    # through the source package the other builds name (glibc)
    libc = plan["deb:libc6"]
    assert libc["reasons"][:2] == [
        "pinned 2.36-9+deb12u13 vanished from the mirror",
        f"new version 2.36-9+deb12u14 in {SUITE}",
    ]
    assert libc["proposed"] == "2.36-9+deb12u14"
    assert sorted(v["id"] for v in libc["vulnerabilities"]) == [  # type: ignore[attr-defined]
        "CVE-2010-4756",
        "CVE-2026-4437",
    ]
    # current pins are not in the plan
    assert "deb:tzdata" not in plan
    assert "deb:zlib1g" not in plan
    # the FIPS provider's source
    openssl = plan["deb-source:openssl"]
    assert openssl["proposed"] == "3.0.22-1~deb12u2"
    assert openssl["reasons"][0] == (
        f"source 3.0.22-1~deb12u2 in {SUITE}-security (rebuild the FIPS provider)"
    )
    # Dex moved past the compatibility target
    assert plan["dex:dex"]["proposed"] == "v2.46.0"
    table = (repo / "dist/upstream/plan.txt").read_text()
    assert "PAST DUE" in table
    assert "CVE-2026-63072 high, due 2026-12-14" in table


def test_the_sla_clock_is_kept_between_runs(repo: Path, feeds: FeedServer) -> None:
    """The tracker publishes no dates: the first sighting is recorded and survives."""
    assert main(track_args(feeds, repo)) == 0
    seen = (repo / "release/upstream-seen.json").read_text()
    assert f'"CVE-2026-63072": "{TODAY}"' in seen
    assert main(track_args(feeds, repo, today="2027-01-01")) == 0
    libssl = plan_by_input(repo)["deb:libssl3"]
    vulns = {v["id"]: v for v in libssl["vulnerabilities"]}  # type: ignore[attr-defined]
    assert vulns["CVE-2026-63072"]["known_since"] == TODAY
    assert vulns["CVE-2026-63072"]["past_due"] is True


def _libc6_vulnerabilities(repo: Path) -> dict[str, dict[str, object]]:
    change = plan_by_input(repo)["deb:libc6"]
    return {v["id"]: v for v in change["vulnerabilities"]}  # type: ignore[attr-defined]


def _pin_libc6(repo: Path, version: str) -> None:
    path = repo / "images/portcullis/packages.lock"
    lock = json.loads(path.read_text())
    for deb in lock["debs"]:
        if deb["name"] == "libc6":
            deb["version"] = version
    path.write_text(json.dumps(lock))


def test_the_release_vex_document_clears_its_cves_for_the_build_it_names(
    repo: Path, feeds: FeedServer
) -> None:
    """release/vex.json's statements are about libc6 2.36-9+deb12u14 (their subcomponent): they
    clear CVE-2010-4756 for that pin, and nothing for the vanished +deb12u13."""
    shutil.copy(REPO_ROOT / "release/vex.json", repo / "release/vex.json")
    assert main(track_args(feeds, repo)) == 0
    vulns = _libc6_vulnerabilities(repo)
    assert vulns["CVE-2010-4756"]["vex"] is None  # a statement about another build
    assert vulns["CVE-2010-4756"]["deadline"] == "2027-02-28"  # unimportant = low: 90 days
    assert vulns["CVE-2026-4437"]["vex"] is None  # "fixed" in +deb12u14, not in +deb12u13

    _pin_libc6(repo, "2.36-9+deb12u14")
    assert main(track_args(feeds, repo)) == 0
    vulns = _libc6_vulnerabilities(repo)
    assert sorted(vulns) == ["CVE-2010-4756"]  # the pin carries CVE-2026-4437's fix
    assert vulns["CVE-2010-4756"]["vex"] == (
        "not_affected: vulnerable_code_cannot_be_controlled_by_adversary"
    )
    assert (vulns["CVE-2010-4756"]["deadline"], vulns["CVE-2010-4756"]["past_due"]) == (
        None,
        False,
    )
    assert "VEX not_affected" in (repo / "dist/upstream/plan.txt").read_text()


def test_an_invalid_vex_document_stops_the_run(
    repo: Path, feeds: FeedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A VEX statement the tracker cannot check must not silently clear (or fail to clear)."""
    doc = json.loads((REPO_ROOT / "release/vex.json").read_text())
    del doc["statements"][0]["impact_statement"]
    (repo / "release/vex.json").write_text(json.dumps(doc))
    assert main(track_args(feeds, repo)) == 2
    assert "statements[0]: not_affected needs an impact_statement" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("route", "body", "message"),
    [
        ("/dex/releases.atom", b"<html>rate limited</html>", "Dex releases"),
        ("/tracker/json", b"[1, 2", "Debian security tracker"),
        (f"/debian/dists/{SUITE}/main/binary-amd64/Packages.xz", b"not xz", "Debian archive"),
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
    before = tree(repo)
    assert main(track_args(feeds, repo, "--apply")) == 2
    err = capsys.readouterr().err
    assert message in err
    assert feeds.url in err
    assert "nothing applied" in err
    assert tree(repo) == before


def test_an_index_missing_from_the_mirror_is_a_clear_error(
    repo: Path, feeds: FeedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """As deb.debian.org answers for an index a suite does not publish (bookworm-security
    has no Packages.gz, only .xz): 404, named with its URL."""
    del feeds.routes[f"/security/dists/{SUITE}-security/main/binary-amd64/Packages.xz"]
    before = tree(repo)
    assert main(track_args(feeds, repo)) == 2
    err = capsys.readouterr().err
    assert f"{SUITE}-security/main/binary-amd64/Packages.xz: HTTP 404" in err
    assert tree(repo) == before
