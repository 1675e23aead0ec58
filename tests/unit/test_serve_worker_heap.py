"""A serving worker settles its heap once it has started (issue 13: p99 under load).

Under load a worker's tail latency was its cyclic garbage collections: each full collection
walked every object start-up built while the requests in flight waited. ``run_worker`` therefore
collects once, freezes what is left and raises the young generation's threshold after its
servers (and the app's lifespan start-up) have started. These tests run the real ``serve``
command in a fresh interpreter, so the collector's state of the test process is not touched.
"""

from __future__ import annotations

from pathlib import Path

from portcullis.serve import WORKER_GC_THRESHOLDS

from tests.support.fresh_interpreter import demo_config_file, run_snippet
from tests.support.image import free_port

# Wraps settle_worker_heap to report the collector's state before and after it, and whether the
# server answered its readiness probe by then, then stops the server as a SIGTERM would.
_SERVE = """
import gc, json, os, signal, sys, threading, urllib.request, weakref
from portcullis import cli, serve

class Node:
    pass

original = serve.settle_worker_heap
report = {}

def settle():
    report["calls"] = report.get("calls", 0) + 1
    report["frozen_before"] = gc.get_freeze_count()
    cycle = Node()
    cycle.me = cycle  # start-up garbage the settling collection must not freeze
    probe = weakref.ref(cycle)
    del cycle
    original()
    report["frozen_after"] = gc.get_freeze_count()
    report["thresholds"] = gc.get_threshold()
    report["cycle_kept"] = probe() is not None
    threading.Thread(target=probe_then_stop).start()  # the loop must keep serving

def probe_then_stop():
    report["ready"] = urllib.request.urlopen(sys.argv[2], timeout=5).status
    os.kill(os.getpid(), signal.SIGTERM)

serve.settle_worker_heap = settle
code = cli.main(["serve", sys.argv[1]])
print(json.dumps(report))
sys.exit(code)
"""


def _serve_once(tmp_path: Path) -> dict[str, object]:
    web, telemetry = free_port(), free_port()
    config = demo_config_file(tmp_path, web, telemetry)
    ready = f"http://127.0.0.1:{telemetry}/healthz/ready"
    report: dict[str, object] = run_snippet(_SERVE, str(config), ready, cwd=tmp_path)
    return report


def test_worker_freezes_its_start_up_objects_once_serving(tmp_path: Path) -> None:
    report = _serve_once(tmp_path)
    assert report["calls"] == 1
    # Called once the listeners serve (readiness answers) and the lifespan has run.
    assert report["ready"] == 200
    # A single process (--workers 1) has no parent freeze; everything start-up built is
    # moved out of the generations now, and the thresholds are the worker's.
    assert isinstance(report["frozen_after"], int)
    assert isinstance(report["frozen_before"], int)
    assert report["frozen_after"] > report["frozen_before"] + 10_000
    assert tuple(report["thresholds"]) == WORKER_GC_THRESHOLDS  # type: ignore[arg-type]
    # Garbage is collected before the freeze, never kept for the worker's lifetime.
    assert report["cycle_kept"] is False
