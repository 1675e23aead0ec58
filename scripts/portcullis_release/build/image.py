"""Build the hardened server image as an OCI image layout (``portcullis-release image``).

``build()`` puts together the pieces made by the sibling modules: the FIPS provider
(``fips_provider``), the frozen server (``freeze``), the distroless rootfs (``rootfs``, from the
Debian packages pinned in ``images/portcullis/packages.lock``), and writes two reproducible
layers (rootfs, app) with config and manifest (``oci_layout``) to ``dist/image``, tagged with the
project version. Every timestamp is SOURCE_DATE_EPOCH, so one commit always gives one digest.

``build(architecture="arm64")`` builds the same recipe for another architecture from its own
lock (``packages-arm64.lock``): rootfs from that architecture's packages, the provider
cross-compiled, the server frozen under qemu (``emulation``). ``build_index()`` builds every
architecture and writes one layout whose tag names an OCI image index (one manifest per
platform), which is what a registry serves to ``docker pull`` on either kind of node.

``relock()`` (``image lock``) re-pins the Debian packages to the mirror's current candidates
(and, with ``--fips-version``, the provider source), for the upstream tracker or a person to
review.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from portcullis_release import manifest, oci
from portcullis_release.build import debs, emulation, fips_provider, freeze, oci_layout, rootfs
from portcullis_release.build.packages_lock import (
    DebPin,
    FipsProviderPin,
    PackagesLock,
    load_lock,
)

IMAGE_RECIPE = Path("images/portcullis")
LOCK_FILE = IMAGE_RECIPE / "packages.lock"
IMAGE_JSON = IMAGE_RECIPE / "image.json"
OPENSSL_CNF = IMAGE_RECIPE / "openssl-fips.cnf"
_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
# Every architecture the release publishes, in index order; the first is the one
# packages.lock pins and the machine the release is built on.
ARCHITECTURES = ("amd64", "arm64")
# Packages of the emulated build root of a foreign architecture (see emulation.py); their
# dependencies are resolved and pinned by `image lock --arch`.
BUILD_ROOT_PACKAGES = ("python3.11", "libpython3.11", "binutils", "bash", "libc-bin", "openssl")


class ImageError(RuntimeError):
    """The image recipe is inconsistent (the message names the field or file)."""


@dataclass(frozen=True)
class BuildResult:
    layout: Path
    tag: str
    manifest_digest: str
    compressed_size: int
    uncompressed_size: int
    architecture: str = ARCHITECTURES[0]


@dataclass(frozen=True)
class IndexResult:
    """The multi-architecture layout: the index's digest and each platform's image."""

    layout: Path
    tag: str
    index_digest: str
    images: tuple[BuildResult, ...]


def lock_file(repo: Path, architecture: str) -> Path:
    """``packages.lock`` for the primary architecture, ``packages-<arch>.lock`` for others."""
    primary = load_lock(repo / LOCK_FILE).architecture
    if architecture == primary:
        return LOCK_FILE
    return IMAGE_RECIPE / f"packages-{architecture}.lock"


def repo_root() -> Path:
    """The repository this tooling is running from (where pyproject.toml is)."""
    here = Path.cwd()
    for candidate in (here, *here.parents):
        if (candidate / "pyproject.toml").is_file() and (candidate / IMAGE_RECIPE).is_dir():
            return candidate
    raise ImageError(f"run from the repository: no pyproject.toml with {IMAGE_RECIPE} above {here}")


def project_version(repo: Path) -> str:
    with (repo / "pyproject.toml").open("rb") as fh:
        version = tomllib.load(fh).get("project", {}).get("version")
    if not isinstance(version, str):
        raise ImageError("pyproject.toml: project.version missing")
    return version


def git_revision(repo: Path) -> str:
    proc = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=False
    )
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def source_date_epoch(repo: Path) -> int:
    """SOURCE_DATE_EPOCH if set, else the last commit's time (what the Makefile exports)."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None:
        proc = subprocess.run(
            ["git", "log", "-1", "--format=%ct"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=False,
        )
        value = proc.stdout.strip() or "0"
    try:
        return int(value)
    except ValueError as exc:
        raise ImageError(f"SOURCE_DATE_EPOCH must be an integer, got {value!r}") from exc


def load_recipe(repo: Path) -> dict[str, Any]:
    try:
        recipe = json.loads((repo / IMAGE_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ImageError(f"{IMAGE_JSON}: {exc}") from exc
    required = ("packages", "app_dir", "user", "entrypoint", "cmd", "env", "exposed_ports")
    for key in (*required, "workdir", "labels", "writable_dirs", "system_libraries"):
        if key not in recipe:
            raise ImageError(f"{IMAGE_JSON}: missing field {key!r}")
    return dict(recipe)


def _check_lock_matches_recipe(lock: PackagesLock, recipe: dict[str, Any]) -> None:
    locked = sorted(d.name for d in lock.debs)
    wanted = sorted(recipe["packages"])
    if locked != wanted:
        raise ImageError(
            f"{LOCK_FILE} pins {locked} but {IMAGE_JSON} packages lists {wanted}: "
            "run `portcullis-release image lock`"
        )


def build(
    repo: Path,
    output: Path,
    cache: Path,
    *,
    source_url: str | None = None,
    fresh: bool = False,
    log: list[str] | None = None,
    architecture: str | None = None,
    epoch: int | None = None,
    revision: str | None = None,
) -> BuildResult:
    """Build the image layout into ``output`` (replaced) and return its digest and sizes.

    ``architecture`` defaults to the machine's; another one is built under emulation.
    ``epoch`` and ``revision`` (default: SOURCE_DATE_EPOCH or the last commit's time, and
    HEAD) are passed by ``build_index`` so every platform image carries the same ones.
    """
    log = log if log is not None else []
    recipe = load_recipe(repo)
    machine = _ARCH.get(platform.machine(), platform.machine())
    architecture = architecture or machine
    lock_path = lock_file(repo, architecture)
    lock = load_lock(repo / lock_path)
    _check_lock_matches_recipe(lock, recipe)
    epoch = source_date_epoch(repo) if epoch is None else epoch
    version = project_version(repo)
    if architecture != lock.architecture:
        raise ImageError(f"{lock_path}: architecture {lock.architecture}, expected {architecture}")
    foreign = architecture != machine
    try:
        root = emulation.build_root(lock, cache, log) if foreign else None
    except emulation.EmulationError as exc:
        raise ImageError(f"cannot build the {architecture} image here: {exc}") from exc

    fips_so = fips_provider.build_fips_so(lock.fips_provider, cache, log, architecture)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="image-", dir=cache) as scratch_name:
        scratch = Path(scratch_name)
        if root is None:
            bundle = fips_provider.assemble_bundle(
                lock.fips_provider, fips_so, repo / OPENSSL_CNF, scratch / "fips-bundle"
            )
            fips_provider.publish_bundle(bundle, cache / "fips-bundle")
        else:
            bundle = fips_provider.assemble_bundle(
                lock.fips_provider,
                fips_so,
                repo / OPENSSL_CNF,
                scratch / "fips-bundle",
                fipsinstall=emulation.fipsinstall(root, scratch),
            )
        frozen = freeze.freeze(
            repo,
            bundle,
            cache,
            epoch,
            log,
            system_libs=recipe["system_libraries"],
            fresh_into=scratch if fresh else None,
            build_root=root,
        )
        writable = {path: int(mode, 8) for path, mode in recipe["writable_dirs"].items()}
        tree = rootfs.build_rootfs(lock.debs, cache, scratch / "rootfs", writable, log)
        layers = [
            oci_layout.make_layer(
                oci_layout.tar_tree(tree.path, mtime=epoch, owners=tree.owners),
                f"rootfs: Debian {lock.suite} packages " + " ".join(sorted(recipe["packages"])),
            ),
            oci_layout.make_layer(
                oci_layout.tar_tree(frozen, mtime=epoch, prefix=recipe["app_dir"]),
                "app: PyInstaller-frozen portcullis with the OpenSSL FIPS provider "
                f"{lock.fips_provider.upstream_version}",
            ),
        ]
    labels = dict(recipe["labels"])
    labels.update(
        {
            "org.opencontainers.image.version": version,
            "org.opencontainers.image.revision": revision or git_revision(repo),
            "org.opencontainers.image.created": oci_layout.rfc3339(epoch),
        }
    )
    # The source label names where this tree comes from (flag, SOURCE_REPOSITORY, the
    # manifest's source.repository, or the git remote) and is left out when nothing says so.
    source_url = source_url or manifest.source_repository(repo)
    if source_url:
        labels["org.opencontainers.image.source"] = source_url
    else:
        log.append(
            "no source repository known (SOURCE_REPOSITORY, source.repository in "
            "release/manifest.yaml, or a git remote 'origin'): the image has no "
            "org.opencontainers.image.source label"
        )
    settings = oci_layout.ImageSettings(
        user=recipe["user"],
        entrypoint=recipe["entrypoint"],
        cmd=recipe["cmd"],
        env=recipe["env"],
        exposed_ports=recipe["exposed_ports"],
        workdir=recipe["workdir"],
        labels=labels,
    )
    config = oci_layout.image_config(settings, layers, epoch, architecture)
    annotations = {k: v for k, v in labels.items() if k.startswith("org.opencontainers.image.")}
    artifact = oci_layout.image_artifact(config, layers, annotations)
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    oci.write_layout(output, artifact, ref_name=version)
    log.append(f"wrote {output} tag {version} manifest {artifact.digest}")
    return BuildResult(
        layout=output,
        tag=version,
        manifest_digest=artifact.digest,
        compressed_size=sum(len(layer.blob) for layer in layers) + len(config),
        uncompressed_size=sum(len(layer.tar) for layer in layers),
        architecture=architecture,
    )


def index_artifact(
    images: list[tuple[str, oci.Artifact]], annotations: dict[str, str]
) -> oci.Artifact:
    """An OCI image index over ``(architecture, image)`` pairs, carrying every blob.

    Each entry has the ``platform`` a runtime selects by (os linux, the architecture; arm64
    images are ``v8``, the variant Docker and containerd match ``linux/arm64`` to).
    """
    entries: list[dict[str, Any]] = []
    blobs: dict[str, bytes] = {}
    for architecture, image in images:
        desc = oci.Descriptor(image.media_type, image.digest, len(image.manifest)).to_json()
        desc["platform"] = {"architecture": architecture, "os": "linux"}
        if architecture == "arm64":
            desc["platform"]["variant"] = "v8"
        entries.append(desc)
        blobs.update(image.blobs)
        blobs[image.digest] = image.manifest
    index = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_INDEX,
        "manifests": entries,
        "annotations": dict(sorted(annotations.items())),
    }
    return oci.Artifact(oci.canonical_json(index), oci.OCI_INDEX, blobs)


def read_index(layout: Path, tag: str) -> dict[str, oci.Artifact]:
    """The platform images of a multi-architecture layout, by architecture."""
    index_json = oci.parse_manifest((layout / "index.json").read_bytes(), f"{layout}/index.json")
    tagged = [
        m
        for m in index_json.get("manifests") or []
        if (m.get("annotations") or {}).get(oci.REF_NAME) == tag
    ]
    if len(tagged) != 1 or tagged[0].get("mediaType") != oci.OCI_INDEX:
        raise ImageError(f"{layout}: tag {tag} does not name exactly one image index")
    blobs = layout / "blobs" / "sha256"

    def blob(digest: str) -> bytes:
        data = (blobs / oci.digest_hex(digest)).read_bytes()
        if oci.sha256_digest(data) != digest:
            raise ImageError(f"{layout}: blob {digest} does not hash to its digest")
        return data

    index = oci.parse_manifest(blob(tagged[0]["digest"]), tagged[0]["digest"])
    out: dict[str, oci.Artifact] = {}
    for i, entry in enumerate(index.get("manifests") or []):
        architecture = (entry.get("platform") or {}).get("architecture")
        if not isinstance(architecture, str) or architecture in out:
            raise ImageError(f"{layout}: index entry {i} has no (or a repeated) architecture")
        desc = oci.Descriptor.from_json(entry, f"index.manifests[{i}]")
        image = oci.Artifact(blob(desc.digest), desc.media_type)
        for part in image.descriptors():
            image.blobs[part.digest] = blob(part.digest)
        out[architecture] = image
    return out


def build_index(
    repo: Path,
    output: Path,
    cache: Path,
    *,
    architectures: tuple[str, ...] = ARCHITECTURES,
    source_url: str | None = None,
    log: list[str] | None = None,
) -> IndexResult:
    """Build every architecture and write one layout tagged with an image index over them.

    Each image is exactly what ``build`` writes for that architecture (same digest); the
    layout's tag names the index, whose annotations repeat the images' OCI annotations.
    """
    log = log if log is not None else []
    version = project_version(repo)
    # Read once: a commit landing while the (minutes long) emulated build runs must not give
    # the platform images different creation times or revisions.
    epoch, revision = source_date_epoch(repo), git_revision(repo)
    results: list[BuildResult] = []
    images: list[tuple[str, oci.Artifact]] = []
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="index-", dir=cache) as scratch:
        for architecture in architectures:
            single = Path(scratch) / architecture
            result = build(
                repo,
                single,
                cache,
                source_url=source_url,
                log=log,
                architecture=architecture,
                epoch=epoch,
                revision=revision,
            )
            results.append(result)
            images.append((architecture, oci.read_layout(single, version)))
    annotations = {
        k: v
        for k, v in (images[0][1].manifest_json().get("annotations") or {}).items()
        if k.startswith("org.opencontainers.image.")
    }
    index = index_artifact(images, annotations)
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    oci.write_layout(output, index, ref_name=version)
    log.append(f"wrote {output} tag {version} index {index.digest} ({', '.join(architectures)})")
    return IndexResult(output, version, index.digest, tuple(results))


def relock(
    repo: Path,
    cache: Path,
    fips_version: str | None,
    log: list[str],
    architecture: str | None = None,
) -> PackagesLock:
    """Pin the mirror's current candidates; rebuild and re-pin the provider if asked.

    For a foreign ``architecture`` the build root's packages are re-resolved and pinned too,
    and a lock that does not exist yet is started from the primary one (suite, provider source).
    """
    recipe = load_recipe(repo)
    primary = load_lock(repo / LOCK_FILE)
    architecture = architecture or primary.architecture
    path = repo / lock_file(repo, architecture)
    current = load_lock(path) if path.is_file() else replace(primary, architecture=architecture)
    pins = tuple(debs.candidate(name, architecture, cache) for name in recipe["packages"])
    build_pins: tuple[DebPin, ...] = ()
    if architecture != primary.architecture:
        names = debs.closure(BUILD_ROOT_PACKAGES, architecture, cache)
        build_pins = tuple(debs.candidate(name, architecture, cache) for name in names)
    provider = current.fips_provider
    wanted = fips_version or provider.source_version
    if (fips_version and fips_version != provider.source_version) or not path.is_file():
        unpinned = FipsProviderPin(provider.source_package, wanted, "0" * 64)
        # The placeholder pin never matches; what matters is that the file is now cached.
        with contextlib.suppress(fips_provider.FipsBuildError):
            fips_provider.build_fips_so(unpinned, cache, log, architecture)
        built = fips_provider.provider_path(cache, wanted, architecture)
        provider = replace(unpinned, fips_so_sha256=fips_provider.sha256_file(built))
    lock = replace(current, debs=pins, fips_provider=provider, build_debs=build_pins)
    path.write_text(lock.to_json(), encoding="utf-8")
    return lock
