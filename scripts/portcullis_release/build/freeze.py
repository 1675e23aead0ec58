"""Freeze the server with PyInstaller (onedir) from ``images/portcullis/portcullis.spec``.

Onedir, not onefile: it starts faster and needs no writable /tmp to unpack into. The build is
reproducible when ``SOURCE_DATE_EPOCH`` and ``PYTHONHASHSEED=0`` are set (without the former,
``base_library.zip`` carries build-time timestamps), so both are always set here.

PyInstaller runs in a *freeze environment*, never in the development virtualenv: a venv under
the cache holding exactly ``requirements/freeze.txt`` (the runtime lock plus PyInstaller,
installed with ``--require-hashes``). PyInstaller collects whatever it can import, so freezing in
the dev venv shipped test and release tools (rich, pygments, grpc_tools, ...) that the SBOM, which
is written from the runtime lock, did not list. The environment is keyed by the lock's hash and
the interpreter, so a changed lock gets a new environment and an unchanged one is reused.

The result is cached under a key that hashes every input (server sources, spec, entry point,
FIPS bundle, the freeze lock, Python and SOURCE_DATE_EPOCH): an unchanged tree is not
frozen twice, and ``fresh=True`` forces a new build, which the reproducibility test uses.

Another architecture (arm64 on an amd64 machine) is frozen the same way by that architecture's
Python, running under qemu in a build root (``emulation``): the same spec, the same lock
(installed as that architecture's wheels), a separate cache (``frozen-<arch>/``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from portcullis_release.build import emulation

SPEC = Path("images/portcullis/portcullis.spec")
ENTRYPOINT = Path("images/portcullis/entrypoint.py")
# The spec reads the image's app directory from it (where its symlinks into the rootfs start).
IMAGE_JSON = Path("images/portcullis/image.json")
APP_NAME = "portcullis"
CONTENTS_DIR = "_internal"  # PyInstaller 6's default contents directory
FIPS_DIRNAME = "portcullis_fips"  # portcullis.fips.BUNDLE_DIRNAME
FREEZE_LOCK = Path("requirements/freeze.txt")
_ENV_DONE = ".portcullis-freeze-env-complete"
# The bundle's provider copy for OpenSSL libraries that initialise late (portcullis.fips) is
# not frozen: in the frozen server the only one, libpq's, is the stdlib's OpenSSL (the spec
# links psycopg-binary's libssl/libcrypto to the rootfs's), so it would be 1.8 MB nobody maps.
FROZEN_WITHOUT = ("modules", "late")

# Run inside the freeze environment: which distribution provides each top-level importable name,
# and each distribution's version. ``packages_distributions`` infers names only from ``.py``
# files and top_level.txt, so top-level extension modules and helper files listed in RECORD
# (``_cffi_backend.*.so``, mypyc's ``<hash>__mypyc.*.so``) are added from the file lists.
_DISTRIBUTIONS_SCRIPT = r"""
import importlib.metadata as md, json, sys
tops = {name: set(dists) for name, dists in md.packages_distributions().items()}
versions = {}
for dist in md.distributions():
    name = dist.metadata["Name"]
    versions[name] = dist.version
    for f in dist.files or ():
        head = f.parts[0]
        if head.endswith((".dist-info", ".data")) or head == ".." or head.startswith("__"):
            continue
        top = head.split(".")[0] if len(f.parts) == 1 else head
        tops.setdefault(top, set()).add(name)
json.dump({"tops": {k: sorted(v) for k, v in tops.items()}, "versions": versions}, sys.stdout)
"""


class FreezeError(RuntimeError):
    """PyInstaller failed; the message carries the end of its output."""


def _hash_tree(digest: hashlib._Hash, root: Path, label: str) -> None:
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts or not path.is_file():
            continue
        digest.update(f"{label}/{path.relative_to(root).as_posix()}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())


def _restore_fips_bundle(built: Path, fips_bundle: Path) -> None:
    """Replace PyInstaller's (stripped) copy of the provider bundle with the pinned original.

    ``fips.so`` carries an integrity MAC over its exact bytes (in fipsmodule.cnf); PyInstaller
    strips shared libraries it meets among data files, so the bundle is copied back verbatim
    and compared file by file.
    """
    target = built / CONTENTS_DIR / FIPS_DIRNAME
    if not target.is_dir():
        raise FreezeError(f"PyInstaller output has no {CONTENTS_DIR}/{FIPS_DIRNAME}")
    shutil.rmtree(target)
    left_out = fips_bundle.joinpath(*FROZEN_WITHOUT)
    shutil.copytree(
        fips_bundle,
        target,
        ignore=lambda directory, names: {n for n in names if Path(directory, n) == left_out},
    )
    for path in sorted(fips_bundle.rglob("*")):
        if not path.is_file() or left_out in path.parents:
            continue
        if (target / path.relative_to(fips_bundle)).read_bytes() != path.read_bytes():
            raise FreezeError(f"frozen copy of {path.name} differs from the FIPS bundle")


def _env_key(repo: Path) -> str:
    lock = (repo / FREEZE_LOCK).read_bytes()
    return hashlib.sha256(f"python={sys.version}\0".encode() + lock).hexdigest()[:24]


def freeze_env(repo: Path, cache: Path, log: list[str]) -> Path:
    """Return the Python of the freeze environment, creating it if this lock has none yet.

    A half-built environment (interrupted install) has no completion marker and is rebuilt.
    """
    lock = repo / FREEZE_LOCK
    if not lock.is_file():
        raise FreezeError(f"{FREEZE_LOCK} is missing: run `make lock`")
    key = _env_key(repo)
    root = cache / "freeze-env"
    env = root / key
    python = env / "bin" / "python"
    if (env / _ENV_DONE).is_file():
        return python
    shutil.rmtree(env, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    steps = [
        [sys.executable, "-m", "venv", str(env)],
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--require-hashes",
            "--no-deps",
            "-r",
            str(lock),
        ],
    ]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-20:])
            raise FreezeError(f"building the freeze environment failed ({cmd[2:4]}):\n{tail}")
    (env / _ENV_DONE).write_text(lock.read_text(encoding="utf-8"), encoding="utf-8")
    log.append(f"freeze environment built from {FREEZE_LOCK} ({key})")
    return python


def env_distributions(python: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """``(top-level name -> distributions, distribution -> version)`` of an environment."""
    proc = subprocess.run(
        [str(python), "-c", _DISTRIBUTIONS_SCRIPT], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise FreezeError(f"reading the freeze environment's metadata failed: {proc.stderr}")
    loaded = json.loads(proc.stdout)
    tops: dict[str, list[str]] = loaded["tops"]
    versions: dict[str, str] = loaded["versions"]
    return tops, versions


def foreign_freeze_env(repo: Path, cache: Path, root: emulation.BuildRoot, log: list[str]) -> Path:
    """The site directory holding the freeze lock's wheels for the build root's architecture.

    Installed by the native freeze environment's pip (copying wheels needs no emulation) and
    keyed like the native environment: the lock's bytes and the build root.
    """
    lock = repo / FREEZE_LOCK
    if not lock.is_file():
        raise FreezeError(f"{FREEZE_LOCK} is missing: run `make lock`")
    key = hashlib.sha256(root.key.encode() + b"\0" + lock.read_bytes()).hexdigest()[:24]
    base = cache / f"freeze-env-{root.architecture}"
    site = base / key
    if (site / _ENV_DONE).is_file():
        return site
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    pip_python = freeze_env(repo, cache, log)
    try:
        emulation.install_wheels(
            pip_python, lock, site, root.architecture, emulation.build_root_python_version(root)
        )
    except emulation.EmulationError as exc:
        raise FreezeError(str(exc)) from exc
    (site / _ENV_DONE).write_text(lock.read_text(encoding="utf-8"), encoding="utf-8")
    for old in base.iterdir():
        if old.name != key:
            shutil.rmtree(old, ignore_errors=True)
    log.append(f"{root.architecture} freeze environment installed from {FREEZE_LOCK} ({key})")
    return site


def _freeze_native(
    python: Path,
    repo: Path,
    fips_bundle: Path,
    work: Path,
    *,
    source_date_epoch: int,
    system_libs: Sequence[str],
) -> subprocess.CompletedProcess[str]:
    """Run PyInstaller in the native freeze environment, output in ``work``."""
    # Nothing of the calling environment may reach the analysis: PYTHONPATH or a venv's
    # variables would put the development tools back within PyInstaller's reach.
    inherited = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    env = dict(
        inherited,
        SOURCE_DATE_EPOCH=str(source_date_epoch),
        PYTHONHASHSEED="0",
        PORTCULLIS_REPO=str(repo),
        PORTCULLIS_FIPS_BUNDLE_DIR=str(fips_bundle),
        PORTCULLIS_SYSTEM_LIBS=",".join(sorted(system_libs)),
    )
    cmd = [
        str(python),
        "-m",
        "PyInstaller",
        "--noconfirm",
        "--clean",
        "--log-level=WARN",
        f"--distpath={work / 'dist'}",
        f"--workpath={work / 'build'}",
        str(repo / SPEC),
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)


def _freeze_emulated(
    root: emulation.BuildRoot,
    repo: Path,
    fips_bundle: Path,
    site: Path,
    work: Path,
    *,
    source_date_epoch: int,
    system_libs: Sequence[str],
) -> subprocess.CompletedProcess[str]:
    """Run PyInstaller in the build root: repo, bundle and wheels read-only, output in ``work``.

    PyInstaller's own cache (``PYINSTALLER_CONFIG_DIR``) lives in ``work`` too, so nothing of
    one build is left in the shared build root for the next.
    """
    env = {
        "PATH": emulation.BUILD_ROOT_PATH,
        "HOME": "/work/home",
        "LC_ALL": "C.UTF-8",
        "PYTHONPATH": "/opt/freeze-env",
        "PYINSTALLER_CONFIG_DIR": "/work/pyinstaller",
        "SOURCE_DATE_EPOCH": str(source_date_epoch),
        "PYTHONHASHSEED": "0",
        "PORTCULLIS_REPO": "/src",
        "PORTCULLIS_FIPS_BUNDLE_DIR": "/fips-bundle",
        "PORTCULLIS_SYSTEM_LIBS": ",".join(sorted(system_libs)),
    }
    cmd = [
        emulation.BUILD_ROOT_PYTHON,
        "-m",
        "PyInstaller",
        "--noconfirm",
        "--clean",
        "--log-level=WARN",
        "--distpath=/work/dist",
        "--workpath=/work/build",
        f"/src/{SPEC.as_posix()}",
    ]
    return root.run(
        cmd,
        env=env,
        readonly={repo: "/src", fips_bundle: "/fips-bundle", site: "/opt/freeze-env"},
        writable={work: "/work"},
    )


def input_key(
    repo: Path,
    fips_bundle: Path,
    source_date_epoch: int,
    system_libs: Sequence[str],
    build_root: emulation.BuildRoot | None = None,
) -> str:
    """A digest of everything that can change the frozen output."""
    digest = hashlib.sha256()
    # The interpreter that freezes: this one, or the build root's (fixed by its pins).
    python = sys.version if build_root is None else f"{build_root.architecture}:{build_root.key}"
    digest.update(f"python={python}\0sde={source_date_epoch}\0".encode())
    digest.update(("libs=" + ",".join(sorted(system_libs)) + "\0").encode())
    # The freeze environment is exactly this lock, so its bytes stand for every distribution.
    digest.update(b"freeze-lock\0" + (repo / FREEZE_LOCK).read_bytes())
    _hash_tree(digest, repo / "server" / "portcullis", "server")
    _hash_tree(digest, fips_bundle, "fips")
    for rel in (SPEC, ENTRYPOINT, IMAGE_JSON):
        digest.update(rel.as_posix().encode() + b"\0" + (repo / rel).read_bytes())
    return digest.hexdigest()[:32]


def freeze(
    repo: Path,
    fips_bundle: Path,
    cache: Path,
    source_date_epoch: int,
    log: list[str],
    *,
    system_libs: Sequence[str] = (),
    fresh_into: Path | None = None,
    build_root: emulation.BuildRoot | None = None,
) -> Path:
    """Return the frozen onedir (``.../portcullis`` holding the ``portcullis`` executable).

    With ``fresh_into`` the cache is bypassed and the build lands in that (caller-owned)
    directory instead. With ``build_root`` the build root's Python freezes, under qemu.
    """
    fresh = fresh_into is not None
    key = input_key(repo, fips_bundle, source_date_epoch, system_libs, build_root)
    root = cache / ("frozen" if build_root is None else f"frozen-{build_root.architecture}")
    done = root / key / APP_NAME
    if done.is_dir() and not fresh:
        log.append(f"frozen server reused from cache ({key})")
        return done
    run: Callable[[Path], subprocess.CompletedProcess[str]]
    if build_root is not None:
        run = functools.partial(
            _freeze_emulated,
            build_root,
            repo,
            fips_bundle,
            foreign_freeze_env(repo, cache, build_root, log),
            source_date_epoch=source_date_epoch,
            system_libs=system_libs,
        )
    else:
        run = functools.partial(
            _freeze_native,
            freeze_env(repo, cache, log),
            repo,
            fips_bundle,
            source_date_epoch=source_date_epoch,
            system_libs=system_libs,
        )
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="freeze-", dir=root) as tmp:
        work = Path(tmp)
        proc = run(work)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-20:])
            raise FreezeError(f"PyInstaller failed ({proc.returncode}):\n{tail}")
        built = work / "dist" / APP_NAME
        if not (built / APP_NAME).is_file():
            raise FreezeError(f"PyInstaller produced no {APP_NAME} executable")
        _restore_fips_bundle(built, fips_bundle)
        bundled = [name for name in system_libs if (built / CONTENTS_DIR / name).exists()]
        if bundled:
            raise FreezeError(f"PyInstaller bundled {bundled}, which the rootfs must provide")
        if fresh_into is not None:
            target = fresh_into / APP_NAME
        else:
            shutil.rmtree(root / key, ignore_errors=True)
            target = done
            target.parent.mkdir(parents=True)
        shutil.move(str(built), target)
    if not fresh:
        for old in root.iterdir():
            if old.name != key and not old.name.startswith("freeze-"):
                shutil.rmtree(old, ignore_errors=True)
    log.append(f"froze the server with PyInstaller ({key})")
    return target
