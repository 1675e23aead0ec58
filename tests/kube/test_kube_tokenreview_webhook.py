"""The TokenReview webhook of a real `portcullis serve`, over HTTPS, as kube-apiserver calls it:
valid tokens map to the right user and groups; expired, foreign-audience, forged and revoked
(session ended) tokens are refused without leaking why in detail."""

from __future__ import annotations

import base64
import json
import ssl
import time
from typing import Any

import httpx
import pytest

from tests.support.issuer import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    DEV_EMAIL,
    DEV_PASSWORD,
    Issuer,
    StartIssuer,
    free_port,
)
from tests.support.kube import ServingCert

V1 = "authentication.k8s.io/v1"


def webhook_patch(port: int, cert: ServingCert, **extra: Any) -> dict[str, Any]:
    return {
        "kubernetes": {
            "tokenReview": {
                "enabled": True,
                "addr": f"127.0.0.1:{port}",
                "tlsCert": str(cert.cert),
                "tlsKey": str(cert.key),
                "audiences": ["example-app", "short-lived"],
                **extra,
            }
        },
        "staticClients": [
            {
                "id": "example-app",
                "name": "Example App",
                "secret": "example-app-secret-0123456789",
                "redirectURIs": ["http://127.0.0.1:5555/callback"],
                "grantTypes": ["authorization_code", "refresh_token", "password"],
            },
            {
                "id": "short-lived",
                "name": "Short-lived tokens",
                "secret": "short-lived-secret-0123456789",
                "redirectURIs": ["http://127.0.0.1:5555/callback"],
                "grantTypes": ["password"],
                "idTokensValidFor": "3s",
            },
            {
                "id": "other-app",
                "name": "Another relying party",
                "secret": "other-app-secret-0123456789",
                "redirectURIs": ["http://127.0.0.1:5555/callback"],
                "grantTypes": ["password", "refresh_token"],
            },
        ],
    }


class Webhook:
    def __init__(self, issuer: Issuer, port: int, cert: ServingCert) -> None:
        self.issuer = issuer
        self.url = f"https://127.0.0.1:{port}/tokenreview"
        self.client = httpx.Client(
            verify=ssl.create_default_context(cafile=str(cert.ca)), timeout=10.0
        )

    def review(
        self, token: str, audiences: list[str] | None = None, api_version: str = V1
    ) -> dict[str, Any]:
        self.issuer.remember(token)
        spec: dict[str, Any] = {"token": token}
        if audiences is not None:
            spec["audiences"] = audiences
        body = {"apiVersion": api_version, "kind": "TokenReview", "spec": spec}
        response = self.client.post(self.url, json=body)
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"
        answer: dict[str, Any] = response.json()
        assert answer["apiVersion"] == api_version
        assert answer["kind"] == "TokenReview"
        return answer["status"]  # type: ignore[no-any-return]

    def tokens(
        self, client: str, email: str = DEV_EMAIL, password: str = DEV_PASSWORD
    ) -> dict[str, Any]:
        secret = next(c["secret"] for c in self.issuer.config["staticClients"] if c["id"] == client)
        response = self.issuer.token(
            {
                "grant_type": "password",
                "username": email,
                "password": password,
                "scope": "openid email groups offline_access",
            },
            auth=(client, secret),
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture(scope="module")
def webhook(module_issuers: StartIssuer, serving_cert: ServingCert) -> Webhook:
    port = free_port()
    issuer = module_issuers(webhook_patch(port, serving_cert))
    return Webhook(issuer, port, serving_cert)


def test_valid_id_token_authenticates_with_prefixed_email_and_groups(webhook: Webhook) -> None:
    tokens = webhook.tokens("example-app")
    status = webhook.review(tokens["id_token"])
    assert status["authenticated"] is True, status
    user = status["user"]
    assert user["username"] == f"oidc:{DEV_EMAIL}"
    assert user["groups"] == ["oidc:developers"]
    claims = json.loads(base64.urlsafe_b64decode(tokens["id_token"].split(".")[1] + "=="))
    assert user["uid"] == claims["sub"]
    assert user["extra"]["authentication.kubernetes.io/credential-id"] == [f"JTI={claims['jti']}"]
    assert "audiences" not in status


def test_v1beta1_review_is_answered_in_v1beta1(webhook: Webhook) -> None:
    tokens = webhook.tokens("example-app", ADMIN_EMAIL, ADMIN_PASSWORD)
    status = webhook.review(tokens["id_token"], api_version="authentication.k8s.io/v1beta1")
    assert status["authenticated"] is True
    assert status["user"]["username"] == f"oidc:{ADMIN_EMAIL}"
    assert status["user"]["groups"] == ["oidc:admins"]
    assert status["user"]["uid"]


def test_review_audiences_overlapping_the_token_are_echoed(webhook: Webhook) -> None:
    tokens = webhook.tokens("example-app")
    status = webhook.review(tokens["id_token"], audiences=["https://kubernetes", "example-app"])
    assert status["authenticated"] is True
    assert status["audiences"] == ["example-app"]


def test_expired_token_is_not_authenticated(webhook: Webhook) -> None:
    tokens = webhook.tokens("short-lived")
    assert webhook.review(tokens["id_token"])["authenticated"] is True
    time.sleep(4.1)  # past exp (3 s; whole seconds) under any load
    status = webhook.review(tokens["id_token"])
    assert status == {"authenticated": False, "error": "invalid bearer token"}


def test_token_for_another_client_is_not_authenticated(webhook: Webhook) -> None:
    tokens = webhook.tokens("other-app")
    status = webhook.review(tokens["id_token"])
    assert status == {"authenticated": False, "error": "the token is not issued for this cluster"}


def test_forged_token_is_not_authenticated(webhook: Webhook) -> None:
    token = webhook.tokens("example-app")["id_token"]
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["groups"] = ["system:masters"]
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    forged = f"{header}.{forged_payload}.{signature}"
    status = webhook.review(forged)
    assert status == {"authenticated": False, "error": "invalid bearer token"}
    # An unsigned token (alg none) and garbage fare no better.
    unsigned_header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    assert webhook.review(f"{unsigned_header}.{payload}.")["authenticated"] is False
    assert webhook.review("not-a-jwt")["authenticated"] is False
    assert webhook.review("")["authenticated"] is False


def test_ending_the_session_revokes_its_id_token(webhook: Webhook) -> None:
    tokens = webhook.tokens("example-app")
    assert webhook.review(tokens["id_token"])["authenticated"] is True
    response = httpx.post(
        webhook.issuer.url("/token/revoke"),
        data={"token": tokens["refresh_token"], "token_type_hint": "refresh_token"},
        auth=("example-app", "example-app-secret-0123456789"),
    )
    assert response.status_code == 200
    status = webhook.review(tokens["id_token"])
    assert status == {"authenticated": False, "error": "invalid bearer token"}


def test_malformed_reviews_are_rejected_with_400(webhook: Webhook) -> None:
    cases: list[Any] = [
        {"apiVersion": "v1", "kind": "TokenReview", "spec": {"token": "x"}},
        {"apiVersion": V1, "kind": "SubjectAccessReview", "spec": {"token": "x"}},
        {"apiVersion": V1, "kind": "TokenReview"},
        [1, 2],
    ]
    for body in cases:
        response = webhook.client.post(webhook.url, json=body)
        assert response.status_code == 400, body
        assert response.json()["kind"] == "Status"
    assert webhook.client.post(webhook.url, content=b"{not json").status_code == 400
    assert webhook.client.get(webhook.url).status_code == 405
    oversized = webhook.client.post(webhook.url, content=b"x" * (65 * 1024))
    assert oversized.status_code == 413


def test_webhook_is_not_served_on_the_issuer_listener(webhook: Webhook) -> None:
    response = httpx.post(
        webhook.issuer.url("/tokenreview"),
        json={"apiVersion": V1, "kind": "TokenReview", "spec": {"token": "x"}},
    )
    assert response.status_code in (404, 405)


def test_webhook_requests_are_counted_in_metrics(webhook: Webhook) -> None:
    webhook.review("not-a-jwt")
    metrics = httpx.get(webhook.issuer.telemetry + "/metrics").text
    assert 'route="/tokenreview"' in metrics
