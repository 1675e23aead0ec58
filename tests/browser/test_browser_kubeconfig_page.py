"""The kubeconfig page in a real browser: the copy buttons appear only because the page's one
inline script runs under its CSP hash, and a click puts the block's text on the clipboard."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.browser.conftest import Shots
from tests.support.issuer import DEV_EMAIL, DEV_PASSWORD, issuers_in

pytestmark = [pytest.mark.integration]

CLUSTERS = [{"name": "production", "server": "https://api.prod.example.com:6443"}]


def test_copy_buttons_copy_the_plugin_kubeconfig(
    browser_context: BrowserContext, page: Page, shots: Shots, tmp_path: Path
) -> None:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    with issuers_in(tmp_path / "issuer") as start:
        issuer = start(
            {
                "kubernetes": {
                    "kubeconfigPage": {"enabled": True, "clientID": "kubectl", "clusters": CLUSTERS}
                }
            }
        )
        browser_context.grant_permissions(
            ["clipboard-read", "clipboard-write"], origin=issuer.origin
        )
        page.goto(issuer.url("/kubeconfig"))
        page.click("#connector-local")
        page.fill("#login", DEV_EMAIL)
        page.fill("#password", DEV_PASSWORD)
        page.click("#submit-login")
        page.wait_for_selector("#approve")
        page.click("#approve")
        page.wait_for_selector("#kube-user")
        button = page.locator('button[data-copy="c1-plugin"]')
        assert button.is_visible()  # shown by the script: it ran under the CSP
        button.click()
        expect(button).to_have_text("Copied")
        copied = page.evaluate("navigator.clipboard.readText()")
        shots("kubeconfig-page")
        assert copied == page.locator("#c1-plugin").text_content()
        assert "portcullis" in copied
        assert "get-token" in copied
        assert not [e for e in errors if "Content Security Policy" in e], errors
