"""The relying-party side, written with an OIDC library independent of the server (Authlib):
the server signs with joserfc, these checks verify with Authlib's own JOSE and OIDC claim rules.
"""

from __future__ import annotations

import base64
import secrets
import warnings
from typing import Any

from authlib.integrations.httpx_client import OAuth2Client  # type: ignore[import-untyped]

with warnings.catch_warnings():
    # authlib.jose is deprecated in favour of joserfc; it stays the independent verifier here
    # because the server itself signs with joserfc.
    warnings.simplefilter("ignore")
    from authlib.jose import JsonWebKey, jwt  # type: ignore[import-untyped]
    from authlib.oidc.core import CodeIDToken, HybridIDToken  # type: ignore[import-untyped]

from tests.support.issuer import APP_REDIRECT, KUBECTL_REDIRECT, Issuer

FULL_SCOPE = "openid email profile groups offline_access"


def dex_subject(user_id: str, connector_id: str) -> str:
    """Dex's sub, built by hand: protobuf {1: user_id, 2: conn_id} (both short strings, so the
    lengths are single-byte varints), base64url without padding."""
    raw = b""
    for tag, value in ((0x0A, user_id.encode()), (0x12, connector_id.encode())):
        assert len(value) < 128
        raw += bytes([tag, len(value)]) + value
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def app_client(issuer: Issuer, scope: str = FULL_SCOPE, **kwargs: Any) -> OAuth2Client:
    """example-app (confidential, client_secret_basic) with PKCE S256."""
    return OAuth2Client(
        client_id="example-app",
        client_secret=issuer.creds.app,
        scope=scope,
        redirect_uri=APP_REDIRECT,
        code_challenge_method="S256",
        token_endpoint_auth_method="client_secret_basic",
        timeout=15.0,
        **kwargs,
    )


def kubectl_client(issuer: Issuer, redirect_uri: str = KUBECTL_REDIRECT) -> OAuth2Client:
    """The public kubectl client: no secret, PKCE S256."""
    return OAuth2Client(
        client_id="kubectl",
        scope=FULL_SCOPE,
        redirect_uri=redirect_uri,
        code_challenge_method="S256",
        token_endpoint_auth_method="none",
        timeout=15.0,
    )


def new_verifier() -> str:
    return secrets.token_urlsafe(48)


def authorization_url(issuer: Issuer, client: OAuth2Client, verifier: str, nonce: str) -> str:
    url, _state = client.create_authorization_url(
        issuer.url("/auth"), code_verifier=verifier, nonce=nonce
    )
    return str(url)


def verify_id_token(
    issuer: Issuer,
    id_token: str,
    *,
    client_id: str,
    nonce: str | None,
    access_token: str | None,
    audience: str | None = None,
    jwks: dict[str, Any] | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """Signature against /keys, then iss, aud, exp, iat, nonce, at_hash and azp (OIDC Core
    §3.1.3.7) with Authlib's rules. Returns the claims."""
    key_set = JsonWebKey.import_key_set(jwks or issuer.jwks())
    claims = jwt.decode(
        id_token,
        key_set,
        # Hybrid rules add c_hash (OIDC Core §3.3.2.11) when the code came with the ID token.
        claims_cls=HybridIDToken if code else CodeIDToken,
        claims_options={
            "iss": {"essential": True, "value": issuer.issuer},
            "aud": {"essential": True, "value": audience or client_id},
            "exp": {"essential": True},
        },
        claims_params={
            "nonce": nonce,
            "client_id": client_id,
            "access_token": access_token,
            "code": code,
        },
    )
    claims.validate(leeway=5)
    if code is not None:
        assert "c_hash" in claims, "c_hash missing although a code came with the ID token"
    if access_token is not None:
        assert "at_hash" in claims, "at_hash missing although an access token was issued"
    return dict(claims)


def jwt_header(token: str) -> dict[str, Any]:
    import json

    head = token.split(".")[0]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    return decoded
