"""A multi-architecture release: the image index and both platform images, published, signed,
attested and verified, cross-checked by the real cosign.

The inputs are laid out as `image index` writes dist/image-multiarch (``build.image
.index_artifact``), small synthetic images with a real .deb per architecture. The release must push
each platform image before the index, tag only the index, sign the index and each image under
its own digest, give each image its own SBOM (from its own architecture's lock) and name all
three in the provenance; `verify` must follow the index into each image, and a tampered platform
image must fail it (and cosign) even though the index itself is intact.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from portcullis_release import REPO_ROOT, cli, manifest, oci
from portcullis_release.attest import cosign_format, provenance
from portcullis_release.distribute.publish import Publisher, publish_plan
from portcullis_release.distribute.registry import RegistryClient, RegistryError
from portcullis_release.release import ReleaseOptions, run_release
from portcullis_release.verify.verifier import VerificationError
from rich.console import Console

from tests.release.conftest import (
    BUILDER_ID,
    SOURCE_REPO,
    STALE_REVISION,
    KeyPair,
    SyntheticRelease,
    cosign_env,
    synthetic_multiarch_release,
)
from tests.release.test_publish_verify import (
    client,
    cosign_verify,
    pinned,
    release,
    run_cosign,
    verifier,
)
from tests.support.registry import Registry, start_registry

pytestmark = pytest.mark.integration

ARCHES = ("amd64", "arm64")
PLATFORMS = {"amd64": "linux/amd64", "arm64": "linux/arm64/v8"}


@pytest.fixture(scope="module")
def multi_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = start_registry(tmp_path_factory.mktemp("reg"), {"releaser": "release-test-password"})
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def multi_inputs(tmp_path_factory: pytest.TempPathFactory) -> SyntheticRelease:
    return synthetic_multiarch_release(tmp_path_factory.mktemp("multi"), marker="multi")


def _statements(stdout: str) -> list[dict[str, object]]:
    return [
        json.loads(base64.b64decode(json.loads(line)["payload"]))
        for line in stdout.splitlines()
        if line.strip()
    ]


def test_the_plan_reads_the_index_and_orders_images_before_it(
    multi_inputs: SyntheticRelease,
) -> None:
    plan = multi_inputs.plan("registry.example/portcullis")
    assert plan.image.media_type == oci.OCI_INDEX
    assert list(plan.platforms) == list(ARCHES)
    assert plan.roles() == ["image-amd64", "image-arm64", "image", "chart"]
    named = [m["digest"] for m in plan.image.manifest_json()["manifests"]]
    assert named == [plan.platforms[a].digest for a in ARCHES]
    assert plan.tag_for("image") == "1.2.3"
    assert plan.tag_for("image-arm64") == ""


def test_multiarch_release_publishes_signs_and_verifies_each_image(
    multi_registry: Registry,
    multi_inputs: SyntheticRelease,
    keypair: KeyPair,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    plan, release_dir, report = release(multi_registry, "multi", multi_inputs, keypair, tmp_path)
    assert report is not None
    digests = {role: plan.artifact_for(role).digest for role in plan.roles()}
    # Tags: the version on the index and the chart, .sig/.att per digest; none on an image.
    expected = ["1.2.3", "1.2.3"]
    for digest in digests.values():
        expected += [cosign_format.sig_tag(digest), cosign_format.att_tag(digest)]
    assert sorted(t.split(":")[-1] for t in report.tags_moved) == sorted(expected)
    with client(multi_registry) as c:
        assert c.manifest_digest(plan.image_ref.repository, "1.2.3") == plan.image.digest
        served, media_type = c.get_manifest(plan.image_ref.repository, "1.2.3")
    assert media_type == oci.OCI_INDEX
    assert served == plan.image.manifest

    # One SBOM per platform image, each from its own architecture's lock and .deb.
    for arch in ARCHES:
        bom = json.loads((release_dir / f"image-{arch}.cdx.json").read_text())
        assert plan.platforms[arch].digest in bom["metadata"]["component"]["purl"].replace(
            "%3A", ":"
        )
        debs = [c["purl"] for c in bom["components"] if c["name"] == "tzdata-test"]
        assert debs == [f"pkg:deb/debian/tzdata-test@2024a-1?arch={arch}&distro=debian-bookworm"]
        fips = next(c for c in bom["components"] if c["name"] == "openssl-fips-provider")
        triplet = {"amd64": "x86_64", "arm64": "aarch64"}[arch]
        assert [o["location"] for o in fips["evidence"]["occurrences"]] == [
            f"/usr/lib/{triplet}-linux-gnu/ossl-modules/fips.so"
        ]
    assert not (release_dir / "image.cdx.json").exists()
    # The provenance names the index, both images and the chart.
    statement = json.loads((release_dir / provenance.STATEMENT_FILE).read_text())
    subjects = {"sha256:" + s["digest"]["sha256"] for s in statement["subject"]}
    assert subjects == set(digests.values())

    result = verifier(multi_registry, keypair.public).verify(pinned(plan))
    assert result.digest == plan.image.digest
    assert [c.platform for c in result.platforms] == [PLATFORMS[a] for a in ARCHES]
    assert [c.digest for c in result.platforms] == [plan.platforms[a].digest for a in ARCHES]
    assert result.blobs_checked == 4  # config and layer of each image
    assert not any(n.startswith("SBOM") for n in result.notes)
    for child in result.platforms:
        assert any(n.startswith("signature: verified") for n in child.notes)
        assert any(n.startswith("provenance: builder") for n in child.notes)
        assert any(n.startswith("SBOM: CycloneDX 1.6") for n in child.notes)

    # Publishing again pushes nothing and moves no tag.
    again = publish_plan(plan, release_dir, multi_registry.auth_file)
    assert not again.changed, again.summary()

    code = cli.main(
        [
            "verify",
            str(pinned(plan)),
            "--key",
            str(keypair.public),
            "--builder-id",
            BUILDER_ID,
            "--source-repo",
            SOURCE_REPO,
            "--auth-file",
            str(multi_registry.auth_file),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    for arch in ARCHES:
        assert f"{PLATFORMS[arch]} {plan.platforms[arch].digest}" in out


def test_cosign_verifies_the_index_and_each_image(
    multi_registry: Registry,
    multi_inputs: SyntheticRelease,
    keypair: KeyPair,
    tmp_path: Path,
    cosign: Path,
) -> None:
    plan, _, _ = release(multi_registry, "multi-cosign", multi_inputs, keypair, tmp_path)
    env = cosign_env(tmp_path, multi_registry)
    name = plan.image_ref.name
    # By tag, cosign resolves the tag to the index digest and checks the index's signature.
    assert cosign_verify(cosign, env, keypair.public, f"{name}:{plan.image_tag}") == 0
    for role in ("image", "image-amd64", "image-arm64"):
        digest = plan.artifact_for(role).digest
        ref = f"{name}@{digest}"
        proc = run_cosign(
            cosign,
            env,
            "verify",
            "--key",
            str(keypair.public),
            "--insecure-ignore-tlog=true",
            "--allow-http-registry",
            "--allow-insecure-registry",
            ref,
        )
        assert proc.returncode == 0, (role, proc.stderr[-2000:])
        (payload,) = json.loads(proc.stdout)
        assert payload["critical"]["image"]["docker-manifest-digest"] == digest
        kinds = ("slsaprovenance1",) if role == "image" else ("slsaprovenance1", "cyclonedx")
        for kind in kinds:
            proc = run_cosign(
                cosign,
                env,
                "verify-attestation",
                "--key",
                str(keypair.public),
                "--type",
                kind,
                "--insecure-ignore-tlog=true",
                "--allow-http-registry",
                "--allow-insecure-registry",
                ref,
            )
            assert proc.returncode == 0, (role, kind, proc.stderr[-2000:])
            subjects = {
                "sha256:" + s["digest"]["sha256"]  # type: ignore[index]
                for st in _statements(proc.stdout)
                for s in st["subject"]  # type: ignore[attr-defined]
            }
            assert digest in subjects, (role, kind)
            if kind == "cyclonedx":
                assert subjects == {digest}


def _replace_with(c: RegistryClient, repo: str, tag: str, source_tag: str) -> None:
    """Point ``tag`` at the manifest ``source_tag`` names (an attachment moved to another
    digest: what a registry-side attacker can do without the key)."""
    manifest, media_type = c.get_manifest(repo, source_tag)
    c.put_manifest(repo, tag, manifest, media_type)


@pytest.mark.parametrize(
    ("attachment", "reason"),
    [
        (
            "sig",
            "platform image linux/arm64/v8 ({arm64}) of index {index}: signature replayed from "
            "another image",
        ),
        ("att", "platform image linux/arm64/v8 ({arm64}) of index {index}: SBOM is for another"),
    ],
)
def test_a_tampered_platform_image_fails_verify_of_the_index(
    attachment: str,
    reason: str,
    multi_registry: Registry,
    keypair: KeyPair,
    tmp_path: Path,
    cosign: Path,
) -> None:
    inputs = synthetic_multiarch_release(tmp_path / "inputs", marker=f"tamper-{attachment}")
    prefix = f"multi-tamper-{attachment}"
    plan, _, _ = release(multi_registry, prefix, inputs, keypair, tmp_path)
    # Untampered, the index verifies: the failure below comes from the tampering alone.
    verifier(multi_registry, keypair.public).verify(pinned(plan))
    amd64, arm64 = plan.platforms["amd64"].digest, plan.platforms["arm64"].digest
    repo = plan.image_ref.repository
    tag_of = cosign_format.sig_tag if attachment == "sig" else cosign_format.att_tag
    with client(multi_registry) as c:
        # The arm64 image's signature (or attestations) replaced by the amd64 image's.
        _replace_with(c, repo, tag_of(arm64), tag_of(amd64))
    with pytest.raises(VerificationError) as failure:
        verifier(multi_registry, keypair.public).verify(pinned(plan))
    expected = reason.format(arm64=arm64, index=plan.image.digest)
    assert str(failure.value).startswith(expected), str(failure.value)

    # The index's own signature is intact, and cosign agrees on both counts.
    env = cosign_env(tmp_path, multi_registry)
    name = plan.image_ref.name
    assert cosign_verify(cosign, env, keypair.public, f"{name}@{plan.image.digest}") == 0
    if attachment == "sig":
        assert cosign_verify(cosign, env, keypair.public, f"{name}@{arm64}") != 0
    else:
        proc = run_cosign(
            cosign,
            env,
            "verify-attestation",
            "--key",
            str(keypair.public),
            "--type",
            "cyclonedx",
            "--insecure-ignore-tlog=true",
            "--allow-http-registry",
            "--allow-insecure-registry",
            f"{name}@{arm64}",
        )
        # cosign finds the moved attestations valid for their key but naming the amd64 image:
        # it accepts nothing for the arm64 digest.
        statements = _statements(proc.stdout) if proc.returncode == 0 else []
        named = [
            s["digest"]["sha256"]  # type: ignore[index]
            for st in statements
            for s in st["subject"]  # type: ignore[attr-defined]
        ]
        assert oci.digest_hex(arm64) not in named, statements


def test_an_index_is_refused_before_its_images_are_pushed(
    multi_registry: Registry, multi_inputs: SyntheticRelease
) -> None:
    plan = multi_inputs.plan(f"{multi_registry.host}/early")
    with client(multi_registry) as c:
        pub = Publisher(c)
        pub.upload(plan.image_ref.repository, plan.platforms["amd64"])
        with pytest.raises(RegistryError, match=r"linux/arm64/v8.*push the platform images"):
            pub.upload(plan.image_ref.repository, plan.image)
        assert c.manifest_digest(plan.image_ref.repository, plan.image.digest) is None


def test_make_release_on_the_index_pins_it_and_lists_both_architectures(
    multi_inputs: SyntheticRelease, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole release (local registry, throwaway key) on an index layout: the manifest and
    the Flux values pin the index digest, the summary has a verified row per platform."""
    for name in ("REGISTRY", "AUTH_FILE", "COSIGN_KEY", "COSIGN_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    release_dir = tmp_path / "dist" / "release"
    options = ReleaseOptions(
        image=multi_inputs.image_dir,
        chart_dir=multi_inputs.chart.parent,
        release_dir=release_dir,
        manifest=REPO_ROOT / "release" / "manifest.yaml",
        flux_dir=tmp_path / "untouched-flux",
        runtime_lock=multi_inputs.runtime_lock,
        packages_lock=multi_inputs.packages_lock,
        deb_dir=multi_inputs.deb_dir,
        tree=tmp_path / "untouched-tree",
        skip_chart_build=True,
    )
    console = Console(record=True, width=400, file=io.StringIO())
    assert run_release(options, console) == 0, console.export_text()
    written = manifest.load_manifest(release_dir / "manifest.yaml")
    plan = multi_inputs.plan(written.image.repository.rsplit("/", 1)[0])
    assert written.image.digest == plan.image.digest
    helmrelease = yaml.safe_load((release_dir / "flux" / "helmrelease.yaml").read_text())
    assert helmrelease["spec"]["values"]["image"]["digest"] == plan.image.digest

    text = console.export_text()
    assert f"was built from commit {STALE_REVISION}, this checkout is" in text
    for arch in ARCHES:
        digest = plan.platforms[arch].digest
        row = next(line for line in text.splitlines() if f"image {PLATFORMS[arch]}" in line)
        assert digest in row, row
        assert "MB" in row, row
    # Index, both images and the chart: each signature and provenance verified; the SBOMs are
    # the two images' and the chart's.
    assert text.count("signature: verified") == 4
    assert text.count("provenance: builder") == 4
    assert text.count("SBOM: CycloneDX") == 3


def test_make_release_refuses_a_missing_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("REGISTRY", "AUTH_FILE", "COSIGN_KEY", "COSIGN_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    options = ReleaseOptions(image=tmp_path / "image-multiarch", release_dir=tmp_path / "release")
    console = Console(record=True, width=400, file=io.StringIO())
    with pytest.raises(FileNotFoundError, match="make image-multiarch"):
        run_release(options, console)
