"""Minting ID tokens, access tokens and refresh-token strings.

Access tokens are signed JWTs carrying the same user claims as the ID token (what Dex issues and
what kube-apiserver accepts). Every JWT has a ``jti`` so RFC 7009 revocation can name it; tokens
minted from an authorization code get jtis derived from the code id, so a replayed code can
revoke them without extra storage.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from portcullis.keys.manager import KeyManager, hash_for_algorithm
from portcullis.oidc.claims import encode_subject, identity_claims, token_hash
from portcullis.storage.models import Identity

REFRESH_PREFIX = "pcr1"


def new_id() -> str:
    """Random identifiers for requests, codes and token families (128 bits)."""
    return secrets.token_urlsafe(16)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def derived_jti(code_id: str, purpose: str) -> str:
    return hashlib.sha256(f"{code_id}:{purpose}".encode()).hexdigest()[:32]


# -- refresh token strings ------------------------------------------------------------------


def format_refresh_token(token_id: str, secret: str) -> str:
    return f"{REFRESH_PREFIX}.{token_id}.{secret}"


def parse_refresh_token(value: str) -> tuple[str, str] | None:
    parts = value.split(".")
    if len(parts) != 3 or parts[0] != REFRESH_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def _seal_key(obsolete_secret: str, token_id: str) -> bytes:
    hkdf = HKDF(algorithm=SHA256(), length=32, salt=None, info=f"pcr1-seal:{token_id}".encode())
    return hkdf.derive(obsolete_secret.encode())


def seal_successor(obsolete_secret: str, token_id: str, successor: str) -> str:
    """Encrypt the successor under a key only the holder of the obsolete secret can derive."""
    nonce = os.urandom(12)
    sealed = AESGCM(_seal_key(obsolete_secret, token_id)).encrypt(
        nonce, successor.encode(), token_id.encode()
    )
    return base64.urlsafe_b64encode(nonce + sealed).decode()


def unseal_successor(obsolete_secret: str, token_id: str, sealed: str) -> str:
    raw = base64.urlsafe_b64decode(sealed.encode())
    plain = AESGCM(_seal_key(obsolete_secret, token_id)).decrypt(
        raw[:12], raw[12:], token_id.encode()
    )
    return plain.decode()


def secret_matches(secret: str, stored_digest: str) -> bool:
    return bool(stored_digest) and hmac.compare_digest(digest(secret), stored_digest)


# -- JWTs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MintedTokens:
    id_token: str
    access_token: str
    expires_in: int
    access_jti: str
    id_jti: str


class TokenMinter:
    def __init__(self, issuer: str, keys: KeyManager) -> None:
        self._issuer = issuer
        self._keys = keys

    @property
    def keys(self) -> KeyManager:
        return self._keys

    def mint(
        self,
        *,
        client_id: str,
        audiences: tuple[str, ...],
        identity: Identity | None,
        connector_id: str,
        scopes: tuple[str, ...],
        now: float,
        ttl: float,
        nonce: str = "",
        auth_time: float = 0.0,
        code: str = "",
        jti_seed: str = "",
        subject: str = "",
        include_id_token: bool = True,
        session: str = "",
    ) -> MintedTokens:
        """Mint an access token and (optionally) an ID token for one grant.

        ``audiences`` are cross-client audiences: when present, aud is exactly those clients
        (the requester only if it asked for itself, as in Dex) and azp names the requester.
        """
        iat = int(now)
        exp = int(now + ttl)
        sub = subject or encode_subject(identity.user_id if identity else "", connector_id)
        aud: str | list[str] = client_id
        if audiences:
            unique = list(dict.fromkeys(audiences))
            aud = unique[0] if len(unique) == 1 else unique
        base: dict[str, Any] = {"iss": self._issuer, "sub": sub, "aud": aud, "iat": iat, "exp": exp}
        if audiences:
            base["azp"] = client_id
        if session:
            # The refresh-token family this token belongs to (hashed): ending the family
            # revokes every token carrying its sid.
            base["sid"] = session
        if identity is not None:
            base.update(identity_claims(identity, connector_id, scopes))
        access_jti = derived_jti(jti_seed, "access") if jti_seed else new_id()
        access_claims = {
            **base,
            "jti": access_jti,
            "scope": " ".join(scopes),
            "client_id": client_id,
        }
        access_token = self._keys.sign(access_claims)
        id_token = ""
        id_jti = ""
        if include_id_token:
            algorithm = self._keys.cached().algorithm
            hash_name = hash_for_algorithm(algorithm)
            id_jti = derived_jti(jti_seed, "id") if jti_seed else new_id()
            id_claims = {**base, "jti": id_jti, "at_hash": token_hash(access_token, hash_name)}
            if nonce:
                id_claims["nonce"] = nonce
            if auth_time:
                id_claims["auth_time"] = int(auth_time)
            if code:
                id_claims["c_hash"] = token_hash(code, hash_name)
            id_token = self._keys.sign(id_claims)
        return MintedTokens(
            id_token=id_token,
            access_token=access_token,
            expires_in=exp - iat,
            access_jti=access_jti,
            id_jti=id_jti,
        )
