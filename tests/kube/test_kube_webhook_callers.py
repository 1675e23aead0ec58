"""Who may call the webhook: with authenticateCallers the caller's bearer token is checked
with the cluster's TokenReview and SubjectAccessReview APIs (here an HTTPS stand-in); without
TLS the webhook only serves loopback; a missing Kubernetes API stops start-up clearly."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.issuer import DEV_EMAIL, DEV_PASSWORD, IssuerExitError, StartIssuer, free_port
from tests.support.kube import FakeKubeAPI, ServingCert

V1 = "authentication.k8s.io/v1"
SA_TOKEN = "portcullis-service-account-token-0123456789"
APISERVER_TOKEN = "kube-apiserver-webhook-token-0123456789"
NOBODY_TOKEN = "some-service-account-token-0123456789"


@pytest.fixture
def kube_api(serving_cert: ServingCert) -> Iterator[FakeKubeAPI]:
    api = FakeKubeAPI(
        serving_cert,
        SA_TOKEN,
        users={APISERVER_TOKEN: "system:kube-apiserver", NOBODY_TOKEN: "system:serviceaccount:x"},
        allowed={"system:kube-apiserver"},
    )
    try:
        yield api
    finally:
        api.close()


def _review_body(token: str) -> dict[str, Any]:
    return {"apiVersion": V1, "kind": "TokenReview", "spec": {"token": token}}


def _id_token(issuer: Any) -> str:
    response = issuer.token(
        {
            "grant_type": "password",
            "username": DEV_EMAIL,
            "password": DEV_PASSWORD,
            "scope": "openid email groups",
        },
        auth=issuer.app_auth(),
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["id_token"]
    return token


def test_only_callers_allowed_to_create_tokenreviews_get_answers(
    start_issuer: StartIssuer, serving_cert: ServingCert, kube_api: FakeKubeAPI, tmp_path: Path
) -> None:
    token_file = tmp_path / "sa-token"
    token_file.write_text(SA_TOKEN + "\n")
    port = free_port()
    issuer = start_issuer(
        {
            "kubernetes": {
                "tokenReview": {
                    "enabled": True,
                    "addr": f"127.0.0.1:{port}",
                    "tlsCert": str(serving_cert.cert),
                    "tlsKey": str(serving_cert.key),
                    "audiences": ["example-app"],
                    "authenticateCallers": True,
                    "kubeAPI": {
                        "server": kube_api.url,
                        "tokenFile": str(token_file),
                        "caFile": str(serving_cert.ca),
                    },
                }
            }
        }
    )
    issuer.remember(SA_TOKEN, APISERVER_TOKEN, NOBODY_TOKEN)
    id_token = _id_token(issuer)
    url = f"https://127.0.0.1:{port}/tokenreview"
    with httpx.Client(verify=ssl.create_default_context(cafile=str(serving_cert.ca))) as client:

        def post(caller: str | None) -> httpx.Response:
            headers = {"Authorization": f"Bearer {caller}"} if caller else {}
            return client.post(url, json=_review_body(id_token), headers=headers)

        assert post(None).status_code == 401
        assert post("unknown-caller-token-0123456789").status_code == 401
        forbidden = post(NOBODY_TOKEN)
        assert forbidden.status_code == 403
        assert forbidden.json()["message"] == "the caller may not create tokenreviews"
        allowed = post(APISERVER_TOKEN)
        assert allowed.status_code == 200
        assert allowed.json()["status"]["user"]["username"] == f"oidc:{DEV_EMAIL}"
        calls = len(kube_api.calls)
        # A repeated caller is answered from the short cache, without API round trips.
        assert post(APISERVER_TOKEN).status_code == 200
        assert len(kube_api.calls) == calls
    # The Kubernetes API went down: the caller cannot be checked, so nothing is answered.
    kube_api.close()
    with httpx.Client(verify=ssl.create_default_context(cafile=str(serving_cert.ca))) as client:
        response = client.post(
            url,
            json=_review_body(id_token),
            headers={"Authorization": "Bearer another-caller-token-0123456789"},
        )
    assert response.status_code == 503


def test_plain_http_webhook_on_loopback_answers_from_every_worker(
    start_issuer: StartIssuer,
) -> None:
    port = free_port()
    issuer = start_issuer(
        {
            "kubernetes": {
                "tokenReview": {
                    "enabled": True,
                    "addr": f"127.0.0.1:{port}",
                    "path": "/authenticate",
                    "audiences": ["example-app"],
                    "usernameClaim": "sub",
                    "usernamePrefix": "",
                    "groupsPrefix": "",
                }
            }
        },
        run=False,
    )
    issuer.serve_args = ["--workers", "2"]
    issuer.start()
    id_token = _id_token(issuer)
    issuer.remember(id_token)
    for _ in range(6):  # fresh connections land on either worker
        response = httpx.post(f"http://127.0.0.1:{port}/authenticate", json=_review_body(id_token))
        assert response.status_code == 200
        user = response.json()["status"]["user"]
        assert user["username"] == user["uid"]
        assert user["groups"] == ["developers"]


def test_authenticate_callers_outside_a_pod_without_kube_api_stops_start_up(
    start_issuer: StartIssuer, serving_cert: ServingCert
) -> None:
    issuer = start_issuer(
        {
            "kubernetes": {
                "tokenReview": {
                    "enabled": True,
                    "addr": f"127.0.0.1:{free_port()}",
                    "tlsCert": str(serving_cert.cert),
                    "tlsKey": str(serving_cert.key),
                    "audiences": ["example-app"],
                    "authenticateCallers": True,
                    "kubeAPI": {"caFile": "/nonexistent/ca.crt", "server": "https://127.0.0.1:1"},
                }
            }
        },
        run=False,
    )
    with pytest.raises(IssuerExitError, match=r"kubeAPI\.caFile"):
        issuer.start()
