"""RFC 8414 authorization server metadata (both locations, the same document as OIDC discovery)
and RFC 9207 ``iss`` on every authorization response (issue 16)."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import bcrypt
import httpx
import pytest
from portcullis.clock import FrozenClock
from portcullis.issuer import create_issuer, parse_config
from portcullis.storage.memory import MemoryStorage

from tests.support.asgi_login import login, pkce_pair

REDIRECT = "http://127.0.0.1:8000/"
HASH = bcrypt.hashpw(b"password", bcrypt.gensalt(10)).decode()

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _config(issuer: str) -> str:
    return textwrap.dedent(
        f"""
        issuer: {issuer}
        storage: {{type: memory}}
        web: {{http: 127.0.0.1:5556}}
        oauth2: {{responseTypes: [code, token, id_token], skipApprovalScreen: true}}
        staticClients:
          - id: kubectl
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


async def _client(issuer: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_issuer(
        parse_config(_config(issuer)), storage=MemoryStorage(), clock=FrozenClock(1.8e9)
    ).app
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:5556") as c:
        yield c


@pytest.fixture
async def dex() -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client("http://127.0.0.1:5556/dex"):
        yield c


async def test_rfc8414_metadata_at_both_locations_equals_oidc_discovery(
    dex: httpx.AsyncClient,
) -> None:
    oidc = await dex.get("/dex/.well-known/openid-configuration")
    inserted = await dex.get("/.well-known/oauth-authorization-server/dex")
    relative = await dex.get("/dex/.well-known/oauth-authorization-server")
    assert oidc.status_code == inserted.status_code == relative.status_code == 200
    assert inserted.json() == relative.json() == oidc.json()
    document = inserted.json()
    assert document["issuer"] == "http://127.0.0.1:5556/dex"
    assert document["authorization_endpoint"] == "http://127.0.0.1:5556/dex/auth"
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert document["authorization_response_iss_parameter_supported"] is True
    assert "registration_endpoint" not in document  # registration is off by default
    # The inserted location is for this issuer only; another path is not ours.
    assert (await dex.get("/.well-known/oauth-authorization-server/other")).status_code == 404
    assert (await dex.get("/.well-known/oauth-authorization-server")).status_code == 404


async def test_rfc8414_metadata_for_an_issuer_at_the_host_root() -> None:
    async for c in _client("http://127.0.0.1:5556"):
        r = await c.get("/.well-known/oauth-authorization-server")
        assert r.status_code == 200
        assert r.json()["issuer"] == "http://127.0.0.1:5556"
        assert r.json() == (await c.get("/.well-known/openid-configuration")).json()


async def test_iss_on_error_redirects_query_and_fragment(dex: httpx.AsyncClient) -> None:
    base = {"client_id": "kubectl", "redirect_uri": REDIRECT, "state": "s1"}
    r = await dex.get("/dex/auth", params={**base, "response_type": "code", "scope": "openid"})
    assert r.status_code == 303
    query = parse_qs(urlsplit(r.headers["location"]).query)
    assert query["error"] == ["invalid_request"]  # no PKCE
    assert query["iss"] == ["http://127.0.0.1:5556/dex"]
    assert query["state"] == ["s1"]
    r = await dex.get(
        "/dex/auth",
        params={**base, "response_type": "id_token", "scope": "openid"},  # no nonce
    )
    fragment = parse_qs(urlsplit(r.headers["location"]).fragment)
    assert fragment["error"] == ["invalid_request"]
    assert fragment["iss"] == ["http://127.0.0.1:5556/dex"]


async def test_iss_on_success_redirects_query_and_fragment(dex: httpx.AsyncClient) -> None:
    _, challenge = pkce_pair()
    params = {
        "client_id": "kubectl",
        "redirect_uri": REDIRECT,
        "response_type": "code",
        "scope": "openid",
        "state": "s2",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    location = await login(
        dex, "/dex/auth", params, username="admin@example.com", password="password"
    )
    query = parse_qs(urlsplit(location).query)
    assert query["code"]
    assert query["state"] == ["s2"]
    assert query["iss"] == ["http://127.0.0.1:5556/dex"]
    location = await login(
        dex,
        "/dex/auth",
        {**params, "response_mode": "fragment"},
        username="admin@example.com",
        password="password",
    )
    fragment = parse_qs(urlsplit(location).fragment)
    assert fragment["code"]
    assert fragment["iss"] == ["http://127.0.0.1:5556/dex"]
    assert not urlsplit(location).query
