"""Password-login throttling, shared through storage so every worker process and replica counts
the same attempts (``web.passwordThrottle``, docs/configuration.md).

The policy, and why:

* An attempt is counted *before* its password is checked, in one storage transaction that also
  decides (``Storage.throttle_attempt``): parallel guesses cannot all pass a check that each
  would fail alone (issue 9, finding 1). A refused attempt is not counted anywhere, so
  hammering while refused extends nothing.
* The hard limit is per (user, client address): ``maxFailuresPerUser`` guesses for one user
  from one address, then that address is refused for that user until the oldest guess leaves
  the window. A stranger's guesses therefore never lock the owner out (finding 2).
* Per user, from every address together, the limit is a progressive delay instead: past
  ``maxFailuresPerUser`` guesses each further attempt waits ``userDelay`` after the newest
  one, doubling per guess up to ``maxUserDelay``. A distributed guesser is slowed to one
  guess per ``maxUserDelay``; the owner waits at most that long, never the whole window.
* Per client address, across users, a hard limit (``maxFailuresPerIP``) stops spraying.
* A good password clears the user's counters and uncounts its own attempt from the address's
  (a shared NAT full of good logins is not a sprayer); one good password does not reset the
  address's count of other failures. An upstream failure (``ConnectorError``) is uncounted:
  it is not a guess.
* ``ThrottledError.retry_after`` is the real time left, computed from the counted attempts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from portcullis.clock import Clock
from portcullis.storage.base import Storage
from portcullis.storage.throttling import ThrottleRule


class ThrottledError(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__("too many failed logins")
        self.retry_after = retry_after


@dataclass(frozen=True)
class ThrottlePolicy:
    per_user: int
    per_ip: int
    window: float
    user_delay: float
    max_user_delay: float


@dataclass(frozen=True)
class Attempt:
    """An admitted, counted attempt: what ``succeeded``/``not_a_guess`` need to settle it."""

    user_key: str
    user_ip_key: str
    ip_key: str
    at: float


class LoginThrottle:
    def __init__(self, storage: Storage, clock: Clock, policy: ThrottlePolicy) -> None:
        self._storage = storage
        self._clock = clock
        self._policy = policy

    def admit(self, username: str, client_ip: str) -> Attempt:
        """Count an attempt, or raise ThrottledError (nothing counted). Storage I/O: run in a
        worker thread."""
        user = username.strip().lower()
        attempt = Attempt(
            user_key="user:" + user,
            # The address last: an IPv6 address has colons, a username may have anything.
            user_ip_key=f"userip:{len(user)}:{user}|{client_ip}",
            ip_key="ip:" + client_ip,
            at=self._clock.now(),
        )
        policy = self._policy
        rules = (
            ThrottleRule(attempt.user_ip_key, limit=policy.per_user),
            ThrottleRule(
                attempt.user_key,
                delay_after=policy.per_user,
                delay=policy.user_delay,
                max_delay=policy.max_user_delay,
            ),
            ThrottleRule(attempt.ip_key, limit=policy.per_ip),
        )
        wait = self._storage.throttle_attempt(rules, attempt.at, policy.window)
        if wait > 0:
            raise ThrottledError(retry_after=max(1, math.ceil(wait)))
        return attempt

    def succeeded(self, attempt: Attempt) -> None:
        """The password was right: the user's counters restart; the address keeps its count
        of other failures (one good password must not reset a sprayer's count)."""
        self._storage.clear_login_failures(attempt.user_key)
        self._storage.clear_login_failures(attempt.user_ip_key)
        self._storage.forget_attempt(attempt.ip_key, attempt.at)

    def not_a_guess(self, attempt: Attempt) -> None:
        """The password could not be checked (upstream failed): uncount the attempt."""
        for key in (attempt.user_ip_key, attempt.user_key, attempt.ip_key):
            self._storage.forget_attempt(key, attempt.at)
