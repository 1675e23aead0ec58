"""`make bench`: Portcullis and node-oidc-provider side by side, rounds interleaved.

Not a timed test: it prints figures for the record and writes them to bench/results/ (Markdown
table, SVG chart, JSON) and into bench/README.md. Both servers run in the same run on loopback;
Debian's wrk (`-t2 -c50`) loads one endpoint at a time, node then Portcullis (the order flips
every round), and the figures are medians over the rounds. CPU comes from /proc/<pid>/stat of
each server's process tree, so "cores" is CPU seconds per wall second while loaded and req/s
per core compares the two on equal hardware even when one leaves a core idle.

Tokens that may be used once (rotating refresh tokens, authorization codes, login requests) come
from pools minted before each run and popped by a wrk Lua script, one item per request; when a
pool runs dry that wrk thread stops (wrk then divides by the shorter time) and the row says so.
Node mints in-process through an admin port of bench/node/provider.mjs; Portcullis through its
own HTTP login flow (the dev-only mockCallback connector, skipApprovalScreen) so the benchmark
depends on nothing inside the server.

    python -m bench.run                          # everything, 3 rounds of 10 s
    python -m bench.run --duration 3 --rounds 1 --backends memory --endpoints refresh-rotate
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import dataclasses
import datetime
import hashlib
import html
import json
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from bench import procs

ROOT = Path(__file__).resolve().parent.parent
PORTCULLIS = ROOT / ".venv" / "bin" / "portcullis"
NODE_DIR = ROOT / "bench" / "node"
RESULTS = ROOT / "bench" / "results"
README = ROOT / "bench" / "README.md"
SECRET = "bench-secret-0123456789abcdef"
REDIRECT = "http://127.0.0.1:1/cb"
USER = {
    "email": "bench@example.com",
    "username": "bench",
    "user_id": "bench-user",
    "groups": ["bench"],
}
PASSWORD = "bench-password"
SCOPE = "openid email profile groups offline_access"
WRK_THREADS, WRK_CONNECTIONS = 2, 50
HTTP_POOL_CAP = 2500

# endpoint key -> (label, uses storage)
ENDPOINTS: dict[str, tuple[str, bool]] = {
    "discovery": ("discovery", False),
    "jwks": ("JWKS", False),
    "cc-rs256": ("client_credentials, JWT RS256", False),
    "cc-es256": ("client_credentials, JWT ES256", False),
    "refresh-rotate": (
        "refresh, rotation on (each token once), RS256, connector refreshes upstream",
        True,
    ),
    "refresh-rotate-noup": (
        "refresh, rotation on (each token once), RS256, connector without upstream refresh",
        True,
    ),
    "refresh-static": ("refresh, rotation off (one token replayed), RS256", True),
    "code": ("authorization_code exchange, RS256", True),
    "login": ("password login form POST (bcrypt cost 10)", True),
}
BACKENDS = ("memory", "sqlite", "postgres")
# Issue 13's targets: minimum ratio to node in the same run, keyed by (endpoint, backend) or
# (endpoint, "") for every backend; plus p99 < 50 ms at 50 connections on every token path.
TARGETS: dict[tuple[str, str], float] = {
    ("refresh-rotate", "sqlite"): 1.5,
    ("refresh-rotate", "postgres"): 1.2,
    ("refresh-rotate-noup", "sqlite"): 1.5,
    ("refresh-rotate-noup", "postgres"): 1.2,
    ("code", ""): 1.5,
    ("cc-rs256", ""): 2.0,
    ("cc-es256", ""): 3.0,
    ("discovery", ""): 3.0,
    ("jwks", ""): 3.0,
}
TOKEN_PATHS = (
    "cc-rs256",
    "cc-es256",
    "refresh-rotate",
    "refresh-rotate-noup",
    "refresh-static",
    "code",
)
# Which connector a Portcullis refresh family of each refresh row belongs to: the dev-only
# mockCallback connector refreshes "upstream" (RefreshConnector: the grant re-checks the user
# with the connector before rotating, the general path), authproxy has no upstream to ask
# (the one-statement path). node-oidc-provider has no connectors: both rows run the same
# refresh there.
REFRESH_CONNECTOR = {"refresh-rotate": "mock", "refresh-rotate-noup": "proxy"}
# The authenticating proxy's header, sent by the bench itself on loopback (trusted there).
PROXY_HEADERS: dict[str, str] = {"X-Remote-User": str(USER["username"])}
P99_TARGET_MS = 50.0
# JWS signatures each side makes per request (both issue an ID token and a JWT access token on
# refresh and code exchange; client_credentials returns one access token).
SIGNATURES: dict[str, int] = {
    "cc-rs256": 1,
    "cc-es256": 1,
    "refresh-rotate": 2,
    "refresh-rotate-noup": 2,
    "refresh-static": 2,
    "code": 2,
}


def signature_cost(algorithm: str, seconds: float = 1.0) -> float:
    """CPU seconds one JWS signature costs here, now: OpenSSL through cryptography, the same
    primitive both servers call (Portcullis through cryptography, node through its crypto
    module), an RSA-2048 key (RS256) or P-256 (ES256). Measured in this run because the
    machine's speed varies by 2x between hosts; the signing ceiling below follows from it."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    payload = b"x" * 600  # about a signing input of an ID token
    sign: Callable[[], bytes]
    if algorithm == "ES256":
        ec_key = ec.generate_private_key(ec.SECP256R1())
        sign = lambda: ec_key.sign(payload, ec.ECDSA(hashes.SHA256()))  # noqa: E731
    else:
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        sign = lambda: rsa_key.sign(payload, padding.PKCS1v15(), hashes.SHA256())  # noqa: E731
    count, started = 0, time.process_time()
    while time.process_time() - started < seconds:
        for _ in range(50):
            sign()
        count += 50
    return (time.process_time() - started) / count


def signing_ceiling(r: dict[str, Any], costs: dict[str, float]) -> float | None:
    """The highest ratio to node the row could show if Portcullis spent its measured cores on
    nothing but the JWS signatures of each request: ``cores / (signatures x cost) / node
    rate``. A target above it cannot be met by any implementation on this machine in this
    run, however little else it does; None for rows without signatures."""
    count = SIGNATURES.get(r["endpoint"], 0)
    algorithm = "ES256" if r["endpoint"] == "cc-es256" else "RS256"
    cost = costs.get(algorithm)
    node_rate, cores = r["node"]["rate"], r["portcullis"]["cores"]
    if not count or not cost or not node_rate or cores != cores:
        return None
    return float(cores / (count * cost) / node_rate)


def basic(client_id: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{SECRET}".encode()).decode()


# -- wrk --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Load:
    """What wrk sends: one fixed request, or one request per line of a pool file."""

    method: str = "GET"
    path: str = "/"
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    body: str = ""
    pool: list[tuple[str, str, str]] | None = None  # (path, cookie, body) each used once
    fallback: str = "/"  # a cheap GET for the last requests of a thread whose pool ran dry


@dataclasses.dataclass
class Sample:
    rate: float
    p50_ms: float
    p99_ms: float
    cores: float
    rss_mb: float
    errors: int
    exhausted: int
    db_cores: float = 0.0


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        return float("nan")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _lua(load: Load, directory: Path) -> Path:
    headers = "".join(
        f'wrk.headers["{k}"] = {json.dumps(v)}\n' for k, v in sorted(load.headers.items())
    )
    script = directory / f"load-{time.monotonic_ns()}.lua"
    if load.pool is None:
        script.write_text(
            f"wrk.method = {json.dumps(load.method)}\n"
            f"wrk.path = {json.dumps(load.path)}\n"
            f"wrk.body = {json.dumps(load.body)}\n{headers}"
        )
        return script
    pool_file = script.with_suffix(".pool")
    pool_file.write_text("".join(f"{p}\t{c}\t{b}\n" for p, c, b in load.pool))
    script.write_text(
        textwrap.dedent(
            f"""
            local pool_file = {json.dumps(str(pool_file))}
            local nthreads = {WRK_THREADS}
            local threads = {{}}
            local counter = 0
            {headers}
            function setup(thread)
              thread:set("tid", counter)
              counter = counter + 1
              table.insert(threads, thread)
            end
            local function now()
              local pipe = io.popen("date +%s.%N")
              local value = tonumber(pipe:read("*l"))
              pipe:close()
              return value
            end
            function init(args)
              started = now()
              active = 0
              items = {{}}
              exhausted = 0
              local i = 0
              for line in io.lines(pool_file) do
                if i % nthreads == tid then
                  local path, cookie, body = line:match("^([^\\t]*)\\t([^\\t]*)\\t(.*)$")
                  items[#items + 1] = {{path, cookie, body}}
                end
                i = i + 1
              end
              idx = 0
            end
            function request()
              idx = idx + 1
              local item = items[idx]
              if item == nil then
                -- Dry pool: stop this thread (wrk then divides by the shorter run time). The
                -- few connections that still ask in this loop turn get a cheap GET instead of
                -- a request bound to fail.
                if exhausted == 0 then active = now() - started end
                exhausted = 1
                wrk.thread:stop()
                return wrk.format("GET", {json.dumps(load.fallback)})
              end
              local h = {{}}
              for k, v in pairs(wrk.headers) do h[k] = v end
              if item[2] ~= "" then h["Cookie"] = item[2] end
              return wrk.format({json.dumps(load.method)}, item[1], h, item[3])
            end
            function done(summary, latency, requests)
              -- wrk divides by the whole duration even when every thread stopped early, so
              -- report how long the threads were busy (the last to run dry).
              local dry, busy = 0, 0
              for _, t in ipairs(threads) do
                dry = dry + t:get("exhausted")
                busy = math.max(busy, t:get("active"))
              end
              if dry < #threads then busy = -1 end
              io.write("POOL_EXHAUSTED " .. dry .. "\\n")
              io.write(string.format("POOL_ACTIVE_S %.3f\\n", busy))
            end
            """
        )
    )
    return script


def run_wrk(
    base: str,
    load: Load,
    duration: float,
    directory: Path,
    pids: Callable[[], list[int]],
    db_pids: Callable[[], list[int]] | None = None,
) -> Sample:
    script = _lua(load, directory)
    command = [
        "wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{duration:g}s", "--latency",
        "--timeout", "10s", "-s", str(script), base,
    ]  # fmt: skip
    before_pids = pids()
    cpu0, db0, t0 = procs.cpu_seconds(before_pids), 0.0, time.monotonic()
    if db_pids:
        db0 = procs.cpu_seconds(db_pids())
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rss_peak = 0
    while proc.poll() is None:
        rss_peak = max(rss_peak, procs.rss_bytes(pids()))
        time.sleep(0.25)
    out, err = proc.communicate()
    elapsed = time.monotonic() - t0
    cores = (procs.cpu_seconds(pids()) - cpu0) / elapsed
    db_cores = (procs.cpu_seconds(db_pids()) - db0) / elapsed if db_pids else 0.0
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err.strip()}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    exhausted = re.search(r"POOL_EXHAUSTED (\d+)", out)
    active = re.search(r"POOL_ACTIVE_S (-?[\d.e+]+)", out)
    total = re.search(r"(\d+) requests in", out)
    rate_value = float(rate.group(1)) if rate else 0.0
    if active and total and float(active.group(1)) > 0:
        # Every thread ran dry: wrk's own rate is divided by the whole duration.
        busy = float(active.group(1))
        rate_value = int(total.group(1)) / busy
        cores *= elapsed / busy
        db_cores *= elapsed / busy
    errors = int(non2xx.group(1)) if non2xx else 0
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    return Sample(
        rate=rate_value,
        p50_ms=_ms(p50.group(1)) if p50 else float("nan"),
        p99_ms=_ms(p99.group(1)) if p99 else float("nan"),
        cores=cores,
        rss_mb=rss_peak / 2**20,
        errors=errors,
        exhausted=int(exhausted.group(1)) if exhausted else 0,
        db_cores=db_cores,
    )


# -- the peers --------------------------------------------------------------------------------


class Peer(ABC):
    """A running server the bench can load: a base URL, its process tree, pool minting."""

    name = ""

    @abstractmethod
    def base(self) -> str: ...

    @abstractmethod
    def pids(self) -> list[int]: ...

    def db_pids(self) -> list[int]:
        return []

    @abstractmethod
    def load(self, endpoint: str, size: int) -> Load: ...

    @abstractmethod
    def stop(self) -> None: ...


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _token_load(client: str, body: str) -> Load:
    return Load(
        "POST",
        "/token",
        {"Authorization": basic(client), "Content-Type": "application/x-www-form-urlencoded"},
        body,
    )


def _check(response: httpx.Response, what: str) -> httpx.Response:
    if response.status_code >= 400:
        raise RuntimeError(f"{what}: HTTP {response.status_code}: {response.text[:300]}")
    return response


def _parallel(count: int, job: Callable[[httpx.Client], str], threads: int = 8) -> list[str]:
    """count results of job, run on threads with one HTTP client (cookie jar) each."""
    local = threading.local()
    clients: list[httpx.Client] = []

    def one(_: int) -> str:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(timeout=30)
            clients.append(client)
        client.cookies.clear()
        return job(client)

    try:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            return list(pool.map(one, range(count)))
    finally:
        for client in clients:
            client.close()


class NodePeer(Peer):
    """node-oidc-provider (bench/node/provider.mjs): clients `bench` (RS256, rotation on),
    `bench-es` (ES256) and `bench-static` (RS256, rotation off)."""

    name = "node"

    def __init__(self, directory: Path, password_hash: str) -> None:
        self.port, self.admin_port = procs.free_port(), procs.free_port()
        config = directory / "node.json"
        client = {"client_secret": SECRET, "redirect_uris": [REDIRECT]}
        config.write_text(
            json.dumps(
                {
                    "port": self.port,
                    "admin_port": self.admin_port,
                    "issuer": self.base(),
                    "clients": [
                        {"client_id": "bench", "alg": "RS256", "rotate": True, **client},
                        {"client_id": "bench-es", "alg": "ES256", "rotate": True, **client},
                        {"client_id": "bench-static", "alg": "RS256", "rotate": False, **client},
                    ],
                    "user": {**USER, "hash": password_hash},
                }
            )
        )
        self.log = (directory / "node.log").open("wb")
        self.proc = subprocess.Popen(
            ["node", str(NODE_DIR / "provider.mjs"), str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NODE_ENV": "production"},
        )
        procs.wait_http(f"http://127.0.0.1:{self.admin_port}/ready")
        procs.wait_http(f"{self.base()}/.well-known/openid-configuration")
        self.static_token = self._mint("refresh", "bench-static", 1)[0]

    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        return procs.tree(self.proc.pid)

    def _mint(self, kind: str, client: str, count: int) -> list[str]:
        query = urllib.parse.urlencode({"kind": kind, "client": client, "n": count})
        response = httpx.get(f"http://127.0.0.1:{self.admin_port}/mint?{query}", timeout=600)
        values: list[str] = _check(response, f"node mint {kind}").json()
        return values

    def _login_request(self, client: httpx.Client) -> str:
        query = urllib.parse.urlencode(
            {
                "client_id": "bench",
                "response_type": "code",
                "redirect_uri": REDIRECT,
                "scope": "openid email profile groups",
                "state": "bench",
            }
        )
        response = _check(client.get(f"{self.base()}/auth?{query}"), "node /auth")
        location = response.headers["location"]
        cookies = "; ".join(
            f"{c.name}={c.value}"
            for c in client.cookies.jar
            if c.name.startswith("_interaction") and not c.name.startswith("_interaction_resume")
        )
        body = urllib.parse.urlencode({"login": USER["email"], "password": PASSWORD})
        return f"{location}/login\t{cookies}\t{body}"

    def load(self, endpoint: str, size: int) -> Load:
        if endpoint == "discovery":
            return Load(path="/.well-known/openid-configuration")
        if endpoint == "jwks":
            return Load(path="/jwks")
        if endpoint in ("cc-rs256", "cc-es256"):
            client = "bench" if endpoint == "cc-rs256" else "bench-es"
            return _token_load(client, "grant_type=client_credentials")
        if endpoint == "refresh-static":
            return _token_load(
                "bench-static", f"grant_type=refresh_token&refresh_token={self.static_token}"
            )
        load = _token_load("bench", "")
        load.fallback = "/.well-known/openid-configuration"
        if endpoint in REFRESH_CONNECTOR:
            load.pool = [
                ("/token", "", f"grant_type=refresh_token&refresh_token={t}")
                for t in self._mint("refresh", "bench", size)
            ]
        elif endpoint == "code":
            redirect = urllib.parse.quote(REDIRECT, safe="")
            load.pool = [
                ("/token", "", f"grant_type=authorization_code&code={c}&redirect_uri={redirect}")
                for c in self._mint("code", "bench", size)
            ]
        elif endpoint == "login":
            load = Load("POST", "/", {"Content-Type": "application/x-www-form-urlencoded"})
            load.fallback = "/.well-known/openid-configuration"
            load.pool = [
                tuple(line.split("\t"))  # type: ignore[misc]
                for line in _parallel(size, self._login_request)
            ]
        else:
            raise ValueError(endpoint)
        return load

    def stop(self) -> None:
        _stop(self.proc)
        self.log.close()


@dataclasses.dataclass
class PortcullisSetup:
    backend: str
    algorithm: str = "RS256"
    rotation: bool = True


class PortcullisPeer(Peer):
    """`portcullis serve CONFIG --workers N` with one static client `bench`, the local password
    DB (one user, bcrypt cost 10) and the mockCallback connector for minting."""

    name = "portcullis"

    def __init__(
        self,
        directory: Path,
        setup: PortcullisSetup,
        workers: int,
        password_hash: str,
        storage: dict[str, Any],
        db_root: int | None,
        launcher: list[str] | None = None,
    ) -> None:
        self.setup = setup
        self.db_root = db_root
        self.storage_config = storage
        self.seeding = setup.backend != "memory"
        self.port, telemetry = procs.free_port(), procs.free_port()
        config = {
            "issuer": self.base(),
            "storage": storage,
            "web": {
                "http": f"127.0.0.1:{self.port}",
                # The bench mints thousands of logins from 127.0.0.1 on purpose; the per-address
                # bound on started logins (a flood guard, 200 per 10 min by default) would
                # refuse the pools. Node has no such bound.
                "limits": {"pendingAuthRequestsPerIP": 10_000_000},
                # Likewise the password throttle: an attempt counts against (user, address)
                # until it has succeeded, so 50 parallel logins of one user from one address
                # are refused (429) above 5/20 — by design, and not what this row measures.
                "passwordThrottle": {
                    "maxFailuresPerUser": 10_000_000,
                    "maxFailuresPerIP": 10_000_000,
                },
            },
            "telemetry": {"http": f"127.0.0.1:{telemetry}"},
            "logger": {"level": "warn"},
            "oauth2": {
                "skipApprovalScreen": True,
                "grantTypes": ["authorization_code", "refresh_token", "client_credentials"],
            },
            "expiry": {"refreshTokens": {"disableRotation": not setup.rotation}},
            "signer": {"type": "local", "config": {"algorithm": setup.algorithm}},
            "enablePasswordDB": True,
            "staticPasswords": [
                {
                    "email": USER["email"],
                    "hash": password_hash,
                    "username": USER["username"],
                    "userID": USER["user_id"],
                    "groups": USER["groups"],
                }
            ],
            "staticClients": [{"id": "bench", "secret": SECRET, "redirectURIs": [REDIRECT]}],
            "connectors": [
                {"type": "mockCallback", "id": "mock", "name": "Mock"},
                {
                    "type": "authproxy",
                    "id": "proxy",
                    "name": "Proxy",
                    "config": {"trustedProxies": ["127.0.0.1/32"]},
                },
            ],
        }
        name = (
            f"portcullis-{setup.backend}-{setup.algorithm}-{'rot' if setup.rotation else 'static'}"
        )
        path = directory / f"{name}.yaml"
        path.write_text(json.dumps(config, indent=1))  # JSON is YAML
        self.log = (directory / f"{name}.log").open("wb")
        self.proc = subprocess.Popen(
            [*(launcher or [str(PORTCULLIS)]), "serve", str(path), "--workers", str(workers)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            procs.wait_http(f"http://127.0.0.1:{telemetry}/healthz/ready", timeout=60)
        except RuntimeError:
            self.stop()
            tail = (directory / f"{name}.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"Portcullis ({name}) did not become ready:\n{tail}") from None
        self.static_token = ""
        if not setup.rotation:
            self.static_token = self._mint_refresh(1, "mock")[0]

    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/dex"

    def pids(self) -> list[int]:
        return procs.tree(self.proc.pid)

    def db_pids(self) -> list[int]:
        return procs.tree(self.db_root) if self.db_root else []

    def _code(self, client: httpx.Client, scope: str = SCOPE, connector: str = "mock") -> str:
        """One login up to the code: /auth -> /auth/<connector> -> /callback ->
        /approval (skipped) -> the redirect URI with ?code=. ``mock`` is the mockCallback
        connector, ``proxy`` authproxy (the bench sends the proxy's header itself)."""
        query = urllib.parse.urlencode(
            {
                "client_id": "bench",
                "response_type": "code",
                "redirect_uri": REDIRECT,
                "scope": scope,
                "state": "bench",
                "connector_id": connector,
            }
        )
        url = f"{self.base()}/auth?{query}"
        headers = PROXY_HEADERS if connector == "proxy" else {}
        for _ in range(6):
            answer = client.get(url, headers=headers)
            location = _check(answer, "portcullis login").headers["location"]
            if location.startswith(REDIRECT):
                return urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)["code"][0]
            url = urllib.parse.urljoin(url, location)
        raise RuntimeError(f"portcullis {connector} login did not reach the redirect URI")

    def _refresh(self, client: httpx.Client, connector: str) -> str:
        response = client.post(
            f"{self.base()}/token",
            data={"grant_type": "authorization_code",
                  "code": self._code(client, connector=connector), "redirect_uri": REDIRECT},
            headers={"Authorization": basic("bench")},
        )  # fmt: skip
        token: str = _check(response, "portcullis code exchange").json()["refresh_token"]
        return token

    def _mint_refresh(self, count: int, connector: str) -> list[str]:
        if self.seeding and count > 1:
            with contextlib.suppress(SeedingError):
                return self._seed("refresh", count, connector)
        return _parallel(count, lambda client: self._refresh(client, connector))

    def _mint_codes(self, count: int) -> list[str]:
        if self.seeding:
            with contextlib.suppress(SeedingError):
                return self._seed("code", count)
        return _parallel(count, self._code)

    def _open_storage(self) -> Any:
        config = self.storage_config
        if config["type"] == "sqlite3":
            from portcullis.storage.sqlite import SQLiteStorage

            return SQLiteStorage(config["config"]["file"])
        from portcullis.config.model import PostgresConfig
        from portcullis.storage.postgres import PostgresStorage

        return PostgresStorage(PostgresConfig.model_validate(config["config"]))

    def _seed(self, kind: str, count: int, connector: str = "mock") -> list[str]:
        """Clones of one real token or code written through the storage interface: minting
        thousands through the login flow of a durable backend takes minutes (six writes each).
        One HTTP login gives the template, so the clones are exactly what the server stores;
        the first clone is spent on a check that the server accepts them, and any mismatch
        falls back to minting over HTTP."""
        with httpx.Client(timeout=30) as client:
            template_value = (
                self._refresh(client, connector) if kind == "refresh" else self._code(client)
            )
        storage = self._open_storage()
        try:
            now = time.time()
            parts = template_value.split(".")
            if kind == "refresh":
                if len(parts) != 3:
                    raise SeedingError("unexpected refresh token format")
                template = storage.get_refresh_token(parts[1])
            else:
                template = storage.consume_auth_code(template_value, now, "bench")
            values: list[str] = []
            records: list[Any] = []
            for _ in range(count + 1):
                record_id = secrets.token_urlsafe(16)
                if kind == "refresh":
                    secret = secrets.token_urlsafe(32)
                    records.append(
                        dataclasses.replace(
                            template,
                            id=record_id,
                            token_hash=hashlib.sha256(secret.encode()).hexdigest(),
                            created_at=now,
                            last_used=now,
                            issued_by_code="",
                        )
                    )
                    values.append(f"{parts[0]}.{record_id}.{secret}")
                else:
                    records.append(dataclasses.replace(template, id=record_id, used_at=0.0))
                    values.append(record_id)
            create = storage.create_refresh_token if kind == "refresh" else storage.create_auth_code
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                list(pool.map(create, records))
        finally:
            storage.close()
        probe = values.pop()
        if kind == "refresh":
            body = {"grant_type": "refresh_token", "refresh_token": probe}
        else:
            body = {"grant_type": "authorization_code", "code": probe, "redirect_uri": REDIRECT}
        answer = httpx.post(
            f"{self.base()}/token", data=body, headers={"Authorization": basic("bench")}
        )
        if answer.status_code != 200:
            print(f"  (seeded {kind} rejected: {answer.text[:200]}; minting over HTTP)")
            raise SeedingError(answer.text)
        return values

    def _login_request(self, client: httpx.Client) -> str:
        query = urllib.parse.urlencode(
            {
                "client_id": "bench",
                "response_type": "code",
                "redirect_uri": REDIRECT,
                "scope": "openid email profile groups",
                "state": "bench",
                "connector_id": "local",
            }
        )
        url = f"{self.base()}/auth?{query}"
        for _ in range(4):
            response = _check(client.get(url), "portcullis login form")
            if response.status_code == 200:
                break
            url = urllib.parse.urljoin(url, response.headers["location"])
        match = re.search(r'name="csrf_token"\s+value="([^"]+)"', response.text)
        if not match or "/login?" not in url:
            raise RuntimeError(f"portcullis login form not found at {url}")
        cookies = "; ".join(f"{c.name}={c.value}" for c in client.cookies.jar)
        body = urllib.parse.urlencode(
            {"csrf_token": html.unescape(match.group(1)), "login": USER["email"],
             "password": PASSWORD}
        )  # fmt: skip
        parts = urllib.parse.urlsplit(url)
        return f"{parts.path}?{parts.query}\t{cookies}\t{body}"

    def load(self, endpoint: str, size: int) -> Load:
        prefix = "/dex"
        if not self.seeding or endpoint == "login":
            # Minted through the login flow, ~5 requests each: cap the pool and let a fast
            # server run it dry (a shorter run) rather than mint for minutes.
            size = min(size, HTTP_POOL_CAP)
        if endpoint == "discovery":
            return Load(path=f"{prefix}/.well-known/openid-configuration")
        if endpoint == "jwks":
            return Load(path=f"{prefix}/keys")
        if endpoint in ("cc-rs256", "cc-es256"):
            load = _token_load("bench", "grant_type=client_credentials")
        elif endpoint == "refresh-static":
            load = _token_load(
                "bench", f"grant_type=refresh_token&refresh_token={self.static_token}"
            )
        elif endpoint in REFRESH_CONNECTOR:
            load = _token_load("bench", "")
            load.pool = [
                (f"{prefix}/token", "", f"grant_type=refresh_token&refresh_token={t}")
                for t in self._mint_refresh(size, REFRESH_CONNECTOR[endpoint])
            ]
        elif endpoint == "code":
            load = _token_load("bench", "")
            exchange = "grant_type=authorization_code&redirect_uri={}&code={}"
            redirect = urllib.parse.quote(REDIRECT, safe="")
            load.pool = [
                (f"{prefix}/token", "", exchange.format(redirect, c))
                for c in self._mint_codes(size)
            ]
        elif endpoint == "login":
            load = Load("POST", "/", {"Content-Type": "application/x-www-form-urlencoded"})
            load.pool = [
                tuple(line.split("\t"))  # type: ignore[misc]
                for line in _parallel(size, self._login_request)
            ]
        else:
            raise ValueError(endpoint)
        load.path = f"{prefix}{load.path}" if load.pool is None else load.path
        load.fallback = f"{prefix}/.well-known/openid-configuration"
        return load

    def stop(self) -> None:
        _stop(self.proc)
        self.log.close()


# -- PostgreSQL -------------------------------------------------------------------------------


class SeedingError(Exception):
    """Seeded records were not accepted; mint over HTTP instead."""


@contextlib.contextmanager
def postgres_cluster(needed: bool) -> Iterator[Any]:
    """A throwaway PostgreSQL 15 (tests/support/postgres.py), fsync ON: the refresh figures
    are for durably persisted tokens."""
    if not needed:
        yield None
        return
    from tests.support.postgres import start_cluster

    cluster = start_cluster(fsync=True)
    try:
        yield cluster
    finally:
        cluster.stop()


def storage_for(
    backend: str, directory: Path, cluster: Any, tag: str, pg_max_open_conns: int = 0
) -> dict[str, Any]:
    if backend == "memory":
        return {"type": "memory"}
    if backend == "sqlite":
        return {"type": "sqlite3", "config": {"file": str(directory / f"{tag}.db")}}
    name = cluster.create_database(template=None)
    config = dict(cluster.config(name))
    if pg_max_open_conns:
        config["maxOpenConns"] = pg_max_open_conns
        config["maxIdleConns"] = pg_max_open_conns
    return {"type": "postgres", "config": config}


def postmaster_pid(cluster: Any) -> int:
    return int((Path(cluster.root) / "data" / "postmaster.pid").read_text().split()[0])


# -- the run ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    endpoint: str
    backend: str
    node: list[Sample] = dataclasses.field(default_factory=list)
    portcullis: list[Sample] = dataclasses.field(default_factory=list)


def _median(samples: list[Sample], field: str) -> float:
    values = [getattr(s, field) for s in samples]
    return statistics.median(values) if values else float("nan")


def summary(row: Row) -> dict[str, Any]:
    out: dict[str, Any] = {"endpoint": row.endpoint, "backend": row.backend}
    for side, samples in (("node", row.node), ("portcullis", row.portcullis)):
        rate, cores = _median(samples, "rate"), _median(samples, "cores")
        out[side] = {
            "rate": rate,
            "p50_ms": _median(samples, "p50_ms"),
            "p99_ms": _median(samples, "p99_ms"),
            "cores": cores,
            "per_core": rate / cores if cores else float("nan"),
            "rss_mb": max((s.rss_mb for s in samples), default=float("nan")),
            "errors": sum(s.errors for s in samples),
            "exhausted": sum(s.exhausted for s in samples),
            "db_cores": _median(samples, "db_cores"),
            "rates": [round(s.rate, 1) for s in samples],
        }
    out["ratio"] = out["portcullis"]["rate"] / out["node"]["rate"] if out["node"]["rate"] else 0
    out["ratio_per_core"] = (
        out["portcullis"]["per_core"] / out["node"]["per_core"] if out["node"]["per_core"] else 0
    )
    return out


def pool_size(rate_guess: float, duration: float) -> int:
    return int(max(200, rate_guess * duration * 1.6))


# First-round guesses (2-core machine); later rounds use the measured rate.
RATE_GUESS = {
    ("node", "refresh-rotate"): 1500.0,
    ("node", "refresh-rotate-noup"): 1500.0,
    ("node", "code"): 1200.0,
    ("node", "login"): 40.0,
    ("portcullis", "refresh-rotate"): 1200.0,
    ("portcullis", "refresh-rotate-noup"): 1200.0,
    ("portcullis", "code"): 1000.0,
    ("portcullis", "login"): 40.0,
}


def measure(
    rows: dict[tuple[str, str], Row],
    peer: Peer,
    endpoint: str,
    backend: str,
    duration: float,
    directory: Path,
    rate_seen: dict[tuple[str, str, str], float],
) -> None:
    key = (peer.name, endpoint, backend)
    guess = rate_seen.get(key, RATE_GUESS.get((peer.name, endpoint), 0.0))
    t0 = time.monotonic()
    load = peer.load(endpoint, pool_size(guess, duration))
    mint_s = time.monotonic() - t0
    sample = run_wrk(
        peer.base(), load, duration, directory, peer.pids, peer.db_pids if peer.db_pids() else None
    )
    rate_seen[key] = max(sample.rate, guess) * 2 if sample.exhausted else sample.rate * 1.2
    row = rows.setdefault((endpoint, backend), Row(endpoint, backend))
    (row.node if peer.name == "node" else row.portcullis).append(sample)
    pool = f" pool {len(load.pool)} minted in {mint_s:.1f}s" if load.pool else ""
    flags = f" ERRORS {sample.errors}" if sample.errors else ""
    flags += " POOL RAN DRY" if sample.exhausted else ""
    print(
        f"  {peer.name:<10} {endpoint:<15} {backend:<8} {sample.rate:>9.0f} req/s "
        f"p50 {sample.p50_ms:6.1f} p99 {sample.p99_ms:7.1f} ms  cores {sample.cores:4.2f}"
        f"  rss {sample.rss_mb:5.0f} MB{pool}{flags}",
        flush=True,
    )


def plan(endpoints: list[str], backends: list[str]) -> list[tuple[PortcullisSetup, list[str]]]:
    """Portcullis server set-ups and what each serves. Storage-free endpoints run once, against
    the first shared backend asked for (the memory backend allows one worker only); ES256 and
    rotation off are per-server settings in Portcullis, so they get servers of their own."""
    free_backend = next((b for b in backends if b != "memory"), backends[0])
    storage_free = [e for e in endpoints if not ENDPOINTS[e][1] and e != "cc-es256"]
    out: list[tuple[PortcullisSetup, list[str]]] = []
    for backend in backends:
        main = [e for e in endpoints if ENDPOINTS[e][1] and e != "refresh-static"]
        if backend == free_backend:
            main = storage_free + main
        if main:
            out.append((PortcullisSetup(backend), main))
        if "refresh-static" in endpoints:
            out.append((PortcullisSetup(backend, rotation=False), ["refresh-static"]))
        if backend == free_backend and "cc-es256" in endpoints:
            out.append((PortcullisSetup(backend, algorithm="ES256"), ["cc-es256"]))
    return out


def versions() -> dict[str, str]:
    def cmd(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return "?"

    package = json.loads((NODE_DIR / "node_modules" / "oidc-provider" / "package.json").read_text())
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}",
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "portcullis": cmd([str(PORTCULLIS), "version"]).splitlines()[0]
        if PORTCULLIS.exists()
        else "?",
        "python": platform.python_version(),
        "node": cmd(["node", "--version"]),
        "oidc-provider": package["version"],
        "wrk": cmd(["wrk", "-v"]).split(" Copyright")[0] if shutil.which("wrk") else "?",
    }


def profiling_server(
    directory: Path,
    setup: PortcullisSetup,
    cluster: Any,
    *,
    workers: int = 1,
    launcher: list[str] | None = None,
) -> PortcullisPeer:
    """One Portcullis server configured as the bench's, for the profilers (bench.profile_*):
    the same client, user (bcrypt cost 10) and storage as a `make bench` run."""
    from portcullis.passwords import hash_password

    storage = storage_for(setup.backend, directory, cluster, "profile")
    return PortcullisPeer(
        directory,
        setup,
        workers,
        hash_password(PASSWORD, scheme="bcrypt", cost=10),
        storage,
        None,
        launcher=launcher,
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument("--workers", type=int, default=2, help="Portcullis worker processes")
    parser.add_argument(
        "--endpoints", default=",".join(ENDPOINTS), help=f"subset of {','.join(ENDPOINTS)}"
    )
    parser.add_argument("--backends", default=",".join(BACKENDS), help="memory,sqlite,postgres")
    parser.add_argument(
        "--pg-max-open-conns",
        type=int,
        default=0,
        help="PostgreSQL pool per worker (maxOpenConns = maxIdleConns); 0: the default (5)",
    )
    parser.add_argument("--no-readme", action="store_true", help="leave bench/README.md alone")
    parser.add_argument("--note", default="", help="a line recorded with the figures")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="replace only the measured rows in bench/results/latest.json (a partial re-run)",
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite the table, chart and README from bench/results/latest.json",
    )
    args = parser.parse_args()
    if args.render_only:
        saved = json.loads((RESULTS / "latest.json").read_text())
        table = markdown_table(saved["rows"])
        print(table)
        write_results(saved["rows"], saved["info"], saved["params"], saved["note"], table)
        return 0
    endpoints = [e for e in args.endpoints.split(",") if e]
    backends = [b for b in args.backends.split(",") if b]
    for value, known, what in ((endpoints, ENDPOINTS, "endpoint"), (backends, BACKENDS, "backend")):
        unknown = [v for v in value if v not in known]
        if unknown:
            parser.error(f"unknown {what} {unknown[0]!r}; choose from {', '.join(known)}")
    for tool in ("wrk", "node"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is not installed (`make bench` installs it)", file=sys.stderr)
            return 2
    if not (NODE_DIR / "node_modules" / "oidc-provider").is_dir():
        print("bench: bench/node has no node_modules (`make bench` runs npm ci)", file=sys.stderr)
        return 2

    from portcullis.passwords import hash_password

    password_hash = hash_password(PASSWORD, scheme="bcrypt", cost=10)
    info = versions()
    print(f"bench: {info['machine']}; load average before: {info['load_before']}", flush=True)
    rows: dict[tuple[str, str], Row] = {}
    rate_seen: dict[tuple[str, str, str], float] = {}
    with (
        tempfile.TemporaryDirectory(prefix="portcullis-bench-") as tmp,
        postgres_cluster("postgres" in backends) as cluster,
    ):
        directory = Path(tmp)
        node = NodePeer(directory, password_hash)
        try:
            for setup, served in plan(endpoints, backends):
                tag = f"{setup.backend}-{setup.algorithm}-{int(setup.rotation)}"
                storage = storage_for(
                    setup.backend, directory, cluster, tag, args.pg_max_open_conns
                )
                db_root = postmaster_pid(cluster) if setup.backend == "postgres" else None
                print(
                    f"== Portcullis {setup.backend}, {setup.algorithm}, "
                    f"rotation {'on' if setup.rotation else 'off'}: {', '.join(served)}",
                    flush=True,
                )
                # The memory backend lives in one process: Portcullis refuses --workers > 1.
                workers = 1 if setup.backend == "memory" else args.workers
                server = PortcullisPeer(directory, setup, workers, password_hash, storage, db_root)
                try:
                    for round_no in range(args.rounds):
                        for endpoint in served:
                            order: list[Peer] = [node, server]
                            if round_no % 2:
                                order.reverse()
                            for peer in order:
                                measure(
                                    rows, peer, endpoint, setup.backend, args.duration,
                                    directory, rate_seen,
                                )  # fmt: skip
                finally:
                    server.stop()
        finally:
            node.stop()
    # After the load, so the measurement sees the machine as the run did.
    costs = {a: signature_cost(a) for a in ("RS256", "ES256")}
    results = [summary(row) for row in rows.values()]
    for r in results:
        r["signature_cost_ms"] = {a: round(c * 1000, 4) for a, c in costs.items()}
        r["signing_ceiling"] = signing_ceiling(r, costs)
    info["signature_cost"] = ", ".join(f"{a} {c * 1000:.3f} ms" for a, c in costs.items())
    info["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    params = (
        f"wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{args.duration:g}s, {args.rounds} "
        f"interleaved round(s), medians; Portcullis `serve --workers {args.workers}` (1 worker "
        "on the memory backend, which cannot be shared), sqlite synchronous=FULL (WAL), "
        "PostgreSQL 15 with fsync on"
        + (
            f" and a pool of {args.pg_max_open_conns} connections per worker"
            if args.pg_max_open_conns
            else ""
        )
        + "; node-oidc-provider in one process with an O(1) memory "
        "adapter; storage-free endpoints measured once, on the first shared backend"
    )
    note = args.note
    if args.merge and (RESULTS / "latest.json").exists():
        saved = json.loads((RESULTS / "latest.json").read_text())
        fresh = {(r["endpoint"], r["backend"]): r for r in results}
        merged = [fresh.pop((r["endpoint"], r["backend"]), r) for r in saved["rows"]]
        labels = ", ".join(f"{ENDPOINTS[r['endpoint']][0]} [{r['backend']}]" for r in results)
        note = (
            f"{saved['note']} Re-measured {info['date']} (load average {info['load_before']} "
            f"before, {info['load_after']} after; {params}): {labels}."
        ).strip()
        results = merged + list(fresh.values())
        info, params = saved["info"], saved["params"]
    table = markdown_table(results)
    print()
    print(table)
    write_results(results, info, params, note, table)
    return 0


# -- output -----------------------------------------------------------------------------------


def _fmt_rate(value: float) -> str:
    if value != value:  # NaN
        return "-"
    return f"{value / 1000:.2f}k" if value >= 1000 else f"{value:.0f}"


def markdown_table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| endpoint | storage | node req/s | node p50/p99 ms | node cores | node req/s/core "
        "| node RSS MB | Portcullis req/s | Portcullis p50/p99 ms | Portcullis cores "
        "| Portcullis req/s/core | Portcullis RSS MB | ratio | ratio per core | signing ceiling "
        "| target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        n, p = r["node"], r["portcullis"]
        storage = r["backend"] if ENDPOINTS[r["endpoint"]][1] else "(none)"
        if r["backend"] == "memory":
            storage += " (1 worker)"
        if r["backend"] == "postgres" and p["db_cores"]:
            storage += f" (+{p['db_cores']:.2f} db cores)"
        notes = []
        for side, s in (("node", n), ("Portcullis", p)):
            if s["errors"]:
                notes.append(f"{side} {s['errors']} errors")
            if s["exhausted"]:
                notes.append(f"{side} pool ran dry: shorter run")
        ratio = f"**{r['ratio']:.2f}x**" + (f" ({'; '.join(notes)})" if notes else "")
        lines.append(
            f"| {ENDPOINTS[r['endpoint']][0]} | {storage} "
            f"| {_fmt_rate(n['rate'])} | {n['p50_ms']:.1f} / {n['p99_ms']:.1f} | {n['cores']:.2f} "
            f"| {_fmt_rate(n['per_core'])} | {n['rss_mb']:.0f} "
            f"| {_fmt_rate(p['rate'])} | {p['p50_ms']:.1f} / {p['p99_ms']:.1f} | {p['cores']:.2f} "
            f"| {_fmt_rate(p['per_core'])} | {p['rss_mb']:.0f} "
            f"| {ratio} | {r['ratio_per_core']:.2f}x | {_fmt_ceiling(r)} | {target(r)} |"
        )
    return "\n".join(lines)


def _fmt_ceiling(r: dict[str, Any]) -> str:
    ceiling = r.get("signing_ceiling")
    return "-" if ceiling is None else f"{ceiling:.2f}x"


def target(r: dict[str, Any]) -> str:
    """Issue 13's target for the row and whether this run met it; a missed target above the
    row's signing ceiling says so (no implementation could meet it here)."""
    wanted = TARGETS.get((r["endpoint"], r["backend"]), TARGETS.get((r["endpoint"], "")))
    parts = []
    if wanted is not None:
        verdict = "met" if r["ratio"] >= wanted else "MISSED"
        ceiling = r.get("signing_ceiling")
        if verdict == "MISSED" and ceiling is not None and ceiling < wanted:
            verdict += f" (above the {ceiling:.2f}x signing ceiling)"
        parts.append(f">= {wanted:g}x {verdict}")
    if r["endpoint"] in TOKEN_PATHS:
        p99 = r["portcullis"]["p99_ms"]
        parts.append(f"p99 < {P99_TARGET_MS:g} ms {'met' if p99 < P99_TARGET_MS else 'MISSED'}")
    return "; ".join(parts) or "-"


def svg_chart(results: list[dict[str, Any]], title: str) -> str:
    """Horizontal bars of the ratio Portcullis/node per row (log scale, 1x marked), each
    labelled with both absolute rates."""
    import math

    left, width, bar, gap, top = 420, 420, 18, 8, 48
    lo, hi = math.log10(0.05), math.log10(20)

    def x(ratio: float) -> float:
        clamped = min(max(ratio, 10**lo), 10**hi)
        return left + (math.log10(clamped) - lo) / (hi - lo) * width

    height = top + len(results) * (bar + gap) + 40
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 230}" '
        f'height="{height}" font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="10" y="20" font-size="14" font-weight="bold">{html.escape(title)}</text>',
        '<text x="10" y="36" fill="#555">Portcullis req/s ÷ node-oidc-provider req/s '
        "(log scale); right: node vs Portcullis req/s</text>",
    ]
    for tick in (0.1, 0.25, 0.5, 1, 2, 4, 10):
        tx = x(tick)
        out.append(
            f'<line x1="{tx:.1f}" y1="{top - 4}" x2="{tx:.1f}" y2="{height - 30}" '
            f'stroke="{"#000" if tick == 1 else "#ddd"}"/>'
            f'<text x="{tx:.1f}" y="{height - 16}" text-anchor="middle">{tick:g}x</text>'
        )
    for i, r in enumerate(results):
        y = top + i * (bar + gap)
        ratio = r["ratio"] or 0.0001
        x0, x1 = sorted((x(1), x(ratio)))
        colour = "#2a7" if ratio >= 1 else "#d54"
        label = ENDPOINTS[r["endpoint"]][0]
        if ENDPOINTS[r["endpoint"]][1]:
            label += f" [{r['backend']}]"
        out.append(
            f'<text x="{left - 6}" y="{y + bar - 5}" text-anchor="end">{html.escape(label)}</text>'
            f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 1):.1f}" height="{bar}" '
            f'fill="{colour}"/>'
            f'<text x="{left + width + 6}" y="{y + bar - 5}">{ratio:.2f}x  '
            f"({_fmt_rate(r['node']['rate'])} vs {_fmt_rate(r['portcullis']['rate'])})</text>"
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


MARK_START, MARK_END = "<!-- bench:latest:start -->", "<!-- bench:latest:end -->"


def write_results(
    results: list[dict[str, Any]], info: dict[str, str], params: str, note: str, table: str
) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    header = (
        f"Measured {info['date']} on {info['machine']}; load average {info['load_before']} "
        f"before, {info['load_after']} after. {info['portcullis']}, Python {info['python']}; "
        f"node-oidc-provider {info['oidc-provider']} on Node {info['node']}; {info['wrk']}. "
        f"{params}."
    )
    if info.get("signature_cost"):
        header += (
            f" One JWS signature cost {info['signature_cost']} of CPU in this run (OpenSSL, "
            "RSA-2048 / P-256): the signing ceiling is the ratio Portcullis would reach on its "
            "measured cores if it did nothing but sign."
        )
    if note:
        header += f" {note}"
    (RESULTS / "latest.md").write_text(f"{header}\n\n{table}\n")
    (RESULTS / "latest.json").write_text(
        json.dumps({"info": info, "params": params, "note": note, "rows": results}, indent=1) + "\n"
    )
    (RESULTS / "latest.svg").write_text(svg_chart(results, f"make bench, {info['date']}"))
    print(f"\nwrote {RESULTS.relative_to(ROOT)}/latest.{{md,json,svg}}")
    readme = README.read_text()
    if MARK_START in readme and MARK_END in readme and "--no-readme" not in sys.argv:
        head, rest = readme.split(MARK_START, 1)
        _, tail = rest.split(MARK_END, 1)
        block = f"{MARK_START}\n{header}\n\n{table}\n\n![chart](results/latest.svg)\n{MARK_END}"
        README.write_text(head + block + tail)
        print("updated bench/README.md")


if __name__ == "__main__":
    sys.exit(main())
