"""The arithmetic of the login throttle, shared by every storage backend.

A backend's ``throttle_attempt`` locks the rules' keys, reads each key's attempt times inside
the window, asks :func:`wait_for` whether the attempt may go ahead and, if every rule says yes,
records it under every key, all in one write transaction. The arithmetic lives here, free of
I/O, so memory, SQLite and PostgreSQL cannot disagree on a verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ThrottleRule:
    """How attempts counted under ``key`` (``user:alice``, ``ip:10.0.0.1``...) admit a new one.

    ``limit``: a hard limit; refuse while ``limit`` attempts are inside the window (0: none).
    ``delay_after``, ``delay``, ``max_delay``: a progressive delay; once ``delay_after``
    attempts are inside the window, the next must wait ``delay * 2**(n - delay_after)``
    seconds (at most ``max_delay``) after the newest one (``delay_after`` 0: none).
    """

    key: str
    limit: int = 0
    delay_after: int = 0
    delay: float = 0.0
    max_delay: float = 0.0


def wait_for(rule: ThrottleRule, times: Sequence[float], now: float, window: float) -> float:
    """Seconds until ``rule`` admits an attempt at ``now``, given the attempt times counted under
    its key inside the window (ascending); 0.0 when it admits one now."""
    count = len(times)
    wait = 0.0
    if rule.limit and count >= rule.limit:
        # The attempt that must leave the window before another fits: with exactly `limit`
        # counted, the oldest one (more only if the limit was lowered since they were counted).
        wait = times[count - rule.limit] + window - now
    if rule.delay_after and count >= rule.delay_after:
        exponent = min(count - rule.delay_after, 62)  # 2**62 s exceeds any cap; no overflow
        delay = min(rule.delay * 2.0**exponent, rule.max_delay)
        wait = max(wait, times[-1] + delay - now)
    return max(wait, 0.0)


def verdict(
    rules: Sequence[ThrottleRule], times: Sequence[Sequence[float]], now: float, window: float
) -> float:
    """The longest wait any rule imposes (0.0: admitted); ``times`` lines up with ``rules``."""
    return max(
        (wait_for(r, t, now, window) for r, t in zip(rules, times, strict=True)), default=0.0
    )
