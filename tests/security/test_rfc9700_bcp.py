"""The OAuth 2.0 Security Best Current Practice (RFC 9700), one test per applicable item, against
the issuer's real ASGI app in-process (MemoryStorage, a frozen clock so expiry and reuse
intervals are exact, the real password database and the real TokenReview webhook app).

Why in-process: every item here is a protocol decision the web layer and the oidc core make
together; a server process adds nothing to these decisions but seconds (the process-level
behaviour is covered by tests/integration and tests/faults). Each test names the RFC 9700
section it holds the issuer to.

Not applicable, so not tested: §2.1.2 (implicit grant) is opt-in via ``oauth2.responseTypes``
and tested in tests/unit/web; §4.6 (resource indicators), §4.10 (DPoP/mTLS sender-constraining)
and §4.12 (307 redirects: the issuer redirects with 302/303 only) are not implemented or not
reachable. The RFC 9207 ``iss`` authorization-response parameter (§4.4.2, mix-up) is not sent
yet; ``test_mix_up_*`` checks what exists (the issuer never advertises it without sending it,
and the ID token's ``iss`` is the discovered issuer).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import bcrypt
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.hashes import SHA256
from joserfc.jwk import RSAKey
from portcullis.clock import FrozenClock
from portcullis.issuer import Issuer, create_issuer, parse_config
from portcullis.storage.memory import MemoryStorage

ISSUER = "http://127.0.0.1:5556/dex"
BASE = "http://127.0.0.1:5556"
APP_SECRET = "app-secret-value-0123456789"
OTHER_SECRET = "other-secret-value-0123456789"
APP_REDIRECT = "http://127.0.0.1:5555/callback"
OTHER_REDIRECT = "http://127.0.0.1:5566/callback"
KUBECTL_REDIRECT = "http://127.0.0.1:8000/"
EMAIL = "admin@example.com"
PASSWORD = "password"
PASSWORD_HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
WEBHOOK_PATH = "/tokenreview"

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
        expiry:
          idTokens: 1h
          refreshTokens: {{reuseInterval: 3s}}
        oauth2:
          passwordConnector: local
          grantTypes: [authorization_code, refresh_token, password]
        kubernetes:
          tokenReview:
            enabled: true
            addr: 127.0.0.1:5580
            path: {WEBHOOK_PATH}
            audiences: [app, kubectl]
        staticClients:
          - id: app
            secret: {APP_SECRET}
            redirectURIs: [{APP_REDIRECT}]
            grantTypes: [authorization_code, refresh_token, password]
          - id: other
            secret: {OTHER_SECRET}
            redirectURIs: [{OTHER_REDIRECT}]
            grantTypes: [authorization_code, refresh_token]
          - id: kubectl
            public: true
            redirectURIs: ["{KUBECTL_REDIRECT}"]
        enablePasswordDB: true
        staticPasswords:
          - email: {EMAIL}
            hash: "{PASSWORD_HASH}"
            username: admin
            userID: user-1
            groups: [admins]
        """
    )


@dataclass
class Env:
    http: httpx.AsyncClient
    webhook: httpx.AsyncClient
    issuer: Issuer
    clock: FrozenClock

    async def token(
        self, form: dict[str, str], auth: tuple[str, str] | None = ("app", APP_SECRET)
    ) -> httpx.Response:
        if auth is None:
            return await self.http.post("/dex/token", data=form)
        return await self.http.post("/dex/token", data=form, auth=auth)

    async def password_tokens(self, scope: str = "openid email offline_access") -> dict[str, Any]:
        r = await self.token(
            {"grant_type": "password", "username": EMAIL, "password": PASSWORD, "scope": scope}
        )
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def sign(self, claims: dict[str, Any]) -> str:
        """A JWT signed with the issuer's real current key (for wrong-issuer/expired variants)."""
        return self.issuer.provider.keys.sign(claims)

    def jwks(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.issuer.provider.keys.current().jwks_body)
        return document


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    clock = FrozenClock(1_800_000_000.0)
    issuer = create_issuer(parse_config(_config()), storage=MemoryStorage(), clock=clock)
    assert issuer.webhook is not None
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=issuer.app), base_url=BASE) as http,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=issuer.webhook), base_url="http://127.0.0.1:5580"
        ) as webhook,
    ):
        yield Env(http, webhook, issuer, clock)


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _auth_params(
    client_id: str = "app", redirect_uri: str = APP_REDIRECT, **extra: str
) -> dict[str, str]:
    return {
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "response_type": "code",
        "scope": "openid email offline_access",
        "state": "state-" + secrets.token_hex(4),
        **extra,
    }


def _field(page: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]+)"', page)
    assert match is not None, f"no {name} on the page:\n{page[:1500]}"
    return match[1]


@dataclass
class LoginPages:
    login_url: str
    login_page: str
    approval_url: str = ""
    approval_page: str = ""


async def _to_login_form(c: httpx.AsyncClient, params: dict[str, str]) -> LoginPages:
    r = await c.get("/dex/auth", params=params)
    assert r.status_code == 303, r.text
    r = await c.get(r.headers["location"])
    assert r.status_code == 303, r.text
    login_url = r.headers["location"]
    r = await c.get(login_url)
    assert r.status_code == 200, r.text
    return LoginPages(login_url, r.text)


async def _to_approval(c: httpx.AsyncClient, params: dict[str, str]) -> LoginPages:
    pages = await _to_login_form(c, params)
    r = await c.post(
        pages.login_url,
        data={
            "login": EMAIL,
            "password": PASSWORD,
            "csrf_token": _field(pages.login_page, "csrf_token"),
        },
    )
    assert r.status_code == 303, r.text
    pages.approval_url = r.headers["location"]
    r = await c.get(pages.approval_url)
    assert r.status_code == 200, r.text
    pages.approval_page = r.text
    return pages


async def _authorize(c: httpx.AsyncClient, params: dict[str, str]) -> dict[str, str]:
    """Log in and approve; the client redirect's query parameters."""
    pages = await _to_approval(c, params)
    r = await c.post(
        pages.approval_url,
        data={
            "csrf_token": _field(pages.approval_page, "csrf_token"),
            "req": _field(pages.approval_page, "req"),
            "approval": "approve",
        },
    )
    assert r.status_code == 303, r.text
    location = r.headers["location"]
    assert location.startswith(params["redirect_uri"]), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def _code(env: Env, **extra: str) -> tuple[str, str]:
    """(code, verifier) for the confidential client ``app`` with S256 PKCE."""
    verifier, challenge = _pkce()
    query = await _authorize(
        env.http, _auth_params(code_challenge=challenge, code_challenge_method="S256", **extra)
    )
    return query["code"], verifier


def _redirect_error(response: httpx.Response, redirect: str) -> dict[str, str]:
    assert response.status_code in (302, 303), response.text
    location = response.headers["location"]
    assert location.startswith(redirect), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


# == §2.1.1 / §4.8: PKCE downgrade =============================================================


async def test_pkce_plain_method_is_refused_by_default(env: Env) -> None:
    _, challenge = _pkce()
    r = await env.http.get(
        "/dex/auth", params=_auth_params(code_challenge=challenge, code_challenge_method="plain")
    )
    assert _redirect_error(r, APP_REDIRECT)["error"] == "invalid_request"
    doc = (await env.http.get("/dex/.well-known/openid-configuration")).json()
    assert doc["code_challenge_methods_supported"] == ["S256"]


async def test_pkce_missing_method_is_not_downgraded_to_plain(env: Env) -> None:
    _, challenge = _pkce()
    r = await env.http.get("/dex/auth", params=_auth_params(code_challenge=challenge))
    assert _redirect_error(r, APP_REDIRECT)["error"] == "invalid_request"


async def test_pkce_verifier_is_required_once_a_challenge_was_sent(env: Env) -> None:
    code, _ = await _code(env)
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": APP_REDIRECT}
    r = await env.token(form)
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_grant"
    code, _ = await _code(env)
    r = await env.token({**form, "code": code, "code_verifier": _pkce()[0]})
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_grant"


async def test_pkce_verifier_without_a_challenge_is_refused(env: Env) -> None:
    """§2.1.1: a code_verifier at the token endpoint for a code requested without a
    code_challenge must be rejected (it defeats downgrade detection)."""
    query = await _authorize(env.http, _auth_params())
    r = await env.token(
        {
            "grant_type": "authorization_code",
            "code": query["code"],
            "redirect_uri": APP_REDIRECT,
            "code_verifier": _pkce()[0],
        }
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_grant"


# == §4.5: authorization code injection ========================================================


async def test_code_injection_into_another_client_is_refused(env: Env) -> None:
    code, verifier = await _code(env)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": APP_REDIRECT,
        "code_verifier": verifier,
    }
    r = await env.token(form, auth=("other", OTHER_SECRET))
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_grant"
    r = await env.token({**form, "client_id": "kubectl"}, auth=None)
    assert r.status_code in (400, 401)
    assert r.json()["error"] in ("invalid_grant", "invalid_client")


async def test_code_injection_with_another_redirect_uri_is_refused(env: Env) -> None:
    code, verifier = await _code(env)
    r = await env.token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": OTHER_REDIRECT,
            "code_verifier": verifier,
        }
    )
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_grant"


async def test_code_injection_with_another_sessions_verifier_is_refused(env: Env) -> None:
    code, _ = await _code(env)
    _, other_verifier = await _code(env)
    r = await env.token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": APP_REDIRECT,
            "code_verifier": other_verifier,
        }
    )
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_grant"


async def test_code_redeemed_by_the_wrong_client_still_works_for_the_right_one(env: Env) -> None:
    """A failed exchange by another client must not burn the code (issue 9, finding 9): the
    attacker would otherwise deny the victim's login with one request."""
    code, verifier = await _code(env)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": APP_REDIRECT,
        "code_verifier": verifier,
    }
    assert (await env.token(form, auth=("other", OTHER_SECRET))).status_code == 400
    r = await env.token(form)
    assert r.status_code == 200, r.text


async def test_code_is_single_use(env: Env) -> None:
    code, verifier = await _code(env)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": APP_REDIRECT,
        "code_verifier": verifier,
    }
    first = await env.token(form)
    assert first.status_code == 200
    second = await env.token(form)
    assert second.status_code == 400
    assert second.json()["error"] == "invalid_grant"


# == §4.4: mix-up ==============================================================================


async def test_mix_up_discovery_never_advertises_an_iss_parameter_it_does_not_send(
    env: Env,
) -> None:
    doc = (await env.http.get("/dex/.well-known/openid-configuration")).json()
    assert doc["issuer"] == ISSUER
    _, challenge = _pkce()
    query = await _authorize(
        env.http, _auth_params(code_challenge=challenge, code_challenge_method="S256")
    )
    advertised = doc.get("authorization_response_iss_parameter_supported", False)
    assert advertised == ("iss" in query)
    if "iss" in query:
        assert query["iss"] == ISSUER


async def test_mix_up_id_token_names_the_discovered_issuer_and_the_client(env: Env) -> None:
    code, verifier = await _code(env)
    r = await env.token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": APP_REDIRECT,
            "code_verifier": verifier,
        }
    )
    claims = _payload(r.json()["id_token"])
    assert claims["iss"] == ISSUER
    assert claims["aud"] in ("app", ["app"])


# == §4.1 / §4.11: open redirection ============================================================


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "https://evil.example/callback",
        "http://127.0.0.1:5555/callback/../evil",
        "http://127.0.0.1:5555/callbackx",
        "http://evil.com@127.0.0.1:5555/callback",
        "http://127.0.0.1:5555/callback#frag",
    ],
)
async def test_unregistered_redirect_uri_gets_an_html_error_and_no_redirect(
    env: Env, redirect_uri: str
) -> None:
    r = await env.http.get(
        "/dex/auth", params=_auth_params(redirect_uri=redirect_uri, scope="not-a-scope")
    )
    assert r.status_code == 400
    assert "location" not in r.headers
    assert r.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "http://evil.com\\@127.0.0.1:8000/",
        "http://evil.com@127.0.0.1:9999/",
        "http://127.0.0.1:99999/",
        "http://127.0.0.1:8000/\r\nLocation: https://evil.example/",
        "http://localhost.evil.example:8000/",
    ],
)
async def test_public_client_loopback_tricks_get_an_html_error_and_no_redirect(
    env: Env, redirect_uri: str
) -> None:
    _, challenge = _pkce()
    r = await env.http.get(
        "/dex/auth",
        params=_auth_params(
            "kubectl", redirect_uri, code_challenge=challenge, code_challenge_method="S256"
        ),
    )
    assert r.status_code == 400
    assert "location" not in r.headers


async def test_unknown_client_gets_an_html_error_and_no_redirect(env: Env) -> None:
    r = await env.http.get("/dex/auth", params=_auth_params(client_id="nobody"))
    assert r.status_code in (400, 401)
    assert "location" not in r.headers
    assert r.headers["content-type"].startswith("text/html")


async def test_errors_redirect_only_to_the_verified_redirect_uri(env: Env) -> None:
    r = await env.http.get("/dex/auth", params=_auth_params(scope="openid not-a-scope"))
    assert _redirect_error(r, APP_REDIRECT)["error"] == "invalid_scope"


# == §4.14: refresh-token replay ===============================================================


async def test_refresh_token_rotates_and_replay_revokes_the_family(env: Env) -> None:
    tokens = await env.password_tokens()
    first = tokens["refresh_token"]
    r = await env.token({"grant_type": "refresh_token", "refresh_token": first})
    assert r.status_code == 200
    second = r.json()["refresh_token"]
    assert second != first
    # After the reuse interval the old secret is a replay: the family ends, the newest dies too.
    env.clock.advance(10)
    r = await env.token({"grant_type": "refresh_token", "refresh_token": first})
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_grant"
    r = await env.token({"grant_type": "refresh_token", "refresh_token": second})
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_grant"
    # And the access token minted for the family is revoked with it (sid).
    r = await env.http.get(
        "/dex/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert r.status_code == 401


async def test_refresh_token_is_bound_to_its_client(env: Env) -> None:
    tokens = await env.password_tokens()
    r = await env.token(
        {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=("other", OTHER_SECRET),
    )
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_grant"


# == §2.4: resource owner password credentials =================================================


async def test_password_grant_is_refused_for_public_clients(env: Env) -> None:
    r = await env.token(
        {
            "grant_type": "password",
            "username": EMAIL,
            "password": PASSWORD,
            "scope": "openid",
            "client_id": "kubectl",
        },
        auth=None,
    )
    assert r.status_code in (400, 401), r.text
    assert r.json()["error"] in ("unauthorized_client", "invalid_client")
    assert "id_token" not in r.json()


async def test_password_grant_is_refused_for_clients_not_configured_for_it(env: Env) -> None:
    r = await env.token(
        {"grant_type": "password", "username": EMAIL, "password": PASSWORD, "scope": "openid"},
        auth=("other", OTHER_SECRET),
    )
    assert r.status_code in (400, 401), r.text
    assert r.json()["error"] == "unauthorized_client"


async def test_password_grant_works_for_a_confidential_client_configured_for_it(env: Env) -> None:
    tokens = await env.password_tokens("openid")
    assert _payload(tokens["id_token"])["aud"] in ("app", ["app"])


# == §4.7: CSRF ================================================================================


async def test_login_form_refuses_a_post_without_the_csrf_token(env: Env) -> None:
    pages = await _to_login_form(env.http, _auth_params())
    r = await env.http.post(pages.login_url, data={"login": EMAIL, "password": PASSWORD})
    assert r.status_code == 403
    assert "location" not in r.headers


async def test_login_form_refuses_a_cross_site_post_with_another_browsers_token(env: Env) -> None:
    """The attacker reads a valid token from their own session; the victim's browser (another
    cookie jar) posting it must be refused: the token is bound to the browser's cookie."""
    pages = await _to_login_form(env.http, _auth_params())
    token = _field(pages.login_page, "csrf_token")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=env.issuer.app), base_url=BASE
    ) as victim:
        r = await victim.post(
            pages.login_url, data={"login": EMAIL, "password": PASSWORD, "csrf_token": token}
        )
    assert r.status_code == 403
    assert "location" not in r.headers


async def test_approval_form_refuses_a_post_without_a_valid_csrf_token(env: Env) -> None:
    pages = await _to_approval(env.http, _auth_params())
    req = _field(pages.approval_page, "req")
    for token in ("", "0" * 64):
        r = await env.http.post(
            pages.approval_url, data={"csrf_token": token, "req": req, "approval": "approve"}
        )
        assert r.status_code == 403
        assert "location" not in r.headers
    # The genuine form still works afterwards: the refusals consumed nothing.
    r = await env.http.post(
        pages.approval_url,
        data={
            "csrf_token": _field(pages.approval_page, "csrf_token"),
            "req": req,
            "approval": "approve",
        },
    )
    assert r.status_code == 303
    assert "code=" in r.headers["location"]


# == §4.16: clickjacking =======================================================================


def _assert_unframeable(response: httpx.Response) -> None:
    csp = response.headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp, (str(response.url), csp)
    assert response.headers.get("x-frame-options", "").upper() == "DENY", str(response.url)


async def test_every_html_page_forbids_framing(env: Env) -> None:
    c = env.http
    pages: list[httpx.Response] = []
    r = await c.get("/dex/auth", params=_auth_params())
    pages.append(r)
    r = await c.get(r.headers["location"])  # connector picker redirect (single connector)
    pages.append(r)
    login = await c.get(r.headers["location"])
    pages.append(login)
    approval = await _to_approval(c, _auth_params())
    pages.append(await c.get(approval.approval_url))
    pages.append(await c.get("/dex/auth", params=_auth_params(client_id="nobody")))
    pages.append(await c.get("/dex/no-such-page"))
    pages.append(await c.get("/dex/callback"))
    pages.append(await c.post(approval.login_url, data={}))
    html_pages = [p for p in pages if p.headers.get("content-type", "").startswith("text/html")]
    assert len(html_pages) >= 5, [(p.status_code, p.headers.get("content-type")) for p in pages]
    for page in pages:
        _assert_unframeable(page)


# == §4.x: forged tokens at every endpoint that accepts one ====================================


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _payload(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return claims


def _compact(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())


def _forgeries(env: Env, token: str) -> dict[str, str]:
    """Every forgery of ``token`` an attacker can make from public material, and the validly
    signed ones the issuer must still refuse (wrong issuer, expired)."""
    claims = _payload(token)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    kid = header["kid"]
    public_jwk = next(k for k in env.jwks()["keys"] if k["kid"] == kid)
    public_pem = RSAKey.import_key(public_jwk).as_pem(private=False)

    none = _compact({"alg": "none", "kid": kid}, claims) + "."
    hs_input = _compact({"alg": "HS256", "kid": kid, "typ": "JWT"}, claims)
    hs256_pem = hs_input + "." + _b64(hmac.new(public_pem, hs_input.encode(), "sha256").digest())
    jwk_secret = json.dumps(public_jwk).encode()
    hs256_jwk = hs_input + "." + _b64(hmac.new(jwk_secret, hs_input.encode(), "sha256").digest())

    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def attacker_signed(kid_value: str) -> str:
        signing_input = _compact({"alg": "RS256", "kid": kid_value, "typ": "JWT"}, claims)
        signature = attacker.sign(signing_input.encode(), padding.PKCS1v15(), SHA256())
        return signing_input + "." + _b64(signature)

    attacker_pem = attacker.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert attacker_pem  # the attacker's key is published nowhere the issuer looks
    now = int(env.clock.now())
    return {
        "alg=none": none,
        "HS256 keyed with the public PEM": hs256_pem,
        "HS256 keyed with the public JWK": hs256_jwk,
        "unknown kid": attacker_signed("attacker-" + secrets.token_hex(4)),
        "known kid, attacker key": attacker_signed(kid),
        "wrong issuer": env.sign({**claims, "iss": "https://evil.example/dex"}),
        "expired": env.sign({**claims, "iat": now - 7200, "exp": now - 3600}),
        "tampered claims": ".".join(
            [
                token.split(".")[0],
                _b64(json.dumps({**claims, "sub": "root"}).encode()),
                token.split(".")[2],
            ]
        ),
    }


async def _userinfo(env: Env, token: str) -> int:
    r = await env.http.get("/dex/userinfo", headers={"Authorization": f"Bearer {token}"})
    return r.status_code


async def _introspect_active(env: Env, token: str) -> bool:
    r = await env.http.post(
        "/dex/token/introspect", data={"token": token}, auth=("app", APP_SECRET)
    )
    assert r.status_code == 200, r.text
    return bool(r.json()["active"])


async def _webhook_authenticated(env: Env, token: str) -> bool:
    r = await env.webhook.post(
        WEBHOOK_PATH,
        json={
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        },
    )
    assert r.status_code == 200, r.text
    return bool(r.json()["status"].get("authenticated"))


@pytest.mark.parametrize("kind", ["access_token", "id_token"])
async def test_forged_tokens_are_refused_at_userinfo_introspection_and_tokenreview(
    env: Env, kind: str
) -> None:
    tokens = await env.password_tokens("openid email groups")
    genuine = tokens[kind]
    # The genuine token passes every check, so each refusal below is about the forgery.
    # Userinfo and introspection take access tokens only (an ID token carries no client_id
    # and is inactive there even when genuine); the TokenReview webhook takes both.
    access = kind == "access_token"
    assert await _userinfo(env, genuine) == (200 if access else 401)
    assert await _introspect_active(env, genuine) == access
    assert await _webhook_authenticated(env, genuine)
    for name, forged in _forgeries(env, genuine).items():
        assert await _userinfo(env, forged) == 401, name
        assert not await _introspect_active(env, forged), name
        assert not await _webhook_authenticated(env, forged), name


async def test_revoking_a_forged_token_revokes_nothing(env: Env) -> None:
    """RFC 7009 answers 200 for any token; a forgery carrying a real token's jti/sid must not
    be trusted to revoke that session."""
    tokens = await env.password_tokens("openid email offline_access")
    genuine = tokens["access_token"]
    for name, forged in _forgeries(env, genuine).items():
        if name == "expired":
            continue  # validly signed by the issuer: revoking its own (expired) token is fine
        r = await env.http.post(
            "/dex/token/revoke", data={"token": forged}, auth=("app", APP_SECRET)
        )
        assert r.status_code == 200, name
        assert await _userinfo(env, genuine) == 200, name
    r = await env.token({"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert r.status_code == 200
