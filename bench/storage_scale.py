"""How Portcullis behaves as refresh-token families (offline sessions) pile up: issue 13 item 5.

For sqlite and PostgreSQL, it seeds 10k, then 100k, then 1M refresh-token families (up to
``--max``; each stage adds to the previous one) straight into the storage's SQL schema, using
the storage's own row mapping (``portcullis.storage.sql_rows``) so the rows are exactly what the
server reads as real tokens, and reports per size:

- server start to ready (`portcullis serve --workers 2`, /healthz/ready) and its RSS once idle
  (all processes of the tree): if anything loaded every row at start, both would grow with size;
- refresh latency over HTTP: a few hundred sequential refreshes (rotation on) of seeded tokens
  whose secrets the script kept;
- one user's session listing (``storage.list_refresh_tokens(user_id, connector_id)``, what the
  admin API's ListRefresh runs), median of 20;
- garbage collection: 2% of every stage is seeded already expired, and the storage's
  ``garbage_collect`` runs in 500-row passes (what the server's GC loop does) until none is left.

    python bench/storage_scale.py --max 10000        # quick check
    python bench/storage_scale.py --max 1000000      # the table in bench/README.md

PostgreSQL is a throwaway 15 cluster (tests/support/postgres.py) with fsync on.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: re-run as a module from the repository root, so `bench` and `tests`
    # (the PostgreSQL harness) import as packages without touching sys.path.
    ROOT = Path(__file__).resolve().parent.parent
    os.chdir(ROOT)
    os.execv(sys.executable, [sys.executable, "-m", "bench.storage_scale", *sys.argv[1:]])  # noqa: S606

import httpx
import sqlalchemy as sa

from bench import procs

ROOT = Path(__file__).resolve().parent.parent
PORTCULLIS = ROOT / ".venv" / "bin" / "portcullis"
SIZES = (10_000, 100_000, 1_000_000)
SESSIONS_PER_USER = 10
KNOWN = 300  # seeded per stage with secrets kept, for the refresh latency
EXPIRED_SHARE = 0.02
CLIENT, SECRET, CONNECTOR = "bench", "bench-secret-0123456789abcdef", "mock"
SCOPES = ("openid", "email", "profile", "groups", "offline_access")
BATCH = 10_000


def _identity(user: int) -> Any:
    from portcullis.storage.models import Identity

    return Identity(
        user_id=f"scale-user-{user}",
        username=f"user {user}",
        preferred_username=f"user{user}",
        email=f"user{user}@example.com",
        email_verified=True,
        groups=("scale",),
    )


def seed(engine: sa.Engine, start: int, count: int, now: float) -> list[str]:
    """Insert families start..start+count-1 (SESSIONS_PER_USER per user, the first KNOWN of this
    stage with kept secrets, EXPIRED_SHARE expired); return the known refresh-token strings."""
    from portcullis.storage import sql_schema
    from portcullis.storage.models import RefreshToken
    from portcullis.storage.sealing import UNSEALED
    from portcullis.storage.sql_rows import refresh_token_row

    table = sql_schema.refresh_tokens
    known: list[str] = []
    expired_every = int(1 / EXPIRED_SHARE)
    template_by_user: dict[int, dict[str, Any]] = {}
    batch: list[dict[str, Any]] = []
    with engine.begin() as conn:
        for n in range(start, start + count):
            user = n // SESSIONS_PER_USER
            template = template_by_user.get(user)
            if template is None:
                template_by_user.clear()  # users are consecutive: keep one template at a time
                template = refresh_token_row(
                    RefreshToken(
                        id="",
                        token_hash="",
                        client_id=CLIENT,
                        connector_id=CONNECTOR,
                        identity=_identity(user),
                        scopes=SCOPES,
                        created_at=now,
                        last_used=now,
                        auth_time=now,
                    ),
                    # The seeded identities carry no connector data: nothing to seal (the
                    # template's row id is a placeholder, so a sealed value would not open).
                    UNSEALED,
                )
                template_by_user[user] = template
            family = secrets.token_urlsafe(16)
            if n - start < KNOWN:
                secret = secrets.token_urlsafe(32)
                known.append(f"pcr1.{family}.{secret}")
            else:
                secret = secrets.token_hex(16)
            row = dict(template)
            row["id"] = family
            row["token_hash"] = hashlib.sha256(secret.encode()).hexdigest()
            expired = n - start >= KNOWN and n % expired_every == 0
            row["expires_at"] = now - 3600 if expired else now + 30 * 86400
            batch.append(row)
            if len(batch) >= BATCH:
                conn.execute(table.insert(), batch)
                batch.clear()
        if batch:
            conn.execute(table.insert(), batch)
    return known


def server_config(directory: Path, storage: dict[str, Any]) -> tuple[Path, int, int]:
    port, telemetry = procs.free_port(), procs.free_port()
    config = {
        "issuer": f"http://127.0.0.1:{port}/dex",
        "storage": storage,
        "web": {"http": f"127.0.0.1:{port}"},
        "telemetry": {"http": f"127.0.0.1:{telemetry}"},
        "logger": {"level": "warn"},
        "oauth2": {"skipApprovalScreen": True},
        "staticClients": [
            {"id": CLIENT, "secret": SECRET, "redirectURIs": ["http://127.0.0.1:1/cb"]}
        ],
        "connectors": [{"type": "mockCallback", "id": CONNECTOR, "name": "Mock"}],
    }
    path = directory / "scale.yaml"
    path.write_text(json.dumps(config))
    return path, port, telemetry


@contextlib.contextmanager
def serving(config: Path, telemetry: int, log: Path) -> Iterator[tuple[float, float, int]]:
    """Start the server; yield (seconds to ready, idle RSS MB, root pid); stop it by PID."""
    with log.open("ab") as out:
        started = time.monotonic()
        proc = subprocess.Popen(
            [str(PORTCULLIS), "serve", str(config), "--workers", "2"], stdout=out, stderr=out
        )
        try:
            try:
                procs.wait_http(f"http://127.0.0.1:{telemetry}/healthz/ready", timeout=300)
            except RuntimeError:
                raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}") from None
            ready = time.monotonic() - started
            time.sleep(2)
            rss = procs.rss_bytes(procs.tree(proc.pid)) / 2**20
            yield ready, rss, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def refresh_latencies(base: str, tokens: list[str]) -> list[float]:
    out = []
    with httpx.Client(timeout=30, auth=(CLIENT, SECRET)) as client:
        for token in tokens:
            t0 = time.perf_counter()
            response = client.post(
                f"{base}/token", data={"grant_type": "refresh_token", "refresh_token": token}
            )
            out.append((time.perf_counter() - t0) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"refresh of a seeded token failed: {response.text[:300]}")
    return out


def collect(storage: Any) -> tuple[float, int, int]:
    """GC passes of 500 until a pass deletes no refresh token: (seconds, passes, deleted)."""
    t0, passes, deleted = time.perf_counter(), 0, 0
    while True:
        result = storage.garbage_collect(time.time(), 500)
        passes += 1
        deleted += result.refresh_tokens
        if result.refresh_tokens < 500:
            return time.perf_counter() - t0, passes, deleted


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_backend(
    backend: str, sizes: list[int], directory: Path, cluster: Any
) -> list[dict[str, Any]]:
    if backend == "sqlite":
        from portcullis.storage.sqlite import SQLiteStorage

        file = directory / "scale.db"
        storage_config: dict[str, Any] = {"type": "sqlite3", "config": {"file": str(file)}}
        storage: Any = SQLiteStorage(str(file))
        engine = sa.create_engine(f"sqlite+pysqlite:///{file}")
    else:
        from portcullis.config.model import PostgresConfig
        from portcullis.storage.postgres import PostgresStorage

        name = cluster.create_database(template=None)
        settings = cluster.config(name)
        storage_config = {"type": "postgres", "config": settings}
        storage = PostgresStorage(PostgresConfig.model_validate(settings))
        engine = sa.create_engine(
            sa.URL.create(
                "postgresql+psycopg",
                username=settings["user"],
                password=settings["password"],
                host=settings["host"],
                port=settings["port"],
                database=name,
            )
        )
    config, port, telemetry = server_config(directory, storage_config)
    rows: list[dict[str, Any]] = []
    seeded = 0
    try:
        for size in sizes:
            t0 = time.perf_counter()
            known = seed(engine, seeded, size - seeded, time.time())
            seed_s = time.perf_counter() - t0
            seeded = size
            gc_s, passes, deleted = collect(storage)
            with engine.connect() as conn:
                live = conn.execute(sa.text("SELECT count(*) FROM refresh_tokens")).scalar_one()
            # The newest user: its families were never refreshed (a refresh through the
            # mockCallback connector re-asserts the mock user's identity on the family).
            user_id = f"scale-user-{(size - 1) // SESSIONS_PER_USER}"
            listing = []
            for _ in range(20):
                t0 = time.perf_counter()
                sessions = storage.list_refresh_tokens(user_id=user_id, connector_id=CONNECTOR)
                listing.append((time.perf_counter() - t0) * 1000)
            with serving(config, telemetry, directory / f"{backend}.log") as (ready, rss, _):
                latencies = refresh_latencies(f"http://127.0.0.1:{port}/dex", known)
            row = {
                "backend": backend,
                "size": size,
                "live": live,
                "seed_s": seed_s,
                "start_s": ready,
                "rss_mb": rss,
                "refresh_p50_ms": statistics.median(latencies),
                "refresh_p99_ms": pct(latencies, 0.99),
                "refreshes": len(latencies),
                "list_ms": statistics.median(listing),
                "list_sessions": len(sessions),
                "gc_s": gc_s,
                "gc_passes": passes,
                "gc_deleted": deleted,
            }
            rows.append(row)
            print(
                f"  {backend:<8} {size:>9,} families: seeded in {seed_s:.1f}s, start {ready:.2f}s,"
                f" RSS {rss:.0f} MB, refresh p50 {row['refresh_p50_ms']:.1f} ms, list "
                f"{row['list_ms']:.2f} ms, GC {deleted} in {gc_s:.2f}s",
                flush=True,
            )
    finally:
        storage.close()
        engine.dispose()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| storage | families | start to ready s | idle RSS MB (2 workers) | refresh p50 / p99 ms "
        "| list one user's sessions ms | GC of 2% expired (passes of 500) | seeding s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['size']:,} ({r['live']:,} live) | {r['start_s']:.2f} "
            f"| {r['rss_mb']:.0f} | {r['refresh_p50_ms']:.1f} / {r['refresh_p99_ms']:.1f} "
            f"| {r['list_ms']:.2f} ({r['list_sessions']} sessions) "
            f"| {r['gc_s']:.2f} s for {r['gc_deleted']:,} ({r['gc_passes']}) | {r['seed_s']:.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max", type=int, default=1_000_000, help="largest size (10k/100k/1M)")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    sizes = [s for s in SIZES if s <= args.max] or [args.max]
    backends = [b for b in args.backends.split(",") if b]
    for backend in backends:
        if backend not in ("sqlite", "postgres"):
            parser.error(f"unknown backend {backend!r}; choose from sqlite, postgres")
    rows: list[dict[str, Any]] = []
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="portcullis-scale-") as tmp:
        cluster = None
        if "postgres" in backends:
            from tests.support.postgres import start_cluster

            cluster = start_cluster(fsync=True)
        try:
            for backend in backends:
                print(f"== {backend}", flush=True)
                rows += run_backend(backend, sizes, Path(tmp), cluster)
        finally:
            if cluster is not None:
                cluster.stop()
    print()
    print(table(rows))
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
