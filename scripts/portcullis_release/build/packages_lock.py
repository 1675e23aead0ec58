"""Read and write ``images/portcullis/packages.lock``.

The lock pins every input of the image that does not come from this repository or the Python
locks: each Debian package unpacked into the rootfs (name, version, architecture, sha256 of
the ``.deb``) and the OpenSSL FIPS provider (Debian source version, sha256 of the built
``fips.so``). There is one lock per architecture (``packages.lock`` for amd64, the machine the
release is built on; ``packages-<arch>.lock`` for the others); a foreign architecture's lock
also pins ``build_debs``: the packages of the emulated build root (its Python, binutils, the
shell ``ldd`` needs) that freeze the server and self-test the provider under qemu. Image
digests stay fixed only while these do, so the builder refuses anything that does not match,
and other tools (SBOM, upstream tracking) read the same file.

Format: JSON with sorted keys and two-space indentation, documented in
``images/portcullis/README.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOCK_FORMAT = 1


class LockError(ValueError):
    """The lock file is missing a field or has a malformed one (the message names it)."""


@dataclass(frozen=True)
class DebPin:
    """One Debian binary package, pinned by version and by the sha256 of its ``.deb``."""

    name: str
    version: str
    architecture: str
    sha256: str

    @property
    def filename(self) -> str:
        """The file name ``apt-get download`` gives it (epochs are written as ``%3a``)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.architecture}.deb"


@dataclass(frozen=True)
class FipsProviderPin:
    """The OpenSSL FIPS provider: which Debian source it is built from and what it must hash to."""

    source_package: str
    source_version: str
    fips_so_sha256: str

    @property
    def upstream_version(self) -> str:
        """``3.0.20`` for ``3.0.20-1~deb12u2``."""
        return self.source_version.split(":")[-1].split("-")[0]


@dataclass(frozen=True)
class PackagesLock:
    """The whole lock: suite, architecture, packages, provider and (foreign arch) build root."""

    suite: str
    architecture: str
    debs: tuple[DebPin, ...]
    fips_provider: FipsProviderPin
    build_debs: tuple[DebPin, ...] = ()

    def to_json(self) -> str:
        doc: dict[str, Any] = {
            "format": LOCK_FORMAT,
            "suite": self.suite,
            "architecture": self.architecture,
            "debs": _pins_json(self.debs),
            "fips_provider": {
                "source_package": self.fips_provider.source_package,
                "source_version": self.fips_provider.source_version,
                "fips_so_sha256": self.fips_provider.fips_so_sha256,
            },
        }
        if self.build_debs:
            doc["build_debs"] = _pins_json(self.build_debs)
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def _pins_json(pins: tuple[DebPin, ...]) -> list[dict[str, str]]:
    return [
        {"name": d.name, "version": d.version, "architecture": d.architecture, "sha256": d.sha256}
        for d in sorted(pins, key=lambda d: d.name)
    ]


def _field(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise LockError(f"packages.lock: {where}.{key} must be a non-empty string")
    return value


def _sha256_field(obj: dict[str, Any], key: str, where: str) -> str:
    value = _field(obj, key, where)
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise LockError(f"packages.lock: {where}.{key} must be 64 lowercase hex digits")
    return value


def parse_lock(text: str) -> PackagesLock:
    """Parse the lock, naming the offending field on any error."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LockError(f"packages.lock: not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise LockError("packages.lock: top level must be an object")
    if doc.get("format") != LOCK_FORMAT:
        raise LockError(f"packages.lock: format must be {LOCK_FORMAT}")
    debs = _parse_pins(doc.get("debs"), "debs")
    if not debs:
        raise LockError("packages.lock: debs must be a non-empty list")
    build_debs = _parse_pins(doc.get("build_debs", []), "build_debs")
    raw_fips = doc.get("fips_provider")
    if not isinstance(raw_fips, dict):
        raise LockError("packages.lock: fips_provider must be an object")
    fips = FipsProviderPin(
        source_package=_field(raw_fips, "source_package", "fips_provider"),
        source_version=_field(raw_fips, "source_version", "fips_provider"),
        fips_so_sha256=_sha256_field(raw_fips, "fips_so_sha256", "fips_provider"),
    )
    return PackagesLock(
        suite=_field(doc, "suite", "(top)"),
        architecture=_field(doc, "architecture", "(top)"),
        debs=debs,
        fips_provider=fips,
        build_debs=build_debs,
    )


def _parse_pins(raw_debs: Any, key: str) -> tuple[DebPin, ...]:
    if not isinstance(raw_debs, list):
        raise LockError(f"packages.lock: {key} must be a list")
    debs: list[DebPin] = []
    for i, raw in enumerate(raw_debs):
        where = f"{key}[{i}]"
        if not isinstance(raw, dict):
            raise LockError(f"packages.lock: {where} must be an object")
        debs.append(
            DebPin(
                name=_field(raw, "name", where),
                version=_field(raw, "version", where),
                architecture=_field(raw, "architecture", where),
                sha256=_sha256_field(raw, "sha256", where),
            )
        )
    names = [d.name for d in debs]
    if len(set(names)) != len(names):
        raise LockError(f"packages.lock: {key} lists a package twice")
    return tuple(debs)


def load_lock(path: Path) -> PackagesLock:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise LockError(f"{path}: lock file not found") from exc
    return parse_lock(text)
