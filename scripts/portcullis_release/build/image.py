"""Build the hardened server image as an OCI image layout (``portcullis-release image``).

``build()`` puts together the pieces made by the sibling modules: the FIPS provider
(``fips_provider``), the frozen server (``freeze``), the distroless rootfs (``rootfs``, from the
Debian packages pinned in ``images/portcullis/packages.lock``), and writes two reproducible
layers (rootfs, app) with config and manifest (``oci_layout``) to ``dist/image``, tagged with the
project version. Every timestamp is SOURCE_DATE_EPOCH, so one commit always gives one digest.

``relock()`` (``image lock``) re-pins the Debian packages to the mirror's current candidates (and, with
``--fips-version``, the provider source), for the upstream tracker or a person to review.
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
from portcullis_release.build import debs, fips_provider, freeze, oci_layout, rootfs
from portcullis_release.build.packages_lock import FipsProviderPin, PackagesLock, load_lock

IMAGE_RECIPE = Path("images/portcullis")
LOCK_FILE = IMAGE_RECIPE / "packages.lock"
IMAGE_JSON = IMAGE_RECIPE / "image.json"
OPENSSL_CNF = IMAGE_RECIPE / "openssl-fips.cnf"
_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


class ImageError(RuntimeError):
    """The image recipe is inconsistent (the message names the field or file)."""


@dataclass(frozen=True)
class BuildResult:
    layout: Path
    tag: str
    manifest_digest: str
    compressed_size: int
    uncompressed_size: int


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
) -> BuildResult:
    """Build the image layout into ``output`` (replaced) and return its digest and sizes."""
    log = log if log is not None else []
    recipe = load_recipe(repo)
    lock = load_lock(repo / LOCK_FILE)
    _check_lock_matches_recipe(lock, recipe)
    epoch = source_date_epoch(repo)
    version = project_version(repo)
    architecture = _ARCH.get(platform.machine(), platform.machine())
    if architecture != lock.architecture:
        raise ImageError(
            f"{LOCK_FILE}: architecture {lock.architecture}, building on {architecture}"
        )

    fips_so = fips_provider.build_fips_so(lock.fips_provider, cache, log)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="image-", dir=cache) as scratch_name:
        scratch = Path(scratch_name)
        bundle = fips_provider.assemble_bundle(
            lock.fips_provider, fips_so, repo / OPENSSL_CNF, scratch / "fips-bundle"
        )
        fips_provider.publish_bundle(bundle, cache / "fips-bundle")
        frozen = freeze.freeze(
            repo,
            bundle,
            cache,
            epoch,
            log,
            system_libs=recipe["system_libraries"],
            fresh_into=scratch if fresh else None,
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
            "org.opencontainers.image.revision": git_revision(repo),
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
    )


def relock(repo: Path, cache: Path, fips_version: str | None, log: list[str]) -> PackagesLock:
    """Pin the mirror's current candidates; rebuild and re-pin the provider if asked."""
    recipe = load_recipe(repo)
    current = load_lock(repo / LOCK_FILE)
    pins = tuple(debs.candidate(name, current.architecture) for name in recipe["packages"])
    provider = current.fips_provider
    if fips_version and fips_version != provider.source_version:
        unpinned = FipsProviderPin(provider.source_package, fips_version, "0" * 64)
        # The placeholder pin never matches; what matters is that the file is now cached.
        with contextlib.suppress(fips_provider.FipsBuildError):
            fips_provider.build_fips_so(unpinned, cache, log)
        built = cache / "fips-provider" / fips_version / "fips.so"
        provider = replace(unpinned, fips_so_sha256=fips_provider.sha256_file(built))
    lock = replace(current, debs=pins, fips_provider=provider)
    (repo / LOCK_FILE).write_text(lock.to_json(), encoding="utf-8")
    return lock
