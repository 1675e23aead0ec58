"""Fixtures for the chart tests: a real authenticated OCI registry and the chart paths."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.registry import Registry, start_registry

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """A running docker-registry with htpasswd auth; user `portcullis`, stopped afterwards."""
    reg = start_registry(tmp_path, {"portcullis": "chart-test-password", "reader": "read-only"})
    try:
        yield reg
    finally:
        reg.stop()
