"""Measure the built image: size, cold start to ready, idle RSS, frozen vs venv, FIPS vs not.

Not a timed test: it prints figures for the record (targets from issue 3: compressed image
<= 40 MB, start to ready <= 0.5 s). Needs `make image` (dist/image) and runc; runs as root
like the image tests. Every server it starts listens on free 127.0.0.1 ports and is stopped.

    .venv/bin/python bench/image_bench.py [--runs 5] [--json out.json]
    .venv/bin/python bench/image_bench.py --baseline OTHER_LAYOUT [--only runc]

With ``--baseline`` (another build's OCI layout, e.g. of the previous commit) every scenario runs
on both images, one run of each in turn, so both see the same load: on a machine shared with
other jobs that comparison is worth more than two runs minutes apart. The ``--workers 2``
scenario reports each worker's RSS and also its PSS and private memory: RSS counts the pages a
worker shares with its siblings and the parent in full, PSS divides them among the sharers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from portcullis_release import oci
from portcullis_release.build import oci_layout

from tests.support.image import (  # shared with the image tests
    LAYOUT,
    ImageConfig,
    demo_config,
    free_port,
    pbkdf2_hash,
    project_version,
    start_container,
)

ROOT = Path(__file__).resolve().parent.parent


def _wait_ready(url: str, alive: Callable[[], bool], timeout: float = 30.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not alive():
            raise RuntimeError("server exited before it was ready")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used: on a machine shared with other jobs the
    wall time to ready grows with the load, the CPU time it took does not."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _sizes(artifact: oci.Artifact) -> dict[str, float]:
    layers = artifact.layers()
    compressed = sum(d.size for d in artifact.descriptors()) + len(artifact.manifest)
    uncompressed = 0
    for desc in layers:
        import gzip

        uncompressed += len(gzip.decompress(artifact.blobs[desc.digest]))
    return {"compressed_mb": compressed / 1e6, "uncompressed_mb": uncompressed / 1e6}


def _smaps_mib(pid: int) -> dict[str, float]:
    """RSS, PSS and private (unshared) memory of one process, from smaps_rollup."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        fields[name] = int(rest.split()[0])
    private = fields["Private_Clean"] + fields["Private_Dirty"]
    return {"rss": fields["Rss"] / 1024, "pss": fields["Pss"] / 1024, "private": private / 1024}


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    found: list[int] = []
    for task in tasks.iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return sorted(found)


def _container_run(
    work: Path,
    rootfs: Path,
    image: ImageConfig,
    password_hash: str,
    fips: bool,
    state_dir: Path | None = None,
    workers: int = 1,
) -> dict[str, float]:
    """One cold start; with ``state_dir`` the database (and its signing keys) persists. With
    ``workers`` > 1, CPU is the whole process tree's and the memory figures are per worker
    (the largest worker's)."""
    web, telemetry = free_port(), free_port()
    config = work / f"config-{web}.yaml"
    config.write_text(demo_config(web, telemetry, password_hash))
    config.chmod(0o644)
    extra: dict[str, Any] = {}
    if workers > 1:
        extra["args"] = [*image.entrypoint, *image.cmd, "--workers", str(workers)]
    started = time.monotonic()
    container = start_container(
        work,
        rootfs,
        image,
        config_file=config,
        env={"PORTCULLIS_FIPS": "1" if fips else "0"},
        state_dir=state_dir,
        **extra,
    )
    try:
        _wait_ready(
            f"http://127.0.0.1:{telemetry}/healthz/ready", lambda: container.process.poll() is None
        )
        ready = time.monotonic() - started
        pid = container.pid()
        if workers > 1:
            deadline = time.monotonic() + 30
            while len(_children(pid)) < workers and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(2.0)
            kids = _children(pid)
            cpu = _cpu_s(pid) + sum(_cpu_s(kid) for kid in kids)
            per_worker = [_smaps_mib(kid) for kid in kids]
            figures = {
                "ready_s": ready,
                "cpu_s": cpu,
                "idle_rss_mib": max(w["rss"] for w in per_worker),
                "worker_pss_mib": max(w["pss"] for w in per_worker),
                "worker_private_mib": max(w["private"] for w in per_worker),
                "parent_rss_mib": _smaps_mib(pid)["rss"],
            }
        else:
            cpu = _cpu_s(pid)
            time.sleep(2.0)
            figures = {"ready_s": ready, "cpu_s": cpu, "idle_rss_mib": _rss_kib(pid) / 1024}
    finally:
        code = container.stop()
    if code != 0:
        raise RuntimeError(f"container exited {code}: {container.stderr()[-500:]}")
    return figures


def _host_run(
    work: Path, command: list[str], env: dict[str, str], password_hash: str
) -> dict[str, float]:
    web, telemetry = free_port(), free_port()
    config_text = demo_config(web, telemetry, password_hash).replace(
        "/var/lib/portcullis/portcullis.db", str(work / f"host-{web}.db")
    )
    config = work / f"host-{web}.yaml"
    config.write_text(config_text)
    started = time.monotonic()
    log = work / f"host-{web}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*command, "serve", str(config)], env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        try:
            _wait_ready(
                f"http://127.0.0.1:{telemetry}/healthz/ready", lambda: process.poll() is None
            )
        except RuntimeError as exc:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:]
            raise RuntimeError(f"{exc}: {' '.join(tail)}") from exc
        ready = time.monotonic() - started
        cpu = _cpu_s(process.pid)
        time.sleep(2.0)
        rss = _rss_kib(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)
    return {"ready_s": ready, "cpu_s": cpu, "idle_rss_mib": rss / 1024}


def _summarise(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def _scenarios(
    work: Path, artifact: oci.Artifact, password_hash: str
) -> dict[str, Callable[[], dict[str, float]]]:
    """The scenarios of one image, its layers unpacked under ``work``."""
    config = json.loads(artifact.blobs[artifact.descriptors()[0].digest])
    image = ImageConfig.from_layout_config(config)
    rootfs = work / "rootfs"
    oci_layout.unpack_layers(oci_layout.artifact_layers(artifact), rootfs)
    bundle = ROOT / ".cache" / "image" / "fips-bundle"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("PORTCULLIS_")}
    frozen = [str(rootfs / "opt/portcullis/portcullis")]
    venv = [str(ROOT / ".venv/bin/portcullis")]
    state = work / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 65532, 65532)
    # The first restart creates the database and keys; later ones find them.
    _container_run(work, rootfs, image, password_hash, True, state)
    return {
        "runc, frozen, FIPS": lambda: _container_run(work, rootfs, image, password_hash, True),
        "runc, FIPS, restart": lambda: _container_run(
            work, rootfs, image, password_hash, True, state
        ),
        "runc, frozen, no FIPS": lambda: _container_run(work, rootfs, image, password_hash, False),
        "runc, FIPS, --workers 2": lambda: _container_run(
            work, rootfs, image, password_hash, True, workers=2
        ),
        "host, frozen, FIPS": lambda: _host_run(
            work, frozen, {**base_env, "PORTCULLIS_FIPS": "1"}, password_hash
        ),
        "host, frozen, no FIPS": lambda: _host_run(
            work, frozen, {**base_env, "PORTCULLIS_FIPS": "0"}, password_hash
        ),
        "host, venv, FIPS": lambda: _host_run(
            work,
            venv,
            {**base_env, "PORTCULLIS_FIPS": "1", "PORTCULLIS_FIPS_BUNDLE": str(bundle)},
            password_hash,
        ),
        "host, venv, no FIPS": lambda: _host_run(
            work, venv, {**base_env, "PORTCULLIS_FIPS": "0"}, password_hash
        ),
    }


def _print(label: str, results: dict[str, Any]) -> None:
    sizes = results["image"]
    print(f"{label} {sizes['digest']}")
    print(
        f"  size: {sizes['compressed_mb']:.1f} MB compressed (target <= 40), "
        f"{sizes['uncompressed_mb']:.1f} MB uncompressed"
    )
    print(f"  {'scenario':<24} {'start to ready':>15} {'CPU to ready':>13} {'idle RSS':>10}")
    for name, figures in results.items():
        if name == "image":
            continue
        if "error" in figures:
            print(f"  {name:<24} error: {figures['error']}")
            continue
        line = (
            f"  {name:<24} {figures['ready_s']:>13.3f} s {figures['cpu_s']:>11.3f} s "
            f"{figures['idle_rss_mib']:>7.1f} MiB"
        )
        if "worker_pss_mib" in figures:
            line += (
                f" per worker (PSS {figures['worker_pss_mib']:.1f}, private "
                f"{figures['worker_private_mib']:.1f}; parent RSS "
                f"{figures['parent_rss_mib']:.1f} MiB)"
            )
        print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per scenario (median kept)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--only", help="run only scenarios whose name contains this text")
    parser.add_argument(
        "--baseline", type=Path, help="another image layout to measure in turn with dist/image"
    )
    args = parser.parse_args()

    layouts = {"image": LAYOUT}
    if args.baseline:
        layouts = {"baseline": args.baseline, "image": LAYOUT}
    password_hash = pbkdf2_hash("password")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="image-bench-") as tmp:
        scenarios: dict[str, dict[str, Callable[[], dict[str, float]]]] = {}
        for label, layout in layouts.items():
            artifact = oci.read_layout(layout, project_version())
            results[label] = {"image": {"digest": artifact.digest, **_sizes(artifact)}}
            work = Path(tmp) / label
            work.mkdir()
            scenarios[label] = _scenarios(work, artifact, password_hash)
        for name in scenarios["image"]:
            if args.only and args.only not in name:
                continue
            runs: dict[str, list[dict[str, float]]] = {label: [] for label in layouts}
            try:
                for _ in range(args.runs):
                    for label in layouts:  # in turn, so both images see the same load
                        runs[label].append(scenarios[label][name]())
                for label in layouts:
                    results[label][name] = _summarise(runs[label])
            except RuntimeError as exc:
                for label in layouts:
                    results[label][name] = {"error": str(exc)}
    for label in layouts:
        _print(label, results[label])
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} after the runs")
    if args.json:
        document = results if args.baseline else results["image"]
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
