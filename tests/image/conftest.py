"""Fixtures for the image tests: the built layout, its unpacked rootfs, and runc containers.

``make test`` builds dist/image first (``test: image``) and installs runc and skopeo, so these
fixtures fail loudly, never skip, when something is missing.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from portcullis_release import oci
from portcullis_release.build import oci_layout

from tests.support.image import (
    LAYOUT,
    Container,
    ImageConfig,
    StartFn,
    demo_config,
    free_port,
    pbkdf2_hash,
    project_version,
    start_container,
)


@pytest.fixture(scope="session")
def image_tag() -> str:
    return project_version()


@pytest.fixture(scope="session")
def image_artifact(image_tag: str) -> oci.Artifact:
    assert (LAYOUT / "index.json").is_file(), f"{LAYOUT} is missing: run `make image` first"
    for tool in ("runc", "skopeo"):
        assert shutil.which(tool), f"{tool} is not installed: `make test` installs it"
    return oci.read_layout(LAYOUT, image_tag)


@pytest.fixture(scope="session")
def image_config_json(image_artifact: oci.Artifact) -> dict[str, Any]:
    config_desc = image_artifact.descriptors()[0]
    loaded: dict[str, Any] = json.loads(image_artifact.blobs[config_desc.digest])
    return loaded


@pytest.fixture(scope="session")
def image_config(image_config_json: dict[str, Any]) -> ImageConfig:
    return ImageConfig.from_layout_config(image_config_json)


@pytest.fixture(scope="session")
def rootfs(image_artifact: oci.Artifact, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's layers unpacked (owners and modes kept) into a per-worker directory."""
    dest = tmp_path_factory.mktemp("image-rootfs") / "rootfs"
    oci_layout.unpack_layers(oci_layout.artifact_layers(image_artifact), dest)
    return dest


@pytest.fixture(scope="session")
def admin_password_hash() -> str:
    return pbkdf2_hash("password")


@pytest.fixture
def run_container(rootfs: Path, image_config: ImageConfig, tmp_path: Path) -> Iterator[StartFn]:
    """Start containers from the image; every one is stopped and deleted afterwards."""
    started: list[Container] = []

    def start(**spec_args: Any) -> Container:
        container = start_container(tmp_path, rootfs, image_config, **spec_args)
        started.append(container)
        return container

    yield start
    for container in started:
        container.stop(timeout=10)


@pytest.fixture
def issuer(run_container: StartFn, admin_password_hash: str, tmp_path: Path) -> Container:
    """The image serving a demo-like config (FIPS on, as the image defaults) on free ports."""
    web, telemetry = free_port(), free_port()
    config = tmp_path / "config.yaml"
    config.write_text(demo_config(web, telemetry, admin_password_hash))
    config.chmod(0o644)
    container = run_container(config_file=config)
    container.ports = {"web": web, "telemetry": telemetry}
    return container
