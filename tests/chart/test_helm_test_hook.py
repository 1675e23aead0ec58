"""The `helm test` hook's script, run for real with curl against a local discovery endpoint that
serves the chart-generated certificate: proves the script, the --connect-to routing and the TLS
material (serving cert for the issuer host, signed by the published CA) work together."""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.chart import FULLNAME, find, render_set


class _Discovery(BaseHTTPRequestHandler):
    issuer = ""

    def do_GET(self) -> None:
        if self.path != "/.well-known/openid-configuration" and not self.path.endswith(
            "/.well-known/openid-configuration"
        ):
            self.send_error(404)
            return
        body = json.dumps({"issuer": self.issuer, "jwks_uri": f"{self.issuer}/keys"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _serve(issuer: str, tls: tuple[Path, Path] | None) -> tuple[ThreadingHTTPServer, int]:
    handler = type("Handler", (_Discovery,), {"issuer": issuer})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(tls[0]), str(tls[1]))
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


@pytest.fixture
def servers() -> Iterator[list[ThreadingHTTPServer]]:
    started: list[ThreadingHTTPServer] = []
    yield started
    for server in started:
        server.shutdown()
        server.server_close()


def _hook(value_set: str) -> tuple[str, dict[str, str]]:
    _, docs = render_set(value_set)
    container = find(docs, "Pod")["spec"]["containers"][0]
    assert container["command"][:2] == ["/bin/sh", "-ec"]
    return container["command"][2], {e["name"]: e["value"] for e in container["env"]}


def _run(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    curl = shutil.which("curl")
    assert curl, "curl is installed by `make test-system-deps`"
    path = str(Path(curl).parent) + ":/usr/bin:/bin"
    return subprocess.run(
        ["/bin/sh", "-ec", script],
        env={**env, "PATH": path},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_hook_passes_over_tls_with_the_generated_certificate_and_ca(
    tmp_path: Path, servers: list[ThreadingHTTPServer]
) -> None:
    script, env = _hook("https-selfsigned")
    _, docs = render_set("https-selfsigned")
    secret = find(docs, "Secret", f"{FULLNAME}-tls")["data"]
    cert, key, ca = tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "ca.crt"
    cert.write_bytes(base64.b64decode(secret["tls.crt"]))
    key.write_bytes(base64.b64decode(secret["tls.key"]))
    ca.write_text(find(docs, "ConfigMap", f"{FULLNAME}-ca")["data"]["ca.crt"])
    server, port = _serve(env["ISSUER"], (cert, key))
    servers.append(server)

    result = _run(script, {**env, "TARGET": f"127.0.0.1:{port}", "CA_FILE": str(ca)})
    assert result.returncode == 0, result.stderr
    assert f"discovery OK for {env['ISSUER']}" in result.stdout

    # Without the published CA the certificate is not trusted: the hook fails.
    untrusted = _run(script, {**env, "TARGET": f"127.0.0.1:{port}", "CA_FILE": str(tmp_path / "x")})
    assert untrusted.returncode != 0


def test_hook_fails_when_discovery_names_another_issuer(
    servers: list[ThreadingHTTPServer],
) -> None:
    script, env = _hook("ingress-tls")
    assert env["DISCOVERY_URL"].startswith("http://")
    server, port = _serve("https://impostor.example.com/dex", None)
    servers.append(server)
    result = _run(script, {**env, "TARGET": f"127.0.0.1:{port}"})
    assert result.returncode != 0
    assert "does not name issuer https://login.example.com/dex" in result.stderr

    good, good_port = _serve(env["ISSUER"], None)
    servers.append(good)
    assert _run(script, {**env, "TARGET": f"127.0.0.1:{good_port}"}).returncode == 0
