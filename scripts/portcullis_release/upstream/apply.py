"""`track-upstream --apply`: carry a bump plan into the tree.

* Debian pins: ``images/portcullis/packages.lock`` gets the proposed version and the sha256 the
  archive's index gives for its ``.deb`` (the index is signed by the archive; the image build
  checks every download against the lock). Every other architecture's lock
  (``packages-<arch>.lock``) gets the same versions from its own index, so all the images of
  a release carry one set of Debian versions.
* Python pins: ``pip-compile --upgrade-package NAME==VERSION`` with hashes for every lock that
  pins the distribution (runtime, freeze, release, test), as ``make lock`` runs it.
* The OpenSSL source (the FIPS provider) and a new Dex release are not applied: the first needs
  the provider rebuilt and its hash pinned (``portcullis-release image lock --fips-version``),
  the second a person reading Dex's changes. Both are listed in the CHANGELOG entry.
* The version is bumped by semver rules (a dependency's new major version: minor; anything
  else: patch), in pyproject.toml, both packages' ``__version__`` and release/manifest.yaml,
  and every generated copy is regenerated (:mod:`distribute.generated`).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace
from pathlib import Path

from packaging.version import Version

from portcullis_release.build.packages_lock import DebPin, load_lock
from portcullis_release.distribute import generated
from portcullis_release.manifest import dump_manifest, load_manifest
from portcullis_release.upstream.feeds import Feeds
from portcullis_release.upstream.track import Plan

__all__ = ["ApplyError", "apply_plan", "bump_version"]

LOCK = Path("images/portcullis/packages.lock")
REQUIREMENTS = Path("requirements")
PYTHON_LOCKS = ("runtime", "freeze", "release", "test")
VERSION_FILES = (
    (Path("pyproject.toml"), re.compile(r'^(version = ")([^"]+)(")$', re.M)),
    (Path("server/portcullis/__init__.py"), re.compile(r'^(__version__ = ")([^"]+)(")$', re.M)),
    (
        Path("server/kubectl_portcullis/__init__.py"),
        re.compile(r'^(__version__ = ")([^"]+)(")$', re.M),
    ),
)


class ApplyError(RuntimeError):
    """A step of --apply failed; the message names it."""


def bump_version(current: str, plan: Plan) -> str:
    """Minor when a Python dependency moves to a new major version, else patch."""
    major, minor, patch = (int(p) for p in current.split("-")[0].split(".")[:3])
    for change in plan.changes:
        if (
            change.ecosystem == "pypi"
            and change.proposed
            and Version(change.proposed).major > Version(change.current).major
        ):
            return f"{major}.{minor + 1}.0"
    return f"{major}.{minor}.{patch + 1}"


def _apply_debian(repo: Path, plan: Plan, feeds: Feeds, log: list[str]) -> None:
    wanted = {c.name: c.proposed for c in plan.changes if c.ecosystem == "deb" and c.proposed}
    if not wanted:
        return
    # Every lock is re-pinned before any is written: a version missing from one
    # architecture's index leaves all of them as they were.
    updated: list[tuple[Path, str]] = []
    for rel in (
        LOCK,
        *sorted(p.relative_to(repo) for p in (repo / LOCK.parent).glob("packages-*.lock")),
    ):
        lock = load_lock(repo / rel)
        index = feeds.debian_packages(lock.suite, lock.architecture)
        pins = []
        for pin in lock.debs:
            version = wanted.get(pin.name)
            if version is None:
                pins.append(pin)
                continue
            entry = next(
                (
                    p
                    for p in index
                    if p["Package"] == pin.name
                    and p["Version"] == version
                    and p.get("Architecture") in (pin.architecture, "all", None)
                ),
                None,
            )
            if entry is None or not re.fullmatch(r"[0-9a-f]{64}", entry.get("SHA256", "")):
                raise ApplyError(f"{rel}: {pin.name} {version}: no SHA256 in the archive's index")
            pins.append(DebPin(pin.name, version, pin.architecture, entry["SHA256"]))
            log.append(f"{rel}: {pin.name} {pin.version} -> {version}")
        updated.append((rel, replace(lock, debs=tuple(pins)).to_json()))
    for rel, text in updated:
        (repo / rel).write_text(text, encoding="utf-8")


def _apply_python(repo: Path, plan: Plan, pip_compile: str, log: list[str]) -> None:
    upgrades = [
        f"{c.name}=={c.proposed}" for c in plan.changes if c.ecosystem == "pypi" and c.proposed
    ]
    if not upgrades:
        return
    for name in PYTHON_LOCKS:
        lock = repo / REQUIREMENTS / f"{name}.txt"
        pinned = lock.read_text(encoding="utf-8").lower()
        relevant = [u for u in upgrades if f"\n{u.split('==')[0].lower()}==" in pinned]
        if not relevant:
            continue
        cmd = [
            pip_compile,
            "-q",
            "--generate-hashes",
            "--allow-unsafe",
            "--strip-extras",
            "--no-emit-index-url",
            "--no-emit-find-links",
            "-o",
            f"{name}.txt",
            f"{name}.in",
        ]
        for upgrade in relevant:
            cmd += ["--upgrade-package", upgrade]
        proc = subprocess.run(
            cmd, cwd=repo / REQUIREMENTS, capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise ApplyError(f"pip-compile {name}.in failed: {proc.stderr.strip()[-2000:]}")
        log.append(f"requirements/{name}.txt: " + ", ".join(relevant))


def _set_version(repo: Path, version: str) -> None:
    for rel, pattern in VERSION_FILES:
        path = repo / rel
        text = path.read_text(encoding="utf-8")
        new, count = pattern.subn(rf"\g<1>{version}\g<3>", text, count=1)
        if count != 1:
            raise ApplyError(f"{rel}: no version line to bump")
        path.write_text(new, encoding="utf-8")
    manifest_path = repo / "release" / "manifest.yaml"
    manifest = load_manifest(manifest_path).with_image(tag=version).with_chart(version=version)
    dump_manifest(manifest, manifest_path)
    generated.write_tracked(manifest, repo)


def _changelog(repo: Path, version: str, plan: Plan, log: list[str]) -> None:
    lines = [f"## {version} ({plan.generated_on})", "", "Upstream updates (track-upstream):", ""]
    for change in plan.changes:
        target = change.proposed or "no fix available yet"
        cves = ", ".join(
            f"{'/'.join(v.cve_ids or [v.id])} ({v.severity})"
            for v in change.vulnerabilities
            if not v.vex
        )
        applied = change.ecosystem in ("pypi", "deb") and change.proposed
        note = "" if applied else " — not applied: needs a person (see docs/releasing.md)"
        lines.append(
            f"- {change.ecosystem} `{change.name}` {change.current} -> {target}: "
            + "; ".join(change.reasons)
            + (f"; fixes {cves}" if cves and applied else "")
            + note
        )
    lines += ["", *[f"  - {entry}" for entry in log], ""] if log else [""]
    path = repo / "CHANGELOG.md"
    old = path.read_text(encoding="utf-8") if path.is_file() else "# Changelog\n\n"
    head, _, rest = old.partition("\n\n")
    path.write_text(head + "\n\n" + "\n".join(lines) + "\n" + rest, encoding="utf-8")


def apply_plan(repo: Path, plan: Plan, feeds: Feeds, *, pip_compile: str) -> str:
    """Apply ``plan`` to the tree at ``repo``; returns the new version."""
    log: list[str] = []
    _apply_python(repo, plan, pip_compile, log)
    _apply_debian(repo, plan, feeds, log)
    current = load_manifest(repo / "release" / "manifest.yaml").image.tag
    version = bump_version(current, plan)
    _set_version(repo, version)
    _changelog(repo, version, plan, log)
    return version
