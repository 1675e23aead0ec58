"""Fixtures for the PostgreSQL high-availability tests: the session's real PostgreSQL server
(tests/support/postgres.py) and the integration suite's `portcullis serve` harness."""

from __future__ import annotations

from tests.support.postgres import (  # noqa: F401
    _reusable_database,
    fresh_postgres_database,
    postgres_cluster,
    postgres_database,
)
