"""The bump plan: what upstream changed for each pinned input, why it matters, and by when.

A vulnerability's SLA clock starts at the earlier of OSV's ``published`` date and the day this
tracker first saw it (the ledger ``release/upstream-seen.json``: the Debian tracker publishes no
dates, and a clock that restarted every run would never run out). The deadline is that day plus
``sla_days[severity]`` from ``release/policy.yaml``; a VEX statement (``release/vex.json``) that
says the image is ``not_affected`` or ``fixed`` takes the CVE out of the deadlines and says why.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from packageurl import PackageURL
from packaging.version import InvalidVersion, Version
from rich.console import Console
from rich.table import Table

from portcullis_release.attest import vex as openvex
from portcullis_release.build.packages_lock import PackagesLock
from portcullis_release.upstream.feeds import Feeds, deb_compare

__all__ = ["Change", "Plan", "Policy", "VexClearance", "Vulnerability", "load_vex", "track"]

SEVERITIES = ("critical", "high", "medium", "low")
# Debian tracker urgencies and OSV/GHSA severities, mapped onto the policy's four levels. A
# vulnerability nobody rated counts as medium: unknown is not harmless.
_SEVERITY = {
    "critical": "critical",
    "high": "high",
    "moderate": "medium",
    "medium": "medium",
    "low": "low",
    "unimportant": "low",
    "negligible": "low",
}
_VEX_CLEARED = {"not_affected", "fixed"}


@dataclass(frozen=True)
class Policy:
    """``release/policy.yaml``: days to ship a fix per severity, and the Dex target."""

    sla_days: dict[str, int]
    dex_target: str

    @classmethod
    def load(cls, path: Path) -> Policy:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the top level must be a mapping")
        sla = data.get("sla_days")
        if not isinstance(sla, dict):
            raise ValueError(f"{path}: sla_days: must map severities to days")
        for severity in SEVERITIES:
            if not isinstance(sla.get(severity), int) or sla[severity] <= 0:
                raise ValueError(f"{path}: sla_days.{severity}: must be a positive number of days")
        target = (data.get("compatibility") or {}).get("dex")
        if not isinstance(target, str) or not target.startswith("v"):
            raise ValueError(
                f"{path}: compatibility.dex: must be a Dex release tag such as v2.45.1"
            )
        return cls({s: int(sla[s]) for s in SEVERITIES}, target)


@dataclass
class Vulnerability:
    id: str
    aliases: list[str]
    severity: str
    fixed: str | None
    known_since: str
    deadline: str | None
    past_due: bool
    vex: str | None = None  # "not_affected: <justification>" when a VEX statement clears it

    @property
    def cve_ids(self) -> list[str]:
        return sorted({i for i in [self.id, *self.aliases] if i.startswith("CVE-")})


@dataclass
class Change:
    ecosystem: str  # pypi | deb | deb-source | dex
    name: str
    current: str
    proposed: str | None
    reasons: list[str] = field(default_factory=list)
    vulnerabilities: list[Vulnerability] = field(default_factory=list)

    @property
    def past_due(self) -> bool:
        return any(v.past_due for v in self.vulnerabilities)


@dataclass
class Plan:
    generated_on: str
    changes: list[Change]

    def to_json(self) -> str:
        data: dict[str, Any] = asdict(self)
        data["past_due"] = sorted(
            f"{c.ecosystem}:{c.name}:{cve}"
            for c in self.changes
            for v in c.vulnerabilities
            if v.past_due
            for cve in v.cve_ids or [v.id]
        )
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def table(self, console: Console) -> None:
        table = Table(title=f"upstream bump plan ({self.generated_on})", show_lines=True)
        for column in ("input", "current", "proposed", "why"):
            table.add_column(column)
        # One vulnerability per line, never wrapped: a "PAST DUE" split over two lines is
        # easy to miss and impossible to grep for.
        table.add_column("CVEs (severity, deadline)", no_wrap=True)
        for change in self.changes:
            cves = []
            for v in change.vulnerabilities:
                ids = ", ".join(v.cve_ids or [v.id])
                if v.vex:
                    cves.append(f"{ids} {v.severity}: VEX {v.vex}")
                else:
                    due = f"due {v.deadline}" + (
                        " [bold red]PAST DUE[/bold red]" if v.past_due else ""
                    )
                    cves.append(f"{ids} {v.severity}, {due}")
            table.add_row(
                f"{change.ecosystem}:{change.name}",
                change.current,
                change.proposed or "(none available)",
                "\n".join(change.reasons),
                "\n".join(cves),
            )
        console.print(table)
        overdue = sum(c.past_due for c in self.changes)
        console.print(f"{len(self.changes)} change(s); {overdue} with a vulnerability past its SLA")


@dataclass(frozen=True)
class VexClearance:
    """One OpenVEX statement that clears a vulnerability, and the builds it speaks for."""

    reason: str  # "not_affected: <justification>" or "fixed"
    # (purl type, name, version) of the statement's subcomponents; empty: the whole image
    components: frozenset[tuple[str, str, str]]

    def covers(self, component: tuple[str, str, str]) -> bool:
        return not self.components or component in self.components


def load_vex(path: Path) -> dict[str, list[VexClearance]]:
    """CVE id -> the statements of ``path`` (OpenVEX, checked by :func:`attest.vex.load`) that
    clear it. A statement that names subcomponents clears the CVE only for those builds: a
    "fixed in libc6 2.36-9+deb12u14" must not clear the CVE for a lock still pinning +deb12u13,
    and a statement left behind when the pin moves stops clearing anything."""
    if not path.is_file():
        return {}
    cleared: dict[str, list[VexClearance]] = {}
    for statement in openvex.load(path)["statements"]:
        status = statement.get("status")
        if status not in _VEX_CLEARED:
            continue
        reason = statement.get("justification") or statement.get("impact_statement") or ""
        components = set()
        for product in statement.get("products") or []:
            for sub in product.get("subcomponents") or []:
                try:
                    purl = PackageURL.from_string(str(sub.get("@id", "")))
                except ValueError as exc:
                    raise ValueError(f"{path}: subcomponent {sub.get('@id')!r}: {exc}") from None
                components.add((purl.type, purl.name.lower(), str(purl.version)))
        cleared.setdefault(statement["vulnerability"]["name"], []).append(
            VexClearance(f"{status}: {reason}".rstrip(": "), frozenset(components))
        )
    return cleared


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pep440(value: str) -> Version | None:
    try:
        return Version(value)
    except InvalidVersion:
        return None


class _Clock:
    """Deadlines from the policy, the ledger of first sightings, and VEX."""

    def __init__(
        self,
        policy: Policy,
        today: dt.date,
        seen: dict[str, str],
        vex: dict[str, list[VexClearance]],
    ) -> None:
        self.policy, self.today, self.seen, self.vex = policy, today, seen, vex

    def vulnerability(
        self,
        component: tuple[str, str, str],
        vid: str,
        aliases: list[str],
        severity: str,
        fixed: str | None,
        published: dt.date | None,
    ) -> Vulnerability:
        """``component`` is the pinned build, (purl type, name, version), VEX is matched on."""
        first = dt.date.fromisoformat(self.seen.setdefault(vid, self.today.isoformat()))
        since = min(d for d in (first, published) if d is not None)
        level = _SEVERITY.get(severity.lower(), "medium")
        cleared = next(
            (c.reason for i in [vid, *aliases] for c in self.vex.get(i, []) if c.covers(component)),
            None,
        )
        deadline = since + dt.timedelta(days=self.policy.sla_days[level])
        return Vulnerability(
            id=vid,
            aliases=sorted(aliases),
            severity=level,
            fixed=fixed,
            known_since=since.isoformat(),
            deadline=None if cleared else deadline.isoformat(),
            past_due=not cleared and self.today > deadline,
            vex=cleared,
        )


def _osv_fixed(vuln: dict[str, Any], name: str) -> str | None:
    fixed = []
    for affected in vuln.get("affected", []):
        if affected.get("package", {}).get("name", "").lower() != name.lower():
            continue
        for rng in affected.get("ranges", []):
            fixed += [e["fixed"] for e in rng.get("events", []) if "fixed" in e]
    valid = [v for v in fixed if _pep440(v) is not None]
    return max(valid, key=Version) if valid else None


def _osv_severity(vuln: dict[str, Any]) -> str:
    return str((vuln.get("database_specific") or {}).get("severity") or "medium")


def _date(value: object) -> dt.date | None:
    if isinstance(value, str) and re.match(r"^\d{4}-\d{2}-\d{2}", value):
        return dt.date.fromisoformat(value[:10])
    return None


def _track_python(
    feeds: Feeds, clock: _Clock, pins: list[tuple[str, str]], changes: list[Change]
) -> None:
    for name, current in pins:
        project = feeds.pypi_project(name)
        change = Change("pypi", name, current, None)
        if project is None:
            change.reasons.append("the project vanished from PyPI")
            changes.append(change)
            continue
        releases: dict[str, list[dict[str, Any]]] = project["releases"]
        latest = str(project["info"].get("version", ""))
        files = releases.get(current)
        if files is None:
            change.reasons.append(f"pinned {current} vanished from PyPI")
        elif files and all(f.get("yanked") for f in files):
            why = next((f.get("yanked_reason") for f in files if f.get("yanked_reason")), None)
            change.reasons.append(f"pinned {current} was yanked" + (f": {why}" if why else ""))
        newest = _pep440(latest)
        if newest is not None and newest > Version(current):
            change.proposed = latest
            change.reasons.append(f"new version {latest}")
        for vuln in feeds.osv_vulnerabilities("PyPI", name, current):
            fixed = _osv_fixed(vuln, name)
            change.vulnerabilities.append(
                clock.vulnerability(
                    ("pypi", _normalise(name), current),
                    str(vuln["id"]),
                    [str(a) for a in vuln.get("aliases", [])],
                    _osv_severity(vuln),
                    fixed,
                    _date(vuln.get("published")),
                )
            )
            if fixed and (change.proposed is None or Version(fixed) > Version(change.proposed)):
                change.proposed = fixed
        if change.vulnerabilities:
            change.reasons.append("security: " + ", ".join(v.id for v in change.vulnerabilities))
        if change.reasons:
            changes.append(change)


def _debian_vulnerabilities(
    clock: _Clock,
    tracker: dict[str, Any],
    source: str,
    suite: str,
    version: str,
    component: tuple[str, str, str],
) -> list[Vulnerability]:
    found = []
    for cve, entry in sorted(tracker.get(source, {}).items()):
        release = (entry.get("releases") or {}).get(suite)
        if not isinstance(release, dict):
            continue
        fixed = release.get("fixed_version")
        status = release.get("status")
        if status == "resolved" and fixed and deb_compare(version, str(fixed)) >= 0:
            continue  # the pinned version already carries the fix
        if status not in ("resolved", "open"):
            continue
        urgency = str(release.get("urgency", "medium")).removesuffix("*")
        found.append(
            clock.vulnerability(
                component, cve, [], urgency, str(fixed) if status == "resolved" else None, None
            )
        )
    return found


def _newest(versions: list[tuple[str, str]]) -> tuple[str, str] | None:
    best: tuple[str, str] | None = None
    for version, suite in versions:
        if best is None or deb_compare(version, best[0]) > 0:
            best = (version, suite)
    return best


def _track_debian(feeds: Feeds, clock: _Clock, lock: PackagesLock, changes: list[Change]) -> None:
    packages = feeds.debian_packages(lock.suite, lock.architecture)
    tracker = feeds.debian_security_tracker()
    for pin in sorted(lock.debs, key=lambda d: d.name):
        entries = [
            p
            for p in packages
            if p["Package"] == pin.name and p.get("Architecture") in (pin.architecture, "all")
        ]
        change = Change("deb", pin.name, pin.version, None)
        if not any(p["Version"] == pin.version for p in entries):
            change.reasons.append(f"pinned {pin.version} vanished from the mirror")
        best = _newest([(p["Version"], p["X-Suite"]) for p in entries])
        if best is not None and deb_compare(best[0], pin.version) > 0:
            change.proposed = best[0]
            kind = "security update" if best[1].endswith("-security") else "new version"
            change.reasons.append(f"{kind} {best[0]} in {best[1]}")
        # The source package names the tracker's entries. Prefer the pinned version's paragraph;
        # a pin that vanished from the mirror takes it from any version still listed (a binary
        # package keeps its source across versions), or its vulnerabilities would go unseen
        # exactly when the pin is oldest. No Source field: the source has the binary's name.
        source = pin.name
        for p in sorted(entries, key=lambda p: p["Version"] == pin.version):
            if p.get("Source"):
                source = p["Source"].split()[0]
        change.vulnerabilities = _debian_vulnerabilities(
            clock, tracker, source, lock.suite, pin.version, ("deb", pin.name, pin.version)
        )
        if change.vulnerabilities:
            change.reasons.append(
                f"security ({source}): " + ", ".join(v.id for v in change.vulnerabilities)
            )
        if change.reasons:
            changes.append(change)
    provider = lock.fips_provider
    sources = [
        (p["Version"], p["X-Suite"])
        for p in feeds.debian_sources(lock.suite)
        if p["Package"] == provider.source_package
    ]
    change = Change("deb-source", provider.source_package, provider.source_version, None)
    if not any(v == provider.source_version for v, _ in sources):
        change.reasons.append(f"pinned source {provider.source_version} vanished from the mirror")
    best = _newest(sources)
    if best is not None and deb_compare(best[0], provider.source_version) > 0:
        change.proposed = best[0]
        change.reasons.append(f"source {best[0]} in {best[1]} (rebuild the FIPS provider)")
    change.vulnerabilities = _debian_vulnerabilities(
        clock,
        tracker,
        provider.source_package,
        lock.suite,
        provider.source_version,
        ("deb", provider.source_package, provider.source_version),
    )
    if change.vulnerabilities:
        change.reasons.append("security: " + ", ".join(v.id for v in change.vulnerabilities))
    if change.reasons:
        changes.append(change)


def _track_dex(feeds: Feeds, policy: Policy, changes: list[Change]) -> None:
    target = _pep440(policy.dex_target.removeprefix("v"))
    released = [
        (v, tag)
        for tag in feeds.dex_releases()
        if (v := _pep440(tag.removeprefix("v"))) is not None
    ]
    newer = sorted((v, tag) for v, tag in released if target is None or v > target)
    if newer:
        tag = newer[-1][1]
        changes.append(
            Change(
                "dex",
                "dex",
                policy.dex_target,
                tag,
                [
                    f"new Dex release {tag}: review its config keys, HTTP paths and gRPC API "
                    "changes, then move compatibility.dex in release/policy.yaml"
                ],
            )
        )


def track(
    *,
    feeds: Feeds,
    policy: Policy,
    python_pins: list[tuple[str, str]],
    lock: PackagesLock,
    today: dt.date,
    seen: dict[str, str],
    vex: dict[str, list[VexClearance]],
) -> Plan:
    """Ask every feed; ``seen`` (CVE -> first seen, ISO date) is updated in place."""
    clock = _Clock(policy, today, seen, vex)
    changes: list[Change] = []
    _track_python(feeds, clock, python_pins, changes)
    _track_debian(feeds, clock, lock, changes)
    _track_dex(feeds, policy, changes)
    return Plan(today.isoformat(), changes)
