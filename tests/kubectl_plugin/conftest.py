"""Fixtures for the kubectl-portcullis tests: real `portcullis serve` processes (the integration
suite's harness) and a private HOME per test for the plugin's token cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.issuer import Issuer, StartIssuer, issuers_in
from tests.support.plugin import KREW_HOMEPAGE, KREW_URI_TEMPLATE, Plugin

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


@pytest.fixture(scope="session")
def frozen_plugin(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`make login-binary`'s build (freeze venv cached in .cache/login like the Makefile's)."""
    from portcullis_release.build import login_binary

    from tests.support.plugin import REPO_ROOT

    return login_binary.build(
        REPO_ROOT,
        tmp_path_factory.mktemp("login"),
        REPO_ROOT / ".cache" / "login",
        1_700_000_000,
        work=tmp_path_factory.mktemp("login-work"),
        uri_template=KREW_URI_TEMPLATE,
        homepage=KREW_HOMEPAGE,
    )
