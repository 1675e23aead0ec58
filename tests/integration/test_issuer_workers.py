"""Several worker processes behave as one issuer: `/metrics` is the sum over every worker, a
worker killed by a signal is replaced without taking the issuer down, and connections are
spread evenly over the workers (web.balance) without a stopped worker holding new ones up."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path

import httpx
from portcullis.web.balance import DEFER_LIMIT

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


def _established(pid: int, port: int) -> int:
    """How many established TCP connections to local ``port`` the process ``pid`` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] == "01" and fields[9] in inodes:  # 01: ESTABLISHED
            count += 1
    return count


def _answered(sock: socket.socket) -> None:
    """Send a keep-alive GET of the discovery document on ``sock`` and read the answer's head."""
    sock.sendall(b"GET /dex/.well-known/openid-configuration HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed without an answer"
        data += chunk
    assert data.startswith(b"HTTP/1.1 200 "), data[:100]


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


def test_a_burst_of_connections_is_spread_evenly_over_the_workers(
    start_issuer: StartIssuer,
) -> None:
    # A keep-alive pool opened at once (an ingress, the API server's webhook client): before
    # web.balance the worker that woke first took most of it (31/19 to 43/7 of 50).
    issuer = _two_workers(start_issuer)
    for _ in range(3):
        burst = [socket.create_connection(("127.0.0.1", issuer.web_port)) for _ in range(40)]
        try:
            for sock in burst:
                sock.settimeout(10)
                _answered(sock)  # every connection has been accepted and set up
            held = [_established(pid, issuer.web_port) for pid in sorted(_workers(issuer))]
            assert sum(held) == 40, held
            # Within one; a worker the machine does not run for longer than DEFER_LIMIT
            # (50 ms) lets the other take one more per 50 ms, hence a little slack.
            assert abs(held[0] - held[1]) <= 3, held
        finally:
            for sock in burst:
                sock.close()
        deadline = time.monotonic() + 10
        while any(_established(pid, issuer.web_port) for pid in _workers(issuer)):
            assert time.monotonic() < deadline, "the closed connections were never let go"
            time.sleep(0.02)
    assert issuer.stop() == 0


def test_a_stopped_worker_does_not_hold_new_connections_up(start_issuer: StartIssuer) -> None:
    # A worker that is alive but not accepting (stopped here; stuck in a long call in life)
    # still counts as serving: the other worker waits DEFER_LIMIT for it, then takes the
    # connection itself.
    issuer = _two_workers(start_issuer)
    stopped, running = sorted(_workers(issuer))
    os.kill(stopped, signal.SIGSTOP)
    held: list[socket.socket] = []
    try:
        for _ in range(6):
            started = time.monotonic()
            sock = socket.create_connection(("127.0.0.1", issuer.web_port))
            held.append(sock)
            sock.settimeout(10)
            _answered(sock)
            assert time.monotonic() - started < DEFER_LIMIT + 2.0
        assert _established(running, issuer.web_port) == 6
    finally:
        os.kill(stopped, signal.SIGCONT)
        for sock in held:
            sock.close()
    assert issuer.stop() == 0
