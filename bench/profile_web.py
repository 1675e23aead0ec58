"""Profile the storage-free hot paths (discovery, JWKS, client_credentials) under wrk load.

    python -m bench.profile_web --endpoint cc-rs256 [--seconds 10] [--py-spy PATH]

Starts the same `portcullis serve --workers 1` on sqlite that `make bench` starts, loads one
endpoint with wrk `-t2 -c50`, and samples the worker with py-spy (a sampling profiler: unlike
cProfile it adds no per-call overhead, so the shares of cheap Python frames stay honest). It
prints the frames that hold the most samples, by self time and inclusive. py-spy is not in the
project's lock; point ``--py-spy`` at a copy installed elsewhere (a throwaway venv).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import threading
from pathlib import Path


def summarize(collapsed: Path, top: int) -> str:
    """Self and inclusive sample shares per frame from py-spy's collapsed-stack output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"{total} samples"]
    for title, counter in (("self", own), ("inclusive", inclusive)):
        lines.append(f"\n== top {top} by {title}")
        for frame, count in counter.most_common(top):
            lines.append(f"{100 * count / max(total, 1):5.1f}%  {frame}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--endpoint", default="cc-rs256", choices=["discovery", "jwks", "cc-rs256", "cc-es256"]
    )
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy executable")
    parser.add_argument("--save", type=Path, help="keep the collapsed stacks here")
    args = parser.parse_args()

    from bench import procs, run

    algorithm = "ES256" if args.endpoint == "cc-es256" else "RS256"
    with tempfile.TemporaryDirectory(prefix="portcullis-profile-") as tmp:
        directory = Path(tmp)
        collapsed = args.save or directory / "stacks.txt"
        setup = run.PortcullisSetup("sqlite", algorithm=algorithm)
        server = run.profiling_server(directory, setup, None)
        try:
            worker = procs.tree(server.proc.pid)[-1]
            command = [args.py_spy, "record", "--pid", str(worker), "--format", "raw"]
            command += ["--duration", str(int(args.seconds)), "--rate", "250", "--nonblocking"]
            spy = subprocess.Popen(
                [*command, "--output", str(collapsed)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            load = server.load(args.endpoint, 0)
            result: list[run.Sample] = []
            loader = threading.Thread(
                target=lambda: result.append(
                    run.run_wrk(server.base(), load, args.seconds, directory, server.pids)
                )
            )
            loader.start()
            loader.join()
            _, err = spy.communicate(timeout=args.seconds + 30)
            if spy.returncode != 0:
                print(f"py-spy failed: {err.decode(errors='replace')}", file=sys.stderr)
                return 1
        finally:
            server.stop()
        sample = result[0]
        print(
            f"{args.endpoint} on sqlite, 1 worker, sampled by py-spy: {sample.rate:.0f} req/s, "
            f"p50 {sample.p50_ms:.1f} ms, p99 {sample.p99_ms:.1f} ms, errors {sample.errors}"
        )
        print(summarize(collapsed, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
