"""Fixtures for the fault tests: real `portcullis serve` processes (tests/support/issuer.py),
each test with its own servers because each one breaks something on purpose."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.issuer import StartIssuer, issuers_in


@pytest.fixture
def start_issuer(tmp_path: Path) -> Iterator[StartIssuer]:
    """``start_issuer(patch, edit, run=True)``; every server is stopped by PID afterwards
    (SIGTERM, exit 0 and a clean log asserted for those still running)."""
    with issuers_in(tmp_path) as start:
        yield start
