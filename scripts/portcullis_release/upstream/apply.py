"""`track-upstream --apply`: carry a bump plan into the tree, all or nothing.

* Debian pins: ``images/portcullis/packages.lock`` gets the proposed version and the sha256 the
  archive's index gives for its ``.deb`` (the index is signed by the archive; the image build
  checks every download against the lock). Every other architecture's lock
  (``packages-<arch>.lock``) gets the same versions from its own index, so all the images of
  a release carry one set of Debian versions.
* Python pins: ``pip-compile --upgrade-package NAME==VERSION`` with hashes for every lock that
  pins the distribution (runtime, freeze, release, test), as ``make lock`` runs it, resolved
  against the PEP 503 simple index of the same PyPI the plan was read from (``--pypi-url`` +
  ``/simple``) and nothing else: pip's configuration files and ``PIP_*`` index variables are
  shut out, because a lock resolved from another index than the one the plan saw could pin
  files the plan never checked (and a mirror configured for the plan must be the one used).
  The hashes written for an upgraded distribution must be digests PyPI's JSON API publishes
  for that release: pip-compile hashes whatever bytes a listed URL returns.
* The OpenSSL source (the FIPS provider) and a new Dex release are not applied: the first needs
  the provider rebuilt and its hash pinned (``portcullis-release image lock --fips-version``),
  the second a person reading Dex's changes. Both are listed in the CHANGELOG entry.
* The version is bumped by semver rules (a dependency's new major version: minor; anything
  else: patch), in pyproject.toml, both packages' ``__version__`` and release/manifest.yaml,
  and every generated copy is regenerated (:mod:`distribute.generated`).

Every new file content is computed first (pip-compile runs on a copy of ``requirements/``) and
only then written; if a write fails the files already replaced are restored. A half-applied
plan (a lock moved, the version not; or the runtime lock moved and the test lock not) would
build an image nobody planned, so any failure leaves the tree exactly as it was.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

from packaging.version import Version

from portcullis_release.attest import sbom
from portcullis_release.build.packages_lock import DebPin, load_lock
from portcullis_release.distribute import generated
from portcullis_release.manifest import load_manifest, render_manifest
from portcullis_release.upstream.feeds import Feeds
from portcullis_release.upstream.track import Plan

__all__ = ["ApplyError", "apply_plan", "bump_version", "pip_environment"]

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


# pip's variables that add or replace where distributions come from.
_PIP_INDEX_VARIABLES = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX")


def pip_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment pip-compile runs in: no pip configuration file, no index variables."""
    env = dict(os.environ if base is None else base)
    for name in _PIP_INDEX_VARIABLES:
        env.pop(name, None)
    env["PIP_CONFIG_FILE"] = os.devnull  # pip's documented switch: load no configuration file
    return env


def _stage_debian(
    repo: Path, plan: Plan, feeds: Feeds, staged: dict[Path, str], log: list[str]
) -> None:
    wanted = {c.name: c.proposed for c in plan.changes if c.ecosystem == "deb" and c.proposed}
    if not wanted:
        return
    # Every architecture's lock is re-pinned (staged, written with everything else or not at
    # all): a version missing from one architecture's index leaves all of them as they were.
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
        staged[rel] = replace(lock, debs=tuple(pins)).to_json()


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pinned(lock_text: str) -> set[str]:
    return {
        _normalise(m.group(1))
        for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", lock_text, re.M)
    }


def _published(feeds: Feeds, name: str, version: str) -> set[str]:
    """The sha256 digests PyPI's JSON API lists for the files of ``name`` ``version``."""
    project = feeds.pypi_project(name)
    files = (project or {}).get("releases", {}).get(version)
    if not files:
        raise ApplyError(f"PyPI lists no files for {name} {version}: nothing to lock")
    return {str(f.get("digests", {}).get("sha256", "")) for f in files} - {""}


def _check_hashes(
    rel: Path, text: str, upgrades: list[tuple[str, str]], published: dict[str, set[str]]
) -> None:
    """Every upgraded pin in the new lock is at the planned version, with hashes that are all
    digests PyPI publishes for that release. pip-compile hashes whatever bytes a listed URL
    returns (a mirror's error page included), so its output is checked, not trusted."""
    locked = {_normalise(d.name): d for d in sbom.parse_requirements_lock(text)}
    for name, version in upgrades:
        dist = locked.get(_normalise(name))
        if dist is None:
            continue  # this lock does not pin it
        if dist.version != version:
            raise ApplyError(f"{rel}: pip-compile locked {name} {dist.version}, not {version}")
        unknown = sorted(set(dist.hashes) - published[_normalise(name)])
        if not dist.hashes or unknown:
            raise ApplyError(
                f"{rel}: {name} {version}: hash(es) {', '.join(unknown) or '(none)'} are not "
                "digests PyPI publishes for that release"
            )


def _stage_python(
    repo: Path,
    plan: Plan,
    feeds: Feeds,
    pip_compile: str,
    staged: dict[Path, str],
    log: list[str],
) -> None:
    upgrades = [(c.name, c.proposed) for c in plan.changes if c.ecosystem == "pypi" and c.proposed]
    if not upgrades:
        return
    index_url = feeds.sources.pypi.rstrip("/") + "/simple/"
    published = {_normalise(n): _published(feeds, n, v) for n, v in upgrades}
    with tempfile.TemporaryDirectory(prefix="track-upstream-") as tmp:
        work = Path(tmp) / "requirements"
        # A copy: pip-compile rewrites its output file in place, and a later lock failing must
        # not leave an earlier one moved. The .in files may refer to each other (-c), so all go.
        shutil.copytree(repo / REQUIREMENTS, work)
        for name in PYTHON_LOCKS:
            lock = work / f"{name}.txt"
            if not lock.is_file():
                continue
            pinned = _pinned(lock.read_text(encoding="utf-8"))
            relevant = [f"{n}=={v}" for n, v in upgrades if _normalise(n) in pinned]
            if not relevant:
                continue
            if not (work / f"{name}.in").is_file():
                raise ApplyError(f"{REQUIREMENTS / name}.in: missing (the source of {name}.txt)")
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
            try:
                proc = subprocess.run(
                    cmd,
                    cwd=work,
                    # The index as pip's variable, not --index-url: pip-compile copies its
                    # options into the lock's header, and the lock must read as `make lock`
                    # writes it (--no-emit-index-url keeps it out of the body only).
                    env=pip_environment() | {"PIP_INDEX_URL": index_url},
                    capture_output=True,
                    text=True,
                    check=False,
                    timeout=900,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise ApplyError(f"pip-compile {name}.in: {exc}") from None
            if proc.returncode != 0:
                raise ApplyError(f"pip-compile {name}.in failed: {proc.stderr.strip()[-2000:]}")
            text = lock.read_text(encoding="utf-8")
            _check_hashes(REQUIREMENTS / f"{name}.txt", text, upgrades, published)
            staged[REQUIREMENTS / f"{name}.txt"] = text
            log.append(f"requirements/{name}.txt: " + ", ".join(relevant))


def _stage_version(repo: Path, version: str, staged: dict[Path, str]) -> None:
    for rel, pattern in VERSION_FILES:
        text = (repo / rel).read_text(encoding="utf-8")
        new, count = pattern.subn(rf"\g<1>{version}\g<3>", text, count=1)
        if count != 1:
            raise ApplyError(f"{rel}: no version line to bump")
        staged[rel] = new
    manifest_rel = Path("release/manifest.yaml")
    manifest = (
        load_manifest(repo / manifest_rel).with_image(tag=version).with_chart(version=version)
    )
    staged[manifest_rel] = render_manifest(manifest)
    staged.update(generated.render_tracked(manifest, repo))


def _stage_changelog(
    repo: Path, version: str, plan: Plan, log: list[str], staged: dict[Path, str]
) -> None:
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
    staged[Path("CHANGELOG.md")] = head + "\n\n" + "\n".join(lines) + "\n" + rest


def _commit(repo: Path, staged: dict[Path, str]) -> None:
    """Write every staged file; on any failure put back what was there (or remove it)."""
    originals: dict[Path, bytes | None] = {}
    try:
        for rel, text in staged.items():
            path = repo / rel
            originals[path] = path.read_bytes() if path.is_file() else None
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".track-upstream.tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
    except OSError as exc:
        for path, old in originals.items():
            if old is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(old)
        raise ApplyError(f"writing the plan into the tree: {exc}; every file restored") from None


def apply_plan(repo: Path, plan: Plan, feeds: Feeds, *, pip_compile: str) -> str:
    """Apply ``plan`` to the tree at ``repo``; returns the new version.

    Nothing is written until every step (pip-compile included) succeeded.
    """
    log: list[str] = []
    staged: dict[Path, str] = {}
    _stage_python(repo, plan, feeds, pip_compile, staged, log)
    _stage_debian(repo, plan, feeds, staged, log)
    current = load_manifest(repo / "release" / "manifest.yaml").image.tag
    version = bump_version(current, plan)
    _stage_version(repo, version, staged)
    _stage_changelog(repo, version, plan, log, staged)
    _commit(repo, staged)
    return version
