"""The HTTP plumbing every upstream stand-in shares: a quiet HTTP/1.1 handler that answers JSON
(or bytes, or text) with exact lengths, and a loopback server on a free port, optionally TLS,
stopped when the ``with`` block ends.

The stand-ins (``github_api``, ``microsoft_api``, ...) keep only what is the provider's own:
its paths, headers, paging and error bodies. What is the same for all of them lives here so a
fix (say, to keep-alive or to TLS) reaches every one.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class StandInHandler(BaseHTTPRequestHandler):
    """A request handler that never logs to stderr and speaks HTTP/1.1 (clients reuse
    connections, as they do against the real services)."""

    protocol_version = "HTTP/1.1"
    #: The Content-Type of a JSON body, spelled as the provider spells it.
    json_content_type = "application/json; charset=utf-8"
    #: The Content-Type of a str body.
    text_content_type = "text/plain; charset=utf-8"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def query(self) -> dict[str, str]:
        """The request's query string, first value of each parameter."""
        return {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}

    def _send(
        self,
        status: int,
        body: Any,
        headers: dict[str, str] | None = None,
        content_type: str | None = None,
    ) -> None:
        """Answer ``status`` with ``body``: None (no body), bytes or str as given, anything else
        as JSON. ``content_type`` defaults to JSON's, text/plain for a str body."""
        if body is None:
            raw, kind = b"", None
        elif isinstance(body, bytes):
            raw, kind = body, content_type
        elif isinstance(body, str):
            raw, kind = body.encode(), content_type or self.text_content_type
        else:
            raw, kind = json.dumps(body).encode(), content_type or self.json_content_type
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if kind:
            self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@contextmanager
def serving(
    handler: type[BaseHTTPRequestHandler],
    name: str,
    *,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> Iterator[ThreadingHTTPServer]:
    """A threaded server for ``handler`` on 127.0.0.1 and a free port (HTTPS with the given
    certificate and key), shut down and closed when the block ends."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls_cert is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls_cert, tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def server_url(server: ThreadingHTTPServer, scheme: str = "http") -> str:
    """``scheme://127.0.0.1:<port>`` of a server :func:`serving` started."""
    return f"{scheme}://127.0.0.1:{server.server_address[1]}"
