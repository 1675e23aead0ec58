"""Record the upstream responses the track-upstream tests serve (scripts/record-upstream-fixtures).

The tests run against loopback servers (no network in tests), and a fixture typed by hand
tests the code against the author's idea of the service, not the service. So the fixtures are
real responses, fetched by this module and trimmed to what the tests read, each stamped with
its source URL and the day it was recorded:

* PyPI's JSON API (``/pypi/<name>/json``) for a few distributions: ``info`` cut to the fields
  the tracker reads and ``releases`` cut to the versions the tests pin or move to (files keep
  their real names, sha256 digests, sizes and yanked flags: the --apply test serves real wheels
  checked against them). The stamp is an extra top-level ``_recorded`` key, which the JSON API's
  readers ignore like any other key they do not use.
* Debian archive indexes (``Packages.xz``/``Sources.xz`` of bookworm, bookworm-updates and
  bookworm-security): the paragraphs of a few packages, verbatim, in a text file whose ``#``
  header the test server strips before compressing (an index has no comment syntax).

OSV (api.osv.dev), the Debian security tracker (security-tracker.debian.org) and Dex's releases
feed (github.com) were unreachable from the machine that recorded these (2026-11-30), so their
fixtures stay hand-built; each says so in its header and follows the service's documented
schema. Re-running this module where they are reachable is the way to replace them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import lzma
from pathlib import Path
from typing import Any

import httpx

from portcullis_release.upstream.feeds import Sources, parse_deb822

__all__ = ["DEBIAN", "PYPI", "main", "record_debian", "record_pypi"]

# Distribution -> versions the tests use (the pin, its successor, a yanked release).
PYPI: dict[str, tuple[str, ...]] = {
    "h11": ("0.15.0", "0.16.0"),
    "anyio": ("4.6.2", "4.7.0", "4.16.0"),
}
# (index, kind) -> package names kept from it.
_BINARIES = ("libc6", "libssl3", "tzdata", "zlib1g")
DEBIAN: dict[tuple[str, str], tuple[str, ...]] = {
    ("bookworm", "Packages"): _BINARIES,
    ("bookworm-updates", "Packages"): _BINARIES,
    ("bookworm-security", "Packages"): _BINARIES,
    ("bookworm", "Sources"): ("openssl",),
    ("bookworm-security", "Sources"): ("openssl",),
}
_INFO_FIELDS = ("name", "version", "yanked", "yanked_reason", "requires_python")
_FILE_FIELDS = (
    "filename",
    "packagetype",
    "digests",
    "size",
    "upload_time_iso_8601",
    "url",
    "requires_python",
    "yanked",
    "yanked_reason",
)


def record_pypi(
    client: httpx.Client, base: str, name: str, versions: tuple[str, ...], today: dt.date
) -> dict[str, Any]:
    """PyPI's JSON for ``name``, trimmed to ``versions`` (every one must exist upstream)."""
    url = f"{base.rstrip('/')}/pypi/{name}/json"
    response = client.get(url)
    response.raise_for_status()
    data = response.json()
    missing = [v for v in versions if v not in data["releases"]]
    if missing:
        raise SystemExit(f"{url}: no release {', '.join(missing)}")
    return {
        "_recorded": {
            "source": url,
            "date": today.isoformat(),
            "trimmed": "info to the fields track-upstream reads; releases to "
            + ", ".join(versions)
            + " (of "
            + str(len(data["releases"]))
            + "); files to name, type, digests, size, upload time, url, yanked",
        },
        "info": {k: data["info"].get(k) for k in _INFO_FIELDS},
        "releases": {
            v: [{k: f.get(k) for k in _FILE_FIELDS} for f in data["releases"][v]] for v in versions
        },
    }


def _index_url(sources: Sources, suite: str, kind: str) -> str:
    base = sources.debian_security if suite.endswith("-security") else sources.debian
    path = "binary-amd64/Packages.xz" if kind == "Packages" else "source/Sources.xz"
    return f"{base.rstrip('/')}/dists/{suite}/main/{path}"


def record_debian(
    client: httpx.Client,
    sources: Sources,
    suite: str,
    kind: str,
    names: tuple[str, ...],
    today: dt.date,
) -> str:
    """The paragraphs of ``names`` in one index, verbatim, under a ``#`` header."""
    url = _index_url(sources, suite, kind)
    response = client.get(url)
    response.raise_for_status()
    text = lzma.decompress(response.content).decode("utf-8")
    kept = []
    for block in text.split("\n\n"):
        paragraphs = parse_deb822(block)
        if paragraphs and paragraphs[0].get("Package") in names:
            kept.append(block.strip("\n"))
    header = (
        f"# Recorded {today.isoformat()} from {url}\n"
        f"# Excerpt: the paragraphs of {', '.join(names)} (verbatim; "
        f"{len(kept)} of {text.count(chr(10) + 'Package: ') + 1}).\n"
        "# The test server drops these comment lines and serves the rest xz-compressed.\n"
    )
    return header + "\n" + "\n\n".join(kept) + "\n"


def fixture_name(suite: str, kind: str) -> str:
    """File name of a recorded index excerpt (shared with the test server)."""
    return f"{suite}_{kind}.txt"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("tests/release/fixtures/upstream"))
    parser.add_argument("--pypi-url", default=Sources.pypi)
    parser.add_argument("--debian-url", default=Sources.debian)
    parser.add_argument("--debian-security-url", default=Sources.debian_security)
    args = parser.parse_args(argv)
    sources = Sources(
        pypi=args.pypi_url, debian=args.debian_url, debian_security=args.debian_security_url
    )
    today = dt.datetime.now(dt.UTC).date()
    (args.out / "pypi").mkdir(parents=True, exist_ok=True)
    (args.out / "debian").mkdir(parents=True, exist_ok=True)
    with httpx.Client(timeout=120, follow_redirects=True) as client:
        for name, versions in PYPI.items():
            data = record_pypi(client, sources.pypi, name, versions, today)
            path = args.out / "pypi" / f"{name}.json"
            path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            print(path)
        for (suite, kind), names in DEBIAN.items():
            path = args.out / "debian" / fixture_name(suite, kind)
            path.write_text(
                record_debian(client, sources, suite, kind, names, today), encoding="utf-8"
            )
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
