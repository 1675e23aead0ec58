"""Password-login throttling per user and per client IP, shared through storage so every worker
process and replica counts the same failures."""

from __future__ import annotations

from portcullis.clock import Clock
from portcullis.storage.base import Storage


class ThrottledError(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__("too many failed logins")
        self.retry_after = retry_after


class LoginThrottle:
    def __init__(
        self, storage: Storage, clock: Clock, *, per_user: int, per_ip: int, window: float
    ) -> None:
        self._storage = storage
        self._clock = clock
        self._per_user = per_user
        self._per_ip = per_ip
        self._window = window

    @staticmethod
    def _user_key(username: str) -> str:
        return "user:" + username.strip().lower()

    def check(self, username: str, client_ip: str) -> None:
        """Raise ThrottledError when either limit is reached; checked before the password is."""
        now = self._clock.now()
        user_failures = self._storage.login_failures(self._user_key(username), now, self._window)
        ip_failures = self._storage.login_failures("ip:" + client_ip, now, self._window)
        if user_failures >= self._per_user or ip_failures >= self._per_ip:
            raise ThrottledError(retry_after=int(self._window))

    def failed(self, username: str, client_ip: str) -> None:
        now = self._clock.now()
        self._storage.record_login_failure(self._user_key(username), now, self._window)
        self._storage.record_login_failure("ip:" + client_ip, now, self._window)

    def succeeded(self, username: str) -> None:
        # The IP counter is kept: one good password must not reset a spraying attacker's count.
        self._storage.clear_login_failures(self._user_key(username))
