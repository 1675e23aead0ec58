"""What the frozen ``kubectl-portcullis`` binary contains, read back from the binary itself.

The SBOM of the login binary (``attest.plugin_sbom``) must list exactly what the file holds, so
it is written from the file, not from what we meant to put in: PyInstaller's own archive reader
(run in the freeze venv, the only place PyInstaller is) lists the bootloader, every entry of the
onefile archive with the sha256 of its bytes, and every module of the embedded ``PYZ``. Where an
entry came from is read from PyInstaller's build tables (``PKG-00.toc``, ``PYZ-00.toc`` in its
work directory): the interpreter's tree (CPython), PyInstaller's package (bootloader, runtime
modules), the staged plugin sources, or a system library, which ``dpkg`` attributes to its
Debian package and version. Anything else (a third-party module a hook dragged in from the
freeze venv's site-packages) fails the build: the plugin promises the standard library only.

The result is ``<binary>.contents.json`` beside the binary (deterministic: sorted, no paths of
the build machine), which the release's SBOM and its tests read.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CONTENTS_FORMAT", "ContentsError", "contents_file", "inspect_binary"]

CONTENTS_FORMAT = 1

# Run in the freeze venv: PyInstaller's reader lists the archive; the interpreter says what it is.
_READ_SCRIPT = r"""
import hashlib, json, os, platform, sys
import PyInstaller
from PyInstaller.archive.readers import CArchiveReader
path, bootloader_dir = sys.argv[1], sys.argv[2]
data = open(path, "rb").read()
reader = CArchiveReader(path)
entries = []
for name, (_, _, length, _, typecode) in sorted(reader.toc.items()):
    blob = reader.extract(name)
    entries.append({"name": name, "typecode": typecode, "size": length,
                    "sha256": hashlib.sha256(blob).hexdigest()})
pyz = reader.open_embedded_archive("PYZ.pyz")
run = os.path.join(os.path.dirname(PyInstaller.__file__), "bootloader", bootloader_dir, "run")
json.dump({
    "bootloader": {"size": reader._start_offset,
                   "sha256": hashlib.sha256(data[:reader._start_offset]).hexdigest(),
                   "sourceSha256": hashlib.sha256(open(run, "rb").read()).hexdigest()},
    "entries": entries,
    "modules": sorted(pyz.toc),
    "python": {"implementation": platform.python_implementation().lower(),
               "version": platform.python_version(), "basePrefix": sys.base_prefix},
    "pyinstaller": PyInstaller.__version__,
    "pyinstallerDir": os.path.dirname(PyInstaller.__file__),
}, sys.stdout)
"""


class ContentsError(RuntimeError):
    """The binary holds something it must not, or cannot be read back; the message says what."""


def contents_file(binary: Path) -> Path:
    return binary.with_name(binary.name + ".contents.json")


@dataclass(frozen=True)
class _Deb:
    name: str
    version: str
    architecture: str
    source: str
    source_version: str


def _dpkg_owner(path: Path) -> _Deb | None:
    """The Debian package that installed ``path`` (or its /usr-merged twin), if any."""
    candidates = [str(path), str(path.resolve())]
    if str(path).startswith("/lib"):
        candidates.append("/usr" + str(path))
    for candidate in candidates:
        proc = subprocess.run(
            ["dpkg-query", "-S", candidate], capture_output=True, text=True, check=False
        )
        if proc.returncode == 0 and ":" in proc.stdout:
            package = proc.stdout.split(":", 1)[0].split(",")[0].strip()
            fmt = "${Package}\t${Version}\t${Architecture}\t${source:Package}\t${source:Version}"
            info = subprocess.run(
                ["dpkg-query", "-W", f"-f={fmt}", package],
                capture_output=True,
                text=True,
                check=False,
            )
            if info.returncode == 0:
                return _Deb(*info.stdout.split("\t")[:5])
    return None


def _toc(path: Path) -> list[tuple[str, str, str]]:
    """The (name, source path, kind) rows of a PyInstaller ``*.toc`` build table."""
    value = ast.literal_eval(path.read_text(encoding="utf-8"))
    rows = next(item for item in value if isinstance(item, list))
    return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]


def _under(path: str, root: Path) -> bool:
    return os.path.commonpath([os.path.realpath(path), os.path.realpath(root)]) == str(
        Path(os.path.realpath(root))
    )


def inspect_binary(
    python: Path, binary: Path, build_dir: Path, staging: Path, plugin_package: str
) -> dict[str, Any]:
    """Read ``binary`` back and attribute every part of it; see the module docstring.

    ``python`` is the freeze venv's interpreter, ``build_dir`` PyInstaller's work directory for
    this binary (holding ``PKG-00.toc`` and ``PYZ-00.toc``), ``staging`` the staged sources.
    """
    bootloader_dir = "Linux-64bit-intel" if os.uname().machine == "x86_64" else "Linux-64bit-arm"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [str(python), "-c", _READ_SCRIPT, str(binary), bootloader_dir],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if proc.returncode != 0:
        raise ContentsError(f"reading {binary.name} back failed: {proc.stderr.strip()[-400:]}")
    read = json.loads(proc.stdout)
    base_prefix = Path(read["python"].pop("basePrefix"))
    venv = python.parent.parent
    pyinstaller_dir = Path(read.pop("pyinstallerDir"))
    debs: dict[str, _Deb] = {}

    def origin(name: str, source: str) -> str:
        if name.startswith(("pyimod", "pyiboot", "pyi_rth_")) or (
            source and _under(source, pyinstaller_dir)
        ):
            return "pyinstaller"
        if name == "entry" or name.split(".")[0] == plugin_package:
            return "plugin"
        if name == "base_library.zip" or (source and _under(source, base_prefix)):
            return "cpython"
        if source and _under(source, venv):
            raise ContentsError(
                f"{binary.name} holds {name} from the freeze venv ({source}): the plugin must "
                "contain the standard library only"
            )
        if source and not _under(source, build_dir) and not _under(source, staging):
            deb = _dpkg_owner(Path(source))
            if deb is None:
                raise ContentsError(f"{binary.name} holds {name} from {source}, owned by no package")
            debs[deb.name] = deb
            return f"deb:{deb.name}"
        # Compiled by PyInstaller from the interpreter's standard library (e.g. ``struct``).
        return "cpython"

    pkg_sources = {name: source for name, source, _ in _toc(build_dir / "PKG-00.toc")}
    pyz_sources = {name: source for name, source, _ in _toc(build_dir / "PYZ-00.toc")}
    entries = []
    for entry in read["entries"]:
        source = pkg_sources.get(entry["name"], "")
        entry["origin"] = "pyinstaller" if entry["name"] == "PYZ.pyz" else origin(entry["name"], source)
        entries.append(entry)
    modules = [
        {"name": name, "origin": origin(name, pyz_sources.get(name, ""))}
        for name in read["modules"]
    ]
    plugin_files = {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted((staging / plugin_package).glob("*.py"))
    }
    return {
        "format": CONTENTS_FORMAT,
        "binary": {
            "name": binary.name,
            "sha256": hashlib.sha256(binary.read_bytes()).hexdigest(),
            "size": binary.stat().st_size,
        },
        "python": read["python"],
        "pyinstaller": {"version": read["pyinstaller"], "bootloader": read["bootloader"]},
        "plugin": {"package": plugin_package, "files": plugin_files},
        "entries": entries,
        "modules": modules,
        "debs": [
            {
                "name": d.name,
                "version": d.version,
                "architecture": d.architecture,
                "source": d.source,
                "sourceVersion": d.source_version,
            }
            for d in sorted(debs.values(), key=lambda d: d.name)
        ],
    }
