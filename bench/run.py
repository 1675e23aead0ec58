"""`make bench`: load the issuer's hot paths with wrk and print a table of figures.

Not a timed test: it reports numbers for the record (compare with bench/README.md). The
server runs on loopback with sqlite storage and the chosen worker count; wrk is Debian's.
Every run is bounded (duration per endpoint) and stops the server it started.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORTCULLIS = ROOT / ".venv" / "bin" / "portcullis"
SECRET = "bench-secret-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(directory: Path, port: int, telemetry: int, algorithm: str) -> Path:
    from portcullis.passwords import hash_password

    password_hash = hash_password("bench-password", scheme="bcrypt")
    config = directory / "config.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            issuer: http://127.0.0.1:{port}/dex
            storage: {{type: sqlite3, config: {{file: {directory}/bench.db}}}}
            web: {{http: 127.0.0.1:{port}}}
            telemetry: {{http: 127.0.0.1:{telemetry}}}
            logger: {{level: warn}}
            oauth2:
              grantTypes: [authorization_code, refresh_token, client_credentials, password]
              passwordConnector: local
            expiry:
              refreshTokens: {{disableRotation: true}}
            signer: {{type: local, config: {{algorithm: {algorithm}}}}}
            enablePasswordDB: true
            staticPasswords:
              - email: bench@example.com
                hash: "{password_hash}"
                username: bench
                userID: bench-user
                groups: [bench]
            staticClients:
              - id: bench
                secret: {SECRET}
                redirectURIs: [http://127.0.0.1:1/cb]
            """
        )
    )
    return config


def wait_ready(telemetry: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{telemetry}/healthz/ready", timeout=1
            ) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("issuer did not become ready")


def wrk(url: str, duration: int, script: Path | None = None) -> tuple[float, str, str]:
    command = ["wrk", "-t2", "-c50", f"-d{duration}s", "--latency"]
    if script is not None:
        command += ["-s", str(script)]
    output = subprocess.run(
        [*command, url], capture_output=True, text=True, check=True, timeout=duration + 30
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        raise RuntimeError(f"{url}: {non2xx.group(1)} error responses under load")
    return rate, p50.group(1) if p50 else "?", p99.group(1) if p99 else "?"


def post_script(directory: Path, name: str, body: str) -> Path:
    basic = base64.b64encode(f"bench:{SECRET}".encode()).decode()
    script = directory / f"{name}.lua"
    script.write_text(
        textwrap.dedent(
            f"""
            wrk.method = "POST"
            wrk.body = "{body}"
            wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
            wrk.headers["Authorization"] = "Basic {basic}"
            """
        )
    )
    return script


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=10, help="seconds per endpoint")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--algorithm", default="RS256", choices=["RS256", "ES256", "PS256"])
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (make bench installs it)", file=sys.stderr)
        return 2
    port, telemetry = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        config = write_config(directory, port, telemetry, args.algorithm)
        server = subprocess.Popen(
            [str(PORTCULLIS), "serve", "--workers", str(args.workers), str(config)],
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_ready(telemetry)
            base = f"http://127.0.0.1:{port}/dex"
            refresh = _refresh_token(base)
            rows = [
                ("discovery", *wrk(f"{base}/.well-known/openid-configuration", args.duration)),
                ("JWKS", *wrk(f"{base}/keys", args.duration)),
                (
                    f"token, client_credentials, JWT {args.algorithm}",
                    *wrk(
                        f"{base}/token",
                        args.duration,
                        post_script(directory, "cc", "grant_type=client_credentials"),
                    ),
                ),
                (
                    f"token, refresh_token (no rotation), ID token {args.algorithm}",
                    *wrk(
                        f"{base}/token",
                        args.duration,
                        post_script(
                            directory,
                            "refresh",
                            f"grant_type=refresh_token&refresh_token={refresh}",
                        ),
                    ),
                ),
            ]
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    print(f"\nPortcullis {args.workers} worker(s), sqlite, wrk -t2 -c50 -d{args.duration}s")
    print(f"{'endpoint':<52} {'req/s':>9} {'p50':>9} {'p99':>9}")
    for name, rate, p50, p99 in rows:
        print(f"{name:<52} {rate:>9.0f} {p50:>9} {p99:>9}")
    extra = sorted(ROOT.glob("bench/image_*.py"))
    for script in extra:
        print(f"\n== {script.name}")
        subprocess.run([sys.executable, str(script)], check=False, env=os.environ.copy())
    return 0


def _refresh_token(base: str) -> str:
    """One password-grant login; the bench then refreshes with that token (rotation is off,
    so every request reuses it legitimately)."""
    body = "grant_type=password&username=bench@example.com&password=bench-password"
    body += "&scope=openid+email+profile+groups+offline_access"
    request = urllib.request.Request(  # noqa: S310 - loopback only
        f"{base}/token",
        data=body.encode(),
        headers={
            "Authorization": "Basic " + base64.b64encode(f"bench:{SECRET}".encode()).decode(),
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        token: str = json.load(response)["refresh_token"]
    return token


if __name__ == "__main__":
    sys.exit(main())
