"""Several worker processes behave as one issuer: `/metrics` is the sum over every worker, and a
worker killed by a signal is replaced without taking the issuer down."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import httpx

from tests.support.issuer import Issuer, StartIssuer

REQUESTS = 60
_DISCOVERY_COUNT = re.compile(
    r'^portcullis_http_requests_total\{code="200",method="GET",'
    r'route="/dex/\.well-known/openid-configuration"\} ([0-9.e+]+)$',
    re.M,
)


def _workers(issuer: Issuer) -> set[int]:
    assert issuer.proc is not None
    children = Path(f"/proc/{issuer.proc.pid}/task/{issuer.proc.pid}/children").read_text()
    return {int(pid) for pid in children.split()}


def _two_workers(start_issuer: StartIssuer) -> Issuer:
    issuer = start_issuer(run=False)
    issuer.serve_args = ["--workers", "2"]
    issuer.start()
    deadline = time.monotonic() + 30
    while len(_workers(issuer)) < 2:
        assert time.monotonic() < deadline, "the second worker never started"
        time.sleep(0.05)
    return issuer


def _discovery_count(issuer: Issuer) -> float:
    # A new connection per scrape, so scrapes land on either worker.
    text = httpx.get(issuer.telemetry + "/metrics", headers={"Connection": "close"}).text
    found = _DISCOVERY_COUNT.findall(text)
    return sum(float(v) for v in found)


def test_metrics_are_the_sum_over_every_worker(start_issuer: StartIssuer) -> None:
    issuer = _two_workers(start_issuer)
    url = issuer.url("/.well-known/openid-configuration")
    # Several connections at once so both workers accept some of them.
    clients = [httpx.Client(timeout=10) for _ in range(6)]
    try:
        for i in range(REQUESTS):
            assert clients[i % len(clients)].get(url).status_code == 200
    finally:
        for client in clients:
            client.close()
    scrapes = [_discovery_count(issuer) for _ in range(12)]
    assert scrapes == [REQUESTS] * len(scrapes), scrapes
    assert issuer.stop() == 0


def test_a_killed_worker_is_replaced_and_the_issuer_keeps_serving(
    start_issuer: StartIssuer,
) -> None:
    issuer = _two_workers(start_issuer)
    before = _workers(issuer)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 45  # generous: a loaded CI machine
    while True:
        now = _workers(issuer)
        if len(now) == 2 and victim not in now:
            break
        assert issuer.running, f"the server died with its worker:\n{issuer.logs()}"
        assert time.monotonic() < deadline, f"no replacement worker: {now}\n{issuer.logs()}"
        time.sleep(0.05)
    for _ in range(10):
        response = httpx.get(
            issuer.url("/.well-known/openid-configuration"), headers={"Connection": "close"}
        )
        assert response.status_code == 200
    assert f"was killed by signal {signal.SIGKILL.value}; starting a replacement" in issuer.logs()
    assert issuer.stop() == 0
