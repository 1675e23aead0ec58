"""`make login-binary`: kubectl-portcullis frozen into one reproducible file, plus krew metadata.

Outputs (in ``--output``, default ``dist/login``):
  kubectl-portcullis-<os>-<arch>          the PyInstaller onefile executable
  kubectl-portcullis-<os>-<arch>.sha256   ``sha256sum`` format
  kubectl-portcullis-<os>-<arch>.tar.gz   what krew downloads (krew installs from archives only)
  portcullis.yaml                         the krew plugin manifest (name = file name, as krew wants)
  kubectl-portcullis-<os>-<arch>.contents.json
                                          what the binary holds, read back from it
                                          (``login_contents``; the release's SBOM is written from it)

Reproducible by construction, the same ideas as the server's freeze (``freeze.py``), without
importing it (that module is the server image's, with its FIPS bundle):
  * the freezing environment is a venv holding only PyInstaller and its dependencies, installed
    with ``--require-hashes`` from ``requirements/release.txt`` — the plugin itself needs
    nothing outside the standard library, so nothing else can leak into the binary;
  * the plugin's sources are staged into a fixed directory with their mtimes set to
    ``SOURCE_DATE_EPOCH`` (PyInstaller's .pyc headers carry source mtimes);
  * ``SOURCE_DATE_EPOCH`` (fixes ``base_library.zip`` timestamps) and ``PYTHONHASHSEED=0``;
  * the tar.gz has sorted entries, owner 0:0, fixed mtimes and a zero gzip timestamp.
Shared libraries are stripped (``strip`` is deterministic): the file shrinks from ~17 MB to
~8 MB and, since a onefile binary unpacks itself on every run, kubectl waits ~0.3 s instead of
~0.5 s per plugin start (measured here).
The reproducibility test (tests/kubectl_plugin/test_login_binary.py) builds twice and compares.
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from portcullis_release import manifest as manifest_module
from portcullis_release.build import login_contents
from portcullis_release.manifest import ManifestError

PLUGIN_PACKAGE = "kubectl_portcullis"
APP_NAME = "kubectl-portcullis"
KREW_API_VERSION = "krew.googlecontainertools.github.com/v1alpha2"
KREW_NAME = "portcullis"  # `kubectl krew install portcullis` -> `kubectl portcullis`
# The distributions the freezing venv holds: PyInstaller and what it needs, nothing else.
FREEZE_DISTRIBUTIONS = (
    "altgraph",
    "packaging",
    "pyinstaller",
    "pyinstaller-hooks-contrib",
    "setuptools",
)
# Standard-library parts the plugin never imports; excluded so a hook cannot drag them in.
EXCLUDES = ("tkinter", "_tkinter", "test", "idlelib", "lib2to3", "ensurepip", "pydoc_data")
# The archive's download URL below the source repository, as forges publish release assets.
RELEASE_ASSET_PATH = "/releases/download/v{version}/{file}"


class LoginBinaryError(RuntimeError):
    """A build step failed; the message says which and shows the tool's last output."""


def lock_subset(lock_text: str, names: Sequence[str]) -> str:
    """The pip-tools lock entries (``name==version`` with their hashes) for ``names`` only."""
    wanted = {_normalize(n) for n in names}
    blocks: list[str] = []
    current: list[str] = []
    for line in lock_text.splitlines():
        if re.match(r"^[A-Za-z0-9]", line):
            if current:
                blocks.append("\n".join(current))
            current = [line]
        elif current and line.startswith("    --hash="):
            current.append(line)
    if current:
        blocks.append("\n".join(current))
    chosen = [b for b in blocks if _normalize(b.split("==", 1)[0]) in wanted]
    found = {_normalize(b.split("==", 1)[0]) for b in chosen}
    missing = sorted(wanted - found)
    if missing:
        raise LoginBinaryError(f"requirements lock has no entry for {', '.join(missing)}")
    return "\n".join(chosen) + "\n"


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _run(cmd: Sequence[str], what: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(list(cmd), env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-20:])
        raise LoginBinaryError(f"{what} failed ({proc.returncode}):\n{tail}")


def freeze_venv(repo: Path, cache: Path) -> Path:
    """A venv with only PyInstaller (hash-checked from the release lock); cached by its inputs."""
    requirements = lock_subset(
        (repo / "requirements" / "release.txt").read_text(), FREEZE_DISTRIBUTIONS
    )
    key = hashlib.sha256(f"{sys.version}\0{requirements}".encode()).hexdigest()[:16]
    cache.mkdir(parents=True, exist_ok=True)
    # Parallel test workers (and parallel makes) share the cache: one builds, the others wait.
    with (cache / "freeze-venv.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _freeze_venv(cache / f"freeze-venv-{key}", requirements)


def _freeze_venv(venv: Path, requirements: str) -> Path:
    python = venv / "bin" / "python"
    if (venv / ".complete").is_file():
        return python
    shutil.rmtree(venv, ignore_errors=True)
    # The interpreter's bundled pip (ensurepip): offline, and pip itself never reaches the binary.
    _run([sys.executable, "-m", "venv", str(venv)], "creating the freeze venv")
    req_file = venv / "requirements.txt"
    req_file.write_text(requirements)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_USER")}
    _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--require-hashes",
            "--no-deps",
            "-r",
            str(req_file),
        ],
        "installing PyInstaller into the freeze venv",
        env,
    )
    _run([str(python), "-m", "pip", "check"], "checking the freeze venv", env)
    (venv / ".complete").write_text(requirements)
    return python


def stage_sources(repo: Path, staging: Path, source_date_epoch: int) -> Path:
    """Copy the plugin package and an entry script with fixed mtimes; the entry script."""
    shutil.rmtree(staging, ignore_errors=True)
    package = staging / PLUGIN_PACKAGE
    package.mkdir(parents=True)
    for source in sorted((repo / "server" / PLUGIN_PACKAGE).glob("*.py")):
        shutil.copyfile(source, package / source.name)
    entry = staging / "entry.py"
    entry.write_text(
        f"from {PLUGIN_PACKAGE}.cli import main\n\nraise SystemExit(main())\n", encoding="utf-8"
    )
    for path in [staging, package, *package.iterdir(), entry]:
        os.utime(path, (source_date_epoch, source_date_epoch))
    return entry


def freeze(python: Path, entry: Path, work: Path, source_date_epoch: int) -> Path:
    """Run PyInstaller --onefile in the freeze venv; the executable it wrote."""
    shutil.rmtree(work / "pyinstaller", ignore_errors=True)
    out = work / "pyinstaller"
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",) and not k.startswith("PYI")
    }
    env.update(
        SOURCE_DATE_EPOCH=str(source_date_epoch),
        PYTHONHASHSEED="0",
        PYINSTALLER_CONFIG_DIR=str(out / "config"),
    )
    cmd = [
        str(python),
        "-m",
        "PyInstaller",
        "--onefile",
        "--noconfirm",
        "--clean",
        "--log-level=WARN",
        "--strip",
        f"--name={APP_NAME}",
        f"--paths={entry.parent}",
        f"--distpath={out / 'dist'}",
        f"--workpath={out / 'build'}",
        f"--specpath={out}",
        *(f"--exclude-module={name}" for name in EXCLUDES),
        str(entry),
    ]
    _run(cmd, "PyInstaller", env)
    binary = out / "dist" / APP_NAME
    if not binary.is_file():
        raise LoginBinaryError(f"PyInstaller produced no {APP_NAME}")
    return binary


def target_platform() -> tuple[str, str]:
    """(os, arch) in krew's/Go's spelling for the machine building (PyInstaller cannot cross)."""
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    return sys.platform.removesuffix("2"), arch  # "linux", "darwin"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def krew_archive(binary: bytes, source_date_epoch: int) -> bytes:
    """The tar.gz krew downloads: one executable entry, byte-reproducible."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(APP_NAME)
        info.size = len(binary)
        info.mode = 0o755
        info.mtime = source_date_epoch
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(binary))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


@dataclass(frozen=True)
class KrewPlatform:
    os: str
    arch: str
    uri: str
    sha256: str


def krew_manifest(version: str, platforms: Sequence[KrewPlatform], homepage: str) -> str:
    """The krew ``Plugin`` manifest (``portcullis.yaml``) for the given archives."""
    if not re.fullmatch(r"\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?", version):
        raise LoginBinaryError(f"version {version!r} is not semantic (krew requires vX.Y.Z)")
    for entry in platforms:
        if not re.fullmatch(r"[0-9a-f]{64}", entry.sha256):
            raise LoginBinaryError(f"sha256 {entry.sha256!r} for {entry.os}/{entry.arch}")
        if not entry.uri.startswith("https://"):
            raise LoginBinaryError(f"krew downloads over https only, not {entry.uri!r}")
    document: dict[str, Any] = {
        "apiVersion": KREW_API_VERSION,
        "kind": "Plugin",
        "metadata": {"name": KREW_NAME},
        "spec": {
            "version": f"v{version}",
            "homepage": homepage,
            "shortDescription": "Log in to Kubernetes through a Portcullis OIDC issuer",
            "description": (
                "kubectl-portcullis is an exec credential plugin: it logs you in to a Portcullis\n"
                "(or any OpenID Connect) issuer in the browser, by device code or by password,\n"
                "caches and refreshes the tokens, and hands kubectl the ID token. It accepts\n"
                "kubelogin's get-token flags. Run `kubectl portcullis setup --help` to start.\n"
            ),
            "platforms": [
                {
                    "selector": {"matchLabels": {"os": p.os, "arch": p.arch}},
                    "uri": p.uri,
                    "sha256": p.sha256,
                    "bin": APP_NAME,
                    "files": [{"from": APP_NAME, "to": "."}],
                }
                for p in sorted(platforms, key=lambda p: (p.os, p.arch))
            ],
        },
    }
    return yaml.dump(document, Dumper=_BlockDumper, sort_keys=False, width=100)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings as ``|`` blocks, as krew-index manifests are written by hand."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_str)


def project_version(repo: Path) -> str:
    text = (repo / "server" / PLUGIN_PACKAGE / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    if not match:
        raise LoginBinaryError(f"no __version__ in server/{PLUGIN_PACKAGE}/__init__.py")
    return match.group(1)


def build(
    repo: Path,
    output: Path,
    cache: Path,
    source_date_epoch: int,
    *,
    uri_template: str | None = None,
    homepage: str | None = None,
    work: Path | None = None,
    log: list[str] | None = None,
) -> dict[str, Path]:
    """Freeze, checksum, archive and describe the plugin; the paths written.

    ``work`` (default ``<cache>/work``) holds the staged sources and PyInstaller's files; the
    freezing venv is shared through ``cache``. The krew manifest needs a download URL and a
    homepage: given, or derived from the source repository
    (:func:`portcullis_release.manifest.source_repository`); with neither, it is not written
    and ``log`` says why (a manifest pointing at an invented URL would send users elsewhere).
    """
    log = log if log is not None else []
    source = manifest_module.source_repository(repo)
    if source is not None and source.startswith("https://"):
        base = source.removesuffix(".git")
        uri_template = uri_template or base + RELEASE_ASSET_PATH
        homepage = homepage or base
    python = freeze_venv(repo, cache)
    work = work or cache / "work"
    entry = stage_sources(repo, work / "src", source_date_epoch)
    frozen = freeze(python, entry, work, source_date_epoch)
    os_name, arch = target_platform()
    name = f"{APP_NAME}-{os_name}-{arch}"
    output.mkdir(parents=True, exist_ok=True)
    binary = output / name
    shutil.copyfile(frozen, binary)
    binary.chmod(0o755)
    digest = sha256_file(binary)
    checksum = output / f"{name}.sha256"
    checksum.write_text(f"{digest}  {name}\n")
    archive = output / f"{name}.tar.gz"
    archive.write_bytes(krew_archive(binary.read_bytes(), source_date_epoch))
    version = project_version(repo)
    contents = login_contents.inspect_binary(
        python, binary, work / "pyinstaller" / "build" / APP_NAME, work / "src", PLUGIN_PACKAGE
    )
    contents.update(version=version, os=os_name, arch=arch, sourceDateEpoch=source_date_epoch)
    contents_path = login_contents.contents_file(binary)
    contents_path.write_text(json.dumps(contents, indent=1, sort_keys=True) + "\n")
    written = {"binary": binary, "sha256": checksum, "archive": archive, "contents": contents_path}
    if uri_template is None or homepage is None:
        log.append(
            "no krew manifest: no https source repository known (SOURCE_REPOSITORY, "
            "source.repository in release/manifest.yaml, or a git remote 'origin') and no "
            "--uri-template/--homepage given"
        )
    else:
        uri = uri_template.format(version=version, file=archive.name)
        manifest = output / f"{KREW_NAME}.yaml"
        platform_entry = KrewPlatform(os_name, arch, uri, sha256_file(archive))
        manifest.write_text(krew_manifest(version, [platform_entry], homepage))
        written["manifest"] = manifest
    for path in written.values():
        os.utime(path, (source_date_epoch, source_date_epoch))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m portcullis_release.build.login_binary",
        description="Freeze kubectl-portcullis into one reproducible file with a krew manifest.",
    )
    parser.add_argument("--output", type=Path, default=Path("dist/login"))
    parser.add_argument("--cache", type=Path, default=Path(".cache/login"))
    parser.add_argument("--repo", type=Path, default=Path.cwd())
    parser.add_argument(
        "--uri-template",
        default=os.environ.get("LOGIN_URI_TEMPLATE"),
        help="download URL of the archive for the krew manifest; {version} and {file} are "
        "replaced (default $LOGIN_URI_TEMPLATE, else the source repository's release assets)",
    )
    parser.add_argument(
        "--homepage",
        default=os.environ.get("LOGIN_HOMEPAGE"),
        help="krew manifest homepage (default $LOGIN_HOMEPAGE, else the source repository)",
    )
    args = parser.parse_args(argv)
    sde = int(os.environ.get("SOURCE_DATE_EPOCH", "0") or 0)
    log: list[str] = []
    try:
        written = build(
            args.repo.resolve(),
            args.output,
            args.cache.resolve(),
            sde,
            uri_template=args.uri_template,
            homepage=args.homepage,
            log=log,
        )
    except (LoginBinaryError, login_contents.ContentsError, ManifestError, OSError) as exc:
        print(f"login-binary: {exc}", file=sys.stderr)
        return 1
    for line in log:
        print(f"login-binary: {line}")
    for path in written.values():
        print(path)
    print(f"sha256 {sha256_file(written['binary'])}  {written['binary'].name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
