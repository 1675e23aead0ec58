"""PKCE method policy at /auth (issue 9, finding 5): S256 only unless `plain` is configured, and a
missing code_challenge_method is never silently taken as `plain` (RFC 9700 §2.1.1)."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from portcullis.clock import FrozenClock
from portcullis.issuer import create_issuer, parse_config
from portcullis.storage.memory import MemoryStorage

ISSUER = "http://127.0.0.1:5556/dex"
REDIRECT = "http://127.0.0.1:8000/"
# RFC 7636 appendix B.
CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _config(pkce: str) -> str:
    return textwrap.dedent(
        f"""
        issuer: {ISSUER}
        storage: {{type: memory}}
        web: {{http: 127.0.0.1:5556}}
        oauth2: {{{pkce}}}
        staticClients:
          - id: kubectl
            public: true
            redirectURIs: ["{REDIRECT}"]
        enablePasswordDB: true
        """
    )


async def _client(pkce: str = "") -> AsyncIterator[httpx.AsyncClient]:
    issuer = create_issuer(
        parse_config(_config(pkce)), storage=MemoryStorage(), clock=FrozenClock(1.8e9)
    )
    transport = httpx.ASGITransport(app=issuer.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:5556") as c:
        yield c


@pytest.fixture
async def default_issuer() -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client():
        yield c


@pytest.fixture
async def plain_allowed() -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client("pkce: {codeChallengeMethodsSupported: [S256, plain]}"):
        yield c


def _auth(**pkce: str) -> dict[str, str]:
    return {
        "client_id": "kubectl",
        "redirect_uri": REDIRECT,
        "response_type": "code",
        "scope": "openid",
        "state": "st",
        **pkce,
    }


def _error(response: httpx.Response) -> dict[str, list[str]]:
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT)
    return parse_qs(urlsplit(location).query)


async def test_discovery_advertises_only_s256_by_default(default_issuer: httpx.AsyncClient) -> None:
    doc = (await default_issuer.get("/dex/.well-known/openid-configuration")).json()
    assert doc["code_challenge_methods_supported"] == ["S256"]


async def test_plain_is_refused_by_default(default_issuer: httpx.AsyncClient) -> None:
    r = await default_issuer.get(
        "/dex/auth", params=_auth(code_challenge=CHALLENGE, code_challenge_method="plain")
    )
    error = _error(r)
    assert error["error"] == ["invalid_request"]
    assert "plain" in error["error_description"][0]


async def test_missing_method_is_not_taken_as_plain_by_default(
    default_issuer: httpx.AsyncClient,
) -> None:
    r = await default_issuer.get("/dex/auth", params=_auth(code_challenge=CHALLENGE))
    error = _error(r)
    assert error["error"] == ["invalid_request"]
    assert "code_challenge_method" in error["error_description"][0]


async def test_s256_is_accepted_by_default(default_issuer: httpx.AsyncClient) -> None:
    r = await default_issuer.get(
        "/dex/auth", params=_auth(code_challenge=CHALLENGE, code_challenge_method="S256")
    )
    assert r.status_code == 303
    assert not r.headers["location"].startswith(REDIRECT)  # on to the login, not an error


async def test_configured_plain_keeps_the_rfc_7636_default(
    plain_allowed: httpx.AsyncClient,
) -> None:
    for params in (
        _auth(code_challenge=CHALLENGE, code_challenge_method="plain"),
        _auth(code_challenge=CHALLENGE),
    ):
        r = await plain_allowed.get("/dex/auth", params=params)
        assert r.status_code == 303
        assert not r.headers["location"].startswith(REDIRECT)
