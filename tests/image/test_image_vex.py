"""release/vex.json against the image it is attached to (the layout `make image` built).

A VEX statement is a claim about one build of one package: it is only true while the image
ships that build, and only as true as the evidence behind it. So:

* every statement names, as subcomponent, a package the image's SBOM lists at that exact
  version (a pin that moves makes the statement stale, and this fails);
* every ``fixed`` statement's CVE is named as fixed by the Debian changelog of the pinned
  ``.deb`` (the file `make image` downloaded and checked against packages.lock), in an upload
  no newer than the pin;
* the ``not_affected`` statement on glibc's glob() (CVE-2010-4756) holds for the ELF objects
  actually in the image: the only one importing glob/glob64 is the one its impact_statement
  names, and the pattern it passes is the constant the statement quotes.
"""

from __future__ import annotations

import gzip
import io
import re
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from packageurl import PackageURL
from portcullis_release import oci
from portcullis_release.attest import sbom, vex
from portcullis_release.build.packages_lock import load_lock
from portcullis_release.plan import ReleasePlan
from portcullis_release.upstream.feeds import deb_compare

from tests.support.image import LAYOUT, REPO

VEX = REPO / "release" / "vex.json"
RUNTIME_LOCK = REPO / "requirements" / "runtime.txt"
PACKAGES_LOCK = REPO / "images" / "portcullis" / "packages.lock"
DEBS = REPO / ".cache" / "image" / "debs"
GLOB_CVE = "CVE-2010-4756"
# What the CVE-2010-4756 statement claims, checked below against the image's ELF objects.
GLOB_CALLERS = {"libgssapi_krb5"}
GLOB_PATTERN = b"/etc/gss/mech.d/*.conf"


def _key(purl: str) -> tuple[str, str | None, str, str | None, tuple[tuple[str, str], ...]]:
    p = PackageURL.from_string(purl)
    qualifiers = p.qualifiers if isinstance(p.qualifiers, dict) else {}
    return (p.type, p.namespace, p.name, p.version, tuple(sorted(qualifiers.items())))


@pytest.fixture(scope="module")
def statements() -> list[dict[str, Any]]:
    doc = vex.load(VEX)
    assert doc["statements"], f"{VEX}: no statements"
    return list(doc["statements"])


def test_every_statement_names_a_component_the_sbom_lists_at_that_version(
    statements: list[dict[str, Any]], image_artifact: oci.Artifact
) -> None:
    plan = ReleasePlan.load(LAYOUT, None, "registry.invalid")
    bom = sbom.image_bom(plan, sbom.ImageInputs(RUNTIME_LOCK, PACKAGES_LOCK))
    listed = {_key(c["purl"]): c["purl"] for c in bom["components"] if c.get("purl")}
    by_name = {(k[0], k[2]): purl for k, purl in listed.items()}
    for statement in statements:
        cve = statement["vulnerability"]["name"]
        subs = vex.subcomponents(statement)
        assert subs, f"{cve}: the statement names no subcomponent (which package is it about?)"
        for purl in subs:
            key = _key(purl)
            assert key in listed, (
                f"{cve}: {purl} is not in the image's SBOM; it lists "
                f"{by_name.get((key[0], key[2]), 'no such package')} (stale VEX statement?)"
            )


def _changelog(deb: Path, package: str) -> str:
    """usr/share/doc/<package>/changelog.Debian.gz from a .deb, as text."""
    tar = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        member = archive.extractfile(f"./usr/share/doc/{package}/changelog.Debian.gz")
        assert member is not None, f"{deb}: no changelog.Debian.gz"
        return gzip.decompress(member.read()).decode("utf-8")


def _entries(changelog: str) -> list[tuple[str, str]]:
    """(version, text) per upload, newest first."""
    parts = re.split(r"^\S+ \(([^)]+)\) [^;]+; urgency=\S+$", changelog, flags=re.M)
    return list(zip(parts[1::2], parts[2::2], strict=True))


def test_every_fixed_statement_is_a_fix_the_pinned_build_carries(
    statements: list[dict[str, Any]],
) -> None:
    pins = {d.name: d for d in load_lock(PACKAGES_LOCK).debs}
    fixed = [s for s in statements if s["status"] == "fixed"]
    assert fixed, "release/vex.json has no fixed statement (this test would check nothing)"
    for statement in fixed:
        cve = statement["vulnerability"]["name"]
        for purl in vex.subcomponents(statement):
            p = PackageURL.from_string(purl)
            assert p.type == "deb", f"{cve}: {purl}: only Debian fixes are checked here"
            pin = pins[p.name]
            assert p.version == pin.version, f"{cve}: {purl} is not the pinned {pin.version}"
            deb = DEBS / pin.filename
            assert deb.is_file(), f"{deb} missing: `make image` downloads it"
            uploads = [
                version
                for version, text in _entries(_changelog(deb, p.name))
                if re.search(rf"\b{re.escape(cve)}\b", text)
            ]
            assert uploads, f"{cve}: not named in {p.name} {pin.version}'s changelog.Debian"
            assert deb_compare(uploads[-1], pin.version) <= 0, (cve, uploads)


def _elf_imports(path: Path) -> set[str]:
    out = subprocess.run(
        ["readelf", "--dyn-syms", "--wide", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return {
        fields[7].split("@")[0]
        for line in out.splitlines()
        if len(fields := line.split()) >= 8 and fields[6] == "UND"
    }


def test_the_glob_statement_holds_for_the_elf_objects_in_the_image(
    statements: list[dict[str, Any]], rootfs: Path
) -> None:
    (statement,) = [s for s in statements if s["vulnerability"]["name"] == GLOB_CVE]
    assert statement["status"] == "not_affected"
    callers: dict[str, Path] = {}
    elf_count = 0
    for path in sorted(rootfs.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        with path.open("rb") as f:
            if f.read(4) != b"\x7fELF":
                continue
        elf_count += 1
        if _elf_imports(path) & {"glob", "glob64"}:
            # auditwheel renames bundled libraries <name>-<hash>.so.<n>
            callers[re.sub(r"(-[0-9a-f]{8})?\.so(\.[0-9.]+)?$", "", path.name)] = path
    assert elf_count > 50, f"only {elf_count} ELF objects found: is this the image?"
    assert set(callers) == GLOB_CALLERS, (
        f"glob() callers in the image changed to {sorted(callers)}: re-judge {GLOB_CVE}"
    )
    for path in callers.values():
        patterns = {m for m in re.findall(rb"[\x20-\x7e]{3,}", path.read_bytes()) if b"*" in m}
        assert GLOB_PATTERN in patterns, f"{path}: {GLOB_PATTERN!r} not found"
    for claim in (*GLOB_CALLERS, GLOB_PATTERN.decode()):
        assert claim in statement["impact_statement"]
