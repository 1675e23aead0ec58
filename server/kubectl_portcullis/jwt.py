"""Reading (not verifying) a JWT's claims.

The plugin hands the ID token to kubectl, and the Kubernetes API server verifies it against the
issuer's keys. Verifying it here would add a JOSE dependency for no security gain (whoever can
tamper with the plugin's TLS connection to the issuer can also serve it keys), so the payload is
only decoded: for the expiry that drives caching and refresh, the nonce check that catches a
mixed-up response, and the claims ``setup`` shows.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from kubectl_portcullis.errors import PluginError


def decode_claims(token: str) -> dict[str, Any]:
    """The payload of a compact JWS, unverified; a clear error when it is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        raise PluginError("the issuer returned an ID token that is not a JWT (expected 3 parts)")
    payload = parts[1]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise PluginError("the issuer returned an ID token whose payload is not JSON") from None
    if not isinstance(claims, dict):
        raise PluginError("the issuer returned an ID token whose payload is not a JSON object")
    return claims


def expiry(claims: dict[str, Any]) -> int:
    """The ``exp`` claim as integer seconds since the epoch (required by OIDC Core §2)."""
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise PluginError("the issuer returned an ID token without a numeric 'exp' claim")
    return int(exp)
