"""Storage cost of one refresh and one code exchange, in process, old path against new.

    python -m bench.refresh_storage [--backends sqlite,postgres] [--n 400] [--rounds 5]

No HTTP, no signing, one event loop: what a refresh costs in storage alone, so the effect of a
storage change is visible on a loaded machine where `make bench` is noisy. Per backend it mints
families through ``RefreshStore.create`` and then alternates, in rounds, between

* **two-step**: ``lookup_for_grant_async`` then ``rotate_async``, the general path of the
  refresh grant (taken whenever a connector refreshes upstream): a read, then a
  compare-and-swap ``UPDATE`` (older builds: the blocking ``lookup_for_grant`` and ``rotate``);
* **one statement**: ``rotate_current_async``, the grant's hot path (one
  ``UPDATE ... RETURNING``; autocommit on PostgreSQL);

and times ``consume_auth_code``. sqlite runs with ``synchronous=FULL`` (the default) and
``NORMAL``. PostgreSQL is a throwaway 15 cluster (tests/support/postgres.py) with fsync on.
Medians of per-round means, in milliseconds per operation. Run it with ``PYTHONPATH`` pointing
at an older checkout to measure that build's two-step path and code consume.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from portcullis.clock import SystemClock
from portcullis.issuer import parse_config
from portcullis.oidc.clients import ClientRegistry
from portcullis.oidc.refresh import RefreshStore
from portcullis.oidc.settings import ProtocolSettings
from portcullis.storage.base import Storage
from portcullis.storage.models import PKCE, AuthCode, Client, Identity

CONFIG = """
issuer: http://127.0.0.1:5556/dex
storage: {type: memory}
web: {http: 127.0.0.1:5556}
enablePasswordDB: true
"""
CLIENT = Client(id="bench", secret_hash="", redirect_uris=("http://127.0.0.1/cb",))
IDENTITY = Identity(user_id="u1", username="bench", email="bench@example.com", groups=("g",))


def _store(storage: Storage) -> RefreshStore:
    settings = ProtocolSettings.from_config(parse_config(CONFIG), fips_mode=False)
    return RefreshStore(settings, storage, ClientRegistry(storage, [CLIENT]), SystemClock())


def _mint(store: RefreshStore, n: int) -> list[str]:
    return [
        store.create(
            CLIENT,
            identity=IDENTITY,
            connector_id="local",
            granted=("openid", "offline_access"),
            nonce="",
            auth_time=time.time(),
            issued_by_code="",
        )[1]
        for _ in range(n)
    ]


def _timed(op: Callable[[str], Awaitable[Any]], tokens: list[str]) -> float:
    """Mean ms per ``op``, awaited one after the other on one event loop (as the grant awaits
    them; on sqlite each waits for its group commit, on PostgreSQL for its round trip)."""

    async def run() -> float:
        start = time.perf_counter()
        for token in tokens:
            await op(token)
        return (time.perf_counter() - start) * 1000 / len(tokens)

    return asyncio.run(run())


def measure(storage: Storage, n: int, rounds: int) -> dict[str, float]:
    store = _store(storage)
    # A build before the awaited general path (measured with PYTHONPATH at an older checkout)
    # has the same steps as blocking methods.
    legacy: Any = store
    awaited = hasattr(store, "lookup_for_grant_async")

    async def two_step(token: str) -> None:
        if awaited:
            presented = await store.lookup_for_grant_async(token, CLIENT)
            await store.rotate_async(CLIENT, presented, presented.family.identity)
        else:
            presented = legacy.lookup_for_grant(token, CLIENT)
            legacy.rotate(CLIENT, presented, presented.family.identity)

    async def one_statement(token: str) -> None:
        if awaited:
            rotated = await store.rotate_current_async(token, CLIENT, ("local",))
        else:
            rotated = legacy.rotate_current(token, CLIENT, ("local",))
        # Rotated: (family, successor); not applied: None (older checkouts) or the family
        # as found (FamilyRead, for the general path).
        if not isinstance(rotated, tuple):
            raise RuntimeError("the one-statement rotation did not apply")

    async def consume(code: str) -> None:
        storage.consume_auth_code(code, time.time(), "bench")

    times: dict[str, list[float]] = {"two-step": [], "one statement": [], "consume code": []}
    order = [("two-step", two_step), ("one statement", one_statement)]
    if not awaited and not hasattr(store, "rotate_current"):  # before the one-statement path
        order = order[:1]
        times["one statement"] = [float("nan")]
    for r in range(rounds):
        for name, op in order if r % 2 == 0 else reversed(order):
            times[name].append(_timed(op, _mint(store, n)))
        codes = []
        for i in range(n):
            code = AuthCode(
                id=f"code-{r}-{i}",
                client_id="bench",
                redirect_uri="http://127.0.0.1/cb",
                scopes=("openid",),
                identity=IDENTITY,
                connector_id="local",
                expiry=time.time() + 600,
                nonce="",
                pkce=PKCE("", ""),
                auth_time=time.time(),
            )
            storage.create_auth_code(code)
            codes.append(code.id)
        times["consume code"].append(_timed(consume, codes))
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--n", type=int, default=400, help="operations per round and path")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results: list[tuple[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="portcullis-refresh-") as tmp:
        for backend in args.backends.split(","):
            if backend == "sqlite":
                from portcullis.storage.sqlite import SQLiteStorage

                for mode in ("FULL", "NORMAL"):
                    sqlite = SQLiteStorage(str(Path(tmp) / f"{mode}.db"), synchronous=mode)
                    try:
                        results.append((f"sqlite {mode}", measure(sqlite, args.n, args.rounds)))
                    finally:
                        sqlite.close()
            elif backend == "postgres":
                from portcullis.config.model import PostgresConfig
                from portcullis.storage.postgres import PostgresStorage

                from tests.support.postgres import start_cluster

                cluster = start_cluster(fsync=True)
                try:
                    settings = cluster.config(cluster.create_database(template=None))
                    pg = PostgresStorage(PostgresConfig.model_validate(settings))
                    try:
                        results.append(("postgres", measure(pg, args.n, args.rounds)))
                    finally:
                        pg.close()
                finally:
                    cluster.stop()
            else:
                parser.error(f"unknown backend {backend!r}; choose from sqlite, postgres")
    print("\n| storage | refresh, two-step ms | refresh, one statement ms | code consume ms |")
    print("|---|---|---|---|")
    for name, r in results:
        cells = " | ".join(f"{r[k]:.2f}" for k in ("two-step", "one statement", "consume code"))
        print(f"| {name} | {cells} |")
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
