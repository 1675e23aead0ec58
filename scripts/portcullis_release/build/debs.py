"""Fetch the pinned Debian packages of the rootfs, and re-pin them.

``apt-get download name=version`` already checks each file against the signed Packages index;
the sha256 in ``packages.lock`` additionally pins the exact bytes the image was built from, so a
rebuild cannot silently pick up a different ``.deb``. Files are cached under the image cache:
a second build downloads nothing.

Packages of another architecture (the arm64 image, built on amd64) come from the same mirrors
through a private apt state under the cache (``apt-<arch>/``: its own package indexes, an empty
dpkg status), so the machine's dpkg architectures and indexes are never changed.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from portcullis_release.build.fips_provider import sha256_file
from portcullis_release.build.packages_lock import DebPin


class DebError(RuntimeError):
    """A package could not be fetched or does not match its pin."""


@functools.cache
def host_architecture() -> str:
    """The machine's dpkg architecture (``amd64``)."""
    return subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()


def _foreign_options(architecture: str, cache: Path) -> list[str]:
    """apt options that resolve and download ``architecture`` packages from a private state."""
    state = (cache / f"apt-{architecture}").resolve()
    for sub in ("lists/partial", "archives/partial"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    status = state / "status"
    if not status.exists():
        status.write_text("")
    return [
        "-o",
        f"APT::Architecture={architecture}",
        "-o",
        f"APT::Architectures::={architecture}",
        "-o",
        f"Dir::State::Lists={state / 'lists'}",
        "-o",
        f"Dir::Cache={state}",
        "-o",
        f"Dir::State::status={status}",
        "-o",
        "APT::Install-Recommends=0",
    ]


def apt_options(architecture: str, cache: Path, *, refresh: bool = False) -> list[str]:
    """Options for apt-get to fetch ``architecture`` packages ([] for the machine's own).

    The private indexes are fetched once (``apt-get update``) and again when ``refresh`` is
    set, i.e. after a pinned version was not found in the cached ones.
    """
    if architecture in ("all", host_architecture()):
        return []
    options = _foreign_options(architecture, cache)
    lists = cache / f"apt-{architecture}" / "lists"
    if refresh or not any(lists.glob("*_Packages*")):
        proc = subprocess.run(
            ["apt-get", "-q", *options, "update"], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise DebError(
                f"apt-get update for {architecture} failed: {proc.stderr.strip().splitlines()[-1:]}"
            )
    return options


def _download(spec: str, into: Path, options: Iterable[str] = ()) -> Path:
    """``apt-get download`` one package into a fresh temp dir and return the file."""
    with tempfile.TemporaryDirectory(prefix="dl-", dir=into) as tmp:
        proc = subprocess.run(
            ["apt-get", *options, "download", "-q", spec],
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
        spec = f"{pin.name}={pin.version}"
        try:
            path = _download(spec, debs, apt_options(pin.architecture, cache))
        except DebError:
            if pin.architecture in ("all", host_architecture()):
                raise
            # The private indexes may predate the pin: fetch them again once.
            path = _download(spec, debs, apt_options(pin.architecture, cache, refresh=True))
    actual = sha256_file(path)
    if actual != pin.sha256:
        raise DebError(
            f"{path.name}: sha256 {actual} does not match packages.lock ({pin.sha256}); "
            "delete the cached file if it is corrupt, or re-pin deliberately"
        )
    return path


def prefetch(pins: Iterable[DebPin], cache: Path) -> None:
    """Download every pin not cached yet with one ``apt-get download`` per architecture.

    One apt run per package re-reads the package indexes each time (seconds apiece on a busy
    machine, minutes for a build root); ``fetch`` still checks every file's sha256 afterwards
    and fetches singly whatever this could not (it raises nothing itself).
    """
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    missing: dict[str, list[DebPin]] = {}
    for pin in pins:
        if not (debs / pin.filename).exists():
            foreign = pin.architecture not in ("all", host_architecture())
            missing.setdefault(pin.architecture if foreign else "", []).append(pin)
    for architecture, group in sorted(missing.items()):
        try:
            options = apt_options(architecture, cache) if architecture else []
        except DebError:
            continue
        with tempfile.TemporaryDirectory(prefix="dl-", dir=debs) as tmp:
            subprocess.run(
                ["apt-get", *options, "download", "-q", *(f"{p.name}={p.version}" for p in group)],
                cwd=tmp,
                capture_output=True,
                text=True,
                check=False,
            )
            for pin in group:
                got = Path(tmp) / pin.filename
                if got.is_file():
                    shutil.move(str(got), debs / pin.filename)


def control_fields(deb: Path) -> str:
    """The package's control paragraph (what ``dpkg-deb -f`` prints)."""
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb)], capture_output=True, text=True, check=True
    ).stdout


def extract(deb: Path, dest: Path) -> None:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)


def closure(names: Iterable[str], architecture: str, cache: Path) -> list[str]:
    """Every package installing ``names`` on an empty ``architecture`` system pulls in.

    Used to pin a build root (no recommends); apt resolves it from the private indexes.
    """
    options = apt_options(architecture, cache, refresh=True)
    proc = subprocess.run(
        ["apt-get", *options, "install", "-s", "-q", *names],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise DebError(f"resolving {' '.join(names)} for {architecture} failed: {proc.stderr}")
    return sorted(
        line.split()[1].split(":")[0]
        for line in proc.stdout.splitlines()
        if line.startswith("Inst ")
    )


def candidate(name: str, architecture: str, cache: Path | None = None) -> DebPin:
    """Pin the mirror's current candidate of ``name`` (used when re-locking).

    A foreign ``architecture`` needs ``cache`` (where its private apt indexes live).
    """
    options: list[str] = []
    if architecture not in ("all", host_architecture()):
        if cache is None:
            raise DebError(f"re-pinning {architecture} packages needs the image cache")
        options = apt_options(architecture, cache)
    with tempfile.TemporaryDirectory(prefix="portcullis-lock-") as tmp:
        path = _download(name, Path(tmp), options)
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
