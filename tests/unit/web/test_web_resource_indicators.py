"""RFC 8707 resource indicators through the in-process app: ``resource`` at /auth, at the code
exchange and at refresh; the access token's aud is the resource set, the ID token's the client;
not-allowed resources are ``invalid_target``; a refresh narrows, never widens (issue 16)."""

from __future__ import annotations

import json
import textwrap
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import bcrypt
import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from portcullis.clock import FrozenClock
from portcullis.config.load import ConfigError
from portcullis.issuer import Issuer, create_issuer, parse_config
from portcullis.storage.memory import MemoryStorage

from tests.support.asgi_login import login, pkce_pair

ISSUER = "http://127.0.0.1:5556/dex"
REDIRECT = "http://127.0.0.1:8000/"
MCP = "https://flux-mcp.example.com"
API = "https://api.example.com/v1"
HASH = bcrypt.hashpw(b"password", bcrypt.gensalt(10)).decode()

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


CONFIG = textwrap.dedent(
    f"""
    issuer: {ISSUER}
    storage: {{type: memory}}
    web: {{http: 127.0.0.1:5556}}
    oauth2: {{skipApprovalScreen: true}}
    staticClients:
      - id: mcp-client
        public: true
        redirectURIs: ["{REDIRECT}"]
        allowedResources: ["{MCP}", "{API}"]
      - id: plain
        public: true
        redirectURIs: ["{REDIRECT}"]
    enablePasswordDB: true
    staticPasswords:
      - email: admin@example.com
        hash: "{HASH}"
        username: admin
        userID: user-1
    """
)


@pytest.fixture
async def env() -> AsyncIterator[tuple[httpx.AsyncClient, Issuer]]:
    issuer = create_issuer(parse_config(CONFIG), storage=MemoryStorage(), clock=FrozenClock(1.8e9))
    transport = httpx.ASGITransport(app=issuer.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:5556") as c:
        yield c, issuer


def _claims(issuer: Issuer, token: str) -> dict[str, Any]:
    keys = KeySet.import_key_set(json.loads(issuer.provider.keys.current().jwks_body))
    return dict(jwt.decode(token, keys).claims)


async def _code(
    c: httpx.AsyncClient, client_id: str, resources: list[str], scope: str = "openid"
) -> tuple[str, str]:
    """(code, verifier) after a login asking for ``resources``."""
    verifier, challenge = pkce_pair()
    params = [
        ("client_id", client_id),
        ("redirect_uri", REDIRECT),
        ("response_type", "code"),
        ("scope", scope),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
        *[("resource", r) for r in resources],
    ]
    location = await login(
        c, "/dex/auth", params, username="admin@example.com", password="password"
    )
    query = parse_qs(urlsplit(location).query)
    assert "code" in query, location
    return query["code"][0], verifier


async def _exchange(
    c: httpx.AsyncClient, client_id: str, code: str, verifier: str, resources: list[str]
) -> httpx.Response:
    form = [
        ("grant_type", "authorization_code"),
        ("client_id", client_id),
        ("code", code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier),
        *[("resource", r) for r in resources],
    ]
    return await c.post(
        "/dex/token",
        content=urlencode(form),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )


async def test_access_token_audience_is_the_resource_id_token_stays_the_client(
    env: tuple[httpx.AsyncClient, Issuer],
) -> None:
    c, issuer = env
    code, verifier = await _code(c, "mcp-client", [MCP])
    r = await _exchange(c, "mcp-client", code, verifier, [])
    assert r.status_code == 200, r.text
    access = _claims(issuer, r.json()["access_token"])
    assert access["aud"] == MCP
    assert access["azp"] == "mcp-client"
    assert access["iss"] == ISSUER
    assert _claims(issuer, r.json()["id_token"])["aud"] == "mcp-client"


async def test_repeated_resources_and_narrowing_at_the_exchange(
    env: tuple[httpx.AsyncClient, Issuer],
) -> None:
    c, issuer = env
    code, verifier = await _code(c, "mcp-client", [MCP, API])
    r = await _exchange(c, "mcp-client", code, verifier, [API])
    assert r.status_code == 200, r.text
    assert _claims(issuer, r.json()["access_token"])["aud"] == API
    code, verifier = await _code(c, "mcp-client", [MCP, API])
    r = await _exchange(c, "mcp-client", code, verifier, [])
    assert _claims(issuer, r.json()["access_token"])["aud"] == [MCP, API]


async def test_exchange_cannot_widen_what_auth_granted(
    env: tuple[httpx.AsyncClient, Issuer],
) -> None:
    c, _ = env
    code, verifier = await _code(c, "mcp-client", [MCP])
    r = await _exchange(c, "mcp-client", code, verifier, [API])
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_target"


async def test_resource_named_only_at_the_exchange_must_be_allowed(
    env: tuple[httpx.AsyncClient, Issuer],
) -> None:
    c, issuer = env
    code, verifier = await _code(c, "mcp-client", [])
    r = await _exchange(c, "mcp-client", code, verifier, [MCP])
    assert r.status_code == 200, r.text
    assert _claims(issuer, r.json()["access_token"])["aud"] == MCP
    code, verifier = await _code(c, "plain", [])
    r = await _exchange(c, "plain", code, verifier, [MCP])
    assert r.json()["error"] == "invalid_target"


@pytest.mark.parametrize(
    ("client_id", "resource"),
    [
        ("plain", MCP),  # the client has no allowed resources
        ("mcp-client", "https://evil.example.com"),  # not in its list
        ("mcp-client", MCP + "#frag"),  # RFC 8707 §2: no fragment
        ("mcp-client", "relative/path"),  # not absolute
    ],
)
async def test_not_allowed_or_malformed_resource_at_auth_is_invalid_target(
    env: tuple[httpx.AsyncClient, Issuer], client_id: str, resource: str
) -> None:
    c, _ = env
    _, challenge = pkce_pair()
    r = await c.get(
        "/dex/auth",
        params={
            "client_id": client_id,
            "redirect_uri": REDIRECT,
            "response_type": "code",
            "scope": "openid",
            "state": "st",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "resource": resource,
        },
    )
    assert r.status_code == 303
    query = parse_qs(urlsplit(r.headers["location"]).query)
    assert query["error"] == ["invalid_target"]
    assert query["state"] == ["st"]
    assert query["iss"] == [ISSUER]


async def test_refresh_narrows_and_never_widens(env: tuple[httpx.AsyncClient, Issuer]) -> None:
    c, issuer = env
    # The plain client gets the refresh grant but no resources; mcp-client has both.
    code, verifier = await _code(c, "mcp-client", [MCP, API], scope="openid offline_access")
    r = await _exchange(c, "mcp-client", code, verifier, [MCP])
    assert r.status_code == 200, r.text
    refresh = r.json()["refresh_token"]
    r = await c.post(
        "/dex/token",
        data={
            "grant_type": "refresh_token",
            "client_id": "mcp-client",
            "refresh_token": refresh,
            "resource": API,
        },
    )
    # Narrowing is against the family's grant (both), not the previous token's audience.
    assert r.status_code == 200, r.text
    assert _claims(issuer, r.json()["access_token"])["aud"] == API
    refresh = r.json()["refresh_token"]
    r = await c.post(
        "/dex/token",
        data={
            "grant_type": "refresh_token",
            "client_id": "mcp-client",
            "refresh_token": refresh,
            "resource": "https://evil.example.com",
        },
    )
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_target"
    # The refused widening did not spend the refresh token.
    r = await c.post(
        "/dex/token",
        data={"grant_type": "refresh_token", "client_id": "mcp-client", "refresh_token": refresh},
    )
    assert r.status_code == 200, r.text
    assert _claims(issuer, r.json()["access_token"])["aud"] == [MCP, API]


def test_allowed_resources_config_key_is_checked_with_its_path() -> None:
    bad = CONFIG.replace(f'allowedResources: ["{MCP}", "{API}"]', 'allowedResources: ["x#y"]')
    with pytest.raises(ConfigError) as excinfo:
        parse_config(bad)
    assert "staticClients[0].allowedResources[0]" in str(excinfo.value)
