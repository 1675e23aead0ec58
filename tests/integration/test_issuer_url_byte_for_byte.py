"""An issuer configured with a trailing "/" (as many Dex clusters' --oidc-issuer-url is) is served
byte for byte: discovery's ``issuer`` and every token's ``iss`` equal the configured string,
while the endpoints and path routing stay under the issuer path without a doubled slash."""

from __future__ import annotations

from typing import Any

import httpx
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.support.issuer import ADMIN_EMAIL, ADMIN_PASSWORD, StartIssuer


def _with_trailing_slash(config: dict[str, Any]) -> None:
    config["issuer"] = config["issuer"] + "/"


def test_trailing_slash_issuer_is_kept_in_discovery_and_tokens(
    start_issuer: StartIssuer,
) -> None:
    issuer = start_issuer(edit=_with_trailing_slash)
    configured = issuer.config["issuer"]
    assert configured.endswith("/dex/")
    base = configured.rstrip("/")

    discovery = httpx.get(base + "/.well-known/openid-configuration").json()
    assert discovery["issuer"] == configured
    assert discovery["token_endpoint"] == base + "/token"
    assert discovery["jwks_uri"] == base + "/keys"

    response = httpx.post(
        discovery["token_endpoint"],
        data={
            "grant_type": "password",
            "username": ADMIN_EMAIL,
            "password": ADMIN_PASSWORD,
            "scope": "openid email",
        },
        auth=issuer.app_auth(),
    )
    assert response.status_code == 200, response.text
    id_token = response.json()["id_token"]
    issuer.remember(id_token, response.json().get("access_token"))
    keys = KeySet.import_key_set(httpx.get(discovery["jwks_uri"]).json())
    claims = jwt.decode(id_token, keys).claims
    assert claims["iss"] == configured

    userinfo = httpx.get(
        discovery["userinfo_endpoint"],
        headers={"Authorization": f"Bearer {response.json()['access_token']}"},
    )
    assert userinfo.status_code == 200, userinfo.text
