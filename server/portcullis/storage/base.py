"""The storage contract every backend implements (memory, sqlite3, postgres).

Mutations that depend on current state take an ``updater`` callback run inside one transaction,
so concurrent workers and replicas never lose an update (Dex's pattern). An updater must keep the
record's key (id, or email up to case): changing it raises ValueError and stores nothing. Error
messages never quote keys (an auth code's id is the code itself). Every backend must pass the
conformance suite in ``tests/unit/storage/``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from portcullis.storage.models import (
    AuthCode,
    AuthRequest,
    Client,
    DeviceRequest,
    GCResult,
    ImportBatch,
    ImportResult,
    Keys,
    Password,
    RefreshRotation,
    RefreshToken,
    RotationOrRead,
)
from portcullis.storage.throttling import ThrottleRule


class StorageError(Exception):
    """Base class for storage failures."""


class NotFoundError(StorageError):
    """The record does not exist (or has already been consumed)."""


class AlreadyExistsError(StorageError):
    """A record with that key already exists."""


class Storage(ABC):
    """Persistence for the issuer. Implementations must be safe across processes when the backend
    is shared (sqlite file, PostgreSQL)."""

    # -- lifecycle ---------------------------------------------------------------------------
    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def ping(self) -> None:
        """Raise StorageError unless the backend answers (readiness probe)."""

    # -- clients -----------------------------------------------------------------------------
    @abstractmethod
    def create_client(self, client: Client) -> None: ...

    @abstractmethod
    def get_client(self, client_id: str) -> Client: ...

    @abstractmethod
    def list_clients(self) -> list[Client]: ...

    @abstractmethod
    def update_client(self, client_id: str, updater: Callable[[Client], Client]) -> Client: ...

    @abstractmethod
    def delete_client(self, client_id: str) -> None: ...

    # -- auth requests -----------------------------------------------------------------------
    @abstractmethod
    def create_auth_request(self, request: AuthRequest) -> None: ...

    @abstractmethod
    def get_auth_request(self, request_id: str) -> AuthRequest: ...

    @abstractmethod
    def update_auth_request(
        self, request_id: str, updater: Callable[[AuthRequest], AuthRequest]
    ) -> AuthRequest: ...

    @abstractmethod
    def delete_auth_request(self, request_id: str) -> None: ...

    # -- auth codes --------------------------------------------------------------------------
    @abstractmethod
    def create_auth_code(self, code: AuthCode) -> None: ...

    @abstractmethod
    def consume_auth_code(self, code_id: str, now: float, client_id: str) -> AuthCode:
        """Atomically mark the code used by client_id and return it; a second call raises
        CodeReplayedError carrying the original code so callers can revoke what it issued.
        A code issued to another client raises CodeClientMismatchError and is left exactly
        as it was (checked under the same lock), so a client holding someone else's code can
        neither redeem it nor burn it for its owner."""

    def exchange_auth_code(
        self,
        code_id: str,
        now: float,
        client_id: str,
        start_family: Callable[[AuthCode], RefreshToken | None],
    ) -> tuple[AuthCode, RefreshToken | None]:
        """``consume_auth_code``, then store the refresh family ``start_family`` builds from
        the consumed code (None: no family); returns both. The code exchange's two writes:
        a backend that can commit them together does (SQLite: one group-commit item, one
        fsync wait instead of two); this default runs them one after the other, which on
        PostgreSQL is the same two autocommit round trips a transaction would not save.

        ``start_family`` is called once, only for a code this call consumed, and may run
        while the backend holds its write lock: it must only compute (no I/O, no storage
        calls). The code stays consumed whatever happens after the consume, as with two
        calls: when ``start_family`` raises (its exception propagates) and when the family
        cannot be stored (AlreadyExistsError). Otherwise errors are those of
        ``consume_auth_code``, and ``start_family`` is not called then."""
        code = self.consume_auth_code(code_id, now, client_id)
        family = start_family(code)
        if family is not None:
            self.create_refresh_token(family)
        return code, family

    async def exchange_auth_code_async(
        self,
        code_id: str,
        now: float,
        client_id: str,
        start_family: Callable[[AuthCode], RefreshToken | None],
    ) -> tuple[AuthCode, RefreshToken | None]:
        """``exchange_auth_code`` for a caller on the event loop (see
        ``rotate_refresh_token_async``): a worker thread by default."""
        from anyio import to_thread  # the event-loop side only

        return await to_thread.run_sync(
            self.exchange_auth_code, code_id, now, client_id, start_family
        )

    @abstractmethod
    def delete_auth_code(self, code_id: str) -> None: ...

    # -- refresh tokens ----------------------------------------------------------------------
    @abstractmethod
    def create_refresh_token(self, token: RefreshToken) -> None: ...

    @abstractmethod
    def get_refresh_token(self, token_id: str) -> RefreshToken: ...

    def get_refresh_token_for_use(self, token_id: str, now: float) -> tuple[RefreshToken, bool]:
        """The family, and whether any deny-list entry live at ``now`` was recorded at or
        after its ``created_at`` (whoever it names): when not, no denial can concern the
        family and the refresh grant skips its precise deny-list query. One round trip where
        the backend can; this default answers True (always check), which is never wrong."""
        return self.get_refresh_token(token_id), True

    async def get_refresh_token_for_use_async(
        self, token_id: str, now: float
    ) -> tuple[RefreshToken, bool]:
        """``get_refresh_token_for_use`` for a caller on the event loop (the refresh grant's
        general path; see ``rotate_refresh_token_async``), with the same result and errors: a
        worker thread by default; SQLite reads on the loop itself, PostgreSQL awaits the read
        on a connection of the loop's own."""
        from anyio import to_thread  # the event-loop side only

        return await to_thread.run_sync(self.get_refresh_token_for_use, token_id, now)

    @abstractmethod
    def update_refresh_token(
        self, token_id: str, updater: Callable[[RefreshToken], RefreshToken]
    ) -> RefreshToken: ...

    @abstractmethod
    def rotate_refresh_token(self, rotation: RefreshRotation) -> RefreshToken | None:
        """Apply ``rotation`` (see RefreshRotation for exactly when and what) atomically, in
        one storage round trip where the backend can: the refresh grant's hot path. Returns
        the family as stored afterwards, or None when the conditions did not hold and nothing
        changed; the caller then reads the family to find out why (unknown, another client's,
        a retry or a replay, expired, a connector that refreshes upstream)."""

    async def rotate_refresh_token_async(self, rotation: RefreshRotation) -> RefreshToken | None:
        """``rotate_refresh_token`` for a caller on the event loop, with the same result and
        durability. By default it runs in a worker thread (anyio's, as every blocking storage
        call of the server); a backend that can wait for its commit without a thread of the
        caller's (SQLite's group commit, PostgreSQL's loop-owned connections) overrides it: the
        thread hand-off per request was a fifth of a refresh's CPU under load."""
        from anyio import to_thread  # the event-loop side only; storage stays usable without

        return await to_thread.run_sync(self.rotate_refresh_token, rotation)

    async def rotate_refresh_token_or_read_async(self, rotation: RefreshRotation) -> RotationOrRead:
        """``rotate_refresh_token_async``, and when it changed nothing, the family as
        ``get_refresh_token_for_use_async`` reads it (NotFoundError when there is none): what
        the refresh grant needs next either way. By default those two awaited calls;
        PostgreSQL answers both in one statement (a data-modifying CTE), so a refresh that
        the one-statement rotation leaves to the general path (a connector that refreshes
        upstream, a retry) costs no extra round trip. The family read after a failed
        rotation may already be out of date; the general path's compare-and-swap settles
        that."""
        family = await self.rotate_refresh_token_async(rotation)
        if family is not None:
            return RotationOrRead(family, rotated=True, denied_since=False)
        current, denied_since = await self.get_refresh_token_for_use_async(
            rotation.family_id, rotation.now
        )
        return RotationOrRead(current, rotated=False, denied_since=denied_since)

    @abstractmethod
    def delete_refresh_token(self, token_id: str) -> None: ...

    @abstractmethod
    def list_refresh_tokens(self, user_id: str = "", connector_id: str = "") -> list[RefreshToken]:
        """Refresh tokens, optionally only one user's (by identity user_id + connector)."""

    @abstractmethod
    def refresh_tokens_issued_by_code(self, code_id: str) -> list[RefreshToken]: ...

    # -- device requests (RFC 8628) ---------------------------------------------------------
    @abstractmethod
    def create_device_request(self, request: DeviceRequest) -> None:
        """AlreadyExistsError when the id or the user code is taken (the caller draws a new
        user code)."""

    @abstractmethod
    def get_device_request(self, request_id: str) -> DeviceRequest: ...

    @abstractmethod
    def get_device_request_by_user_code(self, user_code: str) -> DeviceRequest: ...

    @abstractmethod
    def update_device_request(
        self, request_id: str, updater: Callable[[DeviceRequest], DeviceRequest]
    ) -> DeviceRequest: ...

    # -- passwords ---------------------------------------------------------------------------
    @abstractmethod
    def create_password(self, password: Password) -> None: ...

    @abstractmethod
    def get_password(self, email: str) -> Password:
        """Lookup is case-insensitive on email, like Dex."""

    @abstractmethod
    def list_passwords(self) -> list[Password]: ...

    @abstractmethod
    def update_password(self, email: str, updater: Callable[[Password], Password]) -> Password: ...

    @abstractmethod
    def delete_password(self, email: str) -> None: ...

    # -- signing keys ------------------------------------------------------------------------
    @abstractmethod
    def get_keys(self) -> Keys:
        """The key set; an empty one (no signing key, next_rotation 0) before the first rotation."""

    @abstractmethod
    def update_keys(self, updater: Callable[[Keys], Keys]) -> Keys:
        """Run updater on the current keys in one transaction. The updater may raise
        RotationNotDueError to abort (another replica already rotated)."""

    # -- import from another issuer ------------------------------------------------------------
    @abstractmethod
    def import_batch(self, batch: ImportBatch) -> ImportResult:
        """Insert every record of batch whose key is absent, all in one transaction (all or
        nothing); existing records are left as they are, so re-running an import is harmless.
        Verification keys are merged into the key set by ``kid``; the signing key and the
        rotation schedule are not touched."""

    # -- token revocation (RFC 7009) ---------------------------------------------------------
    @abstractmethod
    def revoke_token(self, jti: str, expiry: float) -> None:
        """Remember a revoked JWT id until it would have expired anyway (idempotent)."""

    @abstractmethod
    def is_token_revoked(self, jti: str) -> bool: ...

    @abstractmethod
    def delete_refresh_tokens_matching(
        self, *, user_id: str = "", connector_id: str = "", client_id: str = "", group: str = ""
    ) -> list[str]:
        """Delete every refresh family matching all the given filters (at least one; ``group``
        matches families whose identity has that group) and return their ids, in one query
        rather than by loading every family."""

    @abstractmethod
    def deny_subject(self, kind: str, value: str, revoked_at: float, expiry: float) -> None:
        """Refuse JWTs issued to (kind, value) at or before revoked_at until expiry; a later
        call keeps the later of each (idempotent)."""

    @abstractmethod
    def subjects_revoked_at(self, subjects: Sequence[tuple[str, str]], now: float) -> float:
        """The latest revoked_at of the unexpired denials among subjects, 0.0 when none."""

    # -- single-use values -------------------------------------------------------------------
    @abstractmethod
    def claim_once(self, key: str, expiry: float) -> bool:
        """Claim key (e.g. ``saml:<assertion id>``) until expiry: True for the first claim,
        False for every later one while the first is unexpired. Atomic across processes and
        replicas, so a replay cache built on it holds behind a load balancer."""

    # -- password-login throttling -----------------------------------------------------------
    @abstractmethod
    def throttle_attempt(self, rules: Sequence[ThrottleRule], now: float, window: float) -> float:
        """Admit and count a login attempt, or refuse it, atomically across processes and
        replicas: in one write transaction (the keys locked), read every rule's attempts inside
        the window ending at now, and if no rule refuses (``throttling.verdict`` is 0) record
        the attempt under every rule's key and return 0.0; else record nothing and return the
        seconds until it would be admitted. Counting before the password is checked is what
        stops parallel guesses from all passing a check that each would fail alone."""

    @abstractmethod
    def forget_attempt(self, key: str, at: float) -> None:
        """Uncount one attempt recorded under key at time ``at`` (a no-op if there is none):
        an admitted attempt that turned out not to be a guess (a good password, an upstream
        outage) must not count towards a shared limit such as a client address's."""

    @abstractmethod
    def record_login_failure(self, key: str, now: float, window: float) -> int:
        """Count a failed login for key (e.g. ``user:alice`` or ``ip:10.0.0.1``) and return the
        number of failures inside the sliding window ending at now."""

    @abstractmethod
    def login_failures(self, key: str, now: float, window: float) -> int: ...

    @abstractmethod
    def clear_login_failures(self, key: str) -> None: ...

    # -- garbage collection ------------------------------------------------------------------
    @abstractmethod
    def garbage_collect(self, now: float, batch_size: int = 500) -> GCResult:
        """Delete expired records, at most batch_size per kind per call, so one GC pass never
        holds a long lock (Dex #4979)."""


class CodeReplayedError(StorageError):
    """An auth code was presented a second time."""

    def __init__(self, code: AuthCode) -> None:
        super().__init__("authorization code already used")
        self.code = code


class CodeClientMismatchError(StorageError):
    """An auth code was presented by a client it was not issued to (it stays unused)."""

    def __init__(self) -> None:
        super().__init__("authorization code issued to another client")


class RotationNotDueError(StorageError):
    """Raised by a key updater to abort a rotation that another replica already did."""
