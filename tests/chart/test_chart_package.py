"""`make chart` output: reproducible bytes, versions and image from the release manifest, and a
round trip through a real authenticated OCI registry with the Helm engine's own client."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import helm_python
import pytest
import yaml
from portcullis_release.distribute.chart import package_chart, push_chart, sha256_file
from portcullis_release.manifest import (
    PLACEHOLDER_DIGEST,
    ReleaseManifest,
    load_manifest,
    parse_manifest,
)

from tests.support.chart import CHART_DIR, REPO_ROOT, documents, find
from tests.support.registry import Registry

IMAGE_DIGEST = "sha256:" + "1f" * 32


def _release_manifest(version: str = "1.4.2") -> ReleaseManifest:
    return parse_manifest(
        {
            "development": False,
            "image": {
                "repository": "registry.example.com/portcullis/portcullis",
                "tag": version,
                "digest": IMAGE_DIGEST,
            },
            "chart": {
                "repository": "registry.example.com/portcullis/charts/portcullis",
                "version": version,
                "digest": "sha256:" + "2e" * 32,
            },
        }
    )


def _member(archive: Path, name: str) -> str:
    with tarfile.open(archive, "r:gz") as tar:
        handle = tar.extractfile(f"portcullis/{name}")
        assert handle is not None
        return handle.read().decode()


def test_packaging_twice_from_differently_timed_checkouts_gives_identical_bytes(
    tmp_path: Path,
) -> None:
    manifest = load_manifest()
    first_src = tmp_path / "a" / "portcullis"
    second_src = tmp_path / "b" / "portcullis"
    shutil.copytree(CHART_DIR, first_src)
    shutil.copytree(CHART_DIR, second_src)
    later = time.time() + 3600  # as if checked out an hour later
    for path in second_src.rglob("*"):
        os.utime(path, (later, later))

    first = package_chart(manifest, chart_dir=first_src, output_dir=tmp_path / "out1")
    second = package_chart(manifest, chart_dir=second_src, output_dir=tmp_path / "out2")

    assert first.path.name == f"portcullis-{manifest.chart.version}.tgz"
    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.digest == second.digest == sha256_file(second.path)


def test_release_cli_chart_command_is_reproducible(tmp_path: Path) -> None:
    """What `make chart` runs, twice: same sha256."""
    digests = []
    for out in ("one", "two"):
        result = subprocess.run(
            [
                str(REPO_ROOT / ".venv/bin/portcullis-release"),
                "chart",
                "--output",
                str(tmp_path / out),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        path, digest = result.stdout.split()
        assert Path(path).parent == tmp_path / out
        digests.append(digest)
    assert digests[0] == digests[1]


def test_packaged_chart_takes_version_and_pinned_image_from_the_manifest(tmp_path: Path) -> None:
    manifest = _release_manifest()
    packaged = package_chart(manifest, output_dir=tmp_path)
    meta = yaml.safe_load(_member(packaged.path, "Chart.yaml"))
    values = yaml.safe_load(_member(packaged.path, "values.yaml"))
    assert (meta["version"], meta["appVersion"]) == ("1.4.2", "1.4.2")
    assert values["image"] == {
        "repository": "registry.example.com/portcullis/portcullis",
        "pullPolicy": "IfNotPresent",
        "tag": "1.4.2",
        "digest": IMAGE_DIGEST,
    }
    # The packaged chart, rendered with no values, runs exactly the released image.
    rendered = helm_python.Chart.load(packaged.path).render({}, name="r", namespace="n")
    container = find(documents(rendered), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == manifest.image.reference


def test_development_manifest_does_not_bake_its_placeholder_digest(tmp_path: Path) -> None:
    manifest = _release_manifest().with_image(digest=PLACEHOLDER_DIGEST)
    packaged = package_chart(manifest, output_dir=tmp_path)
    values = yaml.safe_load(_member(packaged.path, "values.yaml"))
    assert values["image"]["digest"] == ""


def _get_status(url: str, auth: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(
        url, headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}
    )
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.integration
def test_chart_round_trips_through_an_authenticated_registry_by_digest(
    registry: Registry, tmp_path: Path
) -> None:
    packaged = package_chart(load_manifest(), output_dir=tmp_path / "dist")
    repository = f"{registry.host}/portcullis/charts/portcullis"

    pushed = push_chart(packaged.path, repository, auth_file=registry.auth_file, plain_http=True)
    assert pushed.digest.startswith("sha256:")
    assert pushed.media_type == "application/vnd.oci.image.manifest.v1+json"

    # Pull it back by digest with the Helm engine's OCI client, authenticated.
    client = helm_python.RegistryClient(plain_http=True, credentials_file=str(registry.auth_file))
    destination = tmp_path / "pulled"
    destination.mkdir()
    try:
        client.pull(f"oci://{repository}@{pushed.digest}", destination=destination, plain_http=True)
    finally:
        client.close()
    (pulled,) = destination.iterdir()
    assert pulled.read_bytes() == packaged.path.read_bytes()

    # The same archive pushed elsewhere has the same manifest digest: Flux pins are stable.
    again = push_chart(
        packaged.path,
        f"{registry.host}/mirror/portcullis",
        auth_file=registry.auth_file,
        plain_http=True,
    )
    assert again.digest == pushed.digest

    # Anonymous pulls are refused, by the Helm client and at the HTTP level.
    anonymous = helm_python.RegistryClient(
        plain_http=True, credentials_file=str(tmp_path / "empty-auth.json")
    )
    try:
        with pytest.raises(helm_python.HelmError):
            anonymous.pull(
                f"oci://{repository}@{pushed.digest}", destination=destination, plain_http=True
            )
    finally:
        anonymous.close()
    manifest_url = f"{registry.url}/v2/portcullis/charts/portcullis/manifests/{pushed.digest}"
    assert _get_status(manifest_url) == 401
    assert _get_status(manifest_url, (registry.username, "wrong-password")) == 401
    assert _get_status(manifest_url, (registry.username, registry.password)) == 200


def test_push_refuses_a_repository_not_named_after_the_chart(tmp_path: Path) -> None:
    packaged = package_chart(load_manifest(), output_dir=tmp_path)
    with pytest.raises(Exception, match="must end with the chart name"):
        push_chart(packaged.path, "127.0.0.1:1/charts/other", auth_file=tmp_path / "none.json")
