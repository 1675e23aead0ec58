"""The multi-architecture image: an OCI index over linux/amd64 and linux/arm64 (issue 14 item 7).

``make test`` builds ``dist/image-multiarch`` first (``make image-multiarch``): the arm64 image
is built on this amd64 machine under qemu. These tests check the index as a runtime reads it
(skopeo picks each platform), that the arm64 image holds nothing of the build machine's
architecture, that its frozen binary really runs (through qemu-user-static and binfmt_misc,
under runc with the image's own hardened settings, FIPS mode included: the entry point refuses
to start unless the arm64 provider passes its self-tests), and that rebuilding gives the same
digests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from portcullis_release import oci
from portcullis_release.build import image, oci_layout
from portcullis_release.build.packages_lock import load_lock

from tests.support.image import (
    LAYOUT,
    ImageConfig,
    demo_config,
    free_port,
    openssl_files,
    pbkdf2_hash,
    start_container,
    wait_ready,
)

REPO = Path(__file__).resolve().parents[2]
MULTIARCH = REPO / "dist" / "image-multiarch"
ARM64_LOCK = REPO / "images" / "portcullis" / "packages-arm64.lock"
# ELF e_machine values (the 16-bit field at offset 18).
EM_X86_64, EM_AARCH64 = 62, 183


def _image_cache() -> Path:
    """The cache `make image-multiarch` used (IMAGE_CACHE), so a rebuild reuses its freezes."""
    return Path(os.environ.get("PORTCULLIS_IMAGE_CACHE", str(REPO / ".cache" / "image")))


@pytest.fixture(scope="session")
def platform_images(image_tag: str) -> dict[str, oci.Artifact]:
    assert (MULTIARCH / "index.json").is_file(), (
        f"{MULTIARCH} is missing: run `make image-multiarch` first"
    )
    return image.read_index(MULTIARCH, image_tag)


def _index_digest() -> str:
    digest: str = json.loads((MULTIARCH / "index.json").read_bytes())["manifests"][0]["digest"]
    return digest


def _config(artifact: oci.Artifact) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(artifact.blobs[artifact.descriptors()[0].digest])
    return loaded


@pytest.fixture(scope="session")
def arm64_rootfs(
    platform_images: dict[str, oci.Artifact], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    dest = tmp_path_factory.mktemp("arm64-rootfs") / "rootfs"
    oci_layout.unpack_layers(oci_layout.artifact_layers(platform_images["arm64"]), dest)
    return dest


def _elf_machine(path: Path) -> int | None:
    with path.open("rb") as fh:
        head = fh.read(20)
    if head[:4] != b"\x7fELF" or len(head) < 20:
        return None
    return int.from_bytes(head[18:20], "little")


def test_index_names_one_image_per_platform(
    platform_images: dict[str, oci.Artifact], image_tag: str
) -> None:
    index_json = json.loads((MULTIARCH / "index.json").read_bytes())
    (entry,) = index_json["manifests"]
    assert entry["mediaType"] == oci.OCI_INDEX
    assert entry["annotations"][oci.REF_NAME] == image_tag
    index = json.loads((MULTIARCH / "blobs/sha256" / oci.digest_hex(entry["digest"])).read_bytes())
    platforms = [m["platform"] for m in index["manifests"]]
    assert platforms == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
    ]
    assert all(m["mediaType"] == oci.OCI_MANIFEST for m in index["manifests"])
    for architecture, artifact in platform_images.items():
        config = _config(artifact)
        assert (config["architecture"], config["os"]) == (architecture, "linux")
    assert index["annotations"]["org.opencontainers.image.version"] == image_tag


@pytest.mark.parametrize("architecture", ["amd64", "arm64"])
def test_skopeo_resolves_the_index_to_each_platform(
    platform_images: dict[str, oci.Artifact], image_tag: str, architecture: str
) -> None:
    """What a node of that architecture pulls: skopeo selects from the index by platform."""
    proc = subprocess.run(
        [
            "skopeo",
            "--override-os",
            "linux",
            "--override-arch",
            architecture,
            "inspect",
            f"oci:{MULTIARCH}:{image_tag}",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    inspected = json.loads(proc.stdout)
    assert inspected["Architecture"] == architecture
    # skopeo names the index by its digest and describes the platform image it chose.
    assert inspected["Digest"] == _index_digest()
    assert inspected["Layers"] == [d.digest for d in platform_images[architecture].layers()]


def test_amd64_entry_is_the_released_single_image(
    platform_images: dict[str, oci.Artifact], image_tag: str
) -> None:
    """dist/image (`make image`, what runs in the other image tests) is the index's amd64 image."""
    assert oci.read_layout(LAYOUT, image_tag).digest == platform_images["amd64"].digest


def test_arm64_image_holds_only_arm64_code(arm64_rootfs: Path) -> None:
    """Every ELF file of both layers is aarch64: nothing of the amd64 build machine leaked."""
    machines: dict[int, list[str]] = {}
    for path in sorted(arm64_rootfs.rglob("*")):
        if path.is_file() and not path.is_symlink():
            machine = _elf_machine(path)
            if machine is not None:
                machines.setdefault(machine, []).append(str(path.relative_to(arm64_rootfs)))
    assert set(machines) == {EM_AARCH64}, {k: v[:5] for k, v in machines.items()}
    assert "opt/portcullis/portcullis" in machines[EM_AARCH64]
    assert any(p.endswith("fips.so") for p in machines[EM_AARCH64])


def test_arm64_image_holds_one_openssl(arm64_rootfs: Path) -> None:
    """psycopg-binary's bundled OpenSSL is linked to the rootfs's on arm64 too (the frozen FIPS
    bundle has no provider copy for a second OpenSSL)."""
    files, links = openssl_files(arm64_rootfs)
    system = "usr/lib/aarch64-linux-gnu"
    assert sorted(files) == [f"{system}/libcrypto.so.3", f"{system}/libssl.so.3"]
    bundled = {k: v for k, v in links.items() if k.startswith("opt/portcullis/")}
    assert bundled, links
    assert set(bundled.values()) == {f"{system}/libcrypto.so.3", f"{system}/libssl.so.3"}


def test_arm64_binary_is_not_native_here(arm64_rootfs: Path) -> None:
    """The binary is not native here: only qemu (binfmt_misc) makes it run, as the next test does.

    Checked by asking the kernel through the ELF header and by the loader it names, which exists
    only inside the arm64 rootfs.
    """
    binary = arm64_rootfs / "opt/portcullis/portcullis"
    assert _elf_machine(binary) == EM_AARCH64
    assert (arm64_rootfs / "lib/ld-linux-aarch64.so.1").exists()
    assert not Path("/lib/ld-linux-aarch64.so.1").exists()
    registered = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    assert registered.is_file(), "qemu-user-static's binfmt entry is missing"
    assert registered.read_text().splitlines()[0] == "enabled"


def test_arm64_image_runs_portcullis_version_under_qemu(
    platform_images: dict[str, oci.Artifact], arm64_rootfs: Path, tmp_path: Path
) -> None:
    """runc runs the arm64 image (read-only root, uid 65532, no capabilities) via qemu.

    The image's entry point enforces FIPS mode before the CLI runs, so a zero exit with
    ``FIPS mode on`` means the cross-compiled arm64 provider loaded, matched its pin and passed
    its known-answer tests, emulated.
    """
    assert shutil.which("runc"), "runc is not installed: `make test` installs it"
    config = ImageConfig.from_layout_config(_config(platform_images["arm64"]))
    pin = load_lock(ARM64_LOCK).fips_provider
    for args, check in (
        (["version"], "plain"),
        (["version", "--json"], "json"),
    ):
        container = start_container(
            tmp_path / check, arm64_rootfs, config, args=[*config.entrypoint, *args]
        )
        try:
            code = container.wait(timeout=240)
        finally:
            container.stop(timeout=5)
        assert code == 0, container.stderr()
        out = container.stdout()
        if check == "plain":
            assert out.startswith(f"portcullis {image.project_version(REPO)} (python 3.11."), out
            assert "FIPS mode on" in out, out
        else:
            info = json.loads(out)
            assert info["fips"]["enabled"] is True
            assert pin.fips_so_sha256 in json.dumps(info["fips"]), info["fips"]


def test_arm64_image_serves_the_issuer_under_qemu(
    platform_images: dict[str, oci.Artifact], arm64_rootfs: Path, tmp_path: Path
) -> None:
    """Not just a CLI: the arm64 server starts (FIPS gate, SQLite, HTTP) and answers discovery,
    with the arm64 provider's pin reported by its readiness endpoint."""
    config = ImageConfig.from_layout_config(_config(platform_images["arm64"]))
    web, telemetry = free_port(), free_port()
    config_file = tmp_path / "config.yaml"
    config_file.write_text(demo_config(web, telemetry, pbkdf2_hash("password")))
    config_file.chmod(0o644)
    container = start_container(tmp_path, arm64_rootfs, config, config_file=config_file)
    try:
        wait_ready(container, f"http://127.0.0.1:{telemetry}/healthz/ready", timeout=120)
        fips = httpx.get(f"http://127.0.0.1:{telemetry}/healthz/ready", timeout=10).json()["fips"]
        assert fips["enabled"] is True
        assert fips["fips_so_sha256"] == load_lock(ARM64_LOCK).fips_provider.fips_so_sha256
        discovery = httpx.get(
            f"http://127.0.0.1:{web}/dex/.well-known/openid-configuration", timeout=10
        )
        assert discovery.status_code == 200
        assert discovery.json()["issuer"] == f"http://127.0.0.1:{web}/dex"
    finally:
        assert container.stop(timeout=20) == 0, container.stderr()


@pytest.mark.slow
def test_rebuilding_the_index_gives_the_same_digests(
    platform_images: dict[str, oci.Artifact], tmp_path: Path
) -> None:
    """A second index build (rootfs and layers rebuilt, freezes taken from the cache) is
    byte-identical: same image digests, same index digest."""
    log: list[str] = []
    result = image.build_index(REPO, tmp_path / "again", _image_cache(), log=log)
    digests = {one.architecture: one.manifest_digest for one in result.images}
    assert digests == {arch: art.digest for arch, art in platform_images.items()}, log
    assert result.index_digest == _index_digest()
