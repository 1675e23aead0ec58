"""OAuth Client ID Metadata Documents (issue 16): a client id that is an https URL is fetched
from a loopback HTTPS server (allowed only by the test-only CA setting) and logs in under the
registration policy; SSRF attempts (private and loopback addresses, redirects, oversized
documents, a document naming another id) are refused; documents are cached per Cache-Control."""

from __future__ import annotations

import json
import ssl
import textwrap
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import bcrypt
import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from portcullis.clock import FrozenClock
from portcullis.issuer import Issuer, create_issuer, parse_config
from portcullis.oidc.client_metadata import MetadataDocumentError
from portcullis.storage.memory import MemoryStorage

from tests.support.admin import make_tls_files
from tests.support.asgi_login import login, pkce_pair

ISSUER = "http://127.0.0.1:5556/dex"
MCP = "https://flux-mcp.example.com"
LOOPBACK = "http://127.0.0.1:33421/callback"
HASH = bcrypt.hashpw(b"password", bcrypt.gensalt(10)).decode()

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class DocumentServer:
    """A loopback HTTPS server for client metadata documents, counting hits per path."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.hits: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits[self.path] += 1
                status, headers, body = server.answer(self.path)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def document(self, path: str, **changes: Any) -> bytes:
        doc = {
            "client_id": self.url(path),
            "client_name": "Doc client",
            "redirect_uris": [LOOPBACK],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
            **changes,
        }
        return json.dumps(doc).encode()

    def answer(self, path: str) -> tuple[int, dict[str, str], bytes]:
        json_type = {"Content-Type": "application/json"}
        if path == "/client.json":
            return 200, {**json_type, "Cache-Control": "max-age=60"}, self.document(path)
        if path == "/nostore.json":
            return 200, {**json_type, "Cache-Control": "no-store"}, self.document(path)
        if path == "/redirect.json":
            return 302, {"Location": self.url("/client.json")}, b""
        if path == "/big.json":
            return 200, json_type, self.document(path, client_name="x" * 20000)
        if path == "/other-id.json":
            return 200, json_type, self.document("/client.json")
        if path == "/secret.json":
            return (
                200,
                json_type,
                self.document(path, token_endpoint_auth_method="client_secret_basic"),
            )
        if path == "/evil-redirect.json":
            return (
                200,
                json_type,
                self.document(path, redirect_uris=["https://evil.example.com/cb"]),
            )
        if path == "/password.json":
            return (
                200,
                json_type,
                self.document(path, grant_types=["authorization_code", "password"]),
            )
        return 404, {}, b""

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_tls_files(tmp_path_factory.mktemp("cimd-tls"))


@pytest.fixture
def documents(tls: Any) -> Iterator[DocumentServer]:
    server = DocumentServer(tls.server_cert, tls.server_key)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(1.8e9)


def _config(ca: str) -> str:
    loopback = f"\n    testOnlyLoopbackCA: {ca}" if ca else ""
    return textwrap.dedent(
        f"""
        issuer: {ISSUER}
        storage: {{type: memory}}
        web: {{http: 127.0.0.1:5556}}
        oauth2: {{skipApprovalScreen: true}}
        enablePasswordDB: true
        staticPasswords:
          - email: admin@example.com
            hash: "{HASH}"
            username: admin
            userID: user-1
        registration:
          allowedResources: ["{MCP}"]
          clientIDMetadataDocuments:
            enabled: true
            timeout: 2s
            maxBytes: 8192"""
    ) + loopback.replace("\n    ", "\n    ")


async def _env(ca: str, clock: FrozenClock) -> AsyncIterator[tuple[httpx.AsyncClient, Issuer]]:
    text = _config(ca)
    issuer = create_issuer(parse_config(text), storage=MemoryStorage(), clock=clock)
    transport = httpx.ASGITransport(app=issuer.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:5556") as c:
        yield c, issuer


@pytest.fixture
async def env(tls: Any, clock: FrozenClock) -> AsyncIterator[tuple[httpx.AsyncClient, Issuer]]:
    async for pair in _env(str(tls.ca), clock):
        yield pair


def _auth_params(client_id: str, challenge: str) -> dict[str, str]:
    return {
        "client_id": client_id,
        "redirect_uri": LOOPBACK,
        "response_type": "code",
        "scope": "openid email",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "resource": MCP,
    }


async def test_url_client_id_logs_in_and_its_document_is_cached(
    env: tuple[httpx.AsyncClient, Issuer], documents: DocumentServer, clock: FrozenClock
) -> None:
    c, issuer = env
    metadata = (await c.get("/.well-known/oauth-authorization-server/dex")).json()
    assert metadata["client_id_metadata_document_supported"] is True
    client_id = documents.url("/client.json")
    verifier, challenge = pkce_pair()
    location = await login(
        c,
        "/dex/auth",
        _auth_params(client_id, challenge),
        username="admin@example.com",
        password="password",
    )
    code = parse_qs(urlsplit(location).query)["code"][0]
    r = await c.post(
        "/dex/token",
        data={
            "grant_type": "authorization_code",
            "client_id": client_id,
            "code": code,
            "redirect_uri": LOOPBACK,
            "code_verifier": verifier,
        },
    )
    assert r.status_code == 200, r.text
    keys = KeySet.import_key_set(json.loads(issuer.provider.keys.current().jwks_body))
    claims = jwt.decode(r.json()["access_token"], keys).claims
    assert claims["aud"] == MCP
    assert claims["azp"] == client_id
    # Cached for its max-age (60 s): the whole login and exchange fetched it once.
    assert documents.hits["/client.json"] == 1
    clock.advance(61)
    r = await c.get("/dex/auth", params=_auth_params(client_id, challenge))
    assert r.status_code == 303
    assert documents.hits["/client.json"] == 2


async def test_no_store_documents_are_fetched_every_time(
    env: tuple[httpx.AsyncClient, Issuer], documents: DocumentServer
) -> None:
    c, _ = env
    _, challenge = pkce_pair()
    seen = []
    for _ in range(2):
        r = await c.get("/dex/auth", params=_auth_params(documents.url("/nostore.json"), challenge))
        assert r.status_code == 303
        seen.append(documents.hits["/nostore.json"])
    assert 0 < seen[0] < seen[1]  # fetched again for the second request


@pytest.mark.parametrize(
    "path",
    [
        "/redirect.json",  # a redirect is refused, not followed
        "/big.json",  # over maxBytes
        "/other-id.json",  # the document names another client id
        "/secret.json",  # not a public client
        "/evil-redirect.json",  # redirect URI outside the registration policy
        "/password.json",  # a grant registered clients never get
        "/missing.json",  # 404
    ],
)
async def test_unacceptable_documents_are_refused(
    env: tuple[httpx.AsyncClient, Issuer], documents: DocumentServer, path: str
) -> None:
    c, _ = env
    _, challenge = pkce_pair()
    r = await c.get("/dex/auth", params=_auth_params(documents.url(path), challenge))
    assert r.status_code == 400  # unknown client: an error page, never a redirect
    assert documents.hits[path] == 1
    assert documents.hits["/client.json"] == 0  # the redirect was not followed


@pytest.mark.parametrize(
    "client_id",
    [
        "https://10.0.0.1/client.json",
        "https://169.254.169.254/latest/meta-data/client.json",
        "https://[fd00::1]/client.json",
        "https://0.0.0.0/client.json",
        "https://[::ffff:10.0.0.1]/client.json",
        "https://user@example.com/client.json",
        "https://example.com/",
        "https://example.com/a/../client.json",
        "https://example.com/client.json?x=1",
    ],
)
async def test_private_addresses_and_odd_urls_are_refused_without_a_request(
    env: tuple[httpx.AsyncClient, Issuer], client_id: str
) -> None:
    c, issuer = env
    _, challenge = pkce_pair()
    r = await c.get("/dex/auth", params=_auth_params(client_id, challenge))
    assert r.status_code == 400
    with pytest.raises(MetadataDocumentError, match=r"private or reserved|credentials|path|query"):
        issuer.provider.metadata_documents.fetch(client_id)


async def test_loopback_is_refused_without_the_test_only_setting(
    documents: DocumentServer, clock: FrozenClock
) -> None:
    async for c, _ in _env("", clock):
        _, challenge = pkce_pair()
        for host in ("127.0.0.1", "localhost"):
            client_id = f"https://{host}:{documents.port}/client.json"
            r = await c.get("/dex/auth", params=_auth_params(client_id, challenge))
            assert r.status_code == 400
    assert documents.hits["/client.json"] == 0
