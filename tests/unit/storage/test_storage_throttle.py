"""Storage conformance for the login throttle's one primitive, ``throttle_attempt``: count an
attempt under several keys and decide, in one write transaction, so parallel attempts from any
number of threads, workers or replicas can never all pass a check that each would fail alone
(issue 9, finding 1). Runs on every backend in ``conftest.BACKENDS``."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from portcullis.storage.base import Storage
from portcullis.storage.throttling import ThrottleRule

NOW = 1_700_000_000.0
WINDOW = 60.0


def test_threads_racing_on_one_key_are_admitted_up_to_the_limit(storage: Storage) -> None:
    rules = (ThrottleRule("userip:alice|10.0.0.1", limit=5), ThrottleRule("ip:10.0.0.1", limit=50))
    with ThreadPoolExecutor(max_workers=12) as pool:
        waits = list(pool.map(lambda _i: storage.throttle_attempt(rules, NOW, WINDOW), range(25)))
    assert sum(1 for w in waits if w == 0) == 5
    assert all(w == WINDOW for w in waits if w)
    # Refused attempts were not counted under any key.
    assert storage.login_failures("userip:alice|10.0.0.1", NOW, WINDOW) == 5
    assert storage.login_failures("ip:10.0.0.1", NOW, WINDOW) == 5


def test_a_refusal_under_one_key_counts_under_none(storage: Storage) -> None:
    busy = ThrottleRule("ip:10.0.0.1", limit=1)
    assert storage.throttle_attempt([busy], NOW, WINDOW) == 0
    rules = (ThrottleRule("user:bob", limit=9), busy)
    assert storage.throttle_attempt(rules, NOW + 1, WINDOW) == WINDOW - 1
    assert storage.login_failures("user:bob", NOW + 1, WINDOW) == 0


def test_wait_is_measured_from_the_oldest_attempt_in_the_window(storage: Storage) -> None:
    rule = ThrottleRule("userip:alice|10.0.0.1", limit=3)
    for offset in (0.0, 10.0, 20.0):
        assert storage.throttle_attempt([rule], NOW + offset, WINDOW) == 0
    assert storage.throttle_attempt([rule], NOW + 30, WINDOW) == WINDOW - 30
    assert storage.throttle_attempt([rule], NOW + 60, WINDOW) == 0  # the first one slid out
    assert storage.throttle_attempt([rule], NOW + 61, WINDOW) == 9


def test_progressive_delay_doubles_from_the_newest_attempt_up_to_the_cap(storage: Storage) -> None:
    rule = ThrottleRule("user:alice", delay_after=2, delay=1.0, max_delay=3.0)
    at = NOW
    assert storage.throttle_attempt([rule], at, 600) == 0
    assert storage.throttle_attempt([rule], at, 600) == 0
    assert storage.throttle_attempt([rule], at + 0.25, 600) == 0.75
    waits = []
    for _ in range(4):
        wait = storage.throttle_attempt([rule], at, 600)
        at += wait
        waits.append(wait)
        assert storage.throttle_attempt([rule], at, 600) == 0
    assert waits == [1.0, 2.0, 3.0, 3.0]


def test_forget_attempt_uncounts_one_attempt_of_one_key(storage: Storage) -> None:
    rules = (ThrottleRule("ip:10.0.0.1", limit=5), ThrottleRule("user:alice", limit=5))
    storage.throttle_attempt(rules, NOW, WINDOW)
    storage.throttle_attempt(rules, NOW, WINDOW)
    storage.forget_attempt("ip:10.0.0.1", NOW)
    storage.forget_attempt("ip:10.0.0.2", NOW)  # nothing to forget: no error
    assert storage.login_failures("ip:10.0.0.1", NOW, WINDOW) == 1
    assert storage.login_failures("user:alice", NOW, WINDOW) == 2
