"""Every refusal the issuer owes a client or a browser, with its OAuth error code, plus the
browser protections (CSRF, login bound to its browser, security headers, CORS)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from tests.support.issuer import (
    APP_REDIRECT,
    KUBECTL_REDIRECT,
    Browser,
    Issuer,
    StartIssuer,
    form_action,
    hidden_fields,
    query_of,
)
from tests.support.oidc_checks import FULL_SCOPE, app_client, authorization_url, new_verifier

pytestmark = pytest.mark.integration

CHALLENGE_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"  # RFC 7636 appendix B
CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def _params(**overrides: str) -> dict[str, str]:
    params = {
        "client_id": "example-app",
        "redirect_uri": APP_REDIRECT,
        "response_type": "code",
        "scope": "openid email offline_access",
        "state": secrets.token_urlsafe(8),
        "code_challenge": CHALLENGE,
        "code_challenge_method": "S256",
    }
    params.update(overrides)
    return params


def _code(issuer: Issuer, **overrides: str) -> str:
    with Browser(issuer) as browser:
        redirect = browser.authorize_code(_params(**overrides))
    return query_of(redirect)["code"]


def _exchange(issuer: Issuer, code: str, verifier: str = CHALLENGE_VERIFIER) -> httpx.Response:
    return issuer.token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": APP_REDIRECT,
            "code_verifier": verifier,
        },
        auth=issuer.app_auth(),
    )


def _error(response: httpx.Response, status: int, error: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"] == error, response.text
    assert response.headers.get("cache-control") == "no-store"


# -- authorization endpoint --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_id", "redirect_uri"),
    [
        ("example-app", "https://evil.example/callback"),
        ("example-app", APP_REDIRECT + "/extra"),
        ("example-app", "http://127.0.0.1:5556/callback"),  # confidential: no port flexibility
        ("kubectl", "http://evil.example:8000/"),
        ("no-such-client", APP_REDIRECT),
    ],
)
def test_bad_redirect_uri_gets_an_html_error_and_no_redirect(
    issuer: Issuer, client_id: str, redirect_uri: str
) -> None:
    with Browser(issuer) as browser:
        response = browser.open_authorize(_params(client_id=client_id, redirect_uri=redirect_uri))
    assert response.status_code == 400
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")
    assert "Traceback" not in response.text


def test_unknown_scope_redirects_with_invalid_scope(issuer: Issuer) -> None:
    params = _params(scope="openid wheel-of-fortune")
    with Browser(issuer) as browser:
        response = browser.open_authorize(params)
    assert response.status_code in (302, 303)
    location = response.headers["location"]
    assert location.startswith(APP_REDIRECT + "?")
    assert query_of(location)["error"] == "invalid_scope"
    assert query_of(location)["state"] == params["state"]


def test_public_client_without_pkce_is_refused(issuer: Issuer) -> None:
    params = _params(client_id="kubectl", redirect_uri=KUBECTL_REDIRECT)
    del params["code_challenge"], params["code_challenge_method"]
    with Browser(issuer) as browser:
        response = browser.open_authorize(params)
    assert response.status_code in (302, 303)
    assert query_of(response.headers["location"])["error"] == "invalid_request"


def test_unsupported_response_type_is_redirected(issuer: Issuer) -> None:
    with Browser(issuer) as browser:
        response = browser.open_authorize(_params(response_type="token id_token", nonce="n"))
    assert response.status_code in (302, 303)
    location = response.headers["location"]
    assert location.startswith(APP_REDIRECT)
    assert "unsupported_response_type" in location or "unauthorized_client" in location


def test_denying_approval_redirects_with_access_denied(issuer: Issuer) -> None:
    params = _params()
    with Browser(issuer) as browser:
        steps = browser.login(params, approve=False)
    assert steps.final is not None
    location = steps.final.headers["location"]
    assert query_of(location)["error"] == "access_denied"
    assert query_of(location)["state"] == params["state"]
    assert "code" not in query_of(location)


# -- token endpoint ----------------------------------------------------------------------------


def test_wrong_pkce_verifier_is_invalid_grant(issuer: Issuer) -> None:
    code = _code(issuer)
    _error(_exchange(issuer, code, verifier=new_verifier()), 400, "invalid_grant")


def test_missing_pkce_verifier_is_invalid_grant(issuer: Issuer) -> None:
    code = _code(issuer)
    response = issuer.token(
        {"grant_type": "authorization_code", "code": code, "redirect_uri": APP_REDIRECT},
        auth=issuer.app_auth(),
    )
    _error(response, 400, "invalid_grant")


def test_redirect_uri_mismatch_at_token_is_invalid_grant(issuer: Issuer) -> None:
    code = _code(issuer)
    response = issuer.token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": "http://127.0.0.1:5555/other",
            "code_verifier": CHALLENGE_VERIFIER,
        },
        auth=issuer.app_auth(),
    )
    _error(response, 400, "invalid_grant")


def test_replayed_code_is_refused_and_revokes_what_it_issued(issuer: Issuer) -> None:
    code = _code(issuer)
    first = _exchange(issuer, code)
    assert first.status_code == 200, first.text
    tokens = first.json()
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert httpx.get(issuer.url("/userinfo"), headers=bearer).status_code == 200
    _error(_exchange(issuer, code), 400, "invalid_grant")
    # Everything issued from the code is dead now.
    refresh = issuer.token(
        {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=issuer.app_auth(),
    )
    _error(refresh, 400, "invalid_grant")
    assert httpx.get(issuer.url("/userinfo"), headers=bearer).status_code == 401
    introspected = httpx.post(
        issuer.url("/token/introspect"),
        data={"token": tokens["access_token"]},
        auth=issuer.app_auth(),
    ).json()
    assert introspected == {"active": False}


def test_replayed_code_also_revokes_the_rotated_refresh_token(issuer: Issuer) -> None:
    code = _code(issuer)
    tokens = _exchange(issuer, code).json()
    rotated = issuer.token(
        {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=issuer.app_auth(),
    )
    assert rotated.status_code == 200, rotated.text
    _error(_exchange(issuer, code), 400, "invalid_grant")
    again = issuer.token(
        {"grant_type": "refresh_token", "refresh_token": rotated.json()["refresh_token"]},
        auth=issuer.app_auth(),
    )
    _error(again, 400, "invalid_grant")


def test_code_of_another_client_is_invalid_grant(issuer: Issuer) -> None:
    code = _code(issuer)
    response = issuer.token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": APP_REDIRECT,
            "code_verifier": CHALLENGE_VERIFIER,
        },
        auth=("peer-app", issuer.creds.peer),
    )
    _error(response, 400, "invalid_grant")


def test_wrong_client_secret_is_invalid_client_401(issuer: Issuer) -> None:
    code = _code(issuer)
    response = issuer.token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": APP_REDIRECT,
            "code_verifier": CHALLENGE_VERIFIER,
        },
        auth=("example-app", "wrong-" + issuer.creds.app),
    )
    _error(response, 401, "invalid_client")
    assert "www-authenticate" in response.headers
    # client_secret_post with a wrong secret, and an unknown client: the same answer.
    post = issuer.token(
        {
            "grant_type": "refresh_token",
            "refresh_token": "pcr1.x.y",
            "client_id": "example-app",
            "client_secret": "nope",
        }
    )
    _error(post, 401, "invalid_client")
    unknown = issuer.token(
        {"grant_type": "refresh_token", "refresh_token": "pcr1.x.y"}, auth=("ghost", "boo")
    )
    _error(unknown, 401, "invalid_client")
    # A confidential client that only names itself is not authenticated.
    anonymous = issuer.token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": APP_REDIRECT,
            "code_verifier": CHALLENGE_VERIFIER,
            "client_id": "example-app",
        }
    )
    _error(anonymous, 401, "invalid_client")
    # The code survived the failed attempts.
    assert _exchange(issuer, code).status_code == 200


def test_token_endpoint_request_errors(issuer: Issuer) -> None:
    _error(issuer.token({}, auth=issuer.app_auth()), 400, "invalid_request")
    _error(
        issuer.token({"grant_type": "urn:made:up"}, auth=issuer.app_auth()),
        400,
        "unsupported_grant_type",
    )
    _error(
        issuer.token(
            {"grant_type": "refresh_token", "refresh_token": "garbage"}, auth=issuer.app_auth()
        ),
        400,
        "invalid_grant",
    )
    repeated = httpx.post(
        issuer.url("/token"),
        content="grant_type=client_credentials&grant_type=client_credentials",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        auth=("service-bot", issuer.creds.bot),
    )
    _error(repeated, 400, "invalid_request")
    json_body = httpx.post(
        issuer.url("/token"),
        json={"grant_type": "client_credentials"},
        auth=("service-bot", issuer.creds.bot),
    )
    _error(json_body, 400, "invalid_request")


def test_refresh_token_of_another_client_is_invalid_grant(issuer: Issuer) -> None:
    tokens = _exchange(issuer, _code(issuer)).json()
    response = issuer.token(
        {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=("peer-app", issuer.creds.peer),
    )
    _error(response, 400, "invalid_grant")
    # Still valid for its owner.
    owner = issuer.token(
        {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=issuer.app_auth(),
    )
    assert owner.status_code == 200, owner.text


# -- browser protections -----------------------------------------------------------------------


def test_password_post_without_or_with_wrong_csrf_token_is_refused(issuer: Issuer) -> None:
    with Browser(issuer) as browser:
        steps = browser.reach_password_form(_params())
        action = form_action(steps.password_page, steps.password_form_url)
        fields = hidden_fields(steps.password_page)
        assert fields.get("csrf_token"), "the password form has no csrf_token"
        missing = browser.http.post(
            action, data={"login": "admin@example.com", "password": "password"}
        )
        assert missing.status_code == 403
        wrong = browser.http.post(
            action,
            data={"login": "admin@example.com", "password": "password", "csrf_token": "0" * 64},
        )
        assert wrong.status_code == 403
        # The genuine form still works afterwards.
        ok = browser.submit_password(steps)
        assert ok.status_code == 303
        assert "/approval" in ok.headers["location"]


def test_approval_post_without_csrf_token_is_refused(issuer: Issuer) -> None:
    with Browser(issuer) as browser:
        steps = browser.reach_password_form(_params())
        response = browser.submit_password(steps)
        approval_url = str(response.url.join(response.headers["location"]))
        page = browser.http.get(approval_url)
        assert page.status_code == 200
        fields = hidden_fields(page.text)
        assert fields.get("csrf_token")
        forged = browser.http.post(
            form_action(page.text, approval_url), data={"req": fields["req"], "approval": "approve"}
        )
        assert forged.status_code == 403
        assert "location" not in forged.headers


def test_login_request_opened_in_another_browser_is_refused(issuer: Issuer) -> None:
    with Browser(issuer) as victim, Browser(issuer) as attacker:
        steps = victim.reach_password_form(_params())
        # The attacker has the URL but not the victim's binding cookie.
        page = attacker.get(steps.password_form_url)
        assert page.status_code == 403
        post = attacker.http.post(
            form_action(steps.password_page, steps.password_form_url),
            data={
                **hidden_fields(steps.password_page),
                "login": "admin@example.com",
                "password": "password",
            },
        )
        assert post.status_code == 403
        # After the victim logs in, the approval page is still the victim's alone.
        response = victim.submit_password(steps)
        approval_url = str(response.url.join(response.headers["location"]))
        assert attacker.get(approval_url).status_code == 403
        assert victim.get(approval_url).status_code == 200


def test_html_pages_carry_security_headers(issuer: Issuer) -> None:
    with Browser(issuer) as browser:
        picker = browser.open_authorize(_params())
        steps = browser.reach_password_form(_params())
        form = browser.get(steps.password_form_url)
        error = browser.open_authorize(_params(redirect_uri="https://evil.example/"))
    for response in (picker, form, error):
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert response.headers["referrer-policy"] == "no-referrer"
        assert "strict-transport-security" not in response.headers  # plain http issuer
    assert "no-store" in form.headers["cache-control"]
    cookies = [v for k, v in form.headers.multi_items() if k == "set-cookie"] or [
        v for k, v in picker.headers.multi_items() if k == "set-cookie"
    ]
    assert cookies
    assert all("httponly" in c.lower() for c in cookies)
    assert all("samesite=lax" in c.lower() for c in cookies)


def test_https_issuer_behind_a_proxy_gets_hsts_and_secure_cookies(
    start_issuer: StartIssuer,
) -> None:
    """TLS terminated by a proxy: the listener is plain http, the issuer URL is https."""

    def edit(config: dict[str, Any]) -> None:
        config["issuer"] = config["issuer"].replace("http://", "https://")

    issuer = start_issuer(edit=edit)
    page = httpx.get(f"{issuer.origin}/dex/auth", params=_params())
    assert page.status_code == 200, page.text[:300]
    assert "max-age=" in page.headers["strict-transport-security"]
    cookies = [v for k, v in page.headers.multi_items() if k == "set-cookie"]
    assert cookies
    assert all("secure" in c.lower() for c in cookies)
    discovery = httpx.get(f"{issuer.origin}/dex/.well-known/openid-configuration").json()
    assert discovery["issuer"].startswith("https://")


def test_connector_picker_lists_every_connector(issuer: Issuer) -> None:
    with Browser(issuer) as browser:
        page = browser.open_authorize(_params())
    assert page.status_code == 200
    assert 'id="connector-local"' in page.text
    assert 'id="connector-mock"' in page.text
    assert any(c.startswith("pcb_") for c in page.cookies)


# -- CORS --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/.well-known/openid-configuration", "/keys"])
def test_cors_headers_only_for_allowed_origins(issuer: Issuer, path: str) -> None:
    allowed = httpx.get(issuer.url(path), headers={"Origin": "https://allowed.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://allowed.example"
    denied = httpx.get(issuer.url(path), headers={"Origin": "https://evil.example"})
    assert denied.status_code == 200
    assert "access-control-allow-origin" not in denied.headers
    preflight_ok = httpx.options(
        issuer.url(path),
        headers={"Origin": "https://allowed.example", "Access-Control-Request-Method": "GET"},
    )
    assert preflight_ok.status_code in (200, 204)
    assert preflight_ok.headers["access-control-allow-origin"] == "https://allowed.example"
    preflight_denied = httpx.options(
        issuer.url(path),
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in preflight_denied.headers


def test_cors_on_token_endpoint_for_allowed_origin_only(issuer: Issuer) -> None:
    preflight = httpx.options(
        issuer.url("/token"),
        headers={"Origin": "https://allowed.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.headers["access-control-allow-origin"] == "https://allowed.example"
    denied = httpx.options(
        issuer.url("/token"),
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in denied.headers
    # Browser login pages never get CORS headers.
    page = httpx.get(
        issuer.url("/auth") + "?" + urlencode(_params()),
        headers={"Origin": "https://allowed.example"},
    )
    assert "access-control-allow-origin" not in page.headers


def test_authlib_sees_invalid_grant_for_a_bad_code(issuer: Issuer) -> None:
    client = app_client(issuer, scope=FULL_SCOPE)
    verifier = new_verifier()
    url = authorization_url(issuer, client, verifier, "n")
    state = query_of(url)["state"]
    from authlib.integrations.base_client.errors import (  # type: ignore[import-untyped]
        OAuthError,
    )

    with pytest.raises(OAuthError) as caught:
        client.fetch_token(
            issuer.url("/token"),
            authorization_response=f"{APP_REDIRECT}?code=forged&state={state}",
            code_verifier=verifier,
        )
    assert caught.value.error == "invalid_grant"
    client.close()


def test_replayed_code_revokes_access_tokens_minted_by_its_refresh_tokens(issuer: Issuer) -> None:
    """Everything that descends from a leaked code dies, including access tokens minted by
    refreshing the session the code started (RFC 6749 §4.1.2, RFC 9700 §4.2.4)."""
    code = _code(issuer)
    tokens = _exchange(issuer, code).json()
    rotated = issuer.token(
        {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=issuer.app_auth(),
    ).json()
    bearer = {"Authorization": f"Bearer {rotated['access_token']}"}
    assert httpx.get(issuer.url("/userinfo"), headers=bearer).status_code == 200
    _error(_exchange(issuer, code), 400, "invalid_grant")
    assert httpx.get(issuer.url("/userinfo"), headers=bearer).status_code == 401


def test_approval_form_cannot_be_submitted_twice(issuer: Issuer) -> None:
    with Browser(issuer) as browser:
        steps = browser.login(_params())
        assert steps.final is not None
        assert "code" in query_of(steps.final.headers["location"])
        fields = hidden_fields(steps.approval_page)
        again = browser.http.post(
            form_action(steps.approval_page, steps.approval_url),
            data={**fields, "approval": "approve"},
        )
    assert again.status_code == 400
    assert "location" not in again.headers


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_forged_access_tokens_are_refused(issuer: Issuer) -> None:
    """alg=none and HS256 signed with the public JWK (algorithm confusion) never pass."""
    now = int(time.time())
    claims = {
        "iss": issuer.issuer,
        "sub": "forged",
        "aud": "example-app",
        "iat": now,
        "exp": now + 600,
        "client_id": "example-app",
        "jti": secrets.token_hex(16),
    }
    public = issuer.jwks()["keys"][0]
    unsigned = _b64({"alg": "none", "typ": "JWT"}) + "." + _b64(claims) + "."
    signing_input = _b64({"alg": "HS256", "typ": "JWT", "kid": public["kid"]}) + "." + _b64(claims)
    mac = hmac.new(json.dumps(public).encode(), signing_input.encode(), hashlib.sha256).digest()
    confused = signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    for forged in (unsigned, confused):
        bearer = {"Authorization": f"Bearer {forged}"}
        assert httpx.get(issuer.url("/userinfo"), headers=bearer).status_code == 401
        introspected = httpx.post(
            issuer.url("/token/introspect"), data={"token": forged}, auth=issuer.app_auth()
        )
        assert introspected.json() == {"active": False}


def test_user_input_is_escaped_in_html_pages(issuer: Issuer) -> None:
    payload = "<script>alert(1)</script>"
    error_page = httpx.get(
        issuer.url("/auth"),
        params={"client_id": payload, "redirect_uri": APP_REDIRECT, "response_type": "code"},
    )
    assert error_page.status_code == 400
    assert payload not in error_page.text
    with Browser(issuer) as browser:
        steps = browser.reach_password_form(_params())
        failed = browser.submit_password(steps, f'"><{payload}', "wrong-password")
    assert failed.status_code == 401
    assert payload not in failed.text
    assert "&lt;script&gt;" in failed.text
