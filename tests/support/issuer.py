"""Run the real `portcullis serve` process for integration tests and drive its HTML login.

Why a subprocess and not the ASGI app in-process: the tests must prove what an operator gets —
the CLI, config loading, uvicorn, signal handling, sqlite on disk and the logs written to stderr.

Every server gets its own directory (config, sqlite file, stderr log), free loopback ports and is
stopped by its PID, so tests are safe under pytest-xdist.
"""

from __future__ import annotations

import contextlib
import copy
import html
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import bcrypt
import httpx
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
PORTCULLIS = REPO_ROOT / ".venv" / "bin" / "portcullis"

ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "password"
ADMIN_USER_ID = "08a8684b-db88-4b73-90a9-3cd1661f5466"
APP_REDIRECT = "http://127.0.0.1:5555/callback"
KUBECTL_REDIRECT = "http://127.0.0.1:8000/"
PEER_REDIRECT = "http://127.0.0.1:5557/callback"

# A second user whose password is distinctive enough to grep the server logs for.
DEV_EMAIL = "dev@example.com"
DEV_PASSWORD = "dev-" + secrets.token_urlsafe(18)
DEV_USER_ID = "dev-0001"

# Generated once per test process: bcrypt cost 10 keeps logins fast and is the server minimum.
_ADMIN_HASH = bcrypt.hashpw(ADMIN_PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
_DEV_HASH = bcrypt.hashpw(DEV_PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Secrets:
    """Client secrets, fresh per server so a leak in logs is unambiguous."""

    app: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    peer: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    untrusted: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    bot: str = field(default_factory=lambda: secrets.token_urlsafe(24))


def deep_merge(base: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; lists and scalars in ``patch`` replace those in ``base``."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def base_config(
    issuer: str, web_port: int, telemetry_port: int, db_file: Path, creds: Secrets
) -> dict[str, Any]:
    return {
        "issuer": issuer,
        "storage": {"type": "sqlite3", "config": {"file": str(db_file)}},
        "web": {
            "http": f"127.0.0.1:{web_port}",
            "allowedOrigins": ["https://allowed.example"],
        },
        "telemetry": {"http": f"127.0.0.1:{telemetry_port}"},
        "logger": {"level": "debug", "format": "text"},
        "expiry": {"idTokens": "1h", "refreshTokens": {"reuseInterval": "3s"}},
        "oauth2": {
            "skipApprovalScreen": False,
            "passwordConnector": "local",
            "grantTypes": [
                "authorization_code",
                "refresh_token",
                "password",
                "client_credentials",
            ],
        },
        "signer": {"type": "local", "config": {"keysRotationPeriod": "6h", "algorithm": "RS256"}},
        "staticClients": [
            {
                "id": "example-app",
                "name": "Example App",
                "secret": creds.app,
                "redirectURIs": [APP_REDIRECT],
                "grantTypes": ["authorization_code", "refresh_token", "password"],
            },
            {
                "id": "kubectl",
                "name": "kubectl",
                "public": True,
                "redirectURIs": [KUBECTL_REDIRECT],
            },
            {
                # Trusts example-app to mint tokens whose audience is this client.
                "id": "peer-app",
                "name": "Peer App",
                "secret": creds.peer,
                "redirectURIs": [PEER_REDIRECT],
                "trustedPeers": ["example-app"],
            },
            {
                "id": "untrusted-app",
                "name": "Untrusted App",
                "secret": creds.untrusted,
                "redirectURIs": ["http://127.0.0.1:5559/callback"],
            },
            {
                "id": "service-bot",
                "name": "Service Bot",
                "secret": creds.bot,
                "grantTypes": ["client_credentials"],
            },
        ],
        "enablePasswordDB": True,
        "staticPasswords": [
            {
                "email": ADMIN_EMAIL,
                "hash": _ADMIN_HASH,
                "username": "admin",
                "name": "Admin",
                "userID": ADMIN_USER_ID,
                "groups": ["admins"],
            },
            {
                "email": DEV_EMAIL,
                "hash": _DEV_HASH,
                "username": "dev",
                "userID": DEV_USER_ID,
                "groups": ["developers"],
            },
        ],
        "connectors": [{"type": "mockCallback", "id": "mock", "name": "Mock (dev only)"}],
    }


class IssuerExitError(AssertionError):
    pass


@dataclass
class Issuer:
    """A running `portcullis serve` process and everything a test needs to talk to it."""

    workdir: Path
    config: dict[str, Any]
    creds: Secrets
    web_port: int
    telemetry_port: int
    proc: subprocess.Popen[bytes] | None = None
    _stderr: Any = None
    # Values that must never reach the server's logs (tokens, codes, secrets seen by tests).
    sensitive: set[str] = field(default_factory=set)
    # Extra `portcullis serve` options (e.g. ["--workers", "2"]).
    serve_args: list[str] = field(default_factory=list)

    def remember(self, *values: str | None) -> None:
        # Short values ("garbage", "n") are test inputs, not secrets, and occur in prose.
        self.sensitive.update(v for v in values if v and len(v) >= 16)

    def leaked_secrets(self) -> list[str]:
        """Every sensitive value (or client secret / password) found in the server's logs."""
        logs = self.logs()
        candidates = {
            *self.sensitive,
            self.creds.app,
            self.creds.peer,
            self.creds.untrusted,
            self.creds.bot,
            DEV_PASSWORD,
        }
        return sorted(v for v in candidates if v and v in logs)

    @property
    def issuer(self) -> str:
        return str(self.config["issuer"])

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def url(self, path: str) -> str:
        return self.issuer + path

    @property
    def telemetry(self) -> str:
        return f"http://127.0.0.1:{self.telemetry_port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "config.yaml"

    @property
    def db_path(self) -> Path:
        return Path(self.config["storage"]["config"]["file"])

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> Issuer:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self._stderr = self.log_path.open("ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PORTCULLIS_")}
        self.proc = subprocess.Popen(
            [
                str(PORTCULLIS),
                "serve",
                "--drain-timeout",
                "5",
                *self.serve_args,
                str(self.config_path),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
            cwd=self.workdir,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise IssuerExitError(
                    f"portcullis exited with {self.proc.returncode} during start:\n{self.logs()}"
                )
            try:
                response = httpx.get(self.telemetry + "/healthz/ready", timeout=1.0)
                if response.status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.kill()
        raise IssuerExitError(f"portcullis not ready after {timeout}s:\n{self.logs()}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait, return the exit code (killed by PID if it does not stop)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise IssuerExitError(
                    f"portcullis ignored SIGTERM for {timeout}s:\n{self.logs()}"
                ) from None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    # -- protocol helpers --------------------------------------------------------------------
    def discovery(self) -> dict[str, Any]:
        response = httpx.get(self.url("/.well-known/openid-configuration"))
        response.raise_for_status()
        document: dict[str, Any] = response.json()
        return document

    def jwks(self) -> dict[str, Any]:
        response = httpx.get(self.url("/keys"))
        response.raise_for_status()
        document: dict[str, Any] = response.json()
        return document

    def token(self, data: Mapping[str, str], auth: tuple[str, str] | None = None) -> httpx.Response:
        """POST /token; every credential sent or received is remembered for the log check."""
        self.remember_exchange(data, None)
        response = httpx.post(self.url("/token"), data=dict(data), auth=auth)
        self.remember_exchange({}, response)
        return response

    def remember_exchange(self, sent: Mapping[str, str], response: httpx.Response | None) -> None:
        for name in ("code", "refresh_token", "client_secret", "code_verifier", "token"):
            self.remember(sent.get(name))
        if sent.get("password") not in (None, ADMIN_PASSWORD):
            self.remember(sent.get("password"))
        if response is not None and response.headers.get("content-type", "").startswith(
            "application/json"
        ):
            body = response.json()
            if isinstance(body, dict):
                for name in ("access_token", "id_token", "refresh_token"):
                    value = body.get(name)
                    self.remember(value if isinstance(value, str) else None)

    def app_auth(self) -> tuple[str, str]:
        return ("example-app", self.creds.app)


StartIssuer = Callable[..., "Issuer"]


def finish_issuer(issuer: Issuer) -> None:
    """Stop with SIGTERM, require exit code 0 and clean logs (killed by PID on any failure)."""
    if issuer.proc is None:
        return
    try:
        if issuer.running:
            code = issuer.stop()
            assert code == 0, f"portcullis exited with {code} after SIGTERM:\n{issuer.logs()}"
        leaked = issuer.leaked_secrets()
        assert not leaked, f"{len(leaked)} secret value(s) found in the server log"
    finally:
        issuer.kill()


def issuer_factory(base_dir: Path) -> tuple[StartIssuer, list[Issuer]]:
    """``start(patch, edit, run=True)`` builds (and starts) a server under ``base_dir``; the
    list collects every server so a fixture can finish them all."""
    started: list[Issuer] = []

    def start(
        patch: Mapping[str, Any] | None = None,
        edit: Callable[[dict[str, Any]], None] | None = None,
        *,
        run: bool = True,
    ) -> Issuer:
        issuer = make_issuer(base_dir / f"issuer{len(started)}", patch, edit)
        started.append(issuer)
        if run:
            issuer.start()
        return issuer

    return start, started


@contextlib.contextmanager
def issuers_in(base_dir: Path) -> Iterator[StartIssuer]:
    """The factory of ``issuer_factory`` for a fixture's lifetime: every server it started is
    stopped afterwards (SIGTERM, exit 0 and a clean log asserted)."""
    assert PORTCULLIS.exists(), f"{PORTCULLIS} is missing: run `make test-venv`"
    start, started = issuer_factory(base_dir)
    try:
        yield start
    finally:
        for issuer in started:
            finish_issuer(issuer)


def make_issuer(
    workdir: Path,
    patch: Mapping[str, Any] | None = None,
    edit: Callable[[dict[str, Any]], None] | None = None,
) -> Issuer:
    """An Issuer (not started) with the base config, deep-merged ``patch`` and ``edit`` applied."""
    workdir.mkdir(parents=True, exist_ok=True)
    web_port, telemetry_port = free_port(), free_port()
    while telemetry_port == web_port:
        telemetry_port = free_port()
    creds = Secrets()
    config = base_config(
        f"http://127.0.0.1:{web_port}/dex",
        web_port,
        telemetry_port,
        workdir / "portcullis.db",
        creds,
    )
    if patch:
        config = deep_merge(config, patch)
    if edit:
        edit(config)
    return Issuer(workdir, config, creds, web_port, telemetry_port)


# --------------------------------------------------------------------------------------------
# The browser side of a login, through the real HTML forms
# --------------------------------------------------------------------------------------------

_HIDDEN = re.compile(r'<input[^>]*type="hidden"[^>]*name="([^"]+)"[^>]*value="([^"]*)"', re.I)
_FORM_ACTION = re.compile(r'<form[^>]*action="([^"]+)"', re.I)


def hidden_fields(page: str) -> dict[str, str]:
    return {name: html.unescape(value) for name, value in _HIDDEN.findall(page)}


def form_action(page: str, base: str) -> str:
    match = _FORM_ACTION.search(page)
    assert match, f"no form on the page:\n{page[:2000]}"
    return urljoin(base, html.unescape(match.group(1)))


def connector_link(page: str, connector_id: str, base: str) -> str:
    match = re.search(rf'<a[^>]*href="([^"]+)"[^>]*id="connector-{re.escape(connector_id)}"', page)
    assert match, f"no link for connector {connector_id!r}:\n{page[:2000]}"
    return urljoin(base, html.unescape(match.group(1)))


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


@dataclass
class LoginSteps:
    """What a browser saw on its way through a login (for tests that stop half-way)."""

    password_form_url: str = ""
    password_page: str = ""
    approval_url: str = ""
    approval_page: str = ""
    final: httpx.Response | None = None


class Browser:
    """An httpx client with its own cookie jar that walks the login pages like a person."""

    def __init__(self, issuer: Issuer, *, keepalive: bool = True) -> None:
        self.issuer = issuer
        # keepalive=False opens a new connection per request, so with several worker
        # processes consecutive steps of one login land on different workers.
        limits = httpx.Limits(max_keepalive_connections=None if keepalive else 0)
        self.http = httpx.Client(follow_redirects=False, timeout=15.0, limits=limits)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, url: str) -> httpx.Response:
        return self.http.get(url)

    def follow_internal(self, response: httpx.Response) -> httpx.Response:
        """Follow redirects while they stay on the issuer (the client's redirect is returned)."""
        while response.is_redirect:
            target = urljoin(str(response.url), response.headers["location"])
            if not target.startswith(self.issuer.issuer):
                return response
            response = self.http.get(target)
        return response

    def open_authorize(self, url_or_params: str | Mapping[str, str]) -> httpx.Response:
        url = (
            url_or_params
            if isinstance(url_or_params, str)
            else self.issuer.url("/auth") + "?" + urlencode(dict(url_or_params))
        )
        return self.http.get(url)

    def reach_password_form(self, url_or_params: str | Mapping[str, str]) -> LoginSteps:
        steps = LoginSteps()
        response = self.follow_internal(self.open_authorize(url_or_params))
        if response.status_code == 200 and 'id="connector-local"' in response.text:
            response = self.follow_internal(
                self.http.get(connector_link(response.text, "local", str(response.url)))
            )
        assert response.status_code == 200, (response.status_code, response.text[:2000])
        assert 'name="password"' in response.text, response.text[:2000]
        steps.password_form_url = str(response.url)
        steps.password_page = response.text
        return steps

    def submit_password(
        self,
        steps: LoginSteps,
        email: str = ADMIN_EMAIL,
        password: str = ADMIN_PASSWORD,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        fields = hidden_fields(steps.password_page)
        return self.http.post(
            form_action(steps.password_page, steps.password_form_url),
            data={**fields, "login": email, "password": password},
            headers=dict(headers or {}),
        )

    def login(
        self,
        url_or_params: str | Mapping[str, str],
        *,
        email: str = ADMIN_EMAIL,
        password: str = ADMIN_PASSWORD,
        approve: bool = True,
    ) -> LoginSteps:
        """Authorize -> (picker) -> password form -> approval; ``final`` is the client redirect."""
        steps = self.reach_password_form(url_or_params)
        response = self.submit_password(steps, email, password)
        assert response.status_code == 303, (response.status_code, response.text[:2000])
        location = urljoin(str(response.url), response.headers["location"])
        steps.approval_url = location
        response = self.http.get(location)
        if response.status_code == 200:
            steps.approval_page = response.text
            fields = hidden_fields(response.text)
            fields["approval"] = "approve" if approve else "rejected"
            response = self.http.post(form_action(response.text, location), data=fields)
        assert response.status_code in (302, 303), (response.status_code, response.text[:2000])
        steps.final = response
        return steps

    def authorize_code(self, url_or_params: str | Mapping[str, str], **kwargs: Any) -> str:
        """The full client redirect URL (with code and state) after a successful login."""
        steps = self.login(url_or_params, **kwargs)
        assert steps.final is not None
        location = urljoin(str(steps.final.url), steps.final.headers["location"])
        self.issuer.remember(query_of(location).get("code"))
        self.issuer.remember(*hidden_fields(steps.password_page).values())
        self.issuer.remember(*self.http.cookies.values())
        return location
