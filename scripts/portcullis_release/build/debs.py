"""Fetch the pinned Debian packages of the rootfs, and re-pin them.

``apt-get download name=version`` already checks each file against the signed Packages index;
the sha256 in ``packages.lock`` additionally pins the exact bytes the image was built from, so a
rebuild cannot silently pick up a different ``.deb``. Files are cached under the image cache:
a second build downloads nothing.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from portcullis_release.build.fips_provider import sha256_file
from portcullis_release.build.packages_lock import DebPin


class DebError(RuntimeError):
    """A package could not be fetched or does not match its pin."""


def _download(spec: str, into: Path) -> Path:
    """``apt-get download`` one package into a fresh temp dir and return the file."""
    with tempfile.TemporaryDirectory(prefix="dl-", dir=into) as tmp:
        proc = subprocess.run(
            ["apt-get", "download", "-q", spec],
            cwd=tmp,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise DebError(
                f"apt-get download {spec} failed: {proc.stderr.strip().splitlines()[-1:]} "
                "(a pinned version may have left the mirror: run "
                "`portcullis-release image lock` to re-pin, then review the diff)"
            )
        files = list(Path(tmp).glob("*.deb"))
        if len(files) != 1:
            raise DebError(f"apt-get download {spec} produced {len(files)} files")
        target = into / files[0].name
        shutil.move(str(files[0]), target)
        return target


def fetch(pin: DebPin, cache: Path) -> Path:
    """The cached ``.deb`` for ``pin``, downloading it when absent; sha256 always checked."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    path = debs / pin.filename
    if not path.exists():
        path = _download(f"{pin.name}={pin.version}", debs)
    actual = sha256_file(path)
    if actual != pin.sha256:
        raise DebError(
            f"{path.name}: sha256 {actual} does not match packages.lock ({pin.sha256}); "
            "delete the cached file if it is corrupt, or re-pin deliberately"
        )
    return path


def control_fields(deb: Path) -> str:
    """The package's control paragraph (what ``dpkg-deb -f`` prints)."""
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb)], capture_output=True, text=True, check=True
    ).stdout


def extract(deb: Path, dest: Path) -> None:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)


def candidate(name: str, architecture: str) -> DebPin:
    """Pin the mirror's current candidate of ``name`` (used when re-locking)."""
    with tempfile.TemporaryDirectory(prefix="portcullis-lock-") as tmp:
        path = _download(name, Path(tmp))
        fields = dict(
            line.split(": ", 1)
            for line in control_fields(path).splitlines()
            if ": " in line and not line.startswith(" ")
        )
        return DebPin(
            name=name,
            version=fields["Version"],
            architecture=fields["Architecture"],
            sha256=sha256_file(path),
        )
