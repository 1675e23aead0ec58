"""Profile Portcullis's refresh path under wrk load: where a refresh spends its CPU.

    python -m bench.profile_refresh [--backend sqlite] [--rotation on] [--seconds 15]
                                    [--endpoint refresh-rotate-noup|code|cc-rs256] [--perf]

With ``--perf`` it instead samples the unmodified server (``--workers 2``, as `make bench`
runs it) with Linux ``perf record`` (Debian's ``linux-perf``) and prints where its CPU went
by shared object: OpenSSL inside cryptography's ``_rust.abi3.so`` (the JWS signatures, and the
AES-GCM/HKDF of sealing), the CPython interpreter (all Python code), the kernel (TCP, futex,
fsync), libc, SQLite, uvloop and the rest. That is the budget a ratio target has to fit in:
the Python share is what any change to our code can win at most.

Without it, it starts a real `portcullis serve CONFIG --workers 1` (the CLI, so it profiles
whatever the server wires today) inside cProfile, in a child process, with one change: anyio's
``to_thread.run_sync`` runs the function inline, because cProfile sees only the thread it was
enabled in and the storage and signing work of a refresh runs in worker threads. The profile
therefore shows CPU cost per call site but not the thread hand-off itself (compare with
`make bench` for wall-clock figures). Tokens come from the same pools as `make bench`
(bench/run.py); wrk loads `-t2 -c50`. cProfile adds overhead to every Python call, so read the
shares, not the absolute rate. py-spy and pyinstrument are not installed here.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
from pathlib import Path
from typing import Any


def child(out: str, argv: list[str]) -> int:
    """Run the CLI under cProfile with thread hand-offs made inline; dump stats at exit."""
    import anyio.to_thread

    async def run_inline(func: Any, *args: Any, **_: Any) -> Any:
        return func(*args)

    anyio.to_thread.run_sync = run_inline  # type: ignore[assignment]
    from portcullis import cli

    profile = cProfile.Profile()
    code = 0
    try:
        code = profile.runcall(cli.main, argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        profile.dump_stats(out)
    return code


#: How a shared object is reported (first match of its file name wins).
_DSO_GROUPS = (
    ("_rust.abi3.so", "OpenSSL in cryptography (signatures; sealing's AES-GCM/HKDF)"),
    ("libpython", "CPython interpreter (all Python code)"),
    ("[kernel", "kernel (TCP, futex, fsync)"),
    ("libc.so", "libc (malloc, memcpy, syscalls)"),
    ("libsqlite3", "SQLite"),
    ("loop.cpython", "uvloop"),
    ("libpq", "libpq / psycopg"),
    ("_psycopg", "libpq / psycopg"),
)


def dso_shares(report: str) -> dict[str, float]:
    """``perf report --sort dso`` text as percentages per group of ``_DSO_GROUPS``."""
    shares: dict[str, float] = {}
    for line in report.splitlines():
        fields = line.split()
        if len(fields) < 2 or not fields[0].endswith("%") or line.lstrip().startswith("#"):
            continue
        share, dso = float(fields[0][:-1]), " ".join(fields[1:])
        group = next((name for key, name in _DSO_GROUPS if key in dso), "other")
        shares[group] = shares.get(group, 0.0) + share
    return shares


def perf_budget(args: argparse.Namespace) -> int:
    """Run the 2-worker server under wrk and ``perf record`` its processes; print the split."""
    import shutil
    import subprocess

    from bench import run

    if shutil.which("perf") is None:
        print("perf is not installed (Debian: apt-get install linux-perf)", file=sys.stderr)
        return 2
    endpoint = args.endpoint or ("refresh-rotate" if args.rotation == "on" else "refresh-static")
    with (
        tempfile.TemporaryDirectory(prefix="portcullis-perf-") as tmp,
        run.postgres_cluster(args.backend == "postgres") as cluster,
    ):
        directory = Path(tmp)
        data = str(args.save or directory / "perf.data")
        setup = run.PortcullisSetup(args.backend, rotation=endpoint != "refresh-static")
        server = run.profiling_server(directory, setup, cluster, workers=2)
        try:
            load = server.load(endpoint, int(4000 * args.seconds))
            pids = ",".join(str(pid) for pid in server.pids())
            record = subprocess.Popen(
                ["perf", "record", "-q", "-F", "499", "-o", data, "-p", pids, "--",
                 "sleep", f"{max(args.seconds - 1, 1):g}"],
            )  # fmt: skip
            sample = run.run_wrk(server.base(), load, args.seconds, directory, server.pids)
            record.wait()
        finally:
            server.stop()
        report = subprocess.run(
            ["perf", "report", "-i", data, "--no-children", "--sort", "dso", "--stdio"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    print(
        f"{endpoint} on {args.backend}, `serve --workers 2`, {sample.rate:.0f} req/s, "
        f"p50/p99 {sample.p50_ms:.1f}/{sample.p99_ms:.1f} ms, {sample.cores:.2f} cores; "
        "share of the workers' CPU samples:"
    )
    for group, share in sorted(dso_shares(report).items(), key=lambda item: -item[1]):
        print(f"  {share:5.1f}%  {group}")
    return 0


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3:])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", default="sqlite", choices=["memory", "sqlite", "postgres"])
    parser.add_argument("--rotation", default="on", choices=["on", "off"])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--top", type=int, default=35)
    parser.add_argument(
        "--endpoint",
        choices=["refresh-rotate", "refresh-rotate-noup", "code", "cc-rs256"],
        help="what to load (default: the refresh row of --rotation, connector refreshing "
        "upstream); rotation on only",
    )
    parser.add_argument("--save", type=Path, help="keep the raw pstats (or perf.data) here")
    parser.add_argument(
        "--perf",
        action="store_true",
        help="sample the unmodified 2-worker server with Linux perf and print CPU by shared "
        "object instead of a cProfile",
    )
    args = parser.parse_args()
    if args.perf:
        return perf_budget(args)

    from bench import run

    endpoint = "refresh-rotate" if args.rotation == "on" else "refresh-static"
    if args.endpoint:
        if args.rotation != "on":
            parser.error("--endpoint needs --rotation on")
        endpoint = args.endpoint
    with (
        tempfile.TemporaryDirectory(prefix="portcullis-profile-") as tmp,
        run.postgres_cluster(args.backend == "postgres") as cluster,
    ):
        directory = Path(tmp)
        stats_file = str(args.save or directory / "refresh.pstats")
        setup = run.PortcullisSetup(args.backend, rotation=args.rotation == "on")
        server = run.profiling_server(
            directory,
            setup,
            cluster,
            launcher=[sys.executable, "-m", "bench.profile_refresh", "--child", stats_file],
        )
        try:
            load = server.load(endpoint, int(600 * args.seconds))
            sample = run.run_wrk(server.base(), load, args.seconds, directory, server.pids)
        finally:
            server.stop()
        print(
            f"{endpoint} on {args.backend} under cProfile, 1 worker, inline thread hand-offs: "
            f"{sample.rate:.0f} req/s, p50 {sample.p50_ms:.1f} ms, errors {sample.errors}, "
            f"pool ran dry: {bool(sample.exhausted)}"
        )
        requests = sample.rate * args.seconds
        for order in ("tottime", "cumulative"):
            buffer = io.StringIO()
            stats = pstats.Stats(stats_file, stream=buffer)
            stats.sort_stats(order).print_stats(args.top)
            print(f"\n== top {args.top} by {order} (about {requests:.0f} requests)")
            print(buffer.getvalue().split("\n", 6)[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
