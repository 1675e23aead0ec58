"""Fixtures for the issuer integration suite: real `portcullis serve` processes on loopback."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from issuer_harness import PORTCULLIS, Issuer, make_issuer

StartIssuer = Callable[..., Issuer]


def _finish(issuer: Issuer) -> None:
    """Stop with SIGTERM, require exit code 0 and clean logs (killed by PID on any failure)."""
    if issuer.proc is None:
        return
    try:
        if issuer.running:
            code = issuer.stop()
            assert code == 0, f"portcullis exited with {code} after SIGTERM:\n{issuer.logs()}"
        leaked = issuer.leaked_secrets()
        assert not leaked, f"{len(leaked)} secret value(s) found in the server log"
    finally:
        issuer.kill()


@pytest.fixture(scope="session")
def portcullis_cli() -> Path:
    assert PORTCULLIS.exists(), f"{PORTCULLIS} is missing: run `make test-venv`"
    return PORTCULLIS


def _factory(base_dir: Path) -> tuple[StartIssuer, list[Issuer]]:
    started: list[Issuer] = []

    def start(
        patch: Mapping[str, Any] | None = None,
        edit: Callable[[dict[str, Any]], None] | None = None,
        *,
        run: bool = True,
    ) -> Issuer:
        issuer = make_issuer(base_dir / f"issuer{len(started)}", patch, edit)
        started.append(issuer)
        if run:
            issuer.start()
        return issuer

    return start, started


@pytest.fixture
def start_issuer(tmp_path: Path, portcullis_cli: Path) -> Iterator[StartIssuer]:
    """Factory: ``start_issuer(patch, edit, run=True)`` -> a running Issuer with a config
    variation; every server is stopped with SIGTERM (exit 0 asserted) after the test."""
    start, started = _factory(tmp_path)
    try:
        yield start
    finally:
        for issuer in started:
            _finish(issuer)


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory, portcullis_cli: Path) -> Iterator[Issuer]:
    """One default server shared by a test module."""
    start, started = _factory(tmp_path_factory.mktemp("issuer"))
    try:
        yield start()
    finally:
        for each in started:
            _finish(each)
