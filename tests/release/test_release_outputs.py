"""What `make release` writes: a development release (no REGISTRY: the throwaway local registry
and key) stays under dist/; only a real release rewrites the tracked manifest and Flux files.

The release function runs for real (local docker-registry, signing, publish, verify) on a
synthetic image and chart; the tracked files are stood in for by copies in a temp directory.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from portcullis_release import REPO_ROOT, manifest
from portcullis_release.attest import vex
from portcullis_release.distribute import generated
from portcullis_release.release import STAGES, ReleaseOptions, run_release
from rich.console import Console

from tests.release.conftest import SyntheticRelease


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_development_release_leaves_tracked_files_alone(
    release_inputs: SyntheticRelease, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("REGISTRY", "AUTH_FILE", "COSIGN_KEY", "COSIGN_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    tracked = tmp_path / "tracked"
    tracked.mkdir()
    shutil.copy(REPO_ROOT / "release" / "manifest.yaml", tracked / "manifest.yaml")
    shutil.copytree(REPO_ROOT / "deploy" / "flux", tracked / "flux")
    for rel in (generated.CHART_YAML, generated.DOCS_PAGE):
        (tracked / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / rel, tracked / rel)
    before = _snapshot(tracked)
    release_dir = tmp_path / "dist" / "release"
    options = ReleaseOptions(
        image=release_inputs.image_dir,
        chart_dir=release_inputs.chart.parent,
        release_dir=release_dir,
        manifest=tracked / "manifest.yaml",
        flux_dir=tracked / "flux",
        runtime_lock=release_inputs.runtime_lock,
        packages_lock=release_inputs.packages_lock,
        deb_dir=release_inputs.deb_dir,
        tree=tracked,
        skip_chart_build=True,
    )
    console = Console(record=True, width=400, file=io.StringIO())
    assert run_release(options, console) == 0
    assert _snapshot(tracked) == before, "a development release rewrote tracked files"
    written = manifest.load_manifest(release_dir / "manifest.yaml")
    assert written.development
    assert written.image.repository.startswith("127.0.0.1:")
    assert written.placeholders() == []
    assert sorted(p.name for p in (release_dir / "flux").iterdir()) == sorted(
        p.name for p in (tracked / "flux").iterdir()
    )

    # It reads like a release: every stage reported, then a summary of what was verified.
    text = console.export_text()
    for number in range(1, len(STAGES) + 1):
        assert f"done [{number}/{len(STAGES)}]" in text
    plan = release_inputs.plan(written.image.repository.rsplit("/", 1)[0])
    for role, digest in (("image", written.image.digest), ("chart", written.chart.digest)):
        row = next(line for line in text.splitlines() if f" {role} " in line and digest in line)
        assert "MB" in row, row
    assert plan.image.digest == written.image.digest
    assert text.count("signature: verified") == 2
    assert text.count("SBOM: CycloneDX") == 2
    assert text.count("provenance: builder urn:portcullis:builder:local-make") == 2
    assert f"registry {written.image.repository.rsplit('/', 1)[0]}" in text
    assert "development (rehearsal: do not deploy)" in text
    # The published index, in the seeds' layout, is written with the release under dist/.
    index = release_dir / "index"
    assert generated.render_index(written) == {
        p.relative_to(index): p.read_text() for p in index.rglob("*") if p.is_file()
    }


def test_vex_is_attached_and_verified(
    release_inputs: SyntheticRelease, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """release/vex.json goes out bound to the image digest and `verify` checks it."""
    for name in ("REGISTRY", "AUTH_FILE", "COSIGN_KEY", "COSIGN_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    release_dir = tmp_path / "release"
    options = ReleaseOptions(
        image=release_inputs.image_dir,
        chart_dir=release_inputs.chart.parent,
        release_dir=release_dir,
        manifest=REPO_ROOT / "release" / "manifest.yaml",
        runtime_lock=release_inputs.runtime_lock,
        packages_lock=release_inputs.packages_lock,
        deb_dir=release_inputs.deb_dir,
        skip_chart_build=True,
    )
    console = Console(record=True, width=400, file=io.StringIO())
    assert run_release(options, console) == 0
    text = console.export_text()
    doc = vex.load(REPO_ROOT / "release" / "vex.json")
    cleared = sum(s["status"] == "not_affected" for s in doc["statements"])
    assert f"VEX: OpenVEX, {len(doc['statements'])} statements ({cleared} not_affected)" in text
    bound = vex.load(release_dir / vex.VEX_FILE)
    digest = release_inputs.plan("x/y").image.digest
    assert all(f"@{digest}" in s["products"][0]["@id"] for s in bound["statements"])
    assert vex.load(REPO_ROOT / "release" / "vex.json")["statements"][0]["justification"]


def test_invalid_vex_names_the_statement(tmp_path: Path) -> None:
    doc = json.loads((REPO_ROOT / "release" / "vex.json").read_text())
    assert doc["statements"][0]["status"] == "not_affected"
    del doc["statements"][0]["justification"]
    path = tmp_path / "vex.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(vex.VexError, match=r"statements\[0\]: not_affected needs a justification"):
        vex.load(path)
    doc["statements"][0]["justification"] = "vulnerable_code_not_present"
    del doc["statements"][0]["impact_statement"]
    path.write_text(json.dumps(doc))
    with pytest.raises(vex.VexError, match=r"statements\[0\]: not_affected needs an impact_st"):
        vex.load(path)


def test_verifier_refuses_a_vex_for_another_digest() -> None:
    from portcullis_release.verify.policy import Policy
    from portcullis_release.verify.verifier import VerificationError, Verifier

    doc = vex.load(REPO_ROOT / "release" / "vex.json")
    mine, other = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    verifier = Verifier.__new__(Verifier)  # check_vex reads only the statements it is given
    verifier.policy, verifier.fingerprint = Policy(require_vex=True), "SHA256:test"
    good = vex.statement(vex.for_image(doc, "r.example/p/portcullis", mine), "r", mine)
    assert verifier.check_vex([good], mine).startswith(
        f"VEX: OpenVEX, {len(doc['statements'])} statements"
    )
    replayed = vex.statement(vex.for_image(doc, "r.example/p/portcullis", other), "r", mine)
    with pytest.raises(VerificationError, match=r"statements\[0\] \(CVE-2010-4756\) does not name"):
        verifier.check_vex([replayed], mine)
    with pytest.raises(VerificationError, match="missing VEX"):
        verifier.check_vex([good], other)
