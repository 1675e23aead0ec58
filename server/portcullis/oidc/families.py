"""Ending a refresh-token family: delete it and revoke every JWT minted from it that may still
be alive, so logging a device out (or detecting token theft) also kills its access tokens."""

from __future__ import annotations

import contextlib

from portcullis.storage.base import NotFoundError, Storage
from portcullis.storage.models import RefreshToken


def live_access_tokens(
    token: RefreshToken, now: float, added: tuple[tuple[str, float], ...] = ()
) -> tuple[tuple[str, float], ...]:
    """The family's minted-token list with expired entries pruned and new ones appended."""
    return tuple((jti, exp) for jti, exp in (*token.access_tokens, *added) if exp > now)


def end_family(storage: Storage, token_id: str) -> None:
    try:
        token = storage.get_refresh_token(token_id)
    except NotFoundError:
        return
    with contextlib.suppress(NotFoundError):
        storage.delete_refresh_token(token_id)
    for jti, exp in token.access_tokens:
        storage.revoke_token(jti, exp)
