"""RP-initiated logout against a real `portcullis serve`: the end_session_endpoint in discovery,
a hinted logout ending the client's refresh family (refresh then fails) and redirecting only to
a registered URI with the state echoed, and the confirmation page without a hint."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode, urljoin

import httpx
import pytest

from tests.support.issuer import Browser, Issuer, form_action, hidden_fields, issuers_in
from tests.support.oidc_checks import FULL_SCOPE, app_client, authorization_url, new_verifier

pytestmark = pytest.mark.integration

BYE = "http://127.0.0.1:5555/signed-out"


@pytest.fixture(scope="module")
def logout_issuer(
    tmp_path_factory: pytest.TempPathFactory, portcullis_cli: Path
) -> Iterator[Issuer]:
    def register(config: dict[str, object]) -> None:
        clients = config["staticClients"]
        assert isinstance(clients, list)
        clients[0]["postLogoutRedirectURIs"] = [BYE]

    with issuers_in(tmp_path_factory.mktemp("logout")) as start:
        yield start(edit=register)


def _login(issuer: Issuer) -> dict[str, str]:
    client = app_client(issuer, scope=FULL_SCOPE)
    verifier, nonce = new_verifier(), secrets.token_urlsafe(12)
    with Browser(issuer) as browser:
        redirect = browser.authorize_code(authorization_url(issuer, client, verifier, nonce))
    tokens = dict(
        client.fetch_token(
            issuer.url("/token"), authorization_response=redirect, code_verifier=verifier
        )
    )
    issuer.remember_exchange({}, None)
    for name in ("access_token", "id_token", "refresh_token"):
        issuer.remember(tokens.get(name))
    return tokens


def _refresh(issuer: Issuer, refresh_token: str) -> httpx.Response:
    return issuer.token(
        {"grant_type": "refresh_token", "refresh_token": refresh_token}, auth=issuer.app_auth()
    )


def test_discovery_advertises_the_end_session_endpoint(logout_issuer: Issuer) -> None:
    assert logout_issuer.discovery()["end_session_endpoint"] == logout_issuer.url("/logout")


def test_logout_ends_the_session_and_redirects_to_the_registered_uri(
    logout_issuer: Issuer,
) -> None:
    tokens = _login(logout_issuer)
    other = _login(logout_issuer)
    query = urlencode(
        {
            "id_token_hint": tokens["id_token"],
            "post_logout_redirect_uri": BYE,
            "state": "st-123",
        }
    )
    response = httpx.get(logout_issuer.url(f"/logout?{query}"))
    assert response.status_code == 303
    assert response.headers["location"] == f"{BYE}?state=st-123"

    refused = _refresh(logout_issuer, tokens["refresh_token"])
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_grant"
    userinfo = httpx.get(
        logout_issuer.url("/userinfo"),
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )
    assert userinfo.status_code == 401
    # Another session of the same user and client is not touched.
    assert _refresh(logout_issuer, other["refresh_token"]).status_code == 200


def test_logout_never_redirects_to_an_unregistered_uri(logout_issuer: Issuer) -> None:
    tokens = _login(logout_issuer)
    for uri in ("https://evil.example/", BYE + "/x", "http://127.0.0.1:5555/callback"):
        query = urlencode({"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": uri})
        response = httpx.post(
            logout_issuer.url("/logout"),
            content=query,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 400
        assert "location" not in response.headers
        assert "not registered" in response.text
    # Refused requests end nothing.
    assert _refresh(logout_issuer, tokens["refresh_token"]).status_code == 200
    forged = httpx.get(logout_issuer.url("/logout?id_token_hint=a.b.c"))
    assert forged.status_code == 400


def test_logout_without_a_hint_asks_for_confirmation(logout_issuer: Issuer) -> None:
    page_url = logout_issuer.url(
        "/logout?" + urlencode({"client_id": "example-app", "post_logout_redirect_uri": BYE})
    )
    with Browser(logout_issuer) as browser:
        page = browser.get(page_url)
        assert page.status_code == 200
        assert 'id="confirm-logout"' in page.text
        fields = hidden_fields(page.text)
        logout_issuer.remember(*fields.values())
        # A cross-site POST without the page's CSRF token gets the page again, not a redirect.
        bare = httpx.post(
            logout_issuer.url("/logout"),
            data={"client_id": "example-app", "post_logout_redirect_uri": BYE, "confirm": "yes"},
        )
        assert bare.status_code == 200
        assert 'id="confirm-logout"' in bare.text
        confirmed = browser.http.post(
            form_action(page.text, page_url), data={**fields, "confirm": "yes"}
        )
        assert confirmed.status_code == 303
        assert urljoin(page_url, confirmed.headers["location"]) == BYE
    plain = httpx.get(logout_issuer.url("/logout"))
    assert plain.status_code == 200
    assert 'id="confirm-logout"' in plain.text
