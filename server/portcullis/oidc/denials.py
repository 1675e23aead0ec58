"""The deny list of ``portcullis revoke`` as the token checks see it (see
:mod:`portcullis.oidc.revocation` for what puts subjects on it). Kept apart so the refresh
store, the token reader and the revoker share it without importing each other."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from portcullis.storage.base import Storage

SUBJECT = "sub"
GROUP = "group"
CLIENT = "client"


def token_subjects(claims: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The deny-list keys a token's claims name: its subject, every client it was issued to or
    for, and each of its groups."""
    subjects: list[tuple[str, str]] = []
    sub = claims.get("sub")
    if isinstance(sub, str) and sub:
        subjects.append((SUBJECT, sub))
    audiences = claims.get("aud")
    clients: list[Any] = [audiences] if isinstance(audiences, str) else list(audiences or ())
    clients += [claims.get("azp"), claims.get("client_id")]
    subjects += [(CLIENT, c) for c in dict.fromkeys(clients) if isinstance(c, str) and c]
    groups = claims.get("groups")
    if isinstance(groups, list):
        subjects += [(GROUP, g) for g in dict.fromkeys(groups) if isinstance(g, str) and g]
    return subjects


def issued_before_denial(storage: Storage, claims: Mapping[str, Any], now: float) -> bool:
    """True when a revocation of the token's subject, one of its clients or groups came at or
    after the token's ``iat`` (whole seconds, so a token minted in the second of the revocation
    is refused too; one without a numeric ``iat`` counts as issued before)."""
    revoked_at = storage.subjects_revoked_at(token_subjects(claims), now)
    if not revoked_at:
        return False
    iat = claims.get("iat")
    return not isinstance(iat, int | float) or iat <= revoked_at


def family_denied(
    storage: Storage,
    *,
    sub: str,
    client_id: str,
    groups: Iterable[str],
    created_at: float,
    now: float,
) -> bool:
    """True when a refresh family was created at or before a revocation of its user, client or
    one of its groups (the refresh grant's check)."""
    subjects = [(SUBJECT, sub), (CLIENT, client_id), *((GROUP, g) for g in groups)]
    revoked_at = storage.subjects_revoked_at(subjects, now)
    return bool(revoked_at) and created_at <= revoked_at
