"""Whole OIDC flows against a real `portcullis serve`, with Authlib as the relying party."""

from __future__ import annotations

import secrets
from urllib.parse import urlencode

import httpx
import pytest

from tests.support.issuer import (
    ADMIN_EMAIL,
    ADMIN_USER_ID,
    APP_REDIRECT,
    DEV_EMAIL,
    DEV_PASSWORD,
    DEV_USER_ID,
    Browser,
    Issuer,
    connector_link,
    form_action,
    hidden_fields,
    query_of,
)
from tests.support.oidc_checks import (
    FULL_SCOPE,
    app_client,
    authorization_url,
    dex_subject,
    kubectl_client,
    new_verifier,
    verify_id_token,
)

pytestmark = pytest.mark.integration


def _code_flow(issuer: Issuer, scope: str = FULL_SCOPE) -> tuple[dict[str, str], str]:
    """Auth code + PKCE for example-app as admin; returns (token response, nonce)."""
    client = app_client(issuer, scope=scope)
    verifier, nonce = new_verifier(), secrets.token_urlsafe(12)
    with Browser(issuer) as browser:
        redirect = browser.authorize_code(authorization_url(issuer, client, verifier, nonce))
    token = client.fetch_token(
        issuer.url("/token"), authorization_response=redirect, code_verifier=verifier
    )
    issuer.remember(*(v for v in token.values() if isinstance(v, str)))
    client.close()
    return dict(token), nonce


def test_discovery_document_names_the_issuer_and_its_endpoints(issuer: Issuer) -> None:
    document = issuer.discovery()
    assert document["issuer"] == issuer.issuer
    for name, path in (
        ("authorization_endpoint", "/auth"),
        ("token_endpoint", "/token"),
        ("jwks_uri", "/keys"),
        ("userinfo_endpoint", "/userinfo"),
        ("introspection_endpoint", "/token/introspect"),
        ("revocation_endpoint", "/token/revoke"),
    ):
        assert document[name] == issuer.url(path), name
    assert "S256" in document["code_challenge_methods_supported"]
    assert "code" in document["response_types_supported"]
    assert "RS256" in document["id_token_signing_alg_values_supported"]
    for grant in ("authorization_code", "refresh_token", "password", "client_credentials"):
        assert grant in document["grant_types_supported"]
    keys = httpx.get(document["jwks_uri"])
    assert keys.status_code == 200
    assert "max-age" in keys.headers["cache-control"]
    assert keys.json()["keys"], "JWKS is empty"
    assert all("d" not in key for key in keys.json()["keys"]), "private key material published"
    etag = keys.headers["etag"]
    assert httpx.get(document["jwks_uri"], headers={"If-None-Match": etag}).status_code == 304


def test_health_and_metrics_on_the_telemetry_listener(issuer: Issuer) -> None:
    assert httpx.get(issuer.telemetry + "/healthz/live").status_code == 200
    assert httpx.get(issuer.telemetry + "/healthz/ready").status_code == 200
    assert httpx.get(issuer.url("/healthz")).status_code == 200
    issuer.discovery()
    metrics = httpx.get(issuer.telemetry + "/metrics")
    assert metrics.status_code == 200
    assert "portcullis_http_requests_total" in metrics.text
    # Metrics live on the telemetry listener only.
    assert httpx.get(issuer.origin + "/metrics").status_code == 404


def test_auth_code_pkce_through_the_html_forms_yields_a_verifiable_id_token(
    issuer: Issuer,
) -> None:
    token, nonce = _code_flow(issuer)
    assert token["token_type"].lower() == "bearer"
    assert token["refresh_token"].startswith("pcr1.")
    claims = verify_id_token(
        issuer,
        token["id_token"],
        client_id="example-app",
        nonce=nonce,
        access_token=token["access_token"],
    )
    assert claims["sub"] == dex_subject(ADMIN_USER_ID, "local")
    assert claims["email"] == ADMIN_EMAIL
    assert claims["email_verified"] is True
    assert claims["groups"] == ["admins"]
    assert claims["name"] == "Admin"  # the display name from staticPasswords[].name
    assert claims["aud"] == "example-app"
    assert claims["exp"] - claims["iat"] == 3600
    assert isinstance(claims["auth_time"], int)


def test_userinfo_returns_the_users_claims(issuer: Issuer) -> None:
    token, _ = _code_flow(issuer)
    client = app_client(issuer, token=token)
    response = client.get(issuer.url("/userinfo"))
    assert response.status_code == 200, response.text
    info = response.json()
    assert info["sub"] == dex_subject(ADMIN_USER_ID, "local")
    assert info["email"] == ADMIN_EMAIL
    assert info["groups"] == ["admins"]
    # An ID token is not an access token.
    refused = httpx.get(
        issuer.url("/userinfo"), headers={"Authorization": f"Bearer {token['id_token']}"}
    )
    assert refused.status_code == 401
    client.close()


def test_public_client_uses_pkce_and_any_loopback_port(issuer: Issuer) -> None:
    # Registered http://127.0.0.1:8000/, RFC 8252 lets a native client pick another port.
    redirect_uri = "http://127.0.0.1:18123/"
    client = kubectl_client(issuer, redirect_uri)
    verifier, nonce = new_verifier(), secrets.token_urlsafe(12)
    with Browser(issuer) as browser:
        redirect = browser.authorize_code(authorization_url(issuer, client, verifier, nonce))
    assert redirect.startswith(redirect_uri)
    token = client.fetch_token(
        issuer.url("/token"), authorization_response=redirect, code_verifier=verifier
    )
    issuer.remember(token["access_token"], token["refresh_token"], token["id_token"])
    verify_id_token(
        issuer,
        token["id_token"],
        client_id="kubectl",
        nonce=nonce,
        access_token=token["access_token"],
    )
    refreshed = client.refresh_token(issuer.url("/token"), refresh_token=token["refresh_token"])
    issuer.remember(refreshed["refresh_token"], refreshed["access_token"])
    assert refreshed["refresh_token"] != token["refresh_token"]
    # A public client may revoke its own session (RFC 7009) without a secret.
    revoked = client.revoke_token(
        issuer.url("/token/revoke"),
        token=refreshed["refresh_token"],
        token_type_hint="refresh_token",
    )
    assert revoked.status_code == 200
    dead = issuer.token(
        {
            "grant_type": "refresh_token",
            "refresh_token": refreshed["refresh_token"],
            "client_id": "kubectl",
        }
    )
    assert dead.status_code == 400
    assert dead.json()["error"] == "invalid_grant"
    client.close()


def test_refresh_rotates_the_token_and_keeps_the_identity(issuer: Issuer) -> None:
    token, _ = _code_flow(issuer)
    client = app_client(issuer, token=token)
    refreshed = client.refresh_token(issuer.url("/token"), refresh_token=token["refresh_token"])
    issuer.remember(refreshed["refresh_token"], refreshed["access_token"], refreshed["id_token"])
    assert refreshed["refresh_token"] != token["refresh_token"]
    assert refreshed["refresh_token"].split(".")[1] == token["refresh_token"].split(".")[1], (
        "rotation should keep the family id"
    )
    claims = verify_id_token(
        issuer,
        refreshed["id_token"],
        client_id="example-app",
        nonce=None,
        access_token=refreshed["access_token"],
    )
    assert claims["sub"] == dex_subject(ADMIN_USER_ID, "local")
    # The successor works again.
    again = client.refresh_token(issuer.url("/token"), refresh_token=refreshed["refresh_token"])
    issuer.remember(again["refresh_token"], again["access_token"])
    assert again["refresh_token"] not in (token["refresh_token"], refreshed["refresh_token"])
    client.close()


def test_refresh_may_narrow_but_not_widen_scopes(issuer: Issuer) -> None:
    token, _ = _code_flow(issuer, scope="openid email offline_access")
    narrowed = issuer.token(
        {
            "grant_type": "refresh_token",
            "refresh_token": token["refresh_token"],
            "scope": "openid offline_access",
        },
        auth=issuer.app_auth(),
    )
    assert narrowed.status_code == 200, narrowed.text
    widened = issuer.token(
        {
            "grant_type": "refresh_token",
            "refresh_token": narrowed.json()["refresh_token"],
            "scope": "openid offline_access groups",
        },
        auth=issuer.app_auth(),
    )
    assert widened.status_code == 400
    assert widened.json()["error"] == "invalid_scope"


def test_revoking_a_refresh_token_with_authlib_ends_the_session(issuer: Issuer) -> None:
    token, _ = _code_flow(issuer)
    client = app_client(issuer, token=token)
    response = client.revoke_token(
        issuer.url("/token/revoke"),
        token=token["refresh_token"],
        token_type_hint="refresh_token",
    )
    assert response.status_code == 200
    refused = issuer.token(
        {"grant_type": "refresh_token", "refresh_token": token["refresh_token"]},
        auth=issuer.app_auth(),
    )
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_grant"
    client.close()


def test_revoking_an_access_token_makes_userinfo_refuse_it(issuer: Issuer) -> None:
    token, _ = _code_flow(issuer)
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    assert httpx.get(issuer.url("/userinfo"), headers=bearer).status_code == 200
    client = app_client(issuer, token=token)
    response = client.revoke_token(
        issuer.url("/token/revoke"), token=token["access_token"], token_type_hint="access_token"
    )
    assert response.status_code == 200
    refused = httpx.get(issuer.url("/userinfo"), headers=bearer)
    assert refused.status_code == 401
    assert "invalid_token" in refused.headers["www-authenticate"]
    # The refresh token is a separate credential and still works.
    refreshed = issuer.token(
        {"grant_type": "refresh_token", "refresh_token": token["refresh_token"]},
        auth=issuer.app_auth(),
    )
    assert refreshed.status_code == 200, refreshed.text
    client.close()


def test_revocation_of_another_clients_token_is_ignored(issuer: Issuer) -> None:
    token, _ = _code_flow(issuer)
    response = httpx.post(
        issuer.url("/token/revoke"),
        data={"token": token["refresh_token"]},
        auth=("peer-app", issuer.creds.peer),
    )
    assert response.status_code == 200  # RFC 7009: no information for other clients
    still = issuer.token(
        {"grant_type": "refresh_token", "refresh_token": token["refresh_token"]},
        auth=issuer.app_auth(),
    )
    assert still.status_code == 200, still.text


def test_introspection_reports_active_and_inactive_tokens(issuer: Issuer) -> None:
    token, _ = _code_flow(issuer)

    def introspect(value: str, hint: str = "") -> dict[str, object]:
        data = {"token": value}
        if hint:
            data["token_type_hint"] = hint
        response = httpx.post(issuer.url("/token/introspect"), data=data, auth=issuer.app_auth())
        assert response.status_code == 200, response.text
        body: dict[str, object] = response.json()
        return body

    access = introspect(token["access_token"])
    assert access["active"] is True
    assert access["sub"] == dex_subject(ADMIN_USER_ID, "local")
    assert access["client_id"] == "example-app"
    assert access["iss"] == issuer.issuer
    refresh = introspect(token["refresh_token"], "refresh_token")
    assert refresh["active"] is True
    assert refresh["client_id"] == "example-app"
    assert introspect("not-a-token") == {"active": False}
    assert introspect("pcr1.unknown.secret", "refresh_token") == {"active": False}
    # A tampered signature is inactive.
    head, body, sig = token["access_token"].split(".")
    tampered = f"{head}.{body}.{sig[:-4]}AAAA"
    assert introspect(tampered) == {"active": False}
    # Revoked -> inactive.
    httpx.post(
        issuer.url("/token/revoke"),
        data={"token": token["access_token"]},
        auth=issuer.app_auth(),
    ).raise_for_status()
    assert introspect(token["access_token"]) == {"active": False}
    # Introspection needs an authenticated confidential client.
    anonymous = httpx.post(issuer.url("/token/introspect"), data={"token": token["id_token"]})
    assert anonymous.status_code == 401
    assert anonymous.json()["error"] == "invalid_client"


def test_client_credentials_grant_for_an_opted_in_client(issuer: Issuer) -> None:
    response = issuer.token(
        {"grant_type": "client_credentials", "scope": "openid"},
        auth=("service-bot", issuer.creds.bot),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "refresh_token" not in body
    assert body["token_type"].lower() == "bearer"
    claims = verify_id_token(
        issuer,
        body["id_token"],
        client_id="service-bot",
        nonce=None,
        access_token=body["access_token"],
    )
    assert claims["aud"] == "service-bot"
    introspected = httpx.post(
        issuer.url("/token/introspect"),
        data={"token": body["access_token"]},
        auth=("service-bot", issuer.creds.bot),
    ).json()
    assert introspected["active"] is True
    # A client that did not opt in is refused; so is a public client.
    refused = issuer.token({"grant_type": "client_credentials"}, auth=issuer.app_auth())
    assert refused.status_code == 400
    assert refused.json()["error"] == "unauthorized_client"
    public = issuer.token({"grant_type": "client_credentials", "client_id": "kubectl"})
    assert public.status_code in (400, 401)
    assert public.json()["error"] in ("unauthorized_client", "invalid_client")


def test_password_grant_issues_tokens_for_valid_credentials(issuer: Issuer) -> None:
    response = issuer.token(
        {
            "grant_type": "password",
            "username": DEV_EMAIL,
            "password": DEV_PASSWORD,
            "scope": "openid email groups offline_access",
        },
        auth=issuer.app_auth(),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    claims = verify_id_token(
        issuer,
        body["id_token"],
        client_id="example-app",
        nonce=None,
        access_token=body["access_token"],
    )
    assert claims["sub"] == dex_subject(DEV_USER_ID, "local")
    assert claims["email"] == DEV_EMAIL
    assert claims["groups"] == ["developers"]
    assert body["refresh_token"].startswith("pcr1.")
    assert response.headers["cache-control"] == "no-store"
    wrong = issuer.token(
        {"grant_type": "password", "username": DEV_EMAIL, "password": "not-" + DEV_PASSWORD},
        auth=issuer.app_auth(),
    )
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_grant"


def test_trusted_peer_audience_via_code_flow(issuer: Issuer) -> None:
    token, nonce = _code_flow(issuer, scope="openid email audience:server:client_id:peer-app")
    claims = verify_id_token(
        issuer,
        token["id_token"],
        client_id="example-app",
        audience="peer-app",
        nonce=nonce,
        access_token=token["access_token"],
    )
    assert claims["aud"] in ("peer-app", ["peer-app"])
    assert claims["azp"] == "example-app"


def test_trusted_peer_audience_via_password_grant_and_untrusted_peer_refused(
    issuer: Issuer,
) -> None:
    response = issuer.token(
        {
            "grant_type": "password",
            "username": DEV_EMAIL,
            "password": DEV_PASSWORD,
            "scope": "openid audience:server:client_id:peer-app",
        },
        auth=issuer.app_auth(),
    )
    assert response.status_code == 200, response.text
    claims = verify_id_token(
        issuer,
        response.json()["id_token"],
        client_id="example-app",
        audience="peer-app",
        nonce=None,
        access_token=response.json()["access_token"],
    )
    assert claims["azp"] == "example-app"
    refused = issuer.token(
        {
            "grant_type": "password",
            "username": DEV_EMAIL,
            "password": DEV_PASSWORD,
            "scope": "openid audience:server:client_id:untrusted-app",
        },
        auth=issuer.app_auth(),
    )
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_scope"


def test_untrusted_peer_audience_is_refused_at_authorize(issuer: Issuer) -> None:
    state = secrets.token_urlsafe(8)
    with Browser(issuer) as browser:
        response = browser.open_authorize(
            {
                "client_id": "example-app",
                "redirect_uri": APP_REDIRECT,
                "response_type": "code",
                "scope": "openid audience:server:client_id:untrusted-app",
                "state": state,
                "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
                "code_challenge_method": "S256",
            }
        )
    assert response.status_code in (302, 303)
    location = response.headers["location"]
    assert location.startswith(APP_REDIRECT + "?")
    assert query_of(location)["error"] == "invalid_scope"
    assert query_of(location)["state"] == state


def test_two_sessions_for_one_user_both_keep_working(issuer: Issuer) -> None:
    """Dex #981: logging in on a second device must not revoke the first device's session."""
    first, _ = _code_flow(issuer)
    second, _ = _code_flow(issuer)
    assert first["refresh_token"].split(".")[1] != second["refresh_token"].split(".")[1]
    for token in (first, second):
        response = issuer.token(
            {"grant_type": "refresh_token", "refresh_token": token["refresh_token"]},
            auth=issuer.app_auth(),
        )
        assert response.status_code == 200, response.text


def test_callback_connector_login_through_the_picker(issuer: Issuer) -> None:
    """The dev-only mock connector (callback style): picker -> /callback -> approval -> code."""
    client = app_client(issuer, scope="openid email groups federated:id")
    verifier, nonce = new_verifier(), secrets.token_urlsafe(8)
    with Browser(issuer) as browser:
        picker = browser.open_authorize(authorization_url(issuer, client, verifier, nonce))
        assert picker.status_code == 200
        assert "Development only" in picker.text
        link = connector_link(picker.text, "mock", str(picker.url))
        approval = browser.follow_internal(browser.get(link))
        assert approval.status_code == 200, approval.text[:500]
        fields = hidden_fields(approval.text)
        done = browser.http.post(
            form_action(approval.text, str(approval.url)), data={**fields, "approval": "approve"}
        )
    assert done.status_code == 303
    redirect = done.headers["location"]
    issuer.remember(query_of(redirect).get("code"))
    token = client.fetch_token(
        issuer.url("/token"), authorization_response=redirect, code_verifier=verifier
    )
    issuer.remember(token["access_token"], token["id_token"])
    claims = verify_id_token(
        issuer,
        token["id_token"],
        client_id="example-app",
        nonce=nonce,
        access_token=token["access_token"],
    )
    assert claims["federated_claims"]["connector_id"] == "mock"
    user_id = claims["federated_claims"]["user_id"]
    assert claims["sub"] == dex_subject(user_id, "mock")
    client.close()


def test_starting_directly_at_a_connector(issuer: Issuer) -> None:
    """Dex lets a client skip the picker with /auth/{connector}?client_id=..."""
    params = {
        "client_id": "example-app",
        "redirect_uri": APP_REDIRECT,
        "response_type": "code",
        "scope": "openid",
        "state": "direct",
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "code_challenge_method": "S256",
    }
    with Browser(issuer) as browser:
        redirect = browser.authorize_code(issuer.url("/auth/local") + "?" + urlencode(params))
    assert query_of(redirect)["state"] == "direct"
    assert query_of(redirect)["code"]
