"""Refresh tokens, in one place: their format, lookup, creation, rotation and end.

A refresh token is ``pcr1.<family id>.<secret>``. The family (one ``RefreshToken`` record, one
device session) keeps its id for life; rotation replaces the secret. Storage holds only digests
of the current and the previous secret, so a database dump yields no usable token.

Why everything lives here: the refresh grant, introspection (RFC 7662), revocation (RFC 7009),
code-replay handling and the admin API all have to agree on what "this token is valid", "this
token was reused" and "this session is over" mean. Written once, the rules cannot drift apart
between endpoints (they had: three copies of the lookup with different checks). As in Dex's
``server/tokens`` (refresh_lookup, refresh_store, refresh_strategy), the *policy* (when a family
expires, what a replayed secret means) is pure and testable without storage, and the *store*
applies it inside one storage transaction so concurrent workers and replicas agree.

The rules (RFC 9700 §4.14.2):

* Presenting the current secret rotates: a new secret is issued, the old one becomes the
  *previous* secret, and the new one is sealed (AES-GCM) under a key derived from the old one.
* Presenting the previous secret again inside ``reuseInterval`` returns the *same* successor,
  unsealed with the presented secret: a client whose response was lost can retry without
  forking the family, and no plaintext successor is ever stored.
* Any other secret of a known family, or the previous one after the interval, means an older
  generation is being replayed, so the token leaked: the family ends.
* Ending a family deletes it and revokes every JWT minted for it through its ``sid`` claim
  (``session_id``), so stolen access and ID tokens die with it, without a per-token list.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import enum
import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from typing import NoReturn

from anyio import to_thread
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from portcullis.clock import Clock
from portcullis.oidc.claims import encode_subject
from portcullis.oidc.clients import ClientRegistry
from portcullis.oidc.denials import family_denied
from portcullis.oidc.dex_refresh import decode_dex_refresh_token
from portcullis.oidc.settings import ProtocolSettings, RefreshPolicy
from portcullis.oidc.tokens import derived_jti, new_id
from portcullis.storage.base import NotFoundError, Storage
from portcullis.storage.models import Client, Identity, RefreshRotation, RefreshToken

log = logging.getLogger("portcullis.token")

REFRESH_PREFIX = "pcr1"
SID_PREFIX = "sid:"

# -- token strings and secrets --------------------------------------------------------------


def new_secret() -> str:
    """256 random bits: refresh secrets are bearer credentials that live for weeks."""
    return secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    """What storage keeps of a secret. Secrets are high-entropy, so a fast hash suffices."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_digest: str) -> bool:
    """Constant-time comparison; an empty digest (no previous secret) never matches."""
    return bool(stored_digest) and hmac.compare_digest(digest(secret), stored_digest)


def format_refresh_token(family_id: str, secret: str) -> str:
    return f"{REFRESH_PREFIX}.{family_id}.{secret}"


def parse_refresh_token(value: str) -> tuple[str, str] | None:
    """(family id, secret), or None when the value is not one of our refresh tokens."""
    parts = value.split(".")
    if len(parts) != 3 or parts[0] != REFRESH_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def _seal_key(previous_secret: str, family_id: str) -> bytes:
    hkdf = HKDF(algorithm=SHA256(), length=32, salt=None, info=f"pcr1-seal:{family_id}".encode())
    return hkdf.derive(previous_secret.encode())


def seal_successor(previous_secret: str, family_id: str, successor: str) -> str:
    """Encrypt the successor under a key only the holder of the previous secret can derive, so
    the retry inside ``reuseInterval`` works without a plaintext successor in storage."""
    nonce = os.urandom(12)
    sealed = AESGCM(_seal_key(previous_secret, family_id)).encrypt(
        nonce, successor.encode(), family_id.encode()
    )
    return base64.urlsafe_b64encode(nonce + sealed).decode()


def unseal_successor(previous_secret: str, family_id: str, sealed: str) -> str:
    """Raises InvalidTag or ValueError when the secret or the sealed value is wrong."""
    raw = base64.urlsafe_b64decode(sealed.encode())
    plain = AESGCM(_seal_key(previous_secret, family_id)).decrypt(
        raw[:12], raw[12:], family_id.encode()
    )
    return plain.decode()


# -- sessions -------------------------------------------------------------------------------


def session_id(family_id: str) -> str:
    """The ``sid`` claim of every JWT minted for a family: a one-way hash, because the family
    id is half of a refresh token and JWTs are shown to resource servers."""
    return hashlib.sha256(f"pcr-family:{family_id}".encode()).hexdigest()[:32]


def end_family(storage: Storage, family_id: str, revoke_until: float) -> None:
    """Delete the family and revoke every JWT minted for it (idempotent).

    ``revoke_until`` must reach past the longest-lived JWT the family may have been issued;
    after that the revocation record can be garbage-collected.
    """
    with contextlib.suppress(NotFoundError):
        storage.delete_refresh_token(family_id)
    storage.revoke_token(SID_PREFIX + session_id(family_id), revoke_until)


# -- policy (pure) --------------------------------------------------------------------------


def family_expiry(policy: RefreshPolicy, client: Client, created_at: float, now: float) -> float:
    """When the family dies if it is used now: the earlier of the absolute lifetime (the
    client's own, else the server's) and the idle limit; 0 means never. Recomputed on every
    use, so storage (and garbage collection) only ever needs one timestamp."""
    limits = []
    absolute = client.refresh_token_absolute_lifetime or policy.absolute_lifetime
    if absolute:
        limits.append(created_at + absolute)
    if policy.valid_if_not_used_for:
        limits.append(now + policy.valid_if_not_used_for)
    return min(limits) if limits else 0.0


class SecretMatch(enum.Enum):
    """Which of the family's secrets a presented one is."""

    CURRENT = "current"
    PREVIOUS = "previous"
    NEITHER = "neither"


def match_secret(secret: str, family: RefreshToken) -> SecretMatch:
    if secret_matches(secret, family.token_hash):
        return SecretMatch.CURRENT
    if secret_matches(secret, family.obsolete_token_hash):
        return SecretMatch.PREVIOUS
    return SecretMatch.NEITHER


@dataclass(frozen=True)
class Rotated:
    """Hand ``secret`` back to the client: a fresh successor, the unchanged secret (rotation
    disabled), or the successor already issued for this secret (a retry inside the interval)."""

    secret: str


@dataclass(frozen=True)
class Reused:
    """The previous secret came back after ``reuseInterval`` (or its successor cannot be
    unsealed): an older generation is being replayed."""


@dataclass(frozen=True)
class Overtaken:
    """The presented secret is neither current nor previous any more: other rotations ran
    between the lookup and this one. The secret is at least two generations old, so this is
    reuse too."""


RotationOutcome = Rotated | Reused | Overtaken


def rotate_family(
    current: RefreshToken,
    secret: str,
    *,
    identity: Identity,
    policy: RefreshPolicy,
    expires_at: float,
    now: float,
) -> tuple[RefreshToken, RotationOutcome]:
    """Decide one use of ``secret`` on the family as it is *now* (inside the storage
    transaction): the record to store and what the client gets. Pure, so the rules are tested
    without storage; ``RefreshStore.rotate_async`` runs it under ``update_refresh_token``."""
    match = match_secret(secret, current)
    if match is SecretMatch.CURRENT:
        if policy.disable_rotation:
            updated = dataclasses.replace(
                current, last_used=now, identity=identity, expires_at=expires_at
            )
            return updated, Rotated(secret)
        successor = new_secret()
        updated = dataclasses.replace(
            current,
            token_hash=digest(successor),
            obsolete_token_hash=current.token_hash,
            successor_sealed=seal_successor(secret, current.id, successor),
            last_used=now,
            identity=identity,
            expires_at=expires_at,
        )
        return updated, Rotated(successor)
    if match is SecretMatch.PREVIOUS:
        # last_used is not advanced by a retry: the interval counts from the rotation.
        if now - current.last_used <= policy.reuse_interval:
            try:
                return current, Rotated(
                    unseal_successor(secret, current.id, current.successor_sealed)
                )
            except (InvalidTag, ValueError):
                return current, Reused()
        return current, Reused()
    return current, Overtaken()


# -- lookup errors --------------------------------------------------------------------------


class RefreshTokenError(Exception):
    """A refresh token the grant must refuse; ``description`` is safe to send to the client
    (the refresh grant maps every subclass to ``invalid_grant``)."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class MalformedRefreshTokenError(RefreshTokenError):
    def __init__(self) -> None:
        super().__init__("the refresh token is invalid")


class UnknownRefreshTokenError(RefreshTokenError):
    def __init__(self) -> None:
        super().__init__("the refresh token is invalid or was revoked")


class ForeignRefreshTokenError(RefreshTokenError):
    def __init__(self) -> None:
        super().__init__("the refresh token was issued to another client")


class RefreshTokenReusedError(RefreshTokenError):
    """The family was ended because an old secret was replayed."""

    def __init__(self) -> None:
        super().__init__("the refresh token was already used; the session has been revoked")


class RefreshTokenDeniedError(RefreshTokenError):
    def __init__(self) -> None:
        super().__init__("the refresh token has been revoked")


class RefreshTokenExpiredError(RefreshTokenError):
    """The family was ended because it outlived its absolute or idle lifetime."""

    def __init__(self) -> None:
        super().__init__("the refresh token has expired")


@dataclass(frozen=True)
class Presented:
    """A refresh token as presented: the family it names and the secret it carried."""

    family: RefreshToken
    secret: str
    match: SecretMatch


@dataclass(frozen=True)
class FamilyRead:
    """A family as the one-statement rotation found it when it left the refresh to the
    general path, with the deny-list hint (see ``Storage.get_refresh_token_for_use``): what
    ``lookup_for_grant_async`` would otherwise read again."""

    family: RefreshToken
    denied_since: bool


# -- the store ------------------------------------------------------------------------------


class RefreshStore:
    """Every storage operation on refresh-token families. Methods touch storage and must run
    in worker threads, never on the event loop; the ``*_async`` ones are awaited on it (their
    storage calls are the backend's awaitable ones, the rare paths go to a worker thread)."""

    def __init__(
        self,
        settings: ProtocolSettings,
        storage: Storage,
        clients: ClientRegistry,
        clock: Clock,
    ) -> None:
        self._settings = settings
        self._storage = storage
        self._clients = clients
        self._clock = clock

    @property
    def policy(self) -> RefreshPolicy:
        return self._settings.refresh

    def revoke_horizon(self) -> float:
        """How long a revocation must be remembered: until the longest-lived JWT any client
        may hold has expired anyway."""
        return self._clock.now() + self._settings.max_token_lifetime(self._clients.all())

    # -- lookup -----------------------------------------------------------------------------
    @staticmethod
    def _parse(value: str) -> tuple[str, str, bool]:
        """(family id, secret, whether it came in Dex's format) of a presented value."""
        parsed = parse_refresh_token(value)
        # A token Dex issued before `portcullis import-dex` (oidc.dex_refresh): its refresh id
        # is the imported family's id and its token that family's current secret.
        dex_format = parsed is None
        if parsed is None:
            parsed = decode_dex_refresh_token(value)
        if parsed is None:
            raise MalformedRefreshTokenError()
        return parsed[0], parsed[1], dex_format

    @staticmethod
    def _presented(family: RefreshToken, secret: str, dex_format: bool) -> Presented:
        match = match_secret(secret, family)
        if dex_format and match is SecretMatch.PREVIOUS:
            # One-shot: the first use rotated the family into our format and the client got a
            # pcr1 token; no retry of the Dex envelope is honoured (its successor is ours now).
            match = SecretMatch.NEITHER
        return Presented(family=family, secret=secret, match=match)

    def _find(self, value: str, denials: list[bool] | None = None) -> Presented:
        """The one lookup: parse, load the family, say which secret was presented. With
        ``denials``, also learn in the same storage call whether a live denial postdates the
        family (appended to it: see ``Storage.get_refresh_token_for_use``)."""
        family_id, secret, dex_format = self._parse(value)
        try:
            if denials is None:
                family = self._storage.get_refresh_token(family_id)
            else:
                family, denied_since = self._storage.get_refresh_token_for_use(
                    family_id, self._clock.now()
                )
                denials.append(denied_since)
        except NotFoundError:
            raise UnknownRefreshTokenError() from None
        return self._presented(family, secret, dex_format)

    def _expired(self, family: RefreshToken) -> bool:
        return bool(family.expires_at) and self._clock.now() > family.expires_at

    async def lookup_for_grant_async(
        self, value: str, client: Client, read: FamilyRead | None = None
    ) -> Presented:
        """The family a refresh grant may use, or a RefreshTokenError; awaited on the event
        loop.

        Family ids only ever leave the server inside refresh tokens, so a known id with a
        secret that is neither the current nor the previous one is an older generation being
        replayed: the family is ended here. This check comes before expiry and before the
        upstream refresh, so nobody can poke the upstream without a live secret.

        The family is read with ``Storage.get_refresh_token_for_use_async`` (no worker thread
        where the backend can read without one); only a lookup that must end the family or
        query the deny list (a replay, an expired family, a denial newer than the family)
        continues in a worker thread (``_checked_for_grant``). ``read``: the family as
        ``rotate_current_async`` already read it for this value, so it is not read twice."""
        family_id, secret, dex_format = self._parse(value)
        if read is not None and read.family.id == family_id:
            family, denied = read.family, read.denied_since
        else:
            try:
                family, denied = await self._storage.get_refresh_token_for_use_async(
                    family_id, self._clock.now()
                )
            except NotFoundError:
                raise UnknownRefreshTokenError() from None
        presented = self._presented(family, secret, dex_format)
        if family.client_id != client.id:
            raise ForeignRefreshTokenError()
        if presented.match is SecretMatch.NEITHER or self._expired(family) or denied:
            return await to_thread.run_sync(self._checked_for_grant, presented, denied, client)
        return presented

    def _checked_for_grant(self, presented: Presented, denied: bool, client: Client) -> Presented:
        """The checks of ``lookup_for_grant_async`` on a family read with its deny-list hint;
        ends the family (storage writes) when it must not be used."""
        family = presented.family
        if family.client_id != client.id:
            raise ForeignRefreshTokenError()
        if presented.match is SecretMatch.NEITHER:
            self.reuse_detected(family.id, client.id)
        if self._expired(family):
            self.end_family(family.id)
            raise RefreshTokenExpiredError()
        # The precise deny-list query only when some live denial is newer than the family.
        if denied and family_denied(
            self._storage,
            sub=encode_subject(family.identity.user_id, family.connector_id),
            client_id=family.client_id,
            groups=family.identity.groups,
            created_at=family.created_at,
            now=self._clock.now(),
        ):
            # `portcullis revoke` deletes such families; this catches one created in the
            # instant before the denial was written.
            self.end_family(family.id)
            raise RefreshTokenDeniedError()
        return presented

    def active(self, value: str) -> RefreshToken | None:
        """The family for introspection: only the current secret of a live family is active
        (a previous secret is still accepted by the grant for a retry, but it is not a token
        the client holds any more)."""
        try:
            presented = self._find(value)
        except RefreshTokenError:
            return None
        if presented.match is not SecretMatch.CURRENT or self._expired(presented.family):
            return None
        return presented.family

    def revoke(self, value: str, caller: Client) -> bool:
        """RFC 7009 for refresh tokens: end the family when the caller owns it and presents a
        secret it was issued (current or previous). True when the value has our refresh-token
        format (so it is not worth trying as a JWT), whatever the outcome."""
        try:
            presented = self._find(value)
        except MalformedRefreshTokenError:
            return False
        except UnknownRefreshTokenError:
            return True
        if presented.family.client_id == caller.id and presented.match is not SecretMatch.NEITHER:
            self.end_family(presented.family.id)
        return True

    # -- lifecycle --------------------------------------------------------------------------
    def create(
        self,
        client: Client,
        *,
        identity: Identity,
        connector_id: str,
        granted: tuple[str, ...],
        nonce: str,
        auth_time: float,
        issued_by_code: str,
        resources: tuple[str, ...] = (),
    ) -> tuple[str, str]:
        """Start a family; returns (family id, refresh token string)."""
        family, value = self.new_family(
            client,
            identity=identity,
            connector_id=connector_id,
            granted=granted,
            nonce=nonce,
            auth_time=auth_time,
            issued_by_code=issued_by_code,
            resources=resources,
        )
        self._storage.create_refresh_token(family)
        return family.id, value

    def new_family(
        self,
        client: Client,
        *,
        identity: Identity,
        connector_id: str,
        granted: tuple[str, ...],
        nonce: str,
        auth_time: float,
        issued_by_code: str,
        resources: tuple[str, ...] = (),
    ) -> tuple[RefreshToken, str]:
        """The record of a new family and its refresh token string, not stored yet (pure but
        for the random id and secret): for ``create``, and for a code exchange that stores it
        together with consuming the code (``Storage.exchange_auth_code``)."""
        now = self._clock.now()
        secret = new_secret()
        family = RefreshToken(
            id=new_id(),
            token_hash=digest(secret),
            client_id=client.id,
            connector_id=connector_id,
            identity=identity,
            scopes=granted,
            created_at=now,
            last_used=now,
            nonce=nonce,
            auth_time=auth_time,
            issued_by_code=issued_by_code,
            expires_at=family_expiry(self.policy, client, now, now),
            resources=resources,
        )
        return family, format_refresh_token(family.id, secret)

    async def rotate_current_async(
        self, value: str, client: Client, connector_ids: tuple[str, ...]
    ) -> tuple[RefreshToken, Rotated] | FamilyRead | None:
        """The hot path: use ``value`` in ONE atomic storage statement when it carries the
        current secret of a live family of ``client`` whose connector is one of
        ``connector_ids`` (those that need no upstream refresh). Returns the family as stored
        afterwards and the secret for the client. When any of that does not hold, nothing
        changed and the caller takes the general path (``lookup_for_grant_async``, then
        ``rotate_async``), which decides retry, reuse, expiry and upstream refresh: it gets
        the family as found (:class:`FamilyRead`, read in the same statement where the
        backend can: ``Storage.rotate_refresh_token_or_read_async``), or None for a token in
        Dex's envelope. UnknownRefreshTokenError when there is no such family.

        The successor is sealed before the statement, since the key derives from the
        presented secret; the statement applies the same rules as ``rotate_family`` and
        ``family_expiry`` for this case. The statement is awaited, so the common refresh
        needs no thread hand-off of its own."""
        parsed = parse_refresh_token(value)
        if parsed is None:
            if decode_dex_refresh_token(value) is not None:
                # Dex's envelope (after `portcullis import-dex`): honoured once and rotated
                # into ours, which the general path decides (see _presented).
                return None
            raise MalformedRefreshTokenError()
        family_id, secret = parsed
        rotation, successor = self._one_statement_rotation(
            family_id, secret, client, connector_ids, None
        )
        try:
            found = await self._storage.rotate_refresh_token_or_read_async(rotation)
        except NotFoundError:
            raise UnknownRefreshTokenError() from None
        if found.rotated:
            return found.family, Rotated(successor)
        return FamilyRead(found.family, found.denied_since)

    def _one_statement_rotation(
        self,
        family_id: str,
        secret: str,
        client: Client,
        connector_ids: tuple[str, ...],
        identity: Identity | None,
    ) -> tuple[RefreshRotation, str]:
        """The rotation of a current secret, and the successor secret it issues."""
        now = self._clock.now()
        policy = self.policy
        if policy.disable_rotation:
            successor, new_hash, sealed = secret, "", ""
        else:
            successor = new_secret()
            new_hash = digest(successor)
            sealed = seal_successor(secret, family_id, successor)
        rotation = RefreshRotation(
            family_id=family_id,
            presented_hash=digest(secret),
            client_id=client.id,
            connector_ids=connector_ids,
            now=now,
            new_token_hash=new_hash,
            successor_sealed=sealed,
            absolute_lifetime=(
                client.refresh_token_absolute_lifetime or policy.absolute_lifetime or 0.0
            ),
            idle_deadline=(
                now + policy.valid_if_not_used_for if policy.valid_if_not_used_for else 0.0
            ),
            identity=identity,
        )
        return rotation, successor

    async def rotate_async(
        self, client: Client, presented: Presented, identity: Identity
    ) -> RotationOutcome:
        """Apply ``rotate_family`` atomically to the family as stored now (another worker or
        replica may have rotated it since the lookup). Raises UnknownRefreshTokenError when the
        family was deleted meanwhile.

        A current secret is first tried as one compare-and-swap statement, awaited
        (``Storage.rotate_refresh_token_async``: the family still has that secret, rotate it);
        only when it was overtaken meanwhile (a retry with the previous secret, a concurrent
        rotation) does the locked read-decide-write run, in a worker thread, which tells a
        retry from a replay."""
        family = presented.family
        if presented.match is SecretMatch.CURRENT:
            rotation, successor = self._one_statement_rotation(
                family.id, presented.secret, client, (family.connector_id,), identity
            )
            if await self._storage.rotate_refresh_token_async(rotation) is not None:
                return Rotated(successor)
        return await to_thread.run_sync(self._rotate_locked, client, presented, identity)

    def _rotate_locked(
        self, client: Client, presented: Presented, identity: Identity
    ) -> RotationOutcome:
        """``rotate_family`` in a read-decide-write under the backend's row lock: tells a
        retry of the last rotation from a replay of an older generation."""
        now = self._clock.now()
        outcome: list[RotationOutcome] = []

        def update(current: RefreshToken) -> RefreshToken:
            outcome.clear()
            updated, result = rotate_family(
                current,
                presented.secret,
                identity=identity,
                policy=self.policy,
                expires_at=family_expiry(self.policy, client, current.created_at, now),
                now=now,
            )
            outcome.append(result)
            return updated

        try:
            self._storage.update_refresh_token(presented.family.id, update)
        except NotFoundError:
            raise UnknownRefreshTokenError() from None
        return outcome[0] if outcome else Overtaken()

    def reuse_detected(self, family_id: str, client_id: str) -> NoReturn:
        """End a family whose token was replayed, and raise the error the client gets."""
        log.warning("refresh token reuse detected for client %s: session revoked", client_id)
        self.end_family(family_id)
        raise RefreshTokenReusedError()

    def end_family(self, family_id: str) -> None:
        end_family(self._storage, family_id, self.revoke_horizon())

    def revoke_code_issue(self, code_id: str) -> None:
        """A replayed authorization code means it leaked (RFC 6749 §4.1.2): end every family
        it started and revoke the JWTs minted from it (their jtis derive from the code id)."""
        horizon = self.revoke_horizon()
        for family in self._storage.refresh_tokens_issued_by_code(code_id):
            end_family(self._storage, family.id, horizon)
        for purpose in ("access", "id"):
            self._storage.revoke_token(derived_jti(code_id, purpose), horizon)
