"""The OCI layout in dist/image: readable by skopeo, configured as issue 3 asks, reproducible."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from portcullis_release import manifest, oci
from portcullis_release.build.packages_lock import load_lock

from tests.support.image import LAYOUT, NONROOT, REPO

LOCK = REPO / "images" / "portcullis" / "packages.lock"


def _source_date_epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None:
        value = subprocess.run(
            ["git", "log", "-1", "--format=%ct"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    return int(value)


def test_skopeo_reads_the_layout_by_version_tag(
    image_tag: str, image_artifact: oci.Artifact
) -> None:
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci:{LAYOUT}:{image_tag}"],
        capture_output=True,
        check=True,
    ).stdout
    assert oci.sha256_digest(raw) == image_artifact.digest
    info = json.loads(
        subprocess.run(
            ["skopeo", "inspect", f"oci:{LAYOUT}:{image_tag}"], capture_output=True, check=True
        ).stdout
    )
    assert info["Labels"]["org.opencontainers.image.version"] == image_tag


def test_skopeo_copies_every_blob_with_its_digest_intact(
    image_tag: str, image_artifact: oci.Artifact, tmp_path: Path
) -> None:
    """skopeo checks each blob against its digest while copying; the manifest stays the same."""
    subprocess.run(
        ["skopeo", "copy", "-q", f"oci:{LAYOUT}:{image_tag}", f"oci:{tmp_path}/copy:{image_tag}"],
        check=True,
        capture_output=True,
    )
    copied = oci.read_layout(tmp_path / "copy", image_tag)
    assert copied.digest == image_artifact.digest
    assert set(copied.blobs) == set(image_artifact.blobs)


def test_image_config_is_hardened_and_labelled(
    image_config_json: dict[str, Any], image_tag: str
) -> None:
    config = image_config_json["config"]
    assert config["User"] == f"{NONROOT}:{NONROOT}"
    assert config["Entrypoint"] == ["/opt/portcullis/portcullis"]
    assert set(config["ExposedPorts"]) == {"5556/tcp", "5557/tcp", "5558/tcp"}
    assert "PORTCULLIS_FIPS=1" in config["Env"]
    labels = config["Labels"]
    created = datetime.fromtimestamp(_source_date_epoch(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert labels["org.opencontainers.image.created"] == created
    assert image_config_json["created"] == created
    assert labels["org.opencontainers.image.version"] == image_tag
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    # The source label is the one source of truth's answer, or absent: never invented.
    source = manifest.source_repository(REPO)
    assert labels.get("org.opencontainers.image.source") == source
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert labels["org.opencontainers.image.revision"] == head


def test_layers_are_written_reproducibly(image_artifact: oci.Artifact) -> None:
    epoch = _source_date_epoch()
    layers = image_artifact.layers()
    assert len(layers) == 2  # rootfs, app
    for desc in layers:
        blob = image_artifact.blobs[desc.digest]
        assert blob[4:8] == b"\0\0\0\0", "gzip header carries a timestamp"
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob)), mode="r:") as tar:
            members = tar.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names) or _parents_first(names)
        assert {m.mtime for m in members} == {epoch}
        assert {m.uname for m in members} == {""}
        assert {m.uid for m in members} <= {0, NONROOT}


def _parents_first(names: list[str]) -> bool:
    # Parent directories of the app prefix come first, then the sorted tree.
    rest = [n for n in names if n.count("/") > 1 or not n.startswith("opt")]
    return rest == sorted(rest)


def test_rootfs_records_each_locked_package_for_scanners(rootfs: Path) -> None:
    lock = load_lock(LOCK)
    status_dir = rootfs / "var/lib/dpkg/status.d"
    assert sorted(p.name for p in status_dir.iterdir()) == sorted(d.name for d in lock.debs)
    for pin in lock.debs:
        paragraph = (status_dir / pin.name).read_text()
        assert f"Package: {pin.name}\n" in paragraph
        assert f"Version: {pin.version}\n" in paragraph
        assert "Status: install ok installed" in paragraph


@pytest.mark.slow
def test_second_build_of_the_same_commit_gives_the_same_digest(
    image_artifact: oci.Artifact, tmp_path: Path
) -> None:
    """A full rebuild (new PyInstaller run, new rootfs, new layers) into another directory."""
    out = tmp_path / "image"
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(_source_date_epoch()))
    proc = subprocess.run(
        [
            str(REPO / ".venv/bin/portcullis-release"),
            "image",
            "build",
            "--fresh",
            "--output",
            str(out),
            "--cache",
            str(REPO / ".cache/image"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rebuilt = oci.read_layout(out)
    assert rebuilt.digest == image_artifact.digest
    assert (out / "index.json").read_bytes() == (LAYOUT / "index.json").read_bytes()
