"""In-process flows through the ASGI app with a frozen clock: branches that are slow or awkward
to reach through a real process (time travel, implicit/hybrid, prompt=none, denial)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
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
from portcullis.oidc.claims import token_hash
from portcullis.storage.memory import MemoryStorage

ISSUER = "http://127.0.0.1:5556/dex"
APP_SECRET = "app-secret-value-0123456789"
APP_REDIRECT = "http://127.0.0.1:5555/callback"
REAL_HASH = bcrypt.hashpw(b"password", bcrypt.gensalt(10)).decode()

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _config(extra: str = "") -> str:
    text = textwrap.dedent(
        f"""
        issuer: {ISSUER}
        storage: {{type: memory}}
        web: {{http: 127.0.0.1:5556}}
        oauth2:
          responseTypes: [code, token, id_token]
        staticClients:
          - id: app
            secret: {APP_SECRET}
            redirectURIs: [{APP_REDIRECT}]
          - id: kubectl
            public: true
            redirectURIs: ["http://127.0.0.1:8000/"]
        enablePasswordDB: true
        staticPasswords:
          - email: admin@example.com
            hash: "{REAL_HASH}"
            username: admin
            userID: user-1
            groups: [admins]
        """
    )
    if extra.startswith("oauth2:"):
        # The extra section replaces the base one (a duplicate key is a config error).
        text = text.replace("oauth2:\n  responseTypes: [code, token, id_token]\n", "")
    return text + textwrap.dedent(extra)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(1_800_000_000.0)


def _issuer(clock: FrozenClock, extra: str = "") -> Issuer:
    config = parse_config(_config(extra))
    return create_issuer(config, storage=MemoryStorage(), clock=clock)


@pytest.fixture
async def client(clock: FrozenClock) -> AsyncIterator[tuple[httpx.AsyncClient, Issuer]]:
    issuer = _issuer(clock)
    transport = httpx.ASGITransport(app=issuer.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:5556") as c:
        yield c, issuer


def _app(response_type: str, scope: str, **extra: str) -> dict[str, str]:
    """Authorization parameters for the confidential test client."""
    return {
        "client_id": "app",
        "redirect_uri": APP_REDIRECT,
        "response_type": response_type,
        "scope": scope,
        **extra,
    }


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


async def _login(c: httpx.AsyncClient, params: dict[str, str], approve: bool = True) -> str:
    """Drive /auth -> password form -> approval; return the final redirect Location."""
    r = await c.get("/dex/auth", params=params)
    assert r.status_code == 303, r.text
    r = await c.get(r.headers["location"])
    assert r.status_code == 303
    login_url = r.headers["location"]
    r = await c.get(login_url)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', r.text)
    assert csrf is not None
    r = await c.post(
        login_url,
        data={"login": "admin@example.com", "password": "password", "csrf_token": csrf[1]},
    )
    assert r.status_code == 303, r.text
    approval_url = r.headers["location"]
    r = await c.get(approval_url)
    if r.status_code == 303:
        return str(r.headers["location"])
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', r.text)
    req = re.search(r'name="req" value="([^"]+)"', r.text)
    assert csrf is not None
    assert req is not None
    r = await c.post(
        approval_url,
        data={
            "csrf_token": csrf[1],
            "req": req[1],
            "approval": "approve" if approve else "rejected",
        },
    )
    assert r.status_code == 303
    return str(r.headers["location"])


def _keys(issuer: Issuer) -> KeySet:
    return KeySet.import_key_set(json.loads(issuer.provider.keys.current().jwks_body))


def _claims(issuer: Issuer, token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, _keys(issuer)).claims)


async def test_hybrid_flow_returns_code_and_id_token_in_fragment_with_c_hash(
    client: tuple[httpx.AsyncClient, Issuer],
) -> None:
    c, issuer = client
    verifier, challenge = _pkce()
    location = await _login(
        c,
        _app(
            "code id_token",
            "openid email",
            nonce="n-123",
            state="s-1",
            code_challenge=challenge,
            code_challenge_method="S256",
        ),
    )
    parts = urlsplit(location)
    assert parts.query == ""
    fragment = parse_qs(parts.fragment)
    assert fragment["state"] == ["s-1"]
    claims = _claims(issuer, fragment["id_token"][0])
    assert claims["nonce"] == "n-123"
    assert claims["c_hash"] == token_hash(fragment["code"][0], "sha256")
    r = await c.post(
        "/dex/token",
        data={
            "grant_type": "authorization_code",
            "code": fragment["code"][0],
            "redirect_uri": APP_REDIRECT,
            "code_verifier": verifier,
        },
        auth=("app", APP_SECRET),
    )
    assert r.status_code == 200
    assert _claims(issuer, r.json()["id_token"])["sub"] == claims["sub"]


async def test_implicit_flow_returns_tokens_only_in_fragment(
    client: tuple[httpx.AsyncClient, Issuer],
) -> None:
    c, issuer = client
    location = await _login(
        c,
        _app("id_token token", "openid groups", nonce="n-9"),
    )
    fragment = parse_qs(urlsplit(location).fragment)
    assert "code" not in fragment
    id_claims = _claims(issuer, fragment["id_token"][0])
    assert id_claims["at_hash"] == token_hash(fragment["access_token"][0], "sha256")
    assert id_claims["groups"] == ["admins"]


async def test_implicit_flow_without_nonce_is_refused_by_redirect(
    client: tuple[httpx.AsyncClient, Issuer],
) -> None:
    c, _ = client
    r = await c.get(
        "/dex/auth",
        params=_app("id_token", "openid"),
    )
    assert r.status_code == 303
    fragment = parse_qs(urlsplit(r.headers["location"]).fragment)
    assert fragment["error"] == ["invalid_request"]


async def test_implicit_is_refused_when_server_allows_only_code(clock: FrozenClock) -> None:
    issuer = create_issuer(
        parse_config(_config().replace("responseTypes: [code, token, id_token]", "")),
        storage=MemoryStorage(),
        clock=clock,
    )
    transport = httpx.ASGITransport(app=issuer.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:5556") as c:
        r = await c.get(
            "/dex/auth",
            params=_app("id_token", "openid", nonce="x"),
        )
    fragment = parse_qs(urlsplit(r.headers["location"]).fragment)
    assert fragment["error"] == ["unsupported_response_type"]


async def test_prompt_none_answers_login_required(
    client: tuple[httpx.AsyncClient, Issuer],
) -> None:
    c, _ = client
    r = await c.get(
        "/dex/auth",
        params=_app("code", "openid", prompt="none", state="abc"),
    )
    query = parse_qs(urlsplit(r.headers["location"]).query)
    assert query["error"] == ["login_required"]
    assert query["state"] == ["abc"]


async def test_denied_approval_redirects_access_denied_and_issues_nothing(
    client: tuple[httpx.AsyncClient, Issuer],
) -> None:
    c, _ = client
    _, challenge = _pkce()
    location = await _login(
        c,
        _app("code", "openid", state="st", code_challenge=challenge, code_challenge_method="S256"),
        approve=False,
    )
    query = parse_qs(urlsplit(location).query)
    assert query["error"] == ["access_denied"]
    assert "code" not in query


@pytest.mark.parametrize(
    ("client_id", "redirect", "allowed"),
    [
        ("kubectl", "http://127.0.0.1:38123/", True),  # RFC 8252: any port for native apps
        ("kubectl", "http://127.0.0.1:38123/other", False),  # path must still match
        ("kubectl", "http://localhost:38123/", False),  # only registered hosts
        ("app", "http://127.0.0.1:5556/callback", False),  # confidential: exact match only
    ],
)
async def test_loopback_port_flexibility_only_for_public_clients(
    client: tuple[httpx.AsyncClient, Issuer], client_id: str, redirect: str, allowed: bool
) -> None:
    c, _ = client
    _, challenge = _pkce()
    r = await c.get(
        "/dex/auth",
        params={
            "client_id": client_id,
            "redirect_uri": redirect,
            "response_type": "code",
            "scope": "openid",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        },
    )
    if allowed:
        assert r.status_code == 303
        assert r.headers["location"].startswith("/dex/auth/local")
    else:
        assert r.status_code == 400
        assert "text/html" in r.headers["content-type"]
        assert "location" not in r.headers


async def test_public_client_without_pkce_is_refused(
    client: tuple[httpx.AsyncClient, Issuer],
) -> None:
    c, _ = client
    r = await c.get(
        "/dex/auth",
        params={
            "client_id": "kubectl",
            "redirect_uri": "http://127.0.0.1:8000/",
            "response_type": "code",
            "scope": "openid",
        },
    )
    assert parse_qs(urlsplit(r.headers["location"]).query)["error"] == ["invalid_request"]


async def test_code_expires_with_the_clock(
    client: tuple[httpx.AsyncClient, Issuer], clock: FrozenClock
) -> None:
    c, _ = client
    verifier, challenge = _pkce()
    location = await _login(
        c,
        _app("code", "openid", code_challenge=challenge, code_challenge_method="S256"),
    )
    code = parse_qs(urlsplit(location).query)["code"][0]
    clock.advance(601)  # default expiry.authCodes is 10m
    r = await c.post(
        "/dex/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": APP_REDIRECT,
            "code_verifier": verifier,
        },
        auth=("app", APP_SECRET),
    )
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_grant"


async def test_rotation_keeps_retired_key_published_until_tokens_expire(
    clock: FrozenClock,
) -> None:
    issuer = _issuer(clock, "expiry: {idTokens: 1h}\nsigner: {config: {keysRotationPeriod: 6h}}\n")
    keys = issuer.provider.keys
    old_kid = keys.current().signing_kid
    token = keys.sign({"iss": ISSUER, "sub": "x", "exp": int(clock.now()) + 3600})
    assert not keys.rotate_if_due()  # not due yet: nothing changes
    clock.advance(6 * 3600 + 1)
    assert keys.rotate_if_due()
    state = keys.current()
    # The new key is published at once but signs only after the publish grace, when every
    # process and replica has re-read the key set (a verifier never meets an unpublished kid).
    published = {k["kid"] for k in json.loads(state.jwks_body)["keys"]}
    assert state.signing_kid == old_kid
    assert len(published) == 2
    clock.advance(11)
    state = keys.current()
    assert state.signing_kid != old_kid
    assert {old_kid, state.signing_kid} == published
    assert keys.verify(token)["sub"] == "x"  # old tokens still verify
    clock.advance(3601)
    issuer.provider.storage.garbage_collect(clock.now())
    clock.advance(10)  # past the cache refresh interval
    published = {k["kid"] for k in json.loads(keys.current().jwks_body)["keys"]}
    assert old_kid not in published


async def test_security_headers_and_no_store_on_login_pages(
    client: tuple[httpx.AsyncClient, Issuer],
) -> None:
    c, _ = client
    _, challenge = _pkce()
    r = await c.get(
        "/dex/auth",
        params={
            "client_id": "kubectl",
            "redirect_uri": "http://127.0.0.1:8000/",
            "response_type": "code",
            "scope": "openid",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        },
    )
    r = await c.get(r.headers["location"])
    r = await c.get(r.headers["location"])
    assert r.status_code == 200
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert "strict-transport-security" not in r.headers  # http issuer: no HSTS


async def _password_grant(c: httpx.AsyncClient) -> dict[str, Any]:
    r = await c.post(
        "/dex/token",
        data={
            "grant_type": "password",
            "username": "admin@example.com",
            "password": "password",
            "scope": "openid groups offline_access",
        },
        auth=("app", APP_SECRET),
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


PASSWORD_GRANT = "oauth2: {passwordConnector: local}\n"


async def test_ending_a_session_revokes_tokens_of_every_generation(clock: FrozenClock) -> None:
    issuer = _issuer(clock, PASSWORD_GRANT)
    transport = httpx.ASGITransport(app=issuer.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:5556") as c:
        first = await _password_grant(c)
        r = await c.post(
            "/dex/token",
            data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
            auth=("app", APP_SECRET),
        )
        second = r.json()
        assert (
            _claims(issuer, first["access_token"])["sid"]
            == _claims(issuer, second["access_token"])["sid"]
        )
        for token in (first["access_token"], second["access_token"]):
            r = await c.get("/dex/userinfo", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200
        r = await c.post(
            "/dex/token/revoke",
            data={"token": second["refresh_token"]},
            auth=("app", APP_SECRET),
        )
        assert r.status_code == 200
        for token in (first["access_token"], second["access_token"], second["id_token"]):
            r = await c.post(
                "/dex/token/introspect", data={"token": token}, auth=("app", APP_SECRET)
            )
            assert r.json() == {"active": False}
        r = await c.get(
            "/dex/userinfo", headers={"Authorization": f"Bearer {first['access_token']}"}
        )
        assert r.status_code == 401


async def test_slow_storage_does_not_stall_the_event_loop(clock: FrozenClock) -> None:
    """A refresh waiting on storage (a row lock held by another replica) must not keep /keys
    or the health endpoints from answering."""
    import threading

    import anyio

    issuer = _issuer(clock, PASSWORD_GRANT)
    storage = issuer.provider.storage
    release = threading.Event()
    # The refresh's rotation statement (the grant's hot path and its general path both use it).
    original = storage.rotate_refresh_token

    def blocked_update(*args: Any, **kwargs: Any) -> Any:
        release.wait(10)
        return original(*args, **kwargs)

    transport = httpx.ASGITransport(app=issuer.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:5556") as c:
        tokens = await _password_grant(c)
        storage.rotate_refresh_token = blocked_update  # type: ignore[method-assign]
        results: dict[str, float] = {}

        async def refresh() -> None:
            r = await c.post(
                "/dex/token",
                data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
                auth=("app", APP_SECRET),
            )
            results["refresh"] = r.status_code

        async with anyio.create_task_group() as group:
            group.start_soon(refresh)
            await anyio.sleep(0.2)
            with anyio.fail_after(2):
                keys = await c.get("/dex/keys")
                health = await c.get("/dex/healthz")
            assert keys.status_code == 200
            assert health.status_code == 200
            assert "refresh" not in results  # still waiting on storage
            release.set()
        assert results["refresh"] == 200
