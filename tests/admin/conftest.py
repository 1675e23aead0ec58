"""Fixtures for the gRPC admin API: a real `portcullis serve` process (the integration suite's
harness) with grpc.addr on a free loopback port, and a client built from the generated stubs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from portcullis.admin import api_pb2_grpc

from tests.support.admin import TLSFiles, make_tls_files, stub
from tests.support.issuer import Issuer, StartIssuer, free_port, issuers_in


@pytest.fixture(scope="module")
def module_issuers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartIssuer]:
    """Factory for servers shared by one test module, all stopped (exit 0, clean logs) after."""
    with issuers_in(tmp_path_factory.mktemp("admin-issuer")) as start:
        yield start


@pytest.fixture
def start_issuer(tmp_path: Path) -> Iterator[StartIssuer]:
    with issuers_in(tmp_path) as start:
        yield start


@pytest.fixture(scope="module")
def admin_issuer(module_issuers: StartIssuer) -> Issuer:
    """One issuer per module with the admin API on plaintext loopback (the secure default
    allows that) and server reflection on."""
    return module_issuers({"grpc": {"addr": f"127.0.0.1:{free_port()}", "reflection": True}})


@pytest.fixture(scope="module")
def api(admin_issuer: Issuer) -> api_pb2_grpc.DexStub:
    return stub(admin_issuer.config["grpc"]["addr"])


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("admin-tls"))
