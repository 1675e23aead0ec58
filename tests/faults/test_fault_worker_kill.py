"""SIGKILL of one worker of `portcullis serve --workers 2` in the middle of refresh traffic.

What is right, and asserted: the supervisor notices the death of *any* worker (not only the
first) and starts a replacement while the other worker keeps serving (a crash is not a reason
to drop the whole issuer; serve.py stops only when workers keep dying); clients see a success
or a dropped connection, never an error answer; and no session is lost or duplicated: every
family still refreshes with the client's latest secret (a client that lost an answer retries
the same secret inside ``reuseInterval`` and gets the same successor), and storage holds
exactly one family per session.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest
from portcullis.storage.sqlite import SQLiteStorage

from tests.support.faults import Family, alive, children_of, password_grant
from tests.support.issuer import Issuer, StartIssuer

SESSIONS = 16
CLIENT_THREADS = 4

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _traffic(issuer: Issuer, families: list[Family], stop: threading.Event) -> None:
    # A new connection per request, so requests spread over both workers.
    with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as http:
        while not stop.is_set():
            for family in families:
                if stop.is_set():
                    return
                family.refresh(http, issuer, retry_for=0.5)


def test_killing_a_worker_loses_no_session_and_the_worker_is_replaced(
    start_issuer: StartIssuer,
) -> None:
    # A reuse interval longer than this test's clients wait before their final retry (they
    # give up after 0.5 s during the traffic and come back at the end with the same secret).
    issuer = start_issuer({"expiry": {"refreshTokens": {"reuseInterval": "60s"}}}, run=False)
    issuer.serve_args = ["--workers", "2"]
    issuer.start()
    assert issuer.proc is not None
    workers = children_of(issuer.proc.pid)
    assert len(workers) == 2, workers

    with httpx.Client(timeout=10) as http:
        families = [Family(password_grant(http, issuer)["refresh_token"]) for _ in range(SESSIONS)]
    stop = threading.Event()
    shares = [families[i::CLIENT_THREADS] for i in range(CLIENT_THREADS)]
    threads = [
        threading.Thread(target=_traffic, args=(issuer, share, stop), daemon=True)
        for share in shares
    ]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    rotations_before_kill = sum(len(f.issued) for f in families)
    # Kill the second worker: the supervisor must notice any worker, not only the first.
    victim = workers[1]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    replaced: list[int] = []
    while time.monotonic() < deadline and issuer.running:
        current = [pid for pid in children_of(issuer.proc.pid) if alive(pid)]
        if len(current) == 2 and victim not in current:
            replaced = current
            break
        time.sleep(0.1)
    time.sleep(2)  # traffic on the replacement too
    stop.set()
    for thread in threads:
        thread.join(15)
    assert issuer.running, "the issuer stopped when one worker died:\n" + issuer.logs()[-3000:]
    assert replaced, (
        f"no replacement worker within 20 s (workers now {children_of(issuer.proc.pid)})"
    )
    assert workers[0] in replaced, "the surviving worker was restarted too"
    assert rotations_before_kill > 0, "no refresh traffic was running when the worker died"
    # Every answer the clients got was a success or a dropped connection, never an error.
    answered_errors = [failure for f in families for failure in f.failures]
    assert not answered_errors, answered_errors

    # Every client continues with its latest secret, on the same running issuer.
    with httpx.Client(timeout=10) as http:
        for family in families:
            assert family.refresh(http, issuer), family.failures
    issued = [token for f in families for token in f.issued]
    assert len(issued) == len(set(issued)), "a refresh token was issued twice"
    storage = SQLiteStorage(str(issuer.db_path))
    try:
        stored = storage.list_refresh_tokens()
    finally:
        storage.close()
    assert len(stored) == SESSIONS, f"{len(stored)} families stored for {SESSIONS} sessions"
