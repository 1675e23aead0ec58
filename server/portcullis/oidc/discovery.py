"""The OpenID Provider metadata document (OIDC Discovery 1.0), built once.

The same document is served as the RFC 8414 authorization server metadata: RFC 8414 §3 and
OIDC Discovery share their field names, and a client that discovers the issuer one way must
see the same issuer and endpoints as one that discovers it the other way (an MCP client reads
RFC 8414, ``kubectl`` reads OIDC discovery). Only the locations differ, and those belong to the
web adapter.
"""

from __future__ import annotations

import json
from typing import Any

from portcullis.config.model import DEVICE_CODE_GRANT
from portcullis.oidc.scopes import STANDARD_SCOPES
from portcullis.oidc.settings import ProtocolSettings

CLAIMS_SUPPORTED = (
    "iss",
    "sub",
    "aud",
    "azp",
    "exp",
    "iat",
    "auth_time",
    "nonce",
    "at_hash",
    "c_hash",
    "email",
    "email_verified",
    "name",
    "preferred_username",
    "groups",
    "federated_claims",
)


def discovery_document(
    settings: ProtocolSettings,
    signing_algorithms: list[str],
    *,
    registration_endpoint: str = "",
    metadata_documents: bool = False,
) -> dict[str, Any]:
    issuer = settings.issuer
    response_types = ["code"]
    if "token" in settings.response_types or "id_token" in settings.response_types:
        response_types = []
        for combo in (
            "code",
            "id_token",
            "id_token token",
            "code id_token",
            "code token",
            "code id_token token",
        ):
            parts = combo.split()
            if all(p in settings.response_types for p in parts):
                response_types.append(combo)
    document: dict[str, Any] = {
        "issuer": settings.token_issuer,
        "authorization_endpoint": f"{issuer}/auth",
        "token_endpoint": f"{issuer}/token",
        "jwks_uri": f"{issuer}/keys",
        "userinfo_endpoint": f"{issuer}/userinfo",
        "introspection_endpoint": f"{issuer}/token/introspect",
        "revocation_endpoint": f"{issuer}/token/revoke",
        "grant_types_supported": list(settings.grant_types),
        "response_types_supported": response_types,
        "response_modes_supported": ["query", "fragment"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": signing_algorithms,
        "code_challenge_methods_supported": list(settings.pkce_methods),
        "scopes_supported": list(STANDARD_SCOPES),
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "introspection_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
        ],
        "revocation_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "none",
        ],
        "claims_supported": list(CLAIMS_SUPPORTED),
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        # RP-initiated logout (Dex's path).
        "end_session_endpoint": f"{issuer}/logout",
        # RFC 9207: every authorization response (success or error) carries ``iss``.
        "authorization_response_iss_parameter_supported": True,
    }
    if DEVICE_CODE_GRANT in settings.grant_types:
        # Only when the grant is on: a client that sees the endpoint may rely on it.
        document["device_authorization_endpoint"] = f"{issuer}/device/code"
    if registration_endpoint:
        # RFC 7591 (RFC 8414 §2): only when dynamic registration is enabled.
        document["registration_endpoint"] = registration_endpoint
    if metadata_documents:
        # OAuth Client ID Metadata Documents: https URL client ids are fetched.
        document["client_id_metadata_document_supported"] = True
    return document


def render(document: dict[str, Any]) -> bytes:
    return json.dumps(document, indent=2).encode()
