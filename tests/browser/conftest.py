"""Fixtures for the browser suite: Debian's Chromium driven by Playwright, one real Portcullis
federating to slapd, node-oidc-provider and a pysaml2 IdP, and screenshots of every page.

Chromium is Debian's package (``/usr/bin/chromium``, installed by ``make test``), never a
Playwright download; it runs headless in a fresh user-data directory, once per session (each
test gets a new page with the cookies cleared). Screenshots go to
``tests-artifacts/browser/<test>/NN-name.png`` (gitignored); the directory is printed.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, sync_playwright

from tests.support.federation import Federation, running_federation
from tests.support.issuer import REPO_ROOT
from tests.support.saml_idp import SamlIdpHarness, saml_idp  # noqa: F401
from tests.support.slapd import SlapdServer, slapd_server  # noqa: F401

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO_ROOT / "tests-artifacts" / "browser"

#: The upstream OIDC accounts (node-oidc-provider's dev interactions accept any password).
OIDC_ACCOUNTS = {
    "carol": {
        "name": "Carol",
        "preferred_username": "carol",
        "email": "carol@example.com",
        "email_verified": True,
        "groups": ["oidc-admins", "oidc-devs"],
    }
}


@pytest.fixture(scope="session")
def federation(
    tmp_path_factory: pytest.TempPathFactory,
    slapd_server: SlapdServer,  # noqa: F811
    saml_idp: SamlIdpHarness,  # noqa: F811
) -> Iterator[Federation]:
    with running_federation(
        tmp_path_factory.mktemp("federation"), slapd_server, saml_idp, OIDC_ACCOUNTS
    ) as running:
        yield running


@pytest.fixture
def browser_context(tmp_path: Path) -> Iterator[BrowserContext]:
    """One browser per test, stopped after it. Playwright's sync API marks its event loop as
    running in this thread for as long as it is started, so an asyncio test that the xdist
    worker runs in between would fail ("Cannot run the event loop while another loop is
    running"); a per-test browser costs about 2 s and leaves nothing running."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (make test does)")
    profile = tmp_path / "chromium-profile"
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
        )
        context.set_default_timeout(15_000)
        # Nothing leaves loopback (node-oidc-provider's pages import a web font).
        context.route(
            lambda url: not url.startswith(("http://127.0.0.", "http://localhost:")),
            lambda route: route.abort(),
        )
        try:
            yield context
        finally:
            context.close()


@dataclass
class Shots:
    """Numbered screenshots of one test's pages."""

    page: Page
    directory: Path
    taken: list[Path] = field(default_factory=list)

    def __call__(self, name: str) -> Path:
        path = self.directory / f"{len(self.taken) + 1:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        return path


@pytest.fixture
def page(browser_context: BrowserContext) -> Iterator[Page]:
    browser_context.clear_cookies()
    tab = browser_context.new_page()
    try:
        yield tab
    finally:
        tab.close()


@pytest.fixture
def shots(page: Page, request: pytest.FixtureRequest) -> Shots:
    directory = ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    print(f"screenshots: {directory}")
    return Shots(page, directory)
