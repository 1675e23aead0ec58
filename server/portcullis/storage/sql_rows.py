"""The one place where frozen dataclasses become table rows and back.

Every SQL backend goes through these functions, so a field added to a model needs exactly one
change here (plus a migration). JSON gives lists back; models want tuples, so decoding converts.

Connector data (upstream tokens) is sealed here on its way into a row and opened on its way
out (``storage.sealing``): every function that encodes or decodes a record with an identity
takes the backend's :class:`Sealer`, and binds the value to its table and row id.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from portcullis.storage.models import (
    PKCE,
    AuthCode,
    AuthRequest,
    Client,
    DeviceRequest,
    Identity,
    Keys,
    Password,
    RefreshToken,
    SigningKey,
    VerificationKey,
)
from portcullis.storage.sealing import Sealer

Row = dict[str, Any]

# The tables whose rows carry connector data: the sealing's associated data names them.
AUTH_REQUESTS = "auth_requests"
AUTH_CODES = "auth_codes"
REFRESH_TOKENS = "refresh_tokens"
DEVICE_REQUESTS = "device_requests"


def _tuple(value: Any) -> tuple[str, ...]:
    return tuple(value or ())


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


# -- identity -----------------------------------------------------------------------------------
def identity_json(identity: Identity) -> dict[str, Any]:
    """Everything but connector_data, which is stored in its own binary column."""
    return {
        "user_id": identity.user_id,
        "username": identity.username,
        "preferred_username": identity.preferred_username,
        "email": identity.email,
        "email_verified": identity.email_verified,
        "groups": list(identity.groups),
    }


def identity_from(data: Mapping[Any, Any], connector_data: bytes | None) -> Identity:
    return Identity(
        user_id=data["user_id"],
        username=data["username"],
        preferred_username=data.get("preferred_username", ""),
        email=data.get("email", ""),
        email_verified=bool(data.get("email_verified", False)),
        groups=_tuple(data.get("groups")),
        connector_data=bytes(connector_data or b""),
    )


# -- clients ------------------------------------------------------------------------------------
def client_row(client: Client) -> Row:
    return {
        "id": client.id,
        "secret_hash": client.secret_hash,
        "redirect_uris": list(client.redirect_uris),
        "trusted_peers": list(client.trusted_peers),
        "public": client.public,
        "name": client.name,
        "logo_url": client.logo_url,
        "grant_types": list(client.grant_types),
        "response_types": list(client.response_types),
        "allowed_connectors": list(client.allowed_connectors),
        "id_token_ttl": client.id_token_ttl,
        "refresh_token_absolute_lifetime": client.refresh_token_absolute_lifetime,
        "post_logout_redirect_uris": list(client.post_logout_redirect_uris),
        "allowed_resources": list(client.allowed_resources),
        "registration_token_hash": client.registration_token_hash,
        "registered_at": client.registered_at,
        "expires_at": client.expires_at,
    }


def client_from(row: Mapping[Any, Any]) -> Client:
    return Client(
        id=row["id"],
        secret_hash=row["secret_hash"],
        redirect_uris=_tuple(row["redirect_uris"]),
        trusted_peers=_tuple(row["trusted_peers"]),
        public=bool(row["public"]),
        name=row["name"],
        logo_url=row["logo_url"],
        grant_types=_tuple(row["grant_types"]),
        response_types=_tuple(row["response_types"]),
        allowed_connectors=_tuple(row["allowed_connectors"]),
        id_token_ttl=_float_or_none(row["id_token_ttl"]),
        refresh_token_absolute_lifetime=_float_or_none(row["refresh_token_absolute_lifetime"]),
        post_logout_redirect_uris=_tuple(row["post_logout_redirect_uris"]),
        allowed_resources=_tuple(row["allowed_resources"]),
        registration_token_hash=row["registration_token_hash"],
        registered_at=float(row["registered_at"]),
        expires_at=float(row["expires_at"]),
    )


# -- auth requests ------------------------------------------------------------------------------
def auth_request_row(request: AuthRequest, sealer: Sealer) -> Row:
    identity = request.identity
    return {
        "id": request.id,
        "client_id": request.client_id,
        "response_types": list(request.response_types),
        "scopes": list(request.scopes),
        "redirect_uri": request.redirect_uri,
        "expiry": request.expiry,
        "nonce": request.nonce,
        "state": request.state,
        "force_approval_prompt": request.force_approval_prompt,
        "logged_in": request.logged_in,
        "identity": None if identity is None else identity_json(identity),
        "connector_data": (
            None
            if identity is None
            else sealer.seal(AUTH_REQUESTS, request.id, identity.connector_data)
        ),
        "connector_id": request.connector_id,
        "code_challenge": request.pkce.code_challenge,
        "code_challenge_method": request.pkce.code_challenge_method,
        "auth_time": request.auth_time,
        "browser_binding": request.browser_binding,
        "connector_state": request.connector_state,
        "response_mode": request.response_mode,
        "resources": list(request.resources),
    }


def auth_request_from(row: Mapping[Any, Any], sealer: Sealer) -> AuthRequest:
    identity_data = row["identity"]
    return AuthRequest(
        id=row["id"],
        client_id=row["client_id"],
        response_types=_tuple(row["response_types"]),
        scopes=_tuple(row["scopes"]),
        redirect_uri=row["redirect_uri"],
        expiry=float(row["expiry"]),
        nonce=row["nonce"],
        state=row["state"],
        force_approval_prompt=bool(row["force_approval_prompt"]),
        logged_in=bool(row["logged_in"]),
        identity=(
            None
            if identity_data is None
            else identity_from(
                identity_data, sealer.open(AUTH_REQUESTS, row["id"], row["connector_data"])
            )
        ),
        connector_id=row["connector_id"],
        pkce=PKCE(row["code_challenge"], row["code_challenge_method"]),
        auth_time=float(row["auth_time"]),
        browser_binding=row["browser_binding"],
        connector_state=bytes(row["connector_state"]),
        response_mode=row["response_mode"],
        resources=_tuple(row["resources"]),
    )


# -- auth codes ---------------------------------------------------------------------------------
def auth_code_row(code: AuthCode, sealer: Sealer) -> Row:
    return {
        "id": code.id,
        "client_id": code.client_id,
        "redirect_uri": code.redirect_uri,
        "scopes": list(code.scopes),
        "identity": identity_json(code.identity),
        "connector_data": sealer.seal(AUTH_CODES, code.id, code.identity.connector_data),
        "connector_id": code.connector_id,
        "expiry": code.expiry,
        "nonce": code.nonce,
        "code_challenge": code.pkce.code_challenge,
        "code_challenge_method": code.pkce.code_challenge_method,
        "auth_time": code.auth_time,
        "used_at": code.used_at,
        "resources": list(code.resources),
    }


def auth_code_from(row: Mapping[Any, Any], sealer: Sealer) -> AuthCode:
    return AuthCode(
        id=row["id"],
        client_id=row["client_id"],
        redirect_uri=row["redirect_uri"],
        scopes=_tuple(row["scopes"]),
        identity=identity_from(
            row["identity"], sealer.open(AUTH_CODES, row["id"], row["connector_data"])
        ),
        connector_id=row["connector_id"],
        expiry=float(row["expiry"]),
        nonce=row["nonce"],
        pkce=PKCE(row["code_challenge"], row["code_challenge_method"]),
        auth_time=float(row["auth_time"]),
        used_at=float(row["used_at"]),
        resources=_tuple(row["resources"]),
    )


# -- refresh tokens -----------------------------------------------------------------------------
def refresh_token_row(token: RefreshToken, sealer: Sealer) -> Row:
    return {
        "id": token.id,
        "token_hash": token.token_hash,
        "obsolete_token_hash": token.obsolete_token_hash,
        "successor_sealed": token.successor_sealed,
        "client_id": token.client_id,
        "connector_id": token.connector_id,
        "user_id": token.identity.user_id,
        "identity": identity_json(token.identity),
        "connector_data": sealer.seal(REFRESH_TOKENS, token.id, token.identity.connector_data),
        "scopes": list(token.scopes),
        "nonce": token.nonce,
        "auth_time": token.auth_time,
        "created_at": token.created_at,
        "last_used": token.last_used,
        "issued_by_code": token.issued_by_code,
        "expires_at": token.expires_at,
        "resources": list(token.resources),
    }


def refresh_token_from(row: Mapping[Any, Any], sealer: Sealer) -> RefreshToken:
    return RefreshToken(
        id=row["id"],
        token_hash=row["token_hash"],
        client_id=row["client_id"],
        connector_id=row["connector_id"],
        identity=identity_from(
            row["identity"], sealer.open(REFRESH_TOKENS, row["id"], row["connector_data"])
        ),
        scopes=_tuple(row["scopes"]),
        created_at=float(row["created_at"]),
        last_used=float(row["last_used"]),
        obsolete_token_hash=row["obsolete_token_hash"],
        successor_sealed=row["successor_sealed"],
        nonce=row["nonce"],
        auth_time=float(row["auth_time"]),
        issued_by_code=row["issued_by_code"],
        expires_at=float(row["expires_at"]),
        resources=_tuple(row["resources"]),
    )


# -- passwords ----------------------------------------------------------------------------------
def email_key(email: str) -> str:
    """The case-insensitive lookup key, computed in Python: SQLite's lower() is ASCII-only."""
    return email.lower()


def password_row(password: Password) -> Row:
    return {
        "email_key": email_key(password.email),
        "email": password.email,
        "password_hash": password.hash,
        "username": password.username,
        "user_id": password.user_id,
        "name": password.name,
        "preferred_username": password.preferred_username,
        "email_verified": password.email_verified,
        "groups": list(password.groups),
    }


def password_from(row: Mapping[Any, Any]) -> Password:
    return Password(
        email=row["email"],
        hash=row["password_hash"],
        username=row["username"],
        user_id=row["user_id"],
        name=row["name"],
        preferred_username=row["preferred_username"],
        email_verified=bool(row["email_verified"]),
        groups=_tuple(row["groups"]),
    )


# -- signing keys -------------------------------------------------------------------------------
def keys_row(keys: Keys) -> Row:
    """The mutable columns of the single keys row (its id never changes)."""
    return {
        "signing_key": None if keys.signing_key is None else dict(keys.signing_key.jwk),
        "verification_keys": [
            {"jwk": dict(k.jwk), "expiry": k.expiry} for k in keys.verification_keys
        ],
        "next_rotation": keys.next_rotation,
    }


def keys_from(row: Mapping[Any, Any]) -> Keys:
    signing = row["signing_key"]
    return Keys(
        signing_key=None if signing is None else SigningKey(jwk=dict(signing)),
        verification_keys=tuple(
            VerificationKey(jwk=dict(k["jwk"]), expiry=float(k["expiry"]))
            for k in row["verification_keys"]
        ),
        next_rotation=float(row["next_rotation"]),
    )


# -- device requests ----------------------------------------------------------------------------
def device_request_row(request: DeviceRequest, sealer: Sealer) -> Row:
    identity = request.identity
    return {
        "id": request.id,
        "user_code": request.user_code,
        "client_id": request.client_id,
        "scopes": list(request.scopes),
        "expiry": request.expiry,
        "poll_interval": request.interval,
        "last_poll": request.last_poll,
        "status": request.status,
        "pkce_verifier": request.pkce_verifier,
        "identity": None if identity is None else identity_json(identity),
        "connector_data": (
            None
            if identity is None
            else sealer.seal(DEVICE_REQUESTS, request.id, identity.connector_data)
        ),
        "connector_id": request.connector_id,
        "auth_time": request.auth_time,
    }


def device_request_from(row: Mapping[Any, Any], sealer: Sealer) -> DeviceRequest:
    identity_data = row["identity"]
    return DeviceRequest(
        id=row["id"],
        user_code=row["user_code"],
        client_id=row["client_id"],
        scopes=_tuple(row["scopes"]),
        expiry=float(row["expiry"]),
        interval=float(row["poll_interval"]),
        last_poll=float(row["last_poll"]),
        status=row["status"],
        pkce_verifier=row["pkce_verifier"],
        identity=(
            None
            if identity_data is None
            else identity_from(
                identity_data, sealer.open(DEVICE_REQUESTS, row["id"], row["connector_data"])
            )
        ),
        connector_id=row["connector_id"],
        auth_time=float(row["auth_time"]),
    )
