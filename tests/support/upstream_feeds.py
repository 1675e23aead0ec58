"""A loopback stand-in for the upstream feeds `track-upstream` reads, serving responses in each
service's own format: PyPI's JSON API (``/pypi/<name>/json``), OSV's ``POST /v1/query``, Debian
archive indexes (``dists/<suite>/main/binary-<arch>/Packages.gz``, ``.../source/Sources.gz``),
the Debian security tracker's JSON and Dex's GitHub releases Atom feed.

Responses are set per test (``FeedServer.routes``); OSV answers are looked up by
(ecosystem, name, version) and default to no vulnerabilities, as OSV answers ``{}``.
"""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def deb822(paragraphs: list[dict[str, str]]) -> bytes:
    """A gzip'd Debian index, as the archive serves Packages.gz and Sources.gz."""
    text = "\n".join("".join(f"{k}: {v}\n" for k, v in p.items()) for p in paragraphs)
    return gzip.compress(text.encode(), mtime=0)


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
