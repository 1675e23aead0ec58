"""Token introspection (RFC 7662), revocation (RFC 7009) and userinfo: everything that reads
back a token the issuer minted.

Refresh tokens are looked up through ``portcullis.oidc.refresh`` (the same lookup the refresh
grant uses), so "active" here and "accepted" at the token endpoint cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from joserfc.errors import JoseError

from portcullis.clock import Clock
from portcullis.oidc.denials import issued_before_denial
from portcullis.oidc.errors import invalid_request
from portcullis.oidc.refresh import SID_PREFIX, RefreshStore
from portcullis.oidc.tokens import TokenMinter
from portcullis.storage.base import Storage
from portcullis.storage.models import Client

# Claims that describe the token rather than the user; userinfo leaves them out.
_TOKEN_CLAIMS = {
    "iss",
    "aud",
    "exp",
    "iat",
    "nbf",
    "jti",
    "azp",
    "scope",
    "client_id",
    "at_hash",
    "sid",
}


class TokenReader:
    def __init__(
        self,
        issuer: str,
        storage: Storage,
        minter: TokenMinter,
        clock: Clock,
        refresh: RefreshStore,
        *,
        introspectors: frozenset[str] = frozenset(),
    ) -> None:
        self._issuer = issuer
        self._introspectors = introspectors
        self._storage = storage
        self._minter = minter
        self._clock = clock
        self._refresh = refresh

    # -- JWT access tokens ------------------------------------------------------------------
    def verified_claims(self, token: str, *, check_expiry: bool = True) -> dict[str, Any] | None:
        """Claims of a valid, unrevoked JWT this issuer signed, else None."""
        if token.count(".") != 2:
            return None
        try:
            claims = self._minter.keys.verify(token)
        except (JoseError, ValueError, TypeError, KeyError, AttributeError):
            # The header is attacker-controlled JSON and joserfc does not type-check every
            # member before using it (``"crit": null`` raises TypeError): any failure to parse
            # is a refusal, never a 500 at userinfo, introspection or the TokenReview webhook.
            return None
        if claims.get("iss") != self._issuer:
            return None
        if check_expiry and not isinstance(claims.get("exp"), int | float):
            return None
        if check_expiry and claims["exp"] <= self._clock.now():
            return None
        jti = claims.get("jti")
        if isinstance(jti, str) and self._storage.is_token_revoked(jti):
            return None
        sid = claims.get("sid")
        if isinstance(sid, str) and self._storage.is_token_revoked(SID_PREFIX + sid):
            return None
        # `portcullis revoke --user/--group/--client`: issued before its subject was denied.
        if issued_before_denial(self._storage, claims, self._clock.now()):
            return None
        return claims

    # -- RFC 7662 ---------------------------------------------------------------------------
    def introspect(self, caller: Client, form: Mapping[str, str]) -> dict[str, Any]:
        token = form.get("token", "")
        if not token:
            raise invalid_request("the token parameter is missing")
        hint = form.get("token_type_hint", "")
        order = ("refresh", "access") if hint == "refresh_token" else ("access", "refresh")
        for kind in order:
            if kind == "access":
                claims = self.verified_claims(token)
                # ID tokens carry no client_id: they are not access tokens (same as userinfo).
                # Another client's token is none of the caller's business (it would learn the
                # user's claims): it is "not active" unless the caller is one of the token's
                # audiences or is configured with introspectAnyToken (RFC 7662 §2.2, §4).
                if (
                    claims is not None
                    and "client_id" in claims
                    and (caller.id in self._introspectors or caller.id in _parties(claims))
                ):
                    return {"active": True, "token_type": "Bearer", **claims}
            else:
                record = self._refresh.active(token)
                # Refresh tokens are the client's own credentials: only it may inspect them.
                if record is not None and record.client_id == caller.id:
                    result: dict[str, Any] = {
                        "active": True,
                        "token_type": "refresh_token",
                        "client_id": record.client_id,
                        "scope": " ".join(record.scopes),
                        "iat": int(record.created_at),
                        "iss": self._issuer,
                    }
                    if record.expires_at:
                        result["exp"] = int(record.expires_at)
                    return result
        return {"active": False}

    # -- RFC 7009 ---------------------------------------------------------------------------
    def revoke(self, caller: Client, form: Mapping[str, str]) -> None:
        """Revoke a refresh token family or an access/ID token. Unknown tokens are not an
        error (RFC 7009 §2.2), and tokens of other clients are left alone silently."""
        token = form.get("token", "")
        if not token:
            raise invalid_request("the token parameter is missing")
        # The hint is advisory (RFC 7009 §2.1): the token's own format decides what it is.
        if self._refresh.revoke(token, caller):
            return
        claims = self.verified_claims(token, check_expiry=False)
        if claims is None:
            return
        if caller.id in _parties(claims):
            jti = claims.get("jti")
            exp = claims.get("exp")
            if isinstance(jti, str) and isinstance(exp, int | float):
                self._storage.revoke_token(jti, float(exp))

    # -- userinfo ---------------------------------------------------------------------------
    def userinfo(self, access_token: str) -> dict[str, Any] | None:
        claims = self.verified_claims(access_token)
        if claims is None or "client_id" not in claims:
            # ID tokens carry no client_id claim and are not access tokens.
            return None
        return {k: v for k, v in claims.items() if k not in _TOKEN_CLAIMS}


def _parties(claims: Mapping[str, Any]) -> set[str]:
    """The clients a token was issued to or for: its ``client_id``, ``azp`` and audiences."""
    audiences = claims.get("aud")
    listed = audiences if isinstance(audiences, list) else [audiences]
    return {p for p in (claims.get("client_id"), claims.get("azp"), *listed) if isinstance(p, str)}
