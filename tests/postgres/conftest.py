"""Fixtures for the PostgreSQL high-availability tests: the session's real PostgreSQL server
(tests/support/postgres.py) and the integration suite's `portcullis serve` harness."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
for path in (REPO_ROOT, REPO_ROOT / "tests" / "integration"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from tests.support.postgres import (  # noqa: E402, F401
    _reusable_database,
    fresh_postgres_database,
    postgres_cluster,
    postgres_database,
)
