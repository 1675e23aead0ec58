"""The subcommands chained as a user (or `make release`) runs them, and publish's failure modes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from portcullis_release import cli
from portcullis_release.attest import attachments, cosign_format
from portcullis_release.attest.provenance import BuildRun, SourceInfo
from portcullis_release.attest.sbom import ImageInputs
from portcullis_release.distribute import generated
from portcullis_release.distribute.publish import publish_plan
from portcullis_release.distribute.registry import DockerAuth, RegistryClient, RegistryError
from portcullis_release.release import prepare

from tests.release.conftest import REPO_ROOT, KeyPair, SyntheticRelease
from tests.support.registry import Registry

pytestmark = pytest.mark.integration


def test_subcommands_chain_from_sbom_to_verify(
    registry: Registry,
    release_inputs: SyntheticRelease,
    keypair: KeyPair,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rel = release_inputs
    out = tmp_path / "release"
    prefix = f"{registry.host}/cli"
    common = [
        "--image",
        str(rel.image_dir),
        "--chart",
        str(rel.chart),
        "--registry",
        prefix,
        "--release-dir",
        str(out),
    ]
    monkeypatch.setenv("COSIGN_PASSWORD", keypair.password)
    monkeypatch.setenv("SOURCE_REPOSITORY", "https://example.test/cli.git")
    assert (
        cli.main(
            [
                "sbom",
                *common,
                "--runtime-lock",
                str(rel.runtime_lock),
                "--packages-lock",
                str(rel.packages_lock),
                "--deb-dir",
                str(rel.deb_dir),
            ]
        )
        == 0
    )
    assert (
        cli.main(
            [
                "provenance",
                *common,
                "--key",
                str(keypair.private),
                "--builder-id",
                "https://example.test/cli-builder",
            ]
        )
        == 0
    )
    assert cli.main(["sign", *common, "--key", str(keypair.private)]) == 0
    assert {p.name for p in out.iterdir()} >= {
        "image.cdx.json",
        "chart.cdx.json",
        "provenance.json",
        "provenance.dsse.json",
        "attachments",
    }
    # The provenance envelope attached by `sign` is byte-identical to the one `provenance` wrote.
    envelope = (out / "provenance.dsse.json").read_bytes()
    staged = [
        la.blob for att in attachments.read_attachments(out / "attachments") for la in att.layers
    ]
    assert envelope in staged

    assert cli.main(["publish", *common, "--auth-file", str(registry.auth_file)]) == 0
    capsys.readouterr()
    digest = json.loads((out / "provenance.json").read_text())["subject"][0]["digest"]["sha256"]
    code = cli.main(
        [
            "verify",
            f"{prefix}/portcullis:1.2.3@sha256:{digest}",
            "--key",
            str(keypair.public),
            "--source-repo",
            "https://example.test/cli.git",
            "--builder-id",
            "https://example.test/cli-builder",
            "--auth-file",
            str(registry.auth_file),
        ]
    )
    text = capsys.readouterr().out
    assert code == 0, text
    assert "manifest and 2 blobs match their digests" in text

    code = cli.main(
        [
            "verify",
            f"{prefix}/portcullis:1.2.3@sha256:{digest}",
            "--key",
            str(keypair.public),
            "--builder-id",
            "https://example.test/someone-else",
            "--auth-file",
            str(registry.auth_file),
        ]
    )
    text = capsys.readouterr().out
    assert code == 1
    assert "FAILED" in text
    assert "provenance builder mismatch" in text


def test_publish_with_wrong_credentials_fails_clearly(
    registry: Registry,
    release_inputs: SyntheticRelease,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    wrong = tmp_path / "wrong.json"
    wrong.write_text(
        json.dumps({"auths": {registry.host: {"username": "releaser", "password": "nope"}}})
    )
    code = cli.main(
        [
            "publish",
            "--image",
            str(release_inputs.image_dir),
            "--registry",
            f"{registry.host}/x",
            "--auth-file",
            str(wrong),
            "--release-dir",
            str(tmp_path / "empty"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "HTTP 401" in err
    assert "nope" not in err


def test_failed_publish_leaves_nothing_tagged(
    registry: Registry,
    release_inputs: SyntheticRelease,
    keypair: KeyPair,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A failure after the image is uploaded (here: the chart manifest is refused) must not
    leave the image tag or any .sig/.att tag behind."""
    from portcullis_release.attest import cosign_keys

    plan = release_inputs.plan(f"{registry.host}/half")
    out = tmp_path / "release"
    key = cosign_keys.load_private_key(keypair.private, keypair.password.encode())
    prepare(
        plan,
        out,
        key,
        ImageInputs(),
        tmp_path,
        BuildRun(),
        SourceInfo("https://example.test/x.git", "refs/heads/main", None, False),
    )
    original = RegistryClient.put_manifest

    def refuse_chart(
        self: RegistryClient, repository: str, reference: str, data: bytes, media_type: str
    ) -> str:
        if repository.endswith("charts/portcullis"):
            raise RegistryError("simulated: registry refused the chart manifest")
        return original(self, repository, reference, data, media_type)

    monkeypatch.setattr(RegistryClient, "put_manifest", refuse_chart)
    with pytest.raises(RegistryError, match="simulated"):
        publish_plan(plan, out, registry.auth_file)
    monkeypatch.setattr(RegistryClient, "put_manifest", original)
    client = RegistryClient(registry.host, DockerAuth.from_file(registry.auth_file))
    assert client.manifest_digest(plan.image_ref.repository, plan.image.digest) == plan.image.digest
    assert client.list_tags(plan.image_ref.repository) == []
    # Retrying completes the release.
    report = publish_plan(plan, out, registry.auth_file)
    assert report.manifests_present == 1
    assert sorted(client.list_tags(plan.image_ref.repository)) == sorted(
        [
            "1.2.3",
            cosign_format.sig_tag(plan.image.digest),
            cosign_format.att_tag(plan.image.digest),
        ]
    )


def test_release_command_publishes_verifies_and_writes_the_manifest(
    registry: Registry,
    release_inputs: SyntheticRelease,
    keypair: KeyPair,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`make release` with REGISTRY/AUTH_FILE/COSIGN_KEY/COSIGN_PASSWORD set (like CI)."""
    from portcullis_release.manifest import load_manifest

    manifest = tmp_path / "manifest.yaml"
    manifest.write_text((REPO_ROOT / "release" / "manifest.yaml").read_text())
    monkeypatch.setenv("REGISTRY", f"{registry.host}/rel")
    monkeypatch.setenv("AUTH_FILE", str(registry.auth_file))
    monkeypatch.setenv("COSIGN_KEY", str(keypair.private))
    monkeypatch.setenv("COSIGN_PASSWORD", keypair.password)
    # A stand-in for the repository: a real release rewrites its generated copies.
    tree = tmp_path / "tree"
    for rel in (generated.CHART_YAML, generated.DOCS_PAGE):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes((REPO_ROOT / rel).read_bytes())
    flux = tree / generated.FLUX_DIR
    code = cli.main(
        [
            "release",
            "--image",
            str(release_inputs.image_dir),
            "--chart-dir",
            str(release_inputs.chart.parent),
            "--skip-chart-build",
            "--manifest",
            str(manifest),
            "--flux-dir",
            str(flux),
            "--release-dir",
            str(tmp_path / "out"),
            "--deb-dir",
            str(release_inputs.deb_dir),
            "--packages-lock",
            str(release_inputs.packages_lock),
            "--runtime-lock",
            str(release_inputs.runtime_lock),
            "--tree",
            str(tree),
        ]
    )
    assert code == 0
    written = load_manifest(manifest)
    assert generated.check(written, tree) == []
    plan = release_inputs.plan(f"{registry.host}/rel")
    assert not written.development
    assert written.image.digest == plan.image.digest
    assert written.image.repository == plan.image_ref.name
    assert written.chart.digest == plan.artifact_for("chart").digest
    flux_text = "\n".join(p.read_text() for p in flux.rglob("*.yaml"))
    assert plan.artifact_for("chart").digest in flux_text
    assert (tmp_path / "out" / "cosign.pub").read_bytes() == keypair.public.read_bytes()
