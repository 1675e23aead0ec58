"""The password grant against a real server (issue 9, finding 4): with
``oauth2.passwordConnector`` set, the public ``kubectl`` client must not turn a username and
password into tokens (RFC 9700 §2.4); the confidential client that lists the grant still can."""

from __future__ import annotations

import httpx
import pytest

from tests.support.issuer import ADMIN_EMAIL, ADMIN_PASSWORD, Issuer

pytestmark = pytest.mark.integration


def test_the_public_kubectl_client_cannot_use_the_password_grant(issuer: Issuer) -> None:
    response = httpx.post(
        issuer.url("/token"),
        data={
            "grant_type": "password",
            "client_id": "kubectl",
            "username": ADMIN_EMAIL,
            "password": ADMIN_PASSWORD,
            "scope": "openid",
        },
    )
    issuer.remember_exchange({}, response)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "unauthorized_client"
    assert "access_token" not in response.text


def test_the_confidential_client_listing_the_grant_still_can(issuer: Issuer) -> None:
    response = issuer.token(
        {
            "grant_type": "password",
            "username": ADMIN_EMAIL,
            "password": ADMIN_PASSWORD,
            "scope": "openid",
        },
        auth=issuer.app_auth(),
    )
    assert response.status_code == 200, response.text
    assert response.json()["access_token"]
