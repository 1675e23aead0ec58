"""Fixtures for the supply-chain tests: synthetic release artefacts, keys, a real registry, cosign.

The artefacts are small but real: an OCI image layout with a gzip layer holding files from a
real ``.deb`` (built with dpkg-deb), a FIPS provider file, the frozen app directory and
recipe-written files; a packaged Helm chart. They exercise every code path the real image does
while keeping the suite fast.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from portcullis_release import oci
from portcullis_release.attest import cosign_keys
from portcullis_release.build import image
from portcullis_release.plan import ReleasePlan

from tests.support.registry import Registry, start_registry

REPO_ROOT = Path(__file__).resolve().parents[2]

COSIGN = REPO_ROOT / ".cache" / "cosign" / "usr" / "bin" / "cosign"
KEY_PASSWORD = "correct horse battery staple"
BUILDER_ID = "https://example.test/builders/release-tests"
SOURCE_REPO = "https://example.test/portcullis.git"
STALE_REVISION = "0123456789abcdef" * 2 + "01234567"


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted(
            {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}
        )
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build_deb(
    workdir: Path, name: str, version: str, files: dict[str, bytes], architecture: str = "amd64"
) -> Path:
    """A genuine Debian package (dpkg-deb) installing ``files``."""
    root = workdir / f"{name}-pkg"
    for path, data in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (root / "DEBIAN").mkdir(parents=True, exist_ok=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: {architecture}\n"
        "Maintainer: tests <tests@example.test>\nDescription: test package\n"
    )
    out = workdir / f"{name}_{version}_{architecture}.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(out)],
        check=True,
        capture_output=True,
    )
    return out


@dataclass
class SyntheticRelease:
    image_dir: Path
    chart: Path
    packages_lock: Path
    deb_dir: Path
    runtime_lock: Path
    files: list[str]

    def plan(self, registry: str) -> ReleasePlan:
        return ReleasePlan.load(self.image_dir, self.chart, registry)


def make_image(
    root: Path | None, files: dict[str, bytes], tag: str = "1.2.3", architecture: str = "amd64"
) -> oci.Artifact:
    """An image of ``files`` (one layer), written as a layout at ``root`` unless None."""
    layer_tar = _tar(files)
    layer = gzip.compress(layer_tar, mtime=0)
    config = oci.canonical_json(
        {
            "architecture": architecture,
            "os": "linux",
            "config": {"User": "65532:65532"},
            "rootfs": {
                "type": "layers",
                "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()],
            },
        }
    )
    cdesc = oci.Descriptor.of(oci.OCI_CONFIG, config)
    ldesc = oci.Descriptor.of("application/vnd.oci.image.layer.v1.tar+gzip", layer)
    art = oci.Artifact(
        oci.image_manifest(cdesc, [ldesc]),
        oci.OCI_MANIFEST,
        {cdesc.digest: config, ldesc.digest: layer},
    )
    if root is not None:
        oci.write_layout(root, art, tag)
    return art


def make_chart(path: Path, version: str = "1.2.3", marker: str = "") -> Path:
    files = {
        "portcullis/Chart.yaml": (
            f"apiVersion: v2\nname: portcullis\nversion: {version}\n"
            f"appVersion: {version}\ndescription: test chart{marker}\n"
        ).encode(),
        "portcullis/values.yaml": b"image:\n  repository: example\n",
        "portcullis/templates/cm.yaml": b"apiVersion: v1\nkind: ConfigMap\n",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(_tar(files), mtime=0))
    return path


def _platform_inputs(
    workdir: Path, marker: str, architecture: str, lock_path: Path
) -> tuple[dict[str, bytes], Path]:
    """One architecture's image files and its package lock (a real .deb of that architecture)."""
    deb_dir = workdir / "debs"
    deb_dir.mkdir(parents=True, exist_ok=True)
    deb_files = {"usr/share/zoneinfo/UTC": b"TZif2 fake", "etc/timezone": b"UTC\n"}
    deb = build_deb(deb_dir, "tzdata-test", "2024a-1", deb_files, architecture)
    # amd64 keeps the single-image fixture's bytes; arm64 differs (another image digest).
    tail = b"" if architecture == "amd64" else f" {architecture}".encode()
    fips_so = b"\x7fELF fake fips provider" + tail
    lock = {
        "format": 1,
        "suite": "bookworm",
        "architecture": architecture,
        "debs": [
            {
                "name": "tzdata-test",
                "version": "2024a-1",
                "architecture": architecture,
                "sha256": hashlib.sha256(deb.read_bytes()).hexdigest(),
            }
        ],
        "fips_provider": {
            "source_package": "openssl",
            "source_version": "3.0.20-1~deb12u2",
            "fips_so_sha256": hashlib.sha256(fips_so).hexdigest(),
        },
    }
    lock_path.write_text(json.dumps(lock, indent=2, sort_keys=True))
    triplet = {"amd64": "x86_64", "arm64": "aarch64"}[architecture]
    files = {
        **deb_files,
        f"usr/lib/{triplet}-linux-gnu/ossl-modules/fips.so": fips_so,
        "opt/portcullis/portcullis": b"#!frozen " + marker.encode() + tail,
        "opt/portcullis/_internal/base_library.zip": b"PK fake",
        "etc/passwd": b"nonroot:x:65532:65532::/home/nonroot:/sbin/nologin\n",
    }
    return files, deb_dir


def _runtime_lock(workdir: Path) -> Path:
    runtime = workdir / "runtime.txt"
    runtime.write_text(
        "starlette==0.41.0 \\\n    --hash=sha256:" + "a" * 64 + "\n"
        "pyyaml==6.0.2 \\\n    --hash=sha256:" + "b" * 64 + " \\\n"
        "    --hash=sha256:" + "c" * 64 + "\n"
    )
    return runtime


def synthetic_release(workdir: Path, marker: str = "", version: str = "1.2.3") -> SyntheticRelease:
    """A complete set of release inputs; ``marker`` changes content to get other digests."""
    lock_path = workdir / "packages.lock"
    files, deb_dir = _platform_inputs(workdir, marker, "amd64", lock_path)
    runtime = _runtime_lock(workdir)
    image_dir = workdir / "image"
    make_image(image_dir, files, tag=version)
    chart = make_chart(workdir / "chart" / f"portcullis-{version}.tgz", version, marker=marker)
    return SyntheticRelease(
        image_dir, chart, lock_path, deb_dir, runtime, sorted("/" + p for p in files)
    )


def synthetic_multiarch_release(
    workdir: Path, marker: str = "", version: str = "1.2.3"
) -> SyntheticRelease:
    """Release inputs whose image is an image index over linux/amd64 and linux/arm64, laid out
    as ``image index`` writes dist/image-multiarch (``build.image.index_artifact``), with
    packages.lock and packages-arm64.lock side by side and each architecture's .deb."""
    lock_path = workdir / "packages.lock"
    images: list[tuple[str, oci.Artifact]] = []
    deb_dir = workdir / "debs"
    every_file: set[str] = set()
    for architecture in ("amd64", "arm64"):
        lock = lock_path if architecture == "amd64" else workdir / "packages-arm64.lock"
        files, deb_dir = _platform_inputs(workdir, marker, architecture, lock)
        images.append((architecture, make_image(None, files, version, architecture)))
        every_file.update("/" + p for p in files)
    # Built "from another commit" than any checkout: the release must say so.
    annotations = {
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.revision": STALE_REVISION,
    }
    index = image.index_artifact(images, annotations)
    image_dir = workdir / "image-multiarch"
    oci.write_layout(image_dir, index, version)
    chart = make_chart(workdir / "chart" / f"portcullis-{version}.tgz", version, marker=marker)
    return SyntheticRelease(
        image_dir, chart, lock_path, deb_dir, _runtime_lock(workdir), sorted(every_file)
    )


@pytest.fixture
def release_inputs(tmp_path: Path) -> SyntheticRelease:
    return synthetic_release(tmp_path / "inputs")


@dataclass
class KeyPair:
    private: Path
    public: Path
    password: str


@pytest.fixture(scope="session")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    """A key pair in cosign's encrypted format (written by our code)."""
    directory = tmp_path_factory.mktemp("key")
    private, public = cosign_keys.generate_key_pair(directory, KEY_PASSWORD.encode())
    return KeyPair(private, public, KEY_PASSWORD)


@pytest.fixture(scope="session")
def other_keypair(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    directory = tmp_path_factory.mktemp("otherkey")
    private, public = cosign_keys.generate_key_pair(directory, b"other", pem=True)
    return KeyPair(private, public, "other")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = start_registry(tmp_path, {"releaser": "release-test-password", "reader": "r-pass"})
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def cosign() -> Path:
    """The real cosign binary, installed by `make test` (release-test-deps)."""
    if not COSIGN.is_file():
        pytest.fail(f"{COSIGN} missing: run `make release-test-deps` (part of `make test`)")
    return COSIGN


def cosign_env(tmp: Path, registry: Registry, password: str = "") -> dict[str, str]:
    """Isolated HOME/DOCKER_CONFIG so cosign only knows the test registry's credentials."""
    home = tmp / "cosign-home"
    docker = home / ".docker"
    docker.mkdir(parents=True, exist_ok=True)
    (docker / "config.json").write_text(registry.auth_file.read_text())
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "DOCKER_CONFIG": str(docker),
        "COSIGN_PASSWORD": password,
        "COSIGN_EXPERIMENTAL": "0",
        "SIGSTORE_NO_CACHE": "1",
        "TUF_ROOT": str(home / "tuf"),
    }
