"""Fixtures for the kubectl-portcullis tests: real `portcullis serve` processes (the integration
suite's harness) and a private HOME per test for the plugin's token cache. The frozen binary
(``frozen_plugin``) is built once per session in tests/conftest.py, shared with tests/release."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.issuer import Issuer, StartIssuer, issuers_in
from tests.support.plugin import Plugin

# The plugin needs the refresh grant; the approval screen stays on so the test's browser walks
# every page a person sees. Public client `kubectl` with a loopback redirect (any port).
PLUGIN_PATCH = {"oauth2": {"skipApprovalScreen": False}}


@pytest.fixture(scope="module")
def module_issuers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartIssuer]:
    """Factory for servers shared by one test module, all stopped (exit 0, clean logs) after."""
    with issuers_in(tmp_path_factory.mktemp("plugin-issuer")) as start:
        yield start


@pytest.fixture(scope="module")
def issuer(module_issuers: StartIssuer) -> Issuer:
    """An issuer with hour-long ID tokens: a cached login stays valid for the whole module."""
    return module_issuers(PLUGIN_PATCH)


@pytest.fixture(scope="module")
def short_issuer(module_issuers: StartIssuer) -> Issuer:
    """An issuer whose ID tokens live 4 seconds, so a test can wait for one to expire."""
    return module_issuers({**PLUGIN_PATCH, "expiry": {"idTokens": "4s"}})


@pytest.fixture
def plugin(tmp_path: Path) -> Plugin:
    home = tmp_path / "home"
    home.mkdir()
    return Plugin(home)
