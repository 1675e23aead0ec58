"""SBOM and provenance content: schema-valid, complete, and naming the right digests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from portcullis_release import REPO_ROOT, oci
from portcullis_release.attest import dsse, sbom
from portcullis_release.attest.provenance import BuildRun, SourceInfo, build_statement, write
from portcullis_release.plan import ReleasePlan

from tests.release.conftest import SyntheticRelease

REGISTRY = "registry.example.test:5000/portcullis"


def _occurrences(bom: dict[str, object]) -> dict[str, list[str]]:
    """file path -> names of the components claiming it."""
    out: dict[str, list[str]] = {}
    for comp in bom["components"]:  # type: ignore[attr-defined]
        for occ in (comp.get("evidence") or {}).get("occurrences") or []:
            out.setdefault(occ["location"], []).append(comp["name"])
    return out


def _image_inputs(rel: SyntheticRelease) -> sbom.ImageInputs:
    return sbom.ImageInputs(rel.runtime_lock, rel.packages_lock, rel.deb_dir)


def test_image_sbom_is_valid_cyclonedx_16_and_attributes_every_file(
    release_inputs: SyntheticRelease,
) -> None:
    plan = release_inputs.plan(REGISTRY)
    bom = sbom.image_bom(plan, _image_inputs(release_inputs))
    sbom.validate(json.dumps(bom))
    assert bom["specVersion"] == "1.6"
    assert bom["metadata"]["component"]["purl"].startswith(
        "pkg:oci/portcullis@" + plan.image.digest + "?"
    )
    owners = _occurrences(bom)
    assert sorted(owners) == release_inputs.files
    assert all(len(names) == 1 for names in owners.values()), owners
    assert owners["/usr/share/zoneinfo/UTC"] == ["tzdata-test"]
    assert owners["/usr/lib/x86_64-linux-gnu/ossl-modules/fips.so"] == ["openssl-fips-provider"]
    assert owners["/opt/portcullis/portcullis"] == ["portcullis"]
    assert owners["/etc/passwd"] == [sbom.RECIPE_COMPONENT]

    by_name = {c["name"]: c for c in bom["components"]}
    deb = by_name["tzdata-test"]
    assert deb["purl"] == "pkg:deb/debian/tzdata-test@2024a-1?arch=amd64&distro=debian-bookworm"
    lock = json.loads(release_inputs.packages_lock.read_text())
    assert deb["hashes"] == [{"alg": "SHA-256", "content": lock["debs"][0]["sha256"]}]
    fips = by_name["openssl-fips-provider"]
    assert fips["version"] == "3.0.20"
    assert fips["hashes"][0]["content"] == lock["fips_provider"]["fips_so_sha256"]
    assert by_name["pyyaml"]["purl"] == "pkg:pypi/pyyaml@6.0.2"
    hashes = by_name["pyyaml"]["externalReferences"][0]["hashes"]
    assert [h["content"] for h in hashes] == ["b" * 64, "c" * 64]


def test_sbom_validator_rejects_a_broken_document(release_inputs: SyntheticRelease) -> None:
    bom = sbom.image_bom(release_inputs.plan(REGISTRY), _image_inputs(release_inputs))
    bom["components"][0]["type"] = "not-a-component-type"
    with pytest.raises(sbom.SbomError, match=r"CycloneDX 1\.6"):
        sbom.validate(json.dumps(bom))


def test_chart_sbom_names_the_chart_digest_and_the_image(release_inputs: SyntheticRelease) -> None:
    plan = release_inputs.plan(REGISTRY)
    bom = sbom.chart_bom(plan)
    sbom.validate(json.dumps(bom))
    chart_digest = plan.artifact_for("chart").digest
    assert "@" + chart_digest + "?" in bom["metadata"]["component"]["purl"]
    images = [c for c in bom["components"] if c["type"] == "container"]
    assert [c["version"] for c in images] == [plan.image.digest]


def test_real_image_sbom_accounts_for_every_file() -> None:
    """The image `make image` built (a prerequisite of `make test`): every file in its layers is
    claimed by exactly one component, and every pinned .deb and Python dist is listed."""
    image_dir = REPO_ROOT / "dist" / "image"
    if not (image_dir / "index.json").is_file():
        pytest.fail("dist/image missing: `make test` builds it first (make image)")
    plan = ReleasePlan.load(image_dir, None, REGISTRY)
    inputs = sbom.ImageInputs(
        REPO_ROOT / "requirements/runtime.txt",
        REPO_ROOT / "images/portcullis/packages.lock",
        REPO_ROOT / ".cache/image/debs",
    )
    bom = sbom.image_bom(plan, inputs)
    sbom.validate(json.dumps(bom))
    owners = _occurrences(bom)
    assert sorted(owners) == sbom.image_files(plan.image)
    assert all(len(names) == 1 for names in owners.values())
    names = {c["name"] for c in bom["components"]}
    lock = json.loads((REPO_ROOT / "images/portcullis/packages.lock").read_text())
    assert {d["name"] for d in lock["debs"]} <= names
    runtime = sbom.parse_requirements_lock((REPO_ROOT / "requirements/runtime.txt").read_text())
    assert {d.name for d in runtime} <= names
    assert "openssl-fips-provider" in names
    # Nothing from a Debian package is left to the recipe bucket.
    recipe = [p for p, who in owners.items() if who == [sbom.RECIPE_COMPONENT]]
    assert not [p for p in recipe if p.startswith("/usr/share/zoneinfo/")]


def test_real_multiarch_sboms_account_for_every_file_of_each_image(tmp_path: Path) -> None:
    """`make image-multiarch`'s index (a prerequisite of `make test`): each platform image gets
    its own SBOM, from its own lock and .debs, in which every file of that image is claimed by
    exactly one component; the arm64 SBOM names arm64 packages only."""
    layout = REPO_ROOT / "dist" / "image-multiarch"
    if not (layout / "index.json").is_file():
        pytest.fail("dist/image-multiarch missing: `make test` builds it first")
    cache = Path(os.environ.get("PORTCULLIS_IMAGE_CACHE", str(REPO_ROOT / ".cache" / "image")))
    plan = ReleasePlan.load(layout, None, REGISTRY)
    assert sorted(plan.platforms) == ["amd64", "arm64"]
    inputs = sbom.ImageInputs(
        REPO_ROOT / "requirements/runtime.txt",
        REPO_ROOT / "images/portcullis/packages.lock",
        cache / "debs",
    )
    paths = sbom.write_image_sboms(tmp_path, plan, inputs)
    assert [p.name for p in paths] == ["image-amd64.cdx.json", "image-arm64.cdx.json"]
    for arch, path in zip(plan.platforms, paths, strict=True):
        bom = json.loads(path.read_text())
        image = plan.platforms[arch]
        assert image.digest in bom["metadata"]["component"]["purl"].replace("%3A", ":")
        owners = _occurrences(bom)
        assert sorted(owners) == sbom.image_files(image), arch
        assert all(len(names) == 1 for names in owners.values()), arch
        lock_path = sbom.platform_lock(inputs.packages_lock, arch)  # type: ignore[arg-type]
        lock = json.loads(lock_path.read_text())
        assert lock["architecture"] == arch
        by_name = {c["name"]: c for c in bom["components"]}
        for pin in lock["debs"]:
            assert by_name[pin["name"]]["hashes"][0]["content"] == pin["sha256"], pin["name"]
            # Architecture-independent packages (ca-certificates, tzdata) are `all`.
            wanted = "all" if pin["architecture"] == "all" else arch
            assert f"arch={wanted}&" in by_name[pin["name"]]["purl"], pin["name"]
        fips = by_name["openssl-fips-provider"]
        assert fips["hashes"][0]["content"] == lock["fips_provider"]["fips_so_sha256"]


def test_provenance_statement_is_slsa_v1_with_digests_and_dependencies(
    release_inputs: SyntheticRelease, keypair: object, tmp_path: Path
) -> None:
    plan = release_inputs.plan(REGISTRY)
    run = BuildRun(builder_id="https://builder.example.test/b")
    source = SourceInfo("https://example.test/src.git", "refs/heads/main", "ab" * 20, False)
    statement = build_statement(plan, REPO_ROOT, run, source)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert [s["digest"]["sha256"] for s in statement["subject"]] == [
        oci.digest_hex(plan.image.digest),
        oci.digest_hex(plan.artifact_for("chart").digest),
    ]
    build = statement["predicate"]["buildDefinition"]
    assert build["buildType"] == "urn:portcullis:buildtype:make-release:v1"
    assert build["externalParameters"]["source"] == {
        "repository": "https://example.test/src.git",
        "ref": "refs/heads/main",
    }
    deps = build["resolvedDependencies"]
    assert deps[0] == {
        "uri": "git+https://example.test/src.git@refs/heads/main",
        "digest": {"gitCommit": "ab" * 20},
    }
    assert any(d.get("name") == "requirements/runtime.txt" for d in deps)
    meta = statement["predicate"]["runDetails"]["metadata"]
    assert meta["invocationId"].startswith("urn:uuid:")
    assert meta["startedOn"] <= meta["finishedOn"]
    assert statement["predicate"]["runDetails"]["builder"]["id"] == run.builder_id

    from portcullis_release.attest import cosign_keys

    key = cosign_keys.load_private_key(keypair.private, keypair.password.encode())  # type: ignore[attr-defined]
    write(tmp_path, statement, key)
    envelope = dsse.Envelope.parse((tmp_path / "provenance.dsse.json").read_bytes())
    assert envelope.verified_by(key.public_key())
    assert envelope.statement() == statement


def test_example_policy_loads_and_unknown_fields_are_rejected(tmp_path: Path) -> None:
    from portcullis_release.verify.policy import Policy

    policy = Policy.from_file(REPO_ROOT / "provenance" / "policy.example.yaml")
    assert policy.source_repository == "https://forge.example/your-org/portcullis"
    assert policy.require_sbom
    bad = tmp_path / "p.yaml"
    bad.write_text(
        "apiVersion: portcullis.dev/v1\nkind: VerificationPolicy\nspec:\n  builderID: x\n"
    )
    with pytest.raises(ValueError, match=r"unknown field spec\.builderID"):
        Policy.from_file(bad)
