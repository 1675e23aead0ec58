"""The loopback HTTP listener that receives the authorization response (RFC 8252 §7.3).

It binds the first free address of ``--listen-address`` (kubelogin's defaults: 127.0.0.1:8000,
then 127.0.0.1:18000, the two redirect URIs people register), answers exactly one request
carrying the expected ``state`` and ignores everything else (favicon requests, stray tabs, a
forged callback with another state), so nothing but the issuer's redirect can end the login.
"""

from __future__ import annotations

import errno
import html
import http.server
import socket
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
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


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise PluginError(f"--listen-address {address!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


class _Server(http.server.HTTPServer):
    outcome: _Outcome
    state: str
    path: str


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    server_version = "kubectl-portcullis"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the request line carries the authorization code."""

    def do_GET(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(parts.query)
        state = query.get("state", [""])[0]
        if (parts.path or "/") != self.server.path or state != self.server.state:
            self._answer(404, "Not found", "This is kubectl-portcullis's login listener.")
            return
        if "error" in query:
            error = query["error"][0]
            description = query.get("error_description", [""])[0]
            self.server.outcome.error = error + (f": {description}" if description else "")
            self._answer(400, "Login failed", f"The issuer said: {self.server.outcome.error}")
            return
        code = query.get("code", [""])[0]
        if not code:
            self._answer(400, "Login failed", "The redirect carried no authorization code.")
            self.server.outcome.error = "the redirect carried no code"
            return
        self.server.outcome.code = code
        self._answer(200, "Logged in", "You can close this window and return to the terminal.")

    def _answer(self, status: int, title: str, text: str) -> None:
        body = _PAGE.format(title=html.escape(title), text=html.escape(text)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        self.wfile.write(body)


class Receiver:
    """Context manager: bound listener, ``redirect_uri`` and ``wait()`` for the code."""

    def __init__(self, addresses: Sequence[str], redirect_host: str, state: str) -> None:
        self._server: _Server | None = None
        failures: list[str] = []
        for address in addresses or DEFAULT_LISTEN_ADDRESSES:
            host, port = _split_address(address)
            server_class = _Server6 if ":" in host else _Server
            try:
                server = server_class((host, port), _Handler)
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
                    failures.append(f"{address} ({exc.strerror})")
                    continue
                raise PluginError(f"cannot listen on {address}: {exc.strerror}") from None
            self._server = server
            break
        if self._server is None:
            raise PluginError(
                "cannot listen on any --listen-address for the login redirect: "
                + ", ".join(failures)
            )
        self._server.outcome = _Outcome()
        self._server.state = state
        self._server.path = "/"
        self._server.timeout = 0.5
        port = self._server.server_address[1]
        shown = f"[{redirect_host}]" if ":" in redirect_host else redirect_host
        self.redirect_uri = f"http://{shown}:{port}/"

    def wait(self, timeout: float) -> str:
        """Serve requests until the issuer's redirect arrives; the authorization code."""
        assert self._server is not None
        deadline = time.monotonic() + timeout
        outcome = self._server.outcome
        while outcome.code is None and outcome.error is None:
            if time.monotonic() >= deadline:
                raise PluginError(
                    f"no login completed within {int(timeout)}s "
                    "(--authentication-timeout-sec); run again"
                )
            self._server.handle_request()
        if outcome.error is not None:
            raise PluginError(f"the login failed: {outcome.error}")
        assert outcome.code is not None
        return outcome.code

    def __enter__(self) -> Receiver:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.server_close()
