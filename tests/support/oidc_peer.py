"""A real upstream OpenID Connect / OAuth2 provider for tests: node-oidc-provider on loopback.

Why a real one: the upstream connectors must interoperate with an independent, certified
implementation (discovery, PKCE, client authentication, refresh-token rotation with reuse
detection, key rollover); a fake written next to the connector would share its misreadings.

Usage (stable API for the connector and browser suites)::

    from tests.support.oidc_peer import running_oidc_peer, browser_login

    with running_oidc_peer(tmp_path, clients=[...], accounts={"alice": {...}}) as peer:
        peer.issuer                       # "http://127.0.0.1:PORT" (https with tls=...)
        peer.set_account("alice", {...})  # replace claims; peer.remove_account("alice")
        peer.rotate_keys(keep_old=True)   # key rollover
        peer.mutate_next_token(claims={"aud": "x"}, resign=True)
        params = browser_login(auth_url, callback_url, "alice")   # code, state, iss

The process is ``node tests/node/oidc-peer.mjs CONFIG`` (see that script for the controls). It
keeps its state in memory, listens on a port the OS picks (printed as ``READY <port>``) and is
stopped by its own PID. ``make chart-node-deps`` installs node_modules with ``npm ci``.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import re
import secrets
import selectors
import ssl
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

import httpx

__all__ = [
    "NODE_DIR",
    "OIDCPeer",
    "OIDCPeerError",
    "TLSFiles",
    "browser_login",
    "make_tls_files",
    "running_oidc_peer",
    "start_oidc_peer",
]

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
SCRIPT = NODE_DIR / "oidc-peer.mjs"
_START_TIMEOUT_S = 20.0


def _verify(verify: str | Path | bool) -> ssl.SSLContext | bool:
    """httpx wants an SSLContext for a private CA file."""
    if isinstance(verify, bool):
        return verify
    return ssl.create_default_context(cafile=str(verify))


class OIDCPeerError(RuntimeError):
    """The peer could not be started or driven (message includes its log tail)."""


@dataclass(frozen=True)
class TLSFiles:
    ca_cert: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path) -> TLSFiles:
    """A throwaway CA and a 127.0.0.1 server certificate it signed (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "oidc-peer test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TLSFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


@dataclass
class OIDCPeer:
    """A running node-oidc-provider and its admin controls."""

    issuer: str
    port: int
    admin_token: str
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    ca_cert: Path | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def _admin(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        with httpx.Client(verify=_verify(self.ca_cert or True)) as client:
            response = client.request(
                method,
                f"{self.issuer}/admin/{path}",
                json=dict(body or {}),
                headers={"x-admin-token": self.admin_token},
                timeout=10,
            )
        if response.status_code != 200:
            raise OIDCPeerError(f"admin {method} {path}: HTTP {response.status_code}")
        return response.json()

    def set_account(self, account_id: str, claims: Mapping[str, Any]) -> None:
        self._admin("PUT", f"accounts/{account_id}", claims)

    def remove_account(self, account_id: str) -> None:
        self._admin("DELETE", f"accounts/{account_id}")

    def rotate_keys(self, keep_old: bool = True) -> list[str]:
        """A new signing key; returns the kids now in the JWKS (newest first)."""
        return list(self._admin("POST", "rotate-keys", {"keepOld": keep_old})["kids"])

    def mutate_next_token(
        self,
        claims: Mapping[str, Any] | None = None,
        *,
        resign: bool = True,
        foreign_key: bool = False,
        header: Mapping[str, Any] | None = None,
        hmac_key: str = "",
    ) -> None:
        """Change the next token response's id_token (None as a value deletes the claim);
        ``header={"alg": "none"}`` drops the signature, ``{"alg": "HS256"}`` signs with
        ``hmac_key`` (algorithm confusion)."""
        body = {
            "claims": dict(claims or {}),
            "header": dict(header or {}),
            "resign": resign,
            "foreignKey": foreign_key,
            "hmacKey": hmac_key,
        }
        self._admin("POST", "mutate-next-token", body)

    def set_token_delay(self, ms: int) -> None:
        self._admin("POST", "refresh-delay", {"ms": ms})

    def stats(self) -> dict[str, int]:
        return dict(self._admin("GET", "stats"))

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_oidc_peer(
    workdir: Path,
    *,
    clients: Sequence[Mapping[str, Any]],
    accounts: Mapping[str, Mapping[str, Any]],
    tls: TLSFiles | None = None,
) -> OIDCPeer:
    if not (NODE_DIR / "node_modules" / "oidc-provider").is_dir():
        raise OIDCPeerError(
            f"{NODE_DIR}/node_modules/oidc-provider is missing: run `make chart-node-deps`"
        )
    root = workdir / f"oidc-peer-{secrets.token_hex(4)}"
    root.mkdir(parents=True)
    admin_token = secrets.token_urlsafe(24)
    config = {
        "clients": [dict(c) for c in clients],
        "accounts": {k: dict(v) for k, v in accounts.items()},
        "adminToken": admin_token,
        "tls": {"cert": str(tls.cert), "key": str(tls.key)} if tls else None,
    }
    config_path = root / "config.json"
    config_path.write_text(json.dumps(config))
    log_path = root / "peer.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["node", str(SCRIPT), str(config_path)],
            cwd=NODE_DIR,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    assert process.stdout is not None
    deadline = time.monotonic() + _START_TIMEOUT_S
    line = b""
    # The script prints exactly one line once it listens. Wait for it with a deadline, not a
    # bare readline: a peer that hangs before listening must fail this fixture with its log,
    # not hold the test until pytest-timeout kills it.
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            line = process.stdout.readline()
            if line.startswith(b"READY ") or not line:
                break
    if not line.startswith(b"READY "):
        process.kill()
        process.wait(timeout=10)
        tail = log_path.read_text(errors="replace")[-2000:]
        raise OIDCPeerError(f"oidc peer did not start:\n{tail}")
    port = int(line.split()[1])
    scheme = "https" if tls else "http"
    return OIDCPeer(
        issuer=f"{scheme}://127.0.0.1:{port}",
        port=port,
        admin_token=admin_token,
        log_path=log_path,
        process=process,
        ca_cert=tls.ca_cert if tls else None,
    )


@contextlib.contextmanager
def running_oidc_peer(
    workdir: Path,
    *,
    clients: Sequence[Mapping[str, Any]],
    accounts: Mapping[str, Mapping[str, Any]],
    tls: TLSFiles | None = None,
) -> Iterator[OIDCPeer]:
    peer = start_oidc_peer(workdir, clients=clients, accounts=accounts, tls=tls)
    try:
        yield peer
    finally:
        peer.stop()


class _Forms(HTMLParser):
    """The forms of a page: action, method and the named inputs' values."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(
                {"action": a.get("action", ""), "method": a.get("method", "get"), "fields": {}}
            )
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1]["fields"][a["name"]] = a.get("value", "")


def browser_login(
    auth_url: str,
    callback_url: str,
    login: str,
    *,
    password: str | None = None,
    verify: str | Path | bool = True,
    max_steps: int = 12,
) -> dict[str, str]:
    """Act as the user's browser at the upstream: follow redirects with cookies, submit the
    login form (node-oidc-provider's interaction pages) and the consent form, and stop at the
    redirect to ``callback_url``; returns the callback's query parameters."""
    url = auth_url
    with httpx.Client(verify=_verify(verify), follow_redirects=False, timeout=10) as client:
        response = client.get(url)
        for _ in range(max_steps):
            if response.status_code in (302, 303):
                location = urljoin(url, response.headers["location"])
                if location.startswith(callback_url):
                    return dict(parse_qsl(urlsplit(location).query))
                url = location
                response = client.get(url)
                continue
            if response.status_code != 200:
                raise OIDCPeerError(f"upstream {url} answered HTTP {response.status_code}")
            parser = _Forms()
            parser.feed(response.text)
            form = next((f for f in parser.forms if "prompt" in f["fields"]), None)
            if form is None:
                text = re.sub(r"<[^>]+>", " ", response.text)
                raise OIDCPeerError(f"no interaction form at {url}: {text[:500]}")
            fields = dict(form["fields"])
            if fields["prompt"] == "login":
                # node-oidc-provider's development interactions accept any password.
                fields.update(login=login, password=password or secrets.token_urlsafe(8))
            url = urljoin(url, form["action"])
            response = client.post(url, data=fields)
    raise OIDCPeerError("the upstream login did not reach the callback")
