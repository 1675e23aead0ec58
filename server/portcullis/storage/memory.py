"""In-process storage: for tests and single-process development (state dies with the process)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from portcullis.storage.base import (
    AlreadyExistsError,
    CodeClientMismatchError,
    CodeReplayedError,
    NotFoundError,
    Storage,
)
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
)
from portcullis.storage.throttling import ThrottleRule, verdict

T = TypeVar("T")

# Failed-login records older than this are useless to any sane throttle window.
LOGIN_ATTEMPT_RETENTION = 24 * 3600.0


class MemoryStorage(Storage):
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._clients: dict[str, Client] = {}
        self._auth_requests: dict[str, AuthRequest] = {}
        self._auth_codes: dict[str, AuthCode] = {}
        self._refresh: dict[str, RefreshToken] = {}
        self._passwords: dict[str, Password] = {}
        self._keys = Keys(signing_key=None, verification_keys=(), next_rotation=0.0)
        self._revoked: dict[str, float] = {}
        self._denied: dict[tuple[str, str], tuple[float, float]] = {}
        self._single_use: dict[str, float] = {}
        self._login_failures: dict[str, list[float]] = {}
        self._device: dict[str, DeviceRequest] = {}

    # -- helpers -----------------------------------------------------------------------------
    # Error messages never quote the key: an auth code's id *is* the code, a secret.
    def _create(self, table: dict[str, T], key: str, value: T) -> None:
        with self._lock:
            if key in table:
                raise AlreadyExistsError("record already exists")
            table[key] = value

    def _get(self, table: dict[str, T], key: str) -> T:
        with self._lock:
            try:
                return table[key]
            except KeyError:
                raise NotFoundError("record not found") from None

    def _update(
        self,
        table: dict[str, T],
        key: str,
        updater: Callable[[T], T],
        key_of: Callable[[T], str],
    ) -> T:
        with self._lock:
            current = self._get(table, key)
            new = updater(current)
            if key_of(new) != key:
                # Same rule as the SQL backends: a record's key is its identity.
                raise ValueError("updater changed the record key; create a new record instead")
            table[key] = new
            return new

    def _delete(self, table: dict[str, T], key: str) -> None:
        with self._lock:
            if table.pop(key, None) is None:
                raise NotFoundError("record not found")

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        pass

    def ping(self) -> None:
        pass

    # -- clients -----------------------------------------------------------------------------
    def create_client(self, client: Client) -> None:
        self._create(self._clients, client.id, client)

    def get_client(self, client_id: str) -> Client:
        return self._get(self._clients, client_id)

    def list_clients(self) -> list[Client]:
        with self._lock:
            return sorted(self._clients.values(), key=lambda c: c.id)

    def update_client(self, client_id: str, updater: Callable[[Client], Client]) -> Client:
        return self._update(self._clients, client_id, updater, lambda c: c.id)

    def delete_client(self, client_id: str) -> None:
        self._delete(self._clients, client_id)

    # -- auth requests -----------------------------------------------------------------------
    def create_auth_request(self, request: AuthRequest) -> None:
        self._create(self._auth_requests, request.id, request)

    def get_auth_request(self, request_id: str) -> AuthRequest:
        return self._get(self._auth_requests, request_id)

    def update_auth_request(
        self, request_id: str, updater: Callable[[AuthRequest], AuthRequest]
    ) -> AuthRequest:
        return self._update(self._auth_requests, request_id, updater, lambda r: r.id)

    def delete_auth_request(self, request_id: str) -> None:
        self._delete(self._auth_requests, request_id)

    # -- auth codes --------------------------------------------------------------------------
    def create_auth_code(self, code: AuthCode) -> None:
        self._create(self._auth_codes, code.id, code)

    def consume_auth_code(self, code_id: str, now: float, client_id: str) -> AuthCode:
        with self._lock:
            code = self._get(self._auth_codes, code_id)
            if code.client_id != client_id:
                raise CodeClientMismatchError()
            if code.used_at:
                raise CodeReplayedError(code)
            used = dataclasses.replace(code, used_at=now)
            self._auth_codes[code_id] = used
            return used

    def delete_auth_code(self, code_id: str) -> None:
        self._delete(self._auth_codes, code_id)

    # -- refresh tokens ----------------------------------------------------------------------
    def create_refresh_token(self, token: RefreshToken) -> None:
        self._create(self._refresh, token.id, token)

    def get_refresh_token(self, token_id: str) -> RefreshToken:
        return self._get(self._refresh, token_id)

    def get_refresh_token_for_use(self, token_id: str, now: float) -> tuple[RefreshToken, bool]:
        with self._lock:
            family = self._get(self._refresh, token_id)
            denied_since = any(
                at >= family.created_at and expiry >= now for at, expiry in self._denied.values()
            )
        return family, denied_since

    def update_refresh_token(
        self, token_id: str, updater: Callable[[RefreshToken], RefreshToken]
    ) -> RefreshToken:
        return self._update(self._refresh, token_id, updater, lambda t: t.id)

    def rotate_refresh_token(self, rotation: RefreshRotation) -> RefreshToken | None:
        with self._lock:
            family = self._refresh.get(rotation.family_id)
            if (
                family is None
                or not rotation.presented_hash
                or family.token_hash != rotation.presented_hash
                or family.client_id != rotation.client_id
                or family.connector_id not in rotation.connector_ids
                or (family.expires_at and rotation.now > family.expires_at)
                or any(
                    at >= family.created_at and expiry >= rotation.now
                    for at, expiry in self._denied.values()
                )
            ):
                return None
            updated = dataclasses.replace(
                family,
                last_used=rotation.now,
                expires_at=rotation.expiry(family.created_at),
                identity=rotation.identity or family.identity,
            )
            if rotation.new_token_hash:
                updated = dataclasses.replace(
                    updated,
                    token_hash=rotation.new_token_hash,
                    obsolete_token_hash=rotation.presented_hash,
                    successor_sealed=rotation.successor_sealed,
                )
            self._refresh[family.id] = updated
            return updated

    def delete_refresh_token(self, token_id: str) -> None:
        self._delete(self._refresh, token_id)

    def list_refresh_tokens(self, user_id: str = "", connector_id: str = "") -> list[RefreshToken]:
        with self._lock:
            tokens = [
                t
                for t in self._refresh.values()
                if (not user_id or t.identity.user_id == user_id)
                and (not connector_id or t.connector_id == connector_id)
            ]
        return sorted(tokens, key=lambda t: (t.created_at, t.id))

    def refresh_tokens_issued_by_code(self, code_id: str) -> list[RefreshToken]:
        with self._lock:
            tokens = [t for t in self._refresh.values() if t.issued_by_code == code_id]
        return sorted(tokens, key=lambda t: (t.created_at, t.id))

    # -- device requests ---------------------------------------------------------------------
    def create_device_request(self, request: DeviceRequest) -> None:
        with self._lock:
            if any(r.user_code == request.user_code for r in self._device.values()):
                raise AlreadyExistsError("record already exists")
            self._create(self._device, request.id, request)

    def get_device_request(self, request_id: str) -> DeviceRequest:
        return self._get(self._device, request_id)

    def get_device_request_by_user_code(self, user_code: str) -> DeviceRequest:
        with self._lock:
            for request in self._device.values():
                if request.user_code == user_code:
                    return request
        raise NotFoundError("record not found")

    def update_device_request(
        self, request_id: str, updater: Callable[[DeviceRequest], DeviceRequest]
    ) -> DeviceRequest:
        def checked(current: DeviceRequest) -> DeviceRequest:
            new = updater(current)
            if new.user_code != current.user_code:
                raise ValueError("updater changed the record key; create a new record instead")
            return new

        return self._update(self._device, request_id, checked, lambda r: r.id)

    # -- passwords ---------------------------------------------------------------------------
    def create_password(self, password: Password) -> None:
        self._create(self._passwords, password.email.lower(), password)

    def get_password(self, email: str) -> Password:
        return self._get(self._passwords, email.lower())

    def list_passwords(self) -> list[Password]:
        with self._lock:
            return sorted(self._passwords.values(), key=lambda p: p.email.lower())

    def update_password(self, email: str, updater: Callable[[Password], Password]) -> Password:
        return self._update(self._passwords, email.lower(), updater, lambda p: p.email.lower())

    def delete_password(self, email: str) -> None:
        self._delete(self._passwords, email.lower())

    # -- signing keys ------------------------------------------------------------------------
    def get_keys(self) -> Keys:
        with self._lock:
            return self._keys

    def update_keys(self, updater: Callable[[Keys], Keys]) -> Keys:
        with self._lock:
            self._keys = updater(self._keys)
            return self._keys

    # -- import ------------------------------------------------------------------------------
    def import_batch(self, batch: ImportBatch) -> ImportResult:
        def absent(table: dict[str, T], records: list[tuple[str, T]]) -> int:
            added = 0
            for key, record in records:
                if key not in table:
                    table[key] = record
                    added += 1
            return added

        with self._lock:
            clients = absent(self._clients, [(c.id, c) for c in batch.clients])
            passwords = absent(self._passwords, [(p.email.lower(), p) for p in batch.passwords])
            tokens = absent(self._refresh, [(r.id, r) for r in batch.refresh_tokens])
            known = {k.jwk.get("kid") for k in self._keys.verification_keys}
            new_keys = tuple(k for k in batch.verification_keys if k.jwk.get("kid") not in known)
            if new_keys:
                self._keys = dataclasses.replace(
                    self._keys, verification_keys=self._keys.verification_keys + new_keys
                )
            return ImportResult(
                clients=clients,
                passwords=passwords,
                refresh_tokens=tokens,
                verification_keys=len(new_keys),
            )

    # -- revocation --------------------------------------------------------------------------
    def revoke_token(self, jti: str, expiry: float) -> None:
        with self._lock:
            self._revoked[jti] = max(expiry, self._revoked.get(jti, 0.0))

    def is_token_revoked(self, jti: str) -> bool:
        with self._lock:
            return jti in self._revoked

    def delete_refresh_tokens_matching(
        self, *, user_id: str = "", connector_id: str = "", client_id: str = "", group: str = ""
    ) -> list[str]:
        if not (user_id or connector_id or client_id or group):
            raise ValueError("at least one filter is required")
        with self._lock:
            doomed = [
                t.id
                for t in self._refresh.values()
                if (not user_id or t.identity.user_id == user_id)
                and (not connector_id or t.connector_id == connector_id)
                and (not client_id or t.client_id == client_id)
                and (not group or group in t.identity.groups)
            ]
            for family_id in doomed:
                del self._refresh[family_id]
        return sorted(doomed)

    def deny_subject(self, kind: str, value: str, revoked_at: float, expiry: float) -> None:
        with self._lock:
            old_at, old_expiry = self._denied.get((kind, value), (revoked_at, expiry))
            self._denied[(kind, value)] = (max(old_at, revoked_at), max(old_expiry, expiry))

    def subjects_revoked_at(self, subjects: Sequence[tuple[str, str]], now: float) -> float:
        with self._lock:
            found = [self._denied.get((kind, value)) for kind, value in subjects]
        return max((at for at, expiry in filter(None, found) if expiry >= now), default=0.0)

    # -- single-use values -------------------------------------------------------------------
    def claim_once(self, key: str, expiry: float) -> bool:
        with self._lock:
            if key in self._single_use:
                return False
            self._single_use[key] = expiry
            return True

    # -- throttling --------------------------------------------------------------------------
    def throttle_attempt(self, rules: Sequence[ThrottleRule], now: float, window: float) -> float:
        with self._lock:
            times = [self._recent_attempts(rule.key, now, window) for rule in rules]
            wait = verdict(rules, times, now, window)
            if wait == 0:
                for rule in rules:
                    self._login_failures.setdefault(rule.key, []).append(now)
            return wait

    def _recent_attempts(self, key: str, now: float, window: float) -> list[float]:
        return sorted(t for t in self._login_failures.get(key, ()) if t > now - window)

    def forget_attempt(self, key: str, at: float) -> None:
        with self._lock:
            times = self._login_failures.get(key, [])
            if at in times:
                times.remove(at)

    def record_login_failure(self, key: str, now: float, window: float) -> int:
        with self._lock:
            self._login_failures.setdefault(key, []).append(now)
            return self.login_failures(key, now, window)

    def login_failures(self, key: str, now: float, window: float) -> int:
        with self._lock:
            return sum(1 for t in self._login_failures.get(key, ()) if t > now - window)

    def clear_login_failures(self, key: str) -> None:
        with self._lock:
            self._login_failures.pop(key, None)

    # -- gc ----------------------------------------------------------------------------------
    def garbage_collect(self, now: float, batch_size: int = 500) -> GCResult:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        with self._lock:

            def sweep(table: dict[str, T], expired: Callable[[T], bool]) -> int:
                doomed = [k for k, v in table.items() if expired(v)][:batch_size]
                for k in doomed:
                    del table[k]
                return len(doomed)

            requests = sweep(self._auth_requests, lambda r: r.expiry < now)
            codes = sweep(self._auth_codes, lambda c: c.expiry < now)
            device = sweep(self._device, lambda r: r.expiry < now)
            refresh = sweep(self._refresh, lambda t: 0 < t.expires_at < now)
            clients = sweep(self._clients, lambda c: 0 < c.expires_at < now)
            revoked_keys = [j for j, exp in self._revoked.items() if exp < now][:batch_size]
            for j in revoked_keys:
                del self._revoked[j]
            denied = [k for k, (_, exp) in self._denied.items() if exp < now][:batch_size]
            for d in denied:
                del self._denied[d]
            used_keys = [k for k, exp in self._single_use.items() if exp < now][:batch_size]
            for k in used_keys:
                del self._single_use[k]
            kept = tuple(k for k in self._keys.verification_keys if k.expiry >= now)
            dropped_keys = len(self._keys.verification_keys) - len(kept)
            if dropped_keys:
                self._keys = dataclasses.replace(self._keys, verification_keys=kept)
            # Bounded by records, not keys, and only keys with stale records are visited, so
            # a crowd of active keys cannot starve the cleanup of old ones.
            attempts = 0
            cutoff = now - LOGIN_ATTEMPT_RETENTION
            for key in list(self._login_failures):
                if attempts >= batch_size:
                    break
                times = self._login_failures[key]
                stale = [t for t in times if t <= cutoff][: batch_size - attempts]
                if not stale:
                    continue
                attempts += len(stale)
                for t in stale:
                    times.remove(t)
                if not times:
                    del self._login_failures[key]
            return GCResult(
                auth_requests=requests,
                auth_codes=codes,
                refresh_tokens=refresh,
                revoked_tokens=len(revoked_keys),
                verification_keys=dropped_keys,
                login_attempts=attempts,
                single_use_keys=len(used_keys),
                device_requests=device,
                denied_subjects=len(denied),
                clients=clients,
            )
