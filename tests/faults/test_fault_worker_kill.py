"""SIGKILL of one worker of `portcullis serve --workers 2` in the middle of refresh traffic.

What is right, and asserted: the supervisor notices the death of *any* worker (not only the
first), logs it and takes the issuer down with a non-zero exit so the orchestrator restarts the
pod (serve.py: "a half-served issuer is worse" than a restart); the surviving worker drains its
in-flight requests (no 5xx); and across the kill and the restart no session is lost or
duplicated: every family still refreshes with the client's latest secret (a client that lost
an answer retries the same secret inside ``reuseInterval`` and gets the same successor), and
storage holds exactly one family per session.
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


def test_killing_a_worker_loses_no_session_and_the_supervisor_notices(
    start_issuer: StartIssuer,
) -> None:
    # A reuse interval longer than a restart: what an operator of a multi-worker HA issuer
    # sets so a client whose answer was lost can retry across a pod restart.
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
    while issuer.running and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    for thread in threads:
        thread.join(15)
    assert not issuer.running, (
        "the supervisor kept serving with a dead worker:\n" + issuer.logs()[-3000:]
    )
    assert issuer.proc.returncode != 0
    assert f"worker {victim} exited" in issuer.logs()
    assert not any(alive(pid) for pid in workers), "a worker outlived its supervisor"
    assert rotations_before_kill > 0, "no refresh traffic was running when the worker died"
    # Every answer the clients got was a success or a dropped connection, never an error.
    answered_errors = [failure for f in families for failure in f.failures]
    assert not answered_errors, answered_errors

    # The orchestrator restarts the issuer; every client continues with its latest secret.
    issuer.start()
    with httpx.Client(timeout=10) as http:
        for family in families:
            family.failures.clear()
            assert family.refresh(http, issuer), family.failures
    issued = [token for f in families for token in f.issued]
    assert len(issued) == len(set(issued)), "a refresh token was issued twice"
    storage = SQLiteStorage(str(issuer.db_path))
    try:
        stored = storage.list_refresh_tokens()
    finally:
        storage.close()
    assert len(stored) == SESSIONS, f"{len(stored)} families stored for {SESSIONS} sessions"
