"""A bounded soak: one minute of mixed traffic against `serve --workers 2` — logins through
the password grant, refreshes, userinfo, discovery, keys, authorization requests and garbage
(bad tokens, bad clients) — with zero 5xx and bounded memory growth of every worker.

Why measure RSS after a warm-up: the first requests load templates, keys and connection pools;
what must not grow is the steady state (a leak per request shows up as tens of MB here).
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import pytest

from tests.support.faults import children_of, password_grant, rss_kib
from tests.support.issuer import APP_REDIRECT, Issuer, StartIssuer

WARM_UP = 10.0
SOAK = 50.0
CLIENTS = 3
MAX_GROWTH_KIB = 24 * 1024

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _round(http: httpx.Client, issuer: Issuer, seen: Counter[int]) -> None:
    tokens = password_grant(http, issuer, "openid email groups offline_access")
    responses = [
        http.post(
            issuer.url("/token"),
            data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
            auth=issuer.app_auth(),
        ),
        http.get(
            issuer.url("/userinfo"), headers={"Authorization": f"Bearer {tokens['access_token']}"}
        ),
        http.get(issuer.url("/userinfo"), headers={"Authorization": "Bearer not.a.jwt"}),
        http.get(issuer.url("/.well-known/openid-configuration")),
        http.get(issuer.url("/keys")),
        http.get(
            issuer.url("/auth"),
            params={
                "client_id": "example-app",
                "redirect_uri": APP_REDIRECT,
                "response_type": "code",
                "scope": "openid",
                "state": "soak",
            },
        ),
        http.post(issuer.url("/token"), data={"grant_type": "password"}, auth=("nobody", "x")),
        http.post(
            issuer.url("/token/introspect"),
            data={"token": tokens["access_token"]},
            auth=issuer.app_auth(),
        ),
    ]
    for response in responses:
        seen[response.status_code] += 1
        issuer.remember_exchange({}, response)


def test_soak_has_no_5xx_and_bounded_memory(start_issuer: StartIssuer) -> None:
    issuer = start_issuer(run=False)
    issuer.serve_args = ["--workers", "2"]
    issuer.start()
    assert issuer.proc is not None
    workers = children_of(issuer.proc.pid)
    assert len(workers) == 2
    seen: Counter[int] = Counter()
    stop = threading.Event()
    errors: list[BaseException] = []

    def client() -> None:
        limits = httpx.Limits(max_keepalive_connections=0)
        try:
            with httpx.Client(timeout=15, limits=limits) as http:
                while not stop.is_set():
                    _round(http, issuer, seen)
        except BaseException as exc:  # reported below, with the server log
            errors.append(exc)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    time.sleep(WARM_UP)
    before = {pid: rss_kib(pid) for pid in workers}
    requests_before = sum(seen.values())
    time.sleep(SOAK)
    after = {pid: rss_kib(pid) for pid in workers}
    stop.set()
    for thread in threads:
        thread.join(30)
    assert not errors, (errors[:3], issuer.logs()[-3000:])
    server_errors = {status: n for status, n in seen.items() if status >= 500}
    assert not server_errors, (server_errors, issuer.logs()[-3000:])
    soaked = sum(seen.values()) - requests_before
    assert soaked > 200, f"only {soaked} requests in the soak: {seen}"
    growth = {pid: after[pid] - before[pid] for pid in workers}
    assert all(g < MAX_GROWTH_KIB for g in growth.values()), (before, after, soaked)
    assert children_of(issuer.proc.pid) == workers, "a worker was replaced during the soak"
