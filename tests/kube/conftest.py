"""Fixtures for the Kubernetes features: real `portcullis serve` processes (the integration
suite's harness) plus loopback TLS material made per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.issuer import StartIssuer, issuers_in
from tests.support.kube import ServingCert, make_serving_cert


@pytest.fixture(scope="session")
def serving_cert(tmp_path_factory: pytest.TempPathFactory) -> ServingCert:
    return make_serving_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def module_issuers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartIssuer]:
    """Factory for servers shared by one test module, all stopped (exit 0, clean logs) after."""
    with issuers_in(tmp_path_factory.mktemp("kube-issuer")) as start:
        yield start


@pytest.fixture
def start_issuer(tmp_path: Path) -> Iterator[StartIssuer]:
    """Factory for servers of one test, all stopped (exit 0, clean logs) after it."""
    with issuers_in(tmp_path) as start:
        yield start
