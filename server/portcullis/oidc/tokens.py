"""Minting ID tokens and access tokens (signed JWTs).

Access tokens are signed JWTs carrying the same user claims as the ID token (what Dex issues and
what kube-apiserver accepts). Every JWT has a ``jti`` so RFC 7009 revocation can name it; tokens
minted from an authorization code get jtis derived from the code id, so a replayed code can
revoke them without extra storage. Refresh tokens are opaque, stored, and live in
``portcullis.oidc.refresh``.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from portcullis.keys.manager import KeyManager, hash_for_algorithm
from portcullis.oidc.claims import encode_subject, identity_claims, token_hash
from portcullis.storage.models import Identity


def new_id() -> str:
    """Random identifiers for requests, codes and token families (128 bits)."""
    return secrets.token_urlsafe(16)


def derived_jti(code_id: str, purpose: str) -> str:
    return hashlib.sha256(f"{code_id}:{purpose}".encode()).hexdigest()[:32]


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
        resources: tuple[str, ...] = (),
    ) -> MintedTokens:
        """Mint an access token and (optionally) an ID token for one grant.

        ``audiences`` are cross-client audiences: when present, aud is exactly those clients
        (the requester only if it asked for itself, as in Dex) and azp names the requester.
        ``resources`` (RFC 8707) replace the access token's aud, never the ID token's: the
        resource server checks its own URL there, while the ID token stays for the client.
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
        if resources:
            access_claims["aud"] = resources[0] if len(resources) == 1 else list(resources)
            access_claims["azp"] = client_id
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
