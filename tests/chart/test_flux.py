"""deploy/flux/ is generated from the release manifest, pins its digests, and validates against
Flux's CRD schemas (and Kubernetes' for core kinds)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from portcullis_release.cli import main as release_cli
from portcullis_release.distribute.flux import (
    DEFAULT_OUT,
    FluxSettings,
    diff_flux,
    render_flux,
    write_flux,
)
from portcullis_release.manifest import (
    ManifestError,
    ReleaseManifest,
    load_manifest,
    parse_manifest,
)

from tests.support.chart import (
    KUBE_VERSIONS,
    chart,
    documents,
    find,
    render,
    validate_builtin,
    validate_crds,
)

RELEASE = parse_manifest(
    {
        "development": False,
        "image": {
            "repository": "registry.example.com/portcullis/portcullis",
            "tag": "2.3.4",
            "digest": "sha256:" + "3c" * 32,
        },
        "chart": {
            "repository": "registry.example.com/portcullis/charts/portcullis",
            "version": "2.3.4",
            "digest": "sha256:" + "4d" * 32,
        },
    }
)


def _docs(manifest: ReleaseManifest, **kwargs: Any) -> dict[str, dict[str, Any]]:
    files = render_flux(manifest, **kwargs)
    return {name: yaml.safe_load(text) for name, text in files.items() if name.endswith(".yaml")}


def test_committed_files_are_exactly_what_the_manifest_generates() -> None:
    manifest = load_manifest()
    problems = diff_flux(manifest, DEFAULT_OUT, allow_development=manifest.development)
    assert not problems, (
        f"regenerate with `portcullis-release flux --allow-development`: {problems}"
    )


def test_oci_repository_pins_the_chart_digest_and_requires_a_cosign_signature() -> None:
    repo = _docs(RELEASE)["ocirepository.yaml"]
    spec = repo["spec"]
    assert spec["url"] == "oci://registry.example.com/portcullis/charts/portcullis"
    assert spec["ref"] == {"digest": RELEASE.chart.digest}
    assert spec["verify"] == {"provider": "cosign", "secretRef": {"name": "portcullis-cosign-pub"}}
    assert spec["secretRef"] == {"name": "portcullis-registry"}
    assert (
        spec["layerSelector"]["mediaType"] == "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
    )


def test_helm_release_uses_the_source_and_pins_the_image() -> None:
    docs = _docs(RELEASE)
    release, repo = docs["helmrelease.yaml"], docs["ocirepository.yaml"]
    assert release["spec"]["chartRef"] == {
        "kind": "OCIRepository",
        "name": repo["metadata"]["name"],
    }
    assert release["metadata"]["namespace"] == repo["metadata"]["namespace"]
    values = release["spec"]["values"]
    assert values["image"] == {
        "repository": RELEASE.image.repository,
        "tag": RELEASE.image.tag,
        "digest": RELEASE.image.digest,
    }
    # The pods pull with the same dockerconfigjson Secret the OCIRepository uses.
    assert values["imagePullSecrets"] == [repo["spec"]["secretRef"]]
    assert release["spec"]["valuesFrom"][0]["kind"] == "Secret"


def test_helm_release_values_are_accepted_by_the_chart() -> None:
    """The pin Flux passes must satisfy the chart's strict schema and render the image."""
    values = _docs(RELEASE)["helmrelease.yaml"]["spec"]["values"]
    chart().validate_schema(values)
    container = find(documents(render(values)), "Deployment")["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert container["image"] == RELEASE.image.reference


def test_flux_kinds_validate_against_the_flux_crd_schemas() -> None:
    docs = _docs(RELEASE)
    results = validate_crds([docs["ocirepository.yaml"], docs["helmrelease.yaml"]])
    assert [r["kind"] for r in results] == ["OCIRepository", "HelmRelease"]
    assert all(not r["errors"] for r in results), results


def test_flux_validator_rejects_a_wrong_source() -> None:
    """Guards the guard: the Flux schema must catch a non-OCI URL and an unknown provider."""
    repo = _docs(RELEASE)["ocirepository.yaml"]
    repo["spec"]["url"] = "https://registry.example.com/charts/portcullis"
    repo["spec"]["verify"]["provider"] = "gpg"
    (result,) = validate_crds([repo])
    text = " ".join(result["errors"])
    assert "/spec/url" in text
    assert "/spec/verify/provider" in text


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_namespace_validates_and_enforces_restricted_pod_security(kube_version: str) -> None:
    namespace = _docs(RELEASE)["namespace.yaml"]
    validate_builtin(namespace, kube_version)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_kustomization_lists_every_generated_manifest() -> None:
    files = render_flux(RELEASE)
    kustomization = yaml.safe_load(files["kustomization.yaml"])
    manifests = {name for name in files if name.endswith(".yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests


def test_readme_shows_the_same_digests_and_the_secret_commands() -> None:
    readme = render_flux(RELEASE)["README.md"]
    assert RELEASE.chart.digest in readme
    assert RELEASE.image.digest in readme
    assert "kubectl -n portcullis create secret docker-registry portcullis-registry" in readme
    assert "--docker-server=registry.example.com" in readme
    assert "create secret generic portcullis-cosign-pub --from-file=cosign.pub=" in readme
    assert set(re.findall(r"sha256:[0-9a-f]{64}", readme)) == {
        RELEASE.chart.digest,
        RELEASE.image.digest,
    }


def test_development_manifest_is_refused_unless_allowed() -> None:
    development = parse_manifest({**RELEASE.to_data(), "development": True})
    with pytest.raises(ManifestError, match="not a release manifest"):
        render_flux(development)
    files = render_flux(development, allow_development=True)
    assert "DEVELOPMENT MANIFEST" in files["helmrelease.yaml"]


def test_settings_rename_every_reference_consistently() -> None:
    settings = FluxSettings(namespace="idp", name="sso", pull_credentials="regcred")
    docs = _docs(RELEASE, settings=settings)
    assert {
        d["metadata"].get("namespace", d["metadata"]["name"])
        for n, d in docs.items()
        if "metadata" in d
    } == {"idp"}
    assert docs["helmrelease.yaml"]["spec"]["chartRef"]["name"] == "sso"
    assert docs["ocirepository.yaml"]["spec"]["secretRef"]["name"] == "regcred"


def test_cli_check_reports_drift(tmp_path: Path) -> None:
    manifest_file = tmp_path / "manifest.yaml"
    manifest_file.write_text(yaml.safe_dump(RELEASE.to_data()))
    out = tmp_path / "flux"
    assert release_cli(["flux", "--manifest", str(manifest_file), "--output", str(out)]) == 0
    assert (
        release_cli(["flux", "--manifest", str(manifest_file), "--output", str(out), "--check"])
        == 0
    )
    helmrelease = out / "helmrelease.yaml"
    helmrelease.write_text(
        helmrelease.read_text().replace(RELEASE.image.digest, "sha256:" + "0" * 64)
    )
    (out / "extra.yaml").write_text("{}\n")
    assert (
        release_cli(["flux", "--manifest", str(manifest_file), "--output", str(out), "--check"])
        == 1
    )
    assert sorted(p.split(":")[0] for p in diff_flux(RELEASE, out)) == [
        "extra.yaml",
        "helmrelease.yaml",
    ]


def test_write_flux_writes_only_the_generated_files(tmp_path: Path) -> None:
    written = write_flux(RELEASE, tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in tmp_path.iterdir())
