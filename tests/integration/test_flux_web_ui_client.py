"""An OIDC client configured exactly as the generated Flux Web UI examples configure it (client
``flux-web``, confidential, redirect ``https://flux.<domain>/oauth2/callback``, the Web UI's
default scopes, the issuer found by discovery) logs in against a real server, and its ID token
carries what the Web UI impersonates: ``email`` and ``groups`` (and ``preferred_username``)."""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from joserfc import jwt
from joserfc.jwk import KeySet
from portcullis_release.distribute.flux_web import (
    WEB_UI_SCOPES,
    FluxWebSettings,
    flux_web_client,
)

from tests.support.issuer import ADMIN_EMAIL, Browser, StartIssuer, query_of

SECRET = secrets.token_hex(32)  # what `openssl rand -hex 32` puts in the flux-web-client Secret


def test_flux_web_ui_client_logs_in_and_gets_the_impersonation_claims(
    start_issuer: StartIssuer,
) -> None:
    settings = FluxWebSettings()
    client = {**flux_web_client(settings), "secret": SECRET}

    def add_client(config: dict[str, Any]) -> None:
        config["staticClients"].append(client)

    issuer = start_issuer(edit=add_client)
    issuer.remember(SECRET)
    # The Web UI knows only issuerURL: everything else comes from discovery.
    discovery = httpx.get(issuer.url("/.well-known/openid-configuration")).json()
    assert discovery["issuer"] == issuer.issuer
    verifier = secrets.token_urlsafe(48)
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    state = secrets.token_urlsafe(16)
    params = {
        "client_id": settings.client_id,
        "redirect_uri": settings.redirect_uri,
        "response_type": "code",
        "scope": " ".join(WEB_UI_SCOPES),
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    with Browser(issuer) as browser:
        location = browser.authorize_code(
            f"{discovery['authorization_endpoint']}?{urlencode(params)}"
        )
    assert location.startswith(settings.redirect_uri + "?")
    answer = query_of(location)
    assert answer["state"] == state
    assert answer["iss"] == issuer.issuer  # RFC 9207
    # client_secret_basic, as Go's oauth2 package sends it first.
    response = httpx.post(
        discovery["token_endpoint"],
        data={
            "grant_type": "authorization_code",
            "code": answer["code"],
            "redirect_uri": settings.redirect_uri,
            "code_verifier": verifier,
        },
        auth=(settings.client_id, SECRET),
    )
    issuer.remember_exchange({"code": answer["code"]}, response)
    assert response.status_code == 200, response.text
    tokens = response.json()
    assert tokens["refresh_token"]  # offline_access: the Web UI keeps its session
    keys = KeySet.import_key_set(httpx.get(discovery["jwks_uri"]).json())
    claims = jwt.decode(tokens["id_token"], keys).claims
    assert claims["iss"] == issuer.issuer
    assert claims["aud"] == settings.client_id
    # What impersonation reads (web.config ...impersonation: claims.email, claims.groups).
    assert claims["email"] == ADMIN_EMAIL
    assert claims["email_verified"] is True
    assert claims["groups"] == ["admins"]
    assert claims["preferred_username"] == "admin"
    assert urlsplit(settings.redirect_uri).path == "/oauth2/callback"
