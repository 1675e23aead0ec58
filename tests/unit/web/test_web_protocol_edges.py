"""Issue 9, finding 9, through the ASGI app in process: smaller protocol holes an attacker or a
careless client could use.

* a parameter repeated at ``/auth`` (in the query, or in both the query and a POST body) is
  refused as ``invalid_request`` naming it, as ``/token`` does, instead of one copy winning;
* a code presented by the wrong client is refused without being consumed: the right client
  still redeems it, and a replay by the right client is still detected;
* introspection shows another client's access token only to a client in the token's audience
  or one configured with ``introspectAnyToken``; anyone else learns ``{"active": false}``;
* ``response_mode=fragment`` on the code flow returns the code in the fragment.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import textwrap
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import bcrypt
import httpx
import pytest
from portcullis.clock import FrozenClock
from portcullis.issuer import Issuer, create_issuer, parse_config
from portcullis.storage.memory import MemoryStorage

ISSUER = "http://127.0.0.1:5556/dex"
APP_SECRET = "app-secret-value-0123456789"
OTHER_SECRET = "other-secret-value-0123456789"
AUDITOR_SECRET = "auditor-secret-value-0123456789"
APP_REDIRECT = "http://127.0.0.1:5555/callback"
OTHER_REDIRECT = "http://127.0.0.1:5557/callback"
PASSWORD_HASH = bcrypt.hashpw(b"password", bcrypt.gensalt(10)).decode()

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _config() -> str:
    return textwrap.dedent(
        f"""
        issuer: {ISSUER}
        storage: {{type: memory}}
        web: {{http: 127.0.0.1:5556}}
        oauth2:
          responseTypes: [code, token, id_token]
          skipApprovalScreen: true
        staticClients:
          - id: app
            secret: {APP_SECRET}
            redirectURIs: [{APP_REDIRECT}]
          - id: other
            secret: {OTHER_SECRET}
            redirectURIs: [{OTHER_REDIRECT}]
          - id: auditor
            secret: {AUDITOR_SECRET}
            redirectURIs: ["http://127.0.0.1:5558/callback"]
            introspectAnyToken: true
        enablePasswordDB: true
        staticPasswords:
          - email: admin@example.com
            hash: "{PASSWORD_HASH}"
            username: admin
            userID: user-1
        """
    )


@pytest.fixture
async def app() -> AsyncIterator[tuple[httpx.AsyncClient, Issuer]]:
    issuer = create_issuer(
        parse_config(_config()), storage=MemoryStorage(), clock=FrozenClock(1_800_000_000.0)
    )
    transport = httpx.ASGITransport(app=issuer.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:5556") as c:
        yield c, issuer


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _params(challenge: str, **extra: str) -> dict[str, str]:
    return {
        "client_id": "app",
        "redirect_uri": APP_REDIRECT,
        "response_type": "code",
        "scope": "openid email",
        "state": "s-1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **extra,
    }


async def _login(c: httpx.AsyncClient, params: dict[str, str]) -> str:
    """/auth -> password form -> (approval skipped) -> the client redirect's Location."""
    r = await c.get("/dex/auth", params=params)
    assert r.status_code == 303, r.text
    login_url = r.headers["location"]
    while "/login" not in login_url:
        r = await c.get(login_url)
        assert r.status_code == 303, r.text
        login_url = r.headers["location"]
    r = await c.get(login_url)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', r.text)
    assert csrf is not None
    r = await c.post(
        login_url,
        data={"login": "admin@example.com", "password": "password", "csrf_token": csrf[1]},
    )
    assert r.status_code == 303, r.text
    r = await c.get(r.headers["location"])
    assert r.status_code == 303, r.text
    return str(r.headers["location"])


async def _code(c: httpx.AsyncClient) -> tuple[str, str]:
    verifier, challenge = _pkce()
    location = await _login(c, _params(challenge))
    return parse_qs(urlsplit(location).query)["code"][0], verifier


async def _redeem(
    c: httpx.AsyncClient, code: str, verifier: str, auth: tuple[str, str], redirect: str
) -> httpx.Response:
    return await c.post(
        "/dex/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect,
            "code_verifier": verifier,
        },
        auth=auth,
    )


def _error_of(location: str) -> dict[str, list[str]]:
    assert location.startswith(APP_REDIRECT), location
    return parse_qs(urlsplit(location).query)


# -- duplicate parameters at /auth ---------------------------------------------------------------


async def test_a_parameter_repeated_in_the_query_is_refused_naming_it(
    app: tuple[httpx.AsyncClient, Issuer],
) -> None:
    c, _ = app
    _, challenge = _pkce()
    query = [*_params(challenge).items(), ("scope", "openid groups")]
    r = await c.get("/dex/auth", params=query)
    assert r.status_code == 303
    error = _error_of(r.headers["location"])
    assert error["error"] == ["invalid_request"]
    assert "scope" in error["error_description"][0]


async def test_a_parameter_in_both_the_query_and_the_body_is_refused_naming_it(
    app: tuple[httpx.AsyncClient, Issuer],
) -> None:
    c, _ = app
    _, challenge = _pkce()
    r = await c.post(
        "/dex/auth",
        params={"code_challenge": "A" * 43},
        data=_params(challenge),
    )
    assert r.status_code == 303
    error = _error_of(r.headers["location"])
    assert error["error"] == ["invalid_request"]
    assert "code_challenge" in error["error_description"][0]


async def test_a_repeated_redirect_uri_is_refused_without_redirecting(
    app: tuple[httpx.AsyncClient, Issuer],
) -> None:
    c, _ = app
    _, challenge = _pkce()
    query = [*_params(challenge).items(), ("redirect_uri", APP_REDIRECT)]
    r = await c.get("/dex/auth", params=query)
    assert r.status_code == 400
    assert "location" not in r.headers
    assert "redirect_uri" in r.text


# -- a code presented by the wrong client ----------------------------------------------------


async def test_a_code_presented_by_another_client_is_not_consumed(
    app: tuple[httpx.AsyncClient, Issuer],
) -> None:
    c, _ = app
    code, verifier = await _code(c)
    stolen = await _redeem(c, code, verifier, ("other", OTHER_SECRET), APP_REDIRECT)
    assert stolen.status_code == 400
    assert stolen.json()["error"] == "invalid_grant"

    redeemed = await _redeem(c, code, verifier, ("app", APP_SECRET), APP_REDIRECT)
    assert redeemed.status_code == 200, redeemed.text
    # Replay detection for the right client is intact: the second exchange revokes the first.
    replayed = await _redeem(c, code, verifier, ("app", APP_SECRET), APP_REDIRECT)
    assert replayed.status_code == 400
    assert "already used" in replayed.json()["error_description"]
    userinfo = await c.get(
        "/dex/userinfo", headers={"Authorization": f"Bearer {redeemed.json()['access_token']}"}
    )
    assert userinfo.status_code == 401


# -- introspection of another client's token ---------------------------------------------------


async def test_introspection_shows_an_access_token_only_to_its_audience_or_an_introspector(
    app: tuple[httpx.AsyncClient, Issuer],
) -> None:
    c, _ = app
    code, verifier = await _code(c)
    redeemed = await _redeem(c, code, verifier, ("app", APP_SECRET), APP_REDIRECT)
    access = redeemed.json()["access_token"]

    async def introspect(auth: tuple[str, str]) -> dict[str, object]:
        r = await c.post("/dex/token/introspect", data={"token": access}, auth=auth)
        assert r.status_code == 200, r.text
        body: dict[str, object] = r.json()
        return body

    assert await introspect(("other", OTHER_SECRET)) == {"active": False}
    own = await introspect(("app", APP_SECRET))
    assert own["active"] is True
    assert own["sub"]
    audited = await introspect(("auditor", AUDITOR_SECRET))
    assert audited["active"] is True
    assert audited["client_id"] == "app"


# -- response_mode ----------------------------------------------------------------------------


async def test_response_mode_fragment_returns_the_code_in_the_fragment(
    app: tuple[httpx.AsyncClient, Issuer],
) -> None:
    c, _ = app
    verifier, challenge = _pkce()
    location = await _login(c, _params(challenge, response_mode="fragment"))
    parts = urlsplit(location)
    assert parts.query == ""
    fragment = parse_qs(parts.fragment)
    assert fragment["state"] == ["s-1"]
    redeemed = await _redeem(c, fragment["code"][0], verifier, ("app", APP_SECRET), APP_REDIRECT)
    assert redeemed.status_code == 200, redeemed.text


async def test_response_mode_fragment_also_carries_errors(
    app: tuple[httpx.AsyncClient, Issuer],
) -> None:
    c, _ = app
    _, challenge = _pkce()
    r = await c.get("/dex/auth", params=_params(challenge, response_mode="fragment", prompt="none"))
    assert r.status_code == 303
    parts = urlsplit(r.headers["location"])
    assert parts.query == ""
    assert parse_qs(parts.fragment)["error"] == ["login_required"]


async def test_response_mode_query_is_still_refused_for_tokens_in_the_front_channel(
    app: tuple[httpx.AsyncClient, Issuer],
) -> None:
    c, _ = app
    r = await c.get(
        "/dex/auth",
        params={
            "client_id": "app",
            "redirect_uri": APP_REDIRECT,
            "response_type": "id_token",
            "scope": "openid",
            "nonce": "n",
            "response_mode": "query",
        },
    )
    assert r.status_code == 303
    location = r.headers["location"]
    assert "#" in location
    assert "error=invalid_request" in location
    assert "id_token=" not in location
