"""Fixtures for the issuer integration suite: real `portcullis serve` processes on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.issuer import (
    PORTCULLIS,
    Issuer,
    StartIssuer,
    issuers_in,
)


@pytest.fixture(scope="session")
def portcullis_cli() -> Path:
    assert PORTCULLIS.exists(), f"{PORTCULLIS} is missing: run `make test-venv`"
    return PORTCULLIS


@pytest.fixture
def start_issuer(tmp_path: Path, portcullis_cli: Path) -> Iterator[StartIssuer]:
    """Factory: ``start_issuer(patch, edit, run=True)`` -> a running Issuer with a config
    variation; every server is stopped with SIGTERM (exit 0 asserted) after the test."""
    with issuers_in(tmp_path) as start:
        yield start


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory, portcullis_cli: Path) -> Iterator[Issuer]:
    """One default server shared by a test module."""
    with issuers_in(tmp_path_factory.mktemp("issuer")) as start:
        yield start()
