"""Fixtures for the chart tests: a real authenticated OCI registry and the chart paths."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# tests/support is shared between areas; make `tests.support` importable without relying on
# how pytest was started (python -m pytest vs .venv/bin/pytest).
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.support.registry import Registry, start_registry  # noqa: E402


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """A running docker-registry with htpasswd auth; user `portcullis`, stopped afterwards."""
    reg = start_registry(tmp_path, {"portcullis": "chart-test-password", "reader": "read-only"})
    try:
        yield reg
    finally:
        reg.stop()
