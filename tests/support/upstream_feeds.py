"""A loopback stand-in for the upstream feeds `track-upstream` reads, serving responses in each
service's own format: PyPI's JSON API (``/pypi/<name>/json``) and PEP 503 simple index
(``/simple/<name>/``, files under ``/files/``), OSV's ``POST /v1/query``, Debian archive indexes
(``dists/<suite>/main/binary-<arch>/Packages.xz``, ``.../source/Sources.xz``), the Debian
security tracker's JSON and Dex's GitHub releases Atom feed.

:func:`serve_recorded` loads the responses recorded from the real services
(``tests/release/fixtures/upstream``, written by ``scripts/record-upstream-fixtures``; the
services unreachable when recording have hand-built files that say so). Tests change single
routes on top (``FeedServer.routes``); OSV answers are looked up by (ecosystem, name, version)
and default to no vulnerabilities, as OSV answers ``{}``.
"""

from __future__ import annotations

import hashlib
import html
import json
import lzma
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "release" / "fixtures" / "upstream"
# The real wheels `make test` fetches (scripts/fetch-test-wheels.sh, release-test-deps).
TEST_WHEELS = Path(__file__).resolve().parents[2] / ".cache" / "test-wheels"


def deb822(paragraphs: list[dict[str, str]]) -> bytes:
    """An xz-compressed Debian index, as the archive serves Packages.xz and Sources.xz."""
    text = "\n".join("".join(f"{k}: {v}\n" for k, v in p.items()) for p in paragraphs)
    return lzma.compress(text.encode())


def recorded_index(path: Path) -> bytes:
    """A recorded index excerpt as the archive serves it: comment header dropped, xz'd."""
    lines = [line for line in path.read_text().splitlines(keepends=True) if line[:1] != "#"]
    return lzma.compress("".join(lines).lstrip("\n").encode())


def simple_page(project: dict[str, Any], served: set[str]) -> bytes:
    """PEP 503 page for a recorded PyPI JSON: every file of the project with its sha256 and
    Requires-Python, as PyPI lists it; ``served`` names the files whose bytes are available."""
    links = []
    for files in project["releases"].values():
        for f in files:
            if f["filename"] not in served:
                # Left out rather than listed and answered 404: pip-compile --generate-hashes
                # hashes whatever body a listed file's URL returns, a 404 page included.
                continue
            attrs = f' data-requires-python="{html.escape(f["requires_python"])}"' * bool(
                f.get("requires_python")
            )
            if f.get("yanked"):
                attrs += f' data-yanked="{html.escape(f.get("yanked_reason") or "")}"'
            href = f"../../files/{f['filename']}#sha256={f['digests']['sha256']}"
            links.append(f'<a href="{href}"{attrs}>{html.escape(f["filename"])}</a><br/>')
    name = html.escape(project["info"]["name"])
    return (
        f"<!DOCTYPE html><html><head><title>Links for {name}</title></head><body>"
        f"<h1>Links for {name}</h1>{''.join(links)}</body></html>"
    ).encode()


def atom(tags: list[str]) -> bytes:
    """GitHub's releases.atom for ``tags`` (newest first)."""
    entries = "".join(
        f"<entry><id>tag:github.com,2008:Repository/1/{t}</id><title>{t}</title>"
        f'<link rel="alternate" href="https://github.com/dexidp/dex/releases/tag/{t}"/></entry>'
        for t in tags
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<feed xmlns="http://www.w3.org/2005/Atom"><title>Release notes from dex</title>'
        f"{entries}</feed>"
    ).encode()


@dataclass
class FeedServer:
    url: str
    routes: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    osv: dict[tuple[str, str, str], list[dict[str, Any]]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def serve_recorded(self, fixtures: Path = FIXTURES) -> None:
        """Routes for every fixture: PyPI under ``/pypi``, the simple index under ``/simple``,
        the archive under ``/debian`` and ``/security``, the tracker at ``/tracker/json`` and
        Dex at ``/dex/releases.atom``."""
        for path in sorted((fixtures / "pypi").glob("*.json")):
            self.routes[f"/pypi/{path.stem}/json"] = (200, path.read_bytes())
        for path in sorted((fixtures / "debian").glob("*.txt")):
            suite, kind = path.stem.split("_")
            base = "security" if suite.endswith("-security") else "debian"
            rel = "binary-amd64/Packages.xz" if kind == "Packages" else "source/Sources.xz"
            self.routes[f"/{base}/dists/{suite}/main/{rel}"] = (200, recorded_index(path))
        self.routes["/tracker/json"] = (200, (fixtures / "security-tracker.json").read_bytes())
        self.routes["/dex/releases.atom"] = (200, (fixtures / "dex-releases.atom").read_bytes())
        for entry in json.loads((fixtures / "osv.json").read_text())["queries"]:
            query = entry["query"]
            key = (query["package"]["ecosystem"], query["package"]["name"], query["version"])
            self.osv[key] = entry["response"].get("vulns", [])

    def serve_index(self, project: str, wheels: list[Path]) -> None:
        """PEP 503 ``/simple/<project>/`` from the recorded PyPI JSON, and ``wheels`` (real
        files) under ``/files/``; each wheel must be the file PyPI published (same sha256)."""
        data = json.loads((FIXTURES / "pypi" / f"{project}.json").read_text())
        published = {
            f["filename"]: f["digests"]["sha256"] for fs in data["releases"].values() for f in fs
        }
        for wheel in wheels:
            digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
            assert published.get(wheel.name) == digest, f"{wheel}: not the file PyPI published"
            self.routes[f"/files/{wheel.name}"] = (200, wheel.read_bytes())
        page = simple_page(data, {w.name for w in wheels})
        self.routes[f"/simple/{project}/"] = (200, page)


@contextmanager
def feed_server() -> Iterator[FeedServer]:
    """Serve on a free 127.0.0.1 port until the block ends."""
    state = FeedServer("")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            # pip reads a simple index page only when it is served as text/html (PEP 503).
            path = self.path.split("?", 1)[0]
            if path.startswith("/simple/"):
                self.send_header("Content-Type", "text/html; charset=utf-8")
            elif body[:1] in (b"{", b"["):
                self.send_header("Content-Type", "application/json")
            else:
                self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            state.requests.append(f"GET {self.path}")
            self._send(*state.routes.get(self.path, (404, b'{"message": "Not Found"}')))

        def do_POST(self) -> None:
            state.requests.append(f"POST {self.path}")
            length = int(self.headers.get("Content-Length", "0"))
            query = json.loads(self.rfile.read(length))
            if self.path in state.routes:  # a recorded failure overrides the lookup
                self._send(*state.routes[self.path])
                return
            key = (query["package"]["ecosystem"], query["package"]["name"], query["version"])
            vulns = state.osv.get(key, [])
            self._send(200, json.dumps({"vulns": vulns} if vulns else {}).encode())

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
