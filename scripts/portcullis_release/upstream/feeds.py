"""The upstream feeds, read over HTTP with every failure turned into a :class:`FeedError` that
names the feed and the URL (a malformed or unreachable feed stops the run before anything is
planned or applied: a plan built on half the data would look complete and be wrong).

Every base URL is configurable (:class:`Sources`), so tests serve recorded responses from
loopback and a mirror can stand in for the public services.
"""

from __future__ import annotations

import json
import lzma
import subprocess
from dataclasses import dataclass
from typing import Any

import httpx
from defusedxml import ElementTree  # type: ignore[import-untyped]  # no stubs in the lock

__all__ = ["FeedError", "Feeds", "Sources", "deb_compare", "parse_deb822"]

_ATOM = "{http://www.w3.org/2005/Atom}"


@dataclass(frozen=True)
class Sources:
    """Base URLs of the feeds (the public services by default)."""

    pypi: str = "https://pypi.org"
    osv: str = "https://api.osv.dev"
    debian: str = "https://deb.debian.org/debian"
    debian_security: str = "https://security.debian.org/debian-security"
    security_tracker: str = "https://security-tracker.debian.org/tracker/data/json"
    dex_releases: str = "https://github.com/dexidp/dex/releases.atom"


class FeedError(RuntimeError):
    """A feed was unreachable or did not hold what its API promises."""


def parse_deb822(text: str) -> list[dict[str, str]]:
    """Paragraphs of a Debian control-format index (continuation lines joined)."""
    paragraphs: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                paragraphs.append(current)
            current, key = {}, ""
        elif line[0] in " \t":
            if not key:
                raise ValueError(f"continuation line before any field: {line!r}")
            current[key] += "\n" + line.strip()
        else:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"not a 'Field: value' line: {line!r}")
            key = name.strip()
            current[key] = value.strip()
    if current:
        paragraphs.append(current)
    return paragraphs


def deb_compare(a: str, b: str) -> int:
    """Debian version order (dpkg's own comparison): -1, 0 or 1."""
    for op, result in (("lt", -1), ("eq", 0)):
        if subprocess.run(["dpkg", "--compare-versions", a, op, b], check=False).returncode == 0:
            return result
    return 1


class Feeds:
    """One client for all feeds; ``client`` is closed by the caller."""

    def __init__(self, sources: Sources, client: httpx.Client) -> None:
        self.sources = sources
        self.client = client

    def _get(self, feed: str, url: str, *, missing_ok: bool = False) -> bytes | None:
        try:
            response = self.client.get(url)
        except httpx.HTTPError as exc:
            raise FeedError(f"{feed}: {url}: {exc}") from None
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code != 200:
            raise FeedError(f"{feed}: {url}: HTTP {response.status_code}")
        return response.content

    @staticmethod
    def _json(feed: str, url: str, body: bytes) -> Any:
        try:
            return json.loads(body)
        except ValueError as exc:
            raise FeedError(f"{feed}: {url}: not JSON ({exc})") from None

    def pypi_project(self, name: str) -> dict[str, Any] | None:
        """PyPI's JSON API for a project, or None if PyPI does not know it (any more)."""
        url = f"{self.sources.pypi.rstrip('/')}/pypi/{name}/json"
        body = self._get("PyPI", url, missing_ok=True)
        if body is None:
            return None
        data = self._json("PyPI", url, body)
        if not isinstance(data, dict) or not isinstance(data.get("info"), dict):
            raise FeedError(f"PyPI: {url}: no 'info' object")
        if not isinstance(data.get("releases"), dict):
            raise FeedError(f"PyPI: {url}: no 'releases' object")
        return data

    def osv_vulnerabilities(self, ecosystem: str, name: str, version: str) -> list[dict[str, Any]]:
        """OSV's known vulnerabilities of one package version."""
        url = f"{self.sources.osv.rstrip('/')}/v1/query"
        query = {"package": {"name": name, "ecosystem": ecosystem}, "version": version}
        try:
            response = self.client.post(url, json=query)
        except httpx.HTTPError as exc:
            raise FeedError(f"OSV: {url}: {exc}") from None
        if response.status_code != 200:
            raise FeedError(f"OSV: {url}: HTTP {response.status_code}")
        data = self._json("OSV", url, response.content)
        vulns = data.get("vulns", []) if isinstance(data, dict) else None
        if not isinstance(vulns, list) or not all(isinstance(v, dict) and "id" in v for v in vulns):
            raise FeedError(f"OSV: {url}: 'vulns' is not a list of advisories with ids")
        return vulns

    def _index(self, feed: str, url: str) -> list[dict[str, str]]:
        # The .xz index, because it is the one every suite publishes: bookworm-security and
        # bookworm-updates have no Packages.gz/Sources.gz at all (their Release files list only
        # the plain and .xz indexes; fetching .gz gave HTTP 404 from deb.debian.org and
        # security.debian.org on 2026-11-30).
        body = self._get(feed, url)
        assert body is not None
        try:
            return parse_deb822(lzma.decompress(body).decode("utf-8"))
        except (lzma.LZMAError, EOFError, UnicodeDecodeError, ValueError) as exc:
            raise FeedError(f"{feed}: {url}: not an xz-compressed package index ({exc})") from None

    def debian_packages(self, suite: str, arch: str) -> list[dict[str, str]]:
        """Binary package paragraphs of ``suite`` and ``suite-security`` (main)."""
        out = []
        for base, dist in (
            (self.sources.debian, suite),
            (self.sources.debian, f"{suite}-updates"),
            (self.sources.debian_security, f"{suite}-security"),
        ):
            url = f"{base.rstrip('/')}/dists/{dist}/main/binary-{arch}/Packages.xz"
            for para in self._index("Debian archive", url):
                if "Package" not in para or "Version" not in para:
                    raise FeedError(f"Debian archive: {url}: a paragraph has no Package/Version")
                para["X-Suite"] = dist
                para["X-Base"] = base
                out.append(para)
        return out

    def debian_sources(self, suite: str) -> list[dict[str, str]]:
        """Source package paragraphs of ``suite`` and ``suite-security`` (main)."""
        out = []
        for base, dist in (
            (self.sources.debian, suite),
            (self.sources.debian_security, f"{suite}-security"),
        ):
            url = f"{base.rstrip('/')}/dists/{dist}/main/source/Sources.xz"
            for para in self._index("Debian archive", url):
                if "Package" not in para or "Version" not in para:
                    raise FeedError(f"Debian archive: {url}: a paragraph has no Package/Version")
                para["X-Suite"] = dist
                out.append(para)
        return out

    def debian_security_tracker(self) -> dict[str, Any]:
        """The tracker's JSON: source package -> CVE -> {releases: {suite: {...}}}."""
        url = self.sources.security_tracker
        body = self._get("Debian security tracker", url)
        assert body is not None
        data = self._json("Debian security tracker", url, body)
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise FeedError(f"Debian security tracker: {url}: not a package -> CVE mapping")
        return data

    def dex_releases(self) -> list[str]:
        """Release tags in Dex's releases feed (Atom), newest first as published."""
        url = self.sources.dex_releases
        body = self._get("Dex releases", url)
        assert body is not None
        try:
            root = ElementTree.fromstring(body)
        except Exception as exc:  # defusedxml raises its own and ElementTree's ParseError
            raise FeedError(f"Dex releases: {url}: not an Atom feed ({exc})") from None
        titles = [
            (entry.findtext(f"{_ATOM}title") or "").strip()
            for entry in root.findall(f"{_ATOM}entry")
        ]
        tags = [t for t in titles if t.startswith("v")]
        if root.tag != f"{_ATOM}feed" or not tags:
            raise FeedError(f"Dex releases: {url}: no release entries")
        return tags
