"""The loopback HTTP listener that receives the authorization response (RFC 8252 §7.3).

It binds the first free address of ``--listen-address`` (kubelogin's defaults: 127.0.0.1:8000,
then 127.0.0.1:18000, the two redirect URIs people register), and accepts exactly one request
carrying the expected ``state``; everything else (favicon requests, stray tabs, a forged
callback with another state) gets a 404 and cannot end the login.

Requests are served on threads with a socket timeout: browsers open speculative connections
that never send a request, and a single-threaded server would sit on such a connection while
the real redirect waits behind it.
"""

from __future__ import annotations

import errno
import html
import http.server
import socket
import threading
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from kubectl_portcullis.errors import PluginError

DEFAULT_LISTEN_ADDRESSES = ("127.0.0.1:8000", "127.0.0.1:18000")

_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>kubectl-portcullis</title></head><body><h1>{title}</h1><p>{text}</p></body></html>"""


@dataclass
class _Outcome:
    code: str | None = None
    error: str | None = None
    iss: str | None = None  # RFC 9207 authorization response issuer, when the issuer sends it
    claimed: bool = False  # a redirect with the right state arrived (set before `done`)
    done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise PluginError(f"--listen-address {address!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    outcome: _Outcome
    state: str


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    server_version = "kubectl-portcullis"
    sys_version = ""
    timeout = 10  # seconds a connection may stay silent (speculative browser connections)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the request line carries the authorization code."""

    def do_GET(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(parts.query)
        state = query.get("state", [""])[0]
        outcome = self.server.outcome
        if (parts.path or "/") != "/" or state != self.server.state:
            self._answer(404, "Not found", "This is kubectl-portcullis's login listener.")
            return
        with outcome.lock:
            if outcome.claimed:
                self._answer(409, "Already done", "This login has already been completed.")
                return
            outcome.claimed = True
            if "error" in query:
                description = query.get("error_description", [""])[0]
                outcome.error = query["error"][0] + (f": {description}" if description else "")
            elif query.get("code", [""])[0]:
                outcome.code = query["code"][0]
                outcome.iss = query.get("iss", [None])[0]
            else:
                outcome.error = "the redirect carried no authorization code"
        try:
            if outcome.code is not None:
                self._answer(
                    200, "Logged in", "You can close this window and return to the terminal."
                )
            else:
                self._answer(400, "Login failed", f"The issuer said: {outcome.error}")
        finally:
            # Only now may the plugin go on (and perhaps exit): the browser has its page.
            outcome.done.set()

    def _answer(self, status: int, title: str, text: str) -> None:
        body = _PAGE.format(title=html.escape(title), text=html.escape(text)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True


class Receiver:
    """Context manager: bound listener, ``redirect_uri`` and ``wait()`` for the code."""

    def __init__(self, addresses: Sequence[str], redirect_host: str, state: str) -> None:
        server: _Server | None = None
        failures: list[str] = []
        for address in addresses or DEFAULT_LISTEN_ADDRESSES:
            host, port = split_address(address)
            server_class = _Server6 if ":" in host else _Server
            try:
                server = server_class((host, port), _Handler)
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
                    failures.append(f"{address} ({exc.strerror})")
                    continue
                raise PluginError(f"cannot listen on {address}: {exc.strerror}") from None
            break
        if server is None:
            raise PluginError(
                "cannot listen on any --listen-address for the login redirect: "
                + ", ".join(failures)
            )
        server.outcome = _Outcome()
        server.state = state
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )
        self._thread.start()
        port = server.server_address[1]
        shown = f"[{redirect_host}]" if ":" in redirect_host else redirect_host
        self.redirect_uri = f"http://{shown}:{port}/"

    def wait(self, timeout: float) -> tuple[str, str | None]:
        """Block until the issuer's redirect arrives; the code and the ``iss`` parameter."""
        outcome = self._server.outcome
        if not outcome.done.wait(timeout):
            raise PluginError(
                f"no login completed within {int(timeout)}s "
                "(--authentication-timeout-sec); run again"
            )
        if outcome.error is not None:
            raise PluginError(f"the login failed: {outcome.error}")
        assert outcome.code is not None
        return outcome.code, outcome.iss

    def __enter__(self) -> Receiver:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
