"""RFC 7591 dynamic client registration and RFC 7592 read/delete through the in-process app:
policy (loopback or prefixed redirect URIs, public only, no client_credentials/password),
registration access token, per-address rate limit, unused expiry, and a registered client
logging in with a policy-allowed resource (issue 16)."""

from __future__ import annotations

import json
import textwrap
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import bcrypt
import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from portcullis.clock import FrozenClock
from portcullis.issuer import Issuer, create_issuer, parse_config
from portcullis.storage.memory import MemoryStorage

from tests.support.asgi_login import login, pkce_pair

ISSUER = "http://127.0.0.1:5556/dex"
MCP = "https://flux-mcp.example.com"
LOOPBACK = "http://127.0.0.1:33418/callback"
HASH = bcrypt.hashpw(b"password", bcrypt.gensalt(10)).decode()

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _config(registration: str) -> str:
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
        """
    ) + textwrap.dedent(registration)


ENABLED = f"""
registration:
  enabled: true
  redirectURIPrefixes: ["https://app.example.com/oauth/"]
  allowedResources: ["{MCP}"]
  rateLimit: 3
  unusedClientExpiry: 1h
"""


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(1.8e9)


async def _env(
    clock: FrozenClock, registration: str = ENABLED
) -> AsyncIterator[tuple[httpx.AsyncClient, Issuer]]:
    issuer = create_issuer(
        parse_config(_config(registration)), storage=MemoryStorage(), clock=clock
    )
    transport = httpx.ASGITransport(app=issuer.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:5556") as c:
        yield c, issuer


@pytest.fixture
async def env(clock: FrozenClock) -> AsyncIterator[tuple[httpx.AsyncClient, Issuer]]:
    async for pair in _env(clock):
        yield pair


async def _register(c: httpx.AsyncClient, **metadata: Any) -> httpx.Response:
    body = {"redirect_uris": [LOOPBACK], "client_name": "Editor", **metadata}
    return await c.post("/dex/register", json=body)


async def test_registration_is_off_by_default(clock: FrozenClock) -> None:
    async for c, _ in _env(clock, ""):
        assert (await _register(c)).status_code == 404
        document = (await c.get("/.well-known/oauth-authorization-server/dex")).json()
        assert "registration_endpoint" not in document


async def test_register_read_delete_with_the_registration_access_token(
    env: tuple[httpx.AsyncClient, Issuer],
) -> None:
    c, issuer = env
    document = (await c.get("/.well-known/oauth-authorization-server/dex")).json()
    assert document["registration_endpoint"] == f"{ISSUER}/register"
    assert document == (await c.get("/dex/.well-known/openid-configuration")).json()
    r = await _register(c, grant_types=["authorization_code", "refresh_token"])
    assert r.status_code == 201, r.text
    body = r.json()
    client_id = body["client_id"]
    assert client_id.startswith("dcr-")
    assert body["token_endpoint_auth_method"] == "none"
    assert "client_secret" not in body
    token = body["registration_access_token"]
    # Stored as a hash only, and visible like any storage client (the admin API lists these).
    stored = issuer.provider.storage.get_client(client_id)
    assert token not in stored.registration_token_hash
    assert stored.public
    assert stored.allowed_resources == (MCP,)
    assert client_id in [cl.id for cl in issuer.provider.clients.all()]
    uri = body["registration_client_uri"]
    assert uri == f"{ISSUER}/register/{client_id}"
    path = urlsplit(uri).path
    r = await c.get(path, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    assert r.json()["redirect_uris"] == [LOOPBACK]
    assert "registration_access_token" not in r.json()
    r = await c.get(path, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = await c.delete(path, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = await c.delete(path, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 204
    assert (await c.get(path, headers={"Authorization": f"Bearer {token}"})).status_code == 401
    assert issuer.provider.clients.get(client_id) is None


@pytest.mark.parametrize(
    ("metadata", "error"),
    [
        ({"redirect_uris": ["https://evil.example.com/cb"]}, "invalid_redirect_uri"),
        # The prefix ends in "/": a longer host or a sibling path does not match.
        ({"redirect_uris": ["https://app.example.com/oauthx"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["http://localhost:8000/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["http://127.0.0.1:8000/cb#x"]}, "invalid_redirect_uri"),
        ({"redirect_uris": []}, "invalid_redirect_uri"),
        ({"grant_types": ["client_credentials"]}, "invalid_client_metadata"),
        ({"grant_types": ["authorization_code", "password"]}, "invalid_client_metadata"),
        ({"response_types": ["token"]}, "invalid_client_metadata"),
        ({"token_endpoint_auth_method": "client_secret_basic"}, "invalid_client_metadata"),
        ({"redirect_uris": "http://127.0.0.1:1/"}, "invalid_client_metadata"),
    ],
)
async def test_policy_refusals(
    env: tuple[httpx.AsyncClient, Issuer], metadata: dict[str, Any], error: str
) -> None:
    c, issuer = env
    r = await _register(c, **metadata)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == error
    assert issuer.provider.storage.list_clients() == []


async def test_https_redirect_under_a_configured_prefix_is_accepted(
    env: tuple[httpx.AsyncClient, Issuer],
) -> None:
    c, _ = env
    r = await _register(c, redirect_uris=["https://app.example.com/oauth/callback"])
    assert r.status_code == 201, r.text


async def test_not_json_is_refused(env: tuple[httpx.AsyncClient, Issuer]) -> None:
    c, _ = env
    r = await c.post("/dex/register", content=b"[1]", headers={"Content-Type": "application/json"})
    assert r.json()["error"] == "invalid_client_metadata"
    r = await c.post("/dex/register", data={"redirect_uris": LOOPBACK})
    assert r.status_code == 400


async def test_rate_limited_per_address(env: tuple[httpx.AsyncClient, Issuer]) -> None:
    c, _ = env
    for _ in range(3):
        assert (await _register(c)).status_code == 201
    r = await _register(c)
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) > 0


async def test_registered_client_logs_in_with_the_policy_resource_and_expires_unused(
    env: tuple[httpx.AsyncClient, Issuer], clock: FrozenClock
) -> None:
    c, issuer = env
    client_id = (await _register(c)).json()["client_id"]
    verifier, challenge = pkce_pair()
    params = {
        "client_id": client_id,
        "redirect_uri": LOOPBACK,
        "response_type": "code",
        "scope": "openid email",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "resource": MCP,
    }
    location = await login(
        c, "/dex/auth", params, username="admin@example.com", password="password"
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
    assert jwt.decode(r.json()["access_token"], keys).claims["aud"] == MCP
    # Another resource than the policy's is not allowed.
    r = await c.get("/dex/auth", params={**params, "resource": "https://other.example.com"})
    assert parse_qs(urlsplit(r.headers["location"]).query)["error"] == ["invalid_target"]
    # Use inside the second half of its lifetime extends it...
    clock.advance(2000)
    assert issuer.provider.clients.get(client_id) is not None
    clock.advance(3000)
    assert issuer.provider.clients.get(client_id) is not None
    # ...and an hour without use ends it; garbage collection then deletes it.
    clock.advance(3601)
    r = await c.get("/dex/auth", params=params)
    assert r.status_code == 400
    assert issuer.provider.storage.garbage_collect(clock.now()).clients == 1
