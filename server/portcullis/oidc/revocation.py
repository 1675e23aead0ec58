"""Revocation in one operation (``portcullis revoke``): end every session of a user, a group
or a client, or invalidate every outstanding token by replacing the signing keys.

A user, group or client revocation does two things:

- it deletes the matching refresh-token families (so no new token can be obtained with them)
  and revokes the ``sid`` of each, as RFC 7009 revocation does; and
- it puts the subject on the deny list in storage (``denied_subjects``) with the time of the
  revocation, until the longest-lived JWT issued before it has expired. Every replica consults
  it in :meth:`TokenReader.verified_claims` (userinfo, introspection, the TokenReview webhook),
  and the refresh grant checks it too, so a family created in the instant between the delete
  and the denial cannot be used either.

Only tokens issued at or before the revocation are refused (``iat`` is whole seconds, so the
comparison errs on the side of refusing a token minted in the same second): the user can sign
in again at once, which is what ending sessions means. Locking an account out is the upstream
identity provider's business (or the password DB's).

A kube-apiserver that verifies ID tokens itself (direct OIDC) never asks us: it accepts a
revoked user's token until its ``exp``. ``revoke_all`` is the lever for that case: a new signing
key and no retired keys in ``/keys``, so every outstanding token fails as soon as the API server
refetches the JWKS (on an unknown ``kid``, or its periodic refresh).
"""

from __future__ import annotations

from dataclasses import dataclass

from portcullis.clock import Clock
from portcullis.keys.manager import KeyManager
from portcullis.oidc.claims import decode_subject
from portcullis.oidc.denials import CLIENT, GROUP, SUBJECT
from portcullis.oidc.refresh import SID_PREFIX, session_id
from portcullis.storage.base import Storage


class RevocationError(ValueError):
    """The request cannot be carried out; the message names the argument."""


@dataclass(frozen=True)
class RevocationResult:
    families: int  # refresh-token families ended
    until: float  # when the denial lapses (0 for revoke_all)


class Revoker:
    """The operations behind ``portcullis revoke`` (and the admin API). Touches storage: run in
    a worker thread when called from the event loop."""

    def __init__(self, storage: Storage, keys: KeyManager, clock: Clock, horizon: float) -> None:
        """``horizon``: the longest lifetime of any JWT this issuer mints (seconds)."""
        self._storage = storage
        self._keys = keys
        self._clock = clock
        self._horizon = horizon

    def revoke_user(self, sub: str) -> RevocationResult:
        """``sub`` is the ``sub`` claim (the TokenReview webhook's uid): Dex's encoding of the
        user id and connector id."""
        try:
            user_id, connector_id = decode_subject(sub) if sub else ("", "")
        except (ValueError, UnicodeDecodeError):
            user_id = connector_id = ""
        if not user_id or not connector_id:
            raise RevocationError(
                f"--user {sub!r}: not a subject this issuer issued (the `sub` claim of its tokens, "
                "also the uid the TokenReview webhook reports)"
            )
        return self._revoke(SUBJECT, sub, user_id=user_id, connector_id=connector_id)

    def revoke_group(self, group: str) -> RevocationResult:
        if not group:
            raise RevocationError("--group: empty group name")
        return self._revoke(GROUP, group, group=group)

    def revoke_client(self, client_id: str) -> RevocationResult:
        if not client_id:
            raise RevocationError("--client: empty client id")
        return self._revoke(CLIENT, client_id, client_id=client_id)

    def revoke_all(self) -> RevocationResult:
        """A new signing key now, and no retired key left to verify anything signed before."""
        self._keys.rotate_dropping_retired()
        return RevocationResult(families=0, until=0.0)

    def _revoke(self, kind: str, value: str, **filters: str) -> RevocationResult:
        now = self._clock.now()
        until = now + self._horizon
        # Deny first: a family created between the delete and the denial is refused all the
        # same, by the refresh grant's deny-list check.
        self._storage.deny_subject(kind, value, now, until)
        ended = self._storage.delete_refresh_tokens_matching(**filters)
        for family_id in ended:
            self._storage.revoke_token(SID_PREFIX + session_id(family_id), until)
        return RevocationResult(families=len(ended), until=until)
