"""Token exchange (RFC 8693) against a real `portcullis serve` whose upstream ``oidc`` connector
points at node-oidc-provider: a token the upstream issued (as a CI provider or a Kubernetes
service-account issuer would) is exchanged for ours, and every refusal is an RFC 8693 / 6749
error."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from portcullis.oidc.claims import encode_subject

from tests.support.issuer import Issuer, issuers_in
from tests.support.oidc_checks import verify_id_token
from tests.support.oidc_peer import OIDCPeer, browser_login
from tests.support.oidc_upstream import (  # noqa: F401 - the session fixture
    ALICE,
    CALLBACK,
    CLIENT_ID,
    CLIENT_SECRET,
    POST_CLIENT_ID,
    POST_CLIENT_SECRET,
    oidc_peer,
)

pytestmark = pytest.mark.integration

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
CI_SECRET = "ci-" + secrets.token_urlsafe(18)


@pytest.fixture(scope="module")
def exchange_issuer(
    tmp_path_factory: pytest.TempPathFactory,
    portcullis_cli: Path,
    oidc_peer: OIDCPeer,  # noqa: F811
) -> Iterator[Issuer]:
    def edit(config: dict[str, Any]) -> None:
        config["oauth2"]["grantTypes"] = [
            "authorization_code",
            "refresh_token",
            "password",
            "client_credentials",
            EXCHANGE,
        ]
        config["connectors"].append(
            {
                "type": "oidc",
                "id": "upstream",
                "name": "Upstream",
                "config": {
                    "issuer": oidc_peer.issuer,
                    "clientID": CLIENT_ID,
                    "clientSecret": CLIENT_SECRET,
                    "redirectURI": config["issuer"] + "/callback",
                    "scopes": ["profile", "email", "groups"],
                    "insecureEnableGroups": True,
                    "getUserInfo": True,
                },
            }
        )
        config["staticClients"].append(
            {"id": "ci-bot", "name": "CI", "secret": CI_SECRET, "grantTypes": [EXCHANGE]}
        )

    with issuers_in(tmp_path_factory.mktemp("exchange")) as start:
        issuer = start(edit=edit)
        issuer.remember(CI_SECRET, CLIENT_SECRET)
        yield issuer


def _upstream_tokens(
    peer: OIDCPeer, client_id: str = CLIENT_ID, secret: str = CLIENT_SECRET
) -> dict[str, Any]:
    """An ID token and an access token straight from the upstream, as a CI job holds them."""
    discovery = httpx.get(peer.issuer + "/.well-known/openid-configuration").json()
    verifier = secrets.token_urlsafe(48)
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    url = (
        discovery["authorization_endpoint"]
        + "?"
        + urlencode(
            {
                "client_id": client_id,
                "redirect_uri": CALLBACK,
                "response_type": "code",
                "scope": "openid email profile groups",
                "state": secrets.token_urlsafe(8),
                "nonce": secrets.token_urlsafe(8),
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
    )
    params = browser_login(url, CALLBACK, "alice")
    form = {
        "grant_type": "authorization_code",
        "code": params["code"],
        "redirect_uri": CALLBACK,
        "code_verifier": verifier,
    }
    if client_id == POST_CLIENT_ID:  # registered for client_secret_post
        response = httpx.post(
            discovery["token_endpoint"],
            data={**form, "client_id": client_id, "client_secret": secret},
        )
    else:  # client_secret_basic, with the RFC 6749 §2.3.1 form-encoding
        response = httpx.post(
            discovery["token_endpoint"],
            data=form,
            auth=(quote(client_id, safe=""), quote(secret, safe="")),
        )
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    return tokens


def _exchange(issuer: Issuer, auth: tuple[str, str] | None = None, **form: str) -> httpx.Response:
    data = {
        "grant_type": EXCHANGE,
        "subject_token_type": ID_TOKEN,
        "connector_id": "upstream",
        "scope": "openid email groups",
        **form,
    }
    issuer.remember(data.get("subject_token"))
    return issuer.token(data, auth=auth or ("ci-bot", CI_SECRET))


def test_upstream_id_token_is_exchanged_for_our_id_token(
    exchange_issuer: Issuer,
    oidc_peer: OIDCPeer,  # noqa: F811
) -> None:
    upstream = _upstream_tokens(oidc_peer)
    response = _exchange(
        exchange_issuer, subject_token=upstream["id_token"], requested_token_type=ID_TOKEN
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["issued_token_type"] == ID_TOKEN
    assert body["token_type"] == "bearer"
    assert "refresh_token" not in body
    claims = verify_id_token(
        exchange_issuer, body["access_token"], client_id="ci-bot", nonce=None, access_token=None
    )
    assert claims["iss"] == exchange_issuer.issuer
    assert claims["sub"] == encode_subject("alice", "upstream")
    assert claims["email"] == ALICE["email"]
    assert claims["groups"] == ALICE["groups"]


def test_upstream_access_token_is_verified_through_userinfo(
    exchange_issuer: Issuer,
    oidc_peer: OIDCPeer,  # noqa: F811
) -> None:
    upstream = _upstream_tokens(oidc_peer)
    response = _exchange(
        exchange_issuer, subject_token=upstream["access_token"], subject_token_type=ACCESS_TOKEN
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["issued_token_type"] == ACCESS_TOKEN  # Dex's default
    userinfo = httpx.get(
        exchange_issuer.url("/userinfo"),
        headers={"Authorization": f"Bearer {body['access_token']}"},
    )
    assert userinfo.status_code == 200
    assert userinfo.json()["email"] == ALICE["email"]
    forged = _exchange(
        exchange_issuer, subject_token="not-an-upstream-token", subject_token_type=ACCESS_TOKEN
    )
    assert forged.status_code == 400
    assert forged.json()["error"] == "invalid_request"


def test_invalid_subject_tokens_are_refused(
    exchange_issuer: Issuer,
    oidc_peer: OIDCPeer,  # noqa: F811
) -> None:
    upstream = _upstream_tokens(oidc_peer)
    head, payload, signature = upstream["id_token"].split(".")
    tampered = f"{head}.{payload}.{signature[:-6]}AAAAAA"
    # A genuine upstream ID token issued to another relying party of the same upstream.
    foreign = _upstream_tokens(oidc_peer, POST_CLIENT_ID, POST_CLIENT_SECRET)["id_token"]
    for token in (tampered, foreign, "a.b.c"):
        response = _exchange(exchange_issuer, subject_token=token)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_request"


def test_connector_and_client_refusals(
    exchange_issuer: Issuer,
    oidc_peer: OIDCPeer,  # noqa: F811
) -> None:
    token = _upstream_tokens(oidc_peer)["id_token"]
    unknown = _exchange(exchange_issuer, subject_token=token, connector_id="nope")
    assert (unknown.status_code, unknown.json()["error"]) == (400, "invalid_request")
    no_role = _exchange(exchange_issuer, subject_token=token, connector_id="local")
    assert no_role.json()["error"] == "invalid_request"
    assert "cannot verify upstream tokens" in no_role.json()["error_description"]
    not_allowed = _exchange(exchange_issuer, auth=exchange_issuer.app_auth(), subject_token=token)
    assert (not_allowed.status_code, not_allowed.json()["error"]) == (400, "unauthorized_client")
    wrong_secret = _exchange(exchange_issuer, auth=("ci-bot", "wrong"), subject_token=token)
    assert (wrong_secret.status_code, wrong_secret.json()["error"]) == (401, "invalid_client")
