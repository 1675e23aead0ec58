"""Freeze the server with PyInstaller (onedir) from ``images/portcullis/portcullis.spec``.

Onedir, not onefile: it starts faster and needs no writable /tmp to unpack into. The build is
reproducible when ``SOURCE_DATE_EPOCH`` and ``PYTHONHASHSEED=0`` are set (without the former,
``base_library.zip`` carries build-time timestamps), so both are always set here.

The result is cached under a key that hashes every input (server sources, spec, entry point,
FIPS bundle, installed distributions, Python and SOURCE_DATE_EPOCH): an unchanged tree is not
frozen twice, and ``fresh=True`` forces a new build, which the reproducibility test uses.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

SPEC = Path("images/portcullis/portcullis.spec")
ENTRYPOINT = Path("images/portcullis/entrypoint.py")
APP_NAME = "portcullis"
CONTENTS_DIR = "_internal"  # PyInstaller 6's default contents directory
FIPS_DIRNAME = "portcullis_fips"  # portcullis.fips.BUNDLE_DIRNAME


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
    shutil.copytree(fips_bundle, target)
    for path in sorted(fips_bundle.rglob("*")):
        if path.is_file() and (target / path.relative_to(fips_bundle)).read_bytes() != (
            path.read_bytes()
        ):
            raise FreezeError(f"frozen copy of {path.name} differs from the FIPS bundle")


def input_key(
    repo: Path, fips_bundle: Path, source_date_epoch: int, system_libs: Sequence[str]
) -> str:
    """A digest of everything that can change the frozen output."""
    digest = hashlib.sha256()
    digest.update(f"python={sys.version}\0sde={source_date_epoch}\0".encode())
    digest.update(("libs=" + ",".join(sorted(system_libs)) + "\0").encode())
    dists = sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions())
    digest.update("\n".join(dists).encode())
    _hash_tree(digest, repo / "server" / "portcullis", "server")
    _hash_tree(digest, fips_bundle, "fips")
    for rel in (SPEC, ENTRYPOINT):
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
) -> Path:
    """Return the frozen onedir (``.../portcullis`` holding the ``portcullis`` executable).

    With ``fresh_into`` the cache is bypassed and the build lands in that (caller-owned)
    directory instead.
    """
    fresh = fresh_into is not None
    key = input_key(repo, fips_bundle, source_date_epoch, system_libs)
    root = cache / "frozen"
    done = root / key / APP_NAME
    if done.is_dir() and not fresh:
        log.append(f"frozen server reused from cache ({key})")
        return done
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="freeze-", dir=root) as tmp:
        work = Path(tmp)
        env = dict(
            os.environ,
            SOURCE_DATE_EPOCH=str(source_date_epoch),
            PYTHONHASHSEED="0",
            PORTCULLIS_REPO=str(repo),
            PORTCULLIS_FIPS_BUNDLE_DIR=str(fips_bundle),
            PORTCULLIS_SYSTEM_LIBS=",".join(sorted(system_libs)),
        )
        cmd = [
            sys.executable,
            "-m",
            "PyInstaller",
            "--noconfirm",
            "--clean",
            "--log-level=WARN",
            f"--distpath={work / 'dist'}",
            f"--workpath={work / 'build'}",
            str(repo / SPEC),
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
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
