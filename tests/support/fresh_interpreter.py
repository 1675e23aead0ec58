"""Run a Python snippet against this checkout's server package in a fresh interpreter.

For tests of process-wide state a test process must not share or disturb: the modules a code
path imports, the cyclic collector's settings, what ``serve`` does before it forks. The
snippet gets the arguments as ``sys.argv[1:]`` and prints one JSON value as its last line of
standard output, which is returned parsed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.image import REPO, demo_config, pbkdf2_hash


def run_snippet(snippet: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> Any:
    """The JSON the snippet printed last; fails the test with its stderr if it exits non-zero."""
    proc = subprocess.run(
        [sys.executable, "-c", snippet, *args],
        env={"PYTHONPATH": str(REPO / "server"), "PATH": "/usr/bin:/bin", **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def demo_config_file(directory: Path, web: int, telemetry: int) -> Path:
    """The image's demo config (sqlite, local passwords) with its database in ``directory``."""
    config = directory / "config.yaml"
    config.write_text(
        demo_config(web, telemetry, pbkdf2_hash("password")).replace(
            "/var/lib/portcullis/portcullis.db", str(directory / "demo.db")
        ),
        encoding="utf-8",
    )
    return config
