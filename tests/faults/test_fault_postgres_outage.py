"""PostgreSQL stopped and started again under load, the issuer left running.

What an operator must see: while the database is down, requests that need it get 503 (never
500, never a stack trace in the log) with one clear log line naming the database; the
telemetry readiness probe turns false so the load balancer stops sending traffic; and once the
database is back everything works again without restarting the issuer, sessions included.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.faults import password_grant
from tests.support.issuer import APP_REDIRECT, Issuer, issuers_in
from tests.support.postgres import PostgresCluster, start_cluster

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# A valid authorization request: it is stored, so it needs the database.
AUTH = {
    "client_id": "example-app",
    "redirect_uri": APP_REDIRECT,
    "response_type": "code",
    "scope": "openid",
    "state": "outage",
}


@pytest.fixture
def own_cluster() -> Iterator[PostgresCluster]:
    """A cluster of this test's own: it is stopped and started, which would break the session
    cluster the tests/postgres suite shares."""
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_issuer(own_cluster: PostgresCluster, tmp_path: Path) -> Iterator[Issuer]:
    database = own_cluster.create_database(template=None)
    config = own_cluster.config(database, connectionTimeout=2)
    with issuers_in(tmp_path) as start:
        yield start(edit=lambda c: c.update(storage={"type": "postgres", "config": config}))


def _ready(issuer: Issuer) -> bool:
    return httpx.get(issuer.telemetry + "/healthz/ready", timeout=10).status_code == 200


def _load(issuer: Issuer, refresh_token: str, stop: threading.Event, seen: Counter[int]) -> None:
    with httpx.Client(timeout=15) as http:
        while not stop.is_set():
            for response in (
                http.post(
                    issuer.url("/token"),
                    data={"grant_type": "refresh_token", "refresh_token": "pcr1.x.y"},
                    auth=issuer.app_auth(),
                ),
                http.get(issuer.url("/userinfo"), headers={"Authorization": "Bearer a.b.c"}),
                http.get(issuer.url("/keys")),
                http.get(issuer.url("/auth"), params=AUTH),
            ):
                seen[response.status_code] += 1
            time.sleep(0.05)


def test_postgres_outage_gives_503_and_recovers_without_restart(
    pg_issuer: Issuer, own_cluster: PostgresCluster
) -> None:
    issuer = pg_issuer
    with httpx.Client(timeout=15) as http:
        session = password_grant(http, issuer)
    stop = threading.Event()
    seen: Counter[int] = Counter()
    loader = threading.Thread(
        target=_load, args=(issuer, session["refresh_token"], stop, seen), daemon=True
    )
    loader.start()
    time.sleep(1)
    own_cluster.halt()
    try:
        deadline = time.monotonic() + 20
        while _ready(issuer) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _ready(issuer), "readiness stayed true with the database down"
        report = httpx.get(issuer.telemetry + "/healthz/ready", timeout=10).json()
        assert report["checks"]["storage"] != "ok"
        with httpx.Client(timeout=15) as http:
            down = http.post(
                issuer.url("/token"),
                data={"grant_type": "refresh_token", "refresh_token": session["refresh_token"]},
                auth=issuer.app_auth(),
            )
            page = http.get(issuer.url("/auth"), params=AUTH)
        time.sleep(1)
    finally:
        own_cluster.resume()
    assert down.status_code == 503, down.text
    assert down.json()["error"] == "temporarily_unavailable"
    assert "retry-after" in down.headers
    assert page.status_code == 503, page.text[:500]

    deadline = time.monotonic() + 30
    while not _ready(issuer) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _ready(issuer), "readiness did not come back after the database did"
    stop.set()
    loader.join(30)
    assert issuer.running
    with httpx.Client(timeout=15) as http:
        refreshed = http.post(
            issuer.url("/token"),
            data={"grant_type": "refresh_token", "refresh_token": session["refresh_token"]},
            auth=issuer.app_auth(),
        )
        assert refreshed.status_code == 200, refreshed.text
        issuer.remember(refreshed.json()["refresh_token"])
        password_grant(http, issuer)

    server_errors = {status: n for status, n in seen.items() if status >= 500 and status != 503}
    assert not server_errors, (server_errors, issuer.logs()[-4000:])
    assert seen[503] > 0, seen
    logs = issuer.logs()
    assert "Traceback" not in logs, logs[-6000:]
    assert "storage unavailable" in logs
    assert "127.0.0.1" in logs.split("storage unavailable", 1)[1].splitlines()[0]
