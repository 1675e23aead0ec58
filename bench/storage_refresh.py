"""Refresh-token update throughput of the storage backends (not a timed test).

Each worker process opens its own store and, for a fixed time, runs what a refresh-token grant
does to storage: one locked read-modify-write of one family (new token hash, last_used). Every
worker updates its own families, as different users' refreshes do. Reports the aggregate rate
and the per-update latency, for SQLite (one file) and PostgreSQL 15 (a throwaway local server
from tests/support/postgres.py, fsync on unless --pg-fsync-off).

    .venv/bin/python bench/storage_refresh.py --seconds 5 --procs 1,2,4
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from portcullis.config.model import PostgresConfig
from portcullis.storage.base import Storage
from portcullis.storage.models import Identity, RefreshToken
from portcullis.storage.postgres import PostgresStorage
from portcullis.storage.sqlite import SQLiteStorage

REPO_ROOT = Path(__file__).resolve().parents[1]

FAMILIES_PER_WORKER = 50


def _family(i: int) -> RefreshToken:
    return RefreshToken(
        id=f"family-{i}",
        token_hash="00" * 32,
        client_id="kubectl",
        connector_id="ldap",
        identity=Identity(f"user-{i}", "user", email="u@example.com", groups=("dev",)),
        scopes=("openid", "offline_access", "groups"),
        created_at=1.0,
        last_used=1.0,
    )


def _worker(
    opener: Callable[[], Storage], index: int, seconds: float, out: Any, start: Any
) -> None:
    store = opener()
    ids = [f"family-{index * FAMILIES_PER_WORKER + i}" for i in range(FAMILIES_PER_WORKER)]
    latencies: list[float] = []
    start.wait()
    deadline = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < deadline:
        began = time.perf_counter()
        store.update_refresh_token(
            ids[n % len(ids)],
            functools.partial(_rotated, n=n),
        )
        latencies.append(time.perf_counter() - began)
        n += 1
    store.close()
    out.put(latencies)


def _rotated(token: RefreshToken, n: int) -> RefreshToken:
    """What one rotation writes: a new secret digest and a later last use."""
    return dataclasses.replace(token, token_hash=f"{n:064x}", last_used=token.last_used + 1)


def measure(opener: Callable[[], Storage], procs: int, seconds: float) -> dict[str, float]:
    setup = opener()
    for i in range(procs * FAMILIES_PER_WORKER):
        setup.create_refresh_token(_family(i))
    setup.close()
    ctx = multiprocessing.get_context("fork")
    out, start = ctx.Queue(), ctx.Event()
    workers = [
        ctx.Process(target=_worker, args=(opener, i, seconds, out, start)) for i in range(procs)
    ]
    for worker in workers:
        worker.start()
    time.sleep(1.0)  # let every worker open its store
    start.set()
    latencies = [x for _ in workers for x in out.get(timeout=seconds + 60)]
    for worker in workers:
        worker.join()
    latencies.sort()
    return {
        "ops_per_s": len(latencies) / seconds,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--procs", default="1,2,4")
    parser.add_argument("--pg-fsync-off", action="store_true")
    args = parser.parse_args()
    from tests.support.postgres import start_cluster

    cluster = start_cluster(fsync=not args.pg_fsync_off)
    rows = []
    try:
        for procs in [int(p) for p in args.procs.split(",")]:
            with tempfile.TemporaryDirectory() as tmp:
                for sync in ("FULL", "NORMAL"):
                    path = str(Path(tmp) / f"bench-{sync}-{procs}.db")
                    result = measure(
                        functools.partial(SQLiteStorage, path, synchronous=sync),
                        procs,
                        args.seconds,
                    )
                    rows.append((f"sqlite synchronous={sync}", procs, result))
            database = cluster.create_database(template=None)
            config = PostgresConfig.model_validate(cluster.config(database))
            result = measure(functools.partial(PostgresStorage, config), procs, args.seconds)
            fsync = "off" if args.pg_fsync_off else "on"
            rows.append((f"postgres 15 fsync={fsync}", procs, result))
            cluster.drop_database(database)
    finally:
        cluster.stop()
    print(f"{'backend':28} {'procs':>5} {'updates/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for name, procs, r in rows:
        print(
            f"{name:28} {procs:>5} {r['ops_per_s']:>10.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
