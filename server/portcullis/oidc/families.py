"""Refresh-token families (one per device session) and their end.

Every JWT minted for a family carries ``sid`` = a one-way hash of the family id. Ending a
family records ``sid:<sid>`` as revoked until the longest token lifetime has passed, so logging
a device out (or detecting token theft) also kills its access and ID tokens at once, without a
per-token list. The hash keeps the family id (half of a refresh token) out of JWTs that
resource servers see.
"""

from __future__ import annotations

import contextlib
import hashlib

from portcullis.storage.base import NotFoundError, Storage

SID_PREFIX = "sid:"


def session_id(family_id: str) -> str:
    return hashlib.sha256(f"pcr-family:{family_id}".encode()).hexdigest()[:32]


def end_family(storage: Storage, family_id: str, revoke_until: float) -> None:
    """Delete the family and revoke every JWT minted for it (idempotent)."""
    with contextlib.suppress(NotFoundError):
        storage.delete_refresh_token(family_id)
    storage.revoke_token(SID_PREFIX + session_id(family_id), revoke_until)
