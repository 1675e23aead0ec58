"""Logins through a real browser: picker -> each connector's upstream -> approval -> the client
app, then the code exchanged and the ID token's groups checked; then each connector's refresh
path through the token endpoint once the upstream user is gone.

SAML has no refresh (Dex's SAML connector has none either): a SAML session lives as long as the
refresh tokens' own lifetime allows and cannot notice an upstream removal; documented in
docs/connectors/saml.md.
"""

from __future__ import annotations

import contextlib
import secrets

import pytest
from playwright.sync_api import Page

from tests.browser.conftest import Shots
from tests.support.federation import APP_CLIENT_ID, Federation, id_token_claims
from tests.support.slapd import GROUPS_DN, PEOPLE_DN

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _approve_and_land(page: Page, shots: Shots, federation: Federation) -> dict[str, str]:
    """On the approval page: screenshot, grant, and return what the client app received."""
    page.wait_for_selector("#approve")
    assert "Federated App" in page.content()
    shots("approval")
    received_before = len(federation.app.received)
    page.click("#approve")
    page.wait_for_selector("#outcome")
    shots("client-app")
    assert page.url.startswith(federation.app.redirect_uri)
    assert len(federation.app.received) == received_before + 1
    answer = federation.app.last()
    assert "code" in answer, answer
    return answer


def _picker(page: Page, shots: Shots, federation: Federation) -> None:
    page.goto(federation.auth_url())
    page.wait_for_selector("#connector-ldap")
    shots("picker")
    links = page.locator("ul.pc-connectors a")
    ids = sorted(links.nth(i).get_attribute("id") or "" for i in range(links.count()))
    # Only the client's allowedConnectors: not the proxy, not the password DB, not the mock.
    assert ids == ["connector-ldap", "connector-saml", "connector-upstream"]
    text = page.inner_text("ul.pc-connectors")
    for shown in ("Corporate directory", "Upstream OIDC", "SAML IdP", "ldap", "oidc", "saml"):
        assert shown in text


def test_ldap_login_and_refresh_ends_when_the_user_is_deleted(
    page: Page, shots: Shots, federation: Federation
) -> None:
    user = f"br{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(12)
    group = f"team-{user}"
    federation.issuer.remember(password)
    federation.slapd.modify(
        f"dn: uid={user},{PEOPLE_DN}\nchangetype: add\nobjectClass: inetOrgPerson\n"
        f"uid: {user}\ncn: Browser User\nsn: User\nmail: {user}@example.org\n"
        f"userPassword: {password}\n\n"
        f"dn: cn={group},{GROUPS_DN}\nchangetype: add\nobjectClass: posixGroup\n"
        f"cn: {group}\ngidNumber: 7001\nmemberUid: {user}\n"
    )
    try:
        _picker(page, shots, federation)
        page.click("#connector-ldap")
        page.wait_for_selector("#password")
        assert "Directory username" in page.content()  # the connector's usernamePrompt
        shots("ldap-form")
        page.fill("#login", user)
        page.fill("#password", "wrong-" + password)
        page.click("#submit-login")
        page.wait_for_selector(".pc-error")
        assert "Invalid username or password" in page.inner_text(".pc-error")
        shots("ldap-wrong-password")
        page.fill("#password", password)
        page.click("#submit-login")
        answer = _approve_and_land(page, shots, federation)
        tokens = federation.exchange(answer["code"])
        claims = id_token_claims(tokens["id_token"])
        assert claims["aud"] == APP_CLIENT_ID
        assert claims["email"] == f"{user}@example.org"
        assert claims["groups"] == [group]

        first = federation.refresh(tokens["refresh_token"])
        assert first.status_code == 200, first.text
        federation.slapd.delete(f"uid={user},{PEOPLE_DN}")
        refused = federation.refresh(first.json()["refresh_token"])
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"] == "invalid_grant"
        assert "upstream" in refused.json()["error_description"]
        # The family ended: the token is now unknown, not asked about upstream again.
        again = federation.refresh(first.json()["refresh_token"])
        assert again.status_code == 400
        assert "upstream" not in again.json().get("error_description", "")
    finally:
        for dn in (f"uid={user},{PEOPLE_DN}", f"cn={group},{GROUPS_DN}"):
            with contextlib.suppress(RuntimeError):  # already deleted by the test
                federation.slapd.delete(dn)


def test_oidc_upstream_round_trip_and_refresh_ends_when_the_account_is_removed(
    page: Page, shots: Shots, federation: Federation
) -> None:
    account = f"oidc-{secrets.token_hex(3)}"
    federation.oidc.set_account(
        account,
        {
            "name": "Dave",
            "preferred_username": account,
            "email": f"{account}@example.com",
            "email_verified": True,
            "groups": ["oidc-devs"],
        },
    )
    _picker(page, shots, federation)
    page.click("#connector-upstream")
    # node-oidc-provider's own login page, on its own origin.
    page.wait_for_selector('input[name="login"]')
    assert page.url.startswith(federation.oidc.issuer)
    shots("upstream-login")
    page.fill('input[name="login"]', account)
    page.fill('input[name="password"]', "any-password")
    page.click('button[type="submit"]')
    page.wait_for_url(lambda url: "/interaction/" in url or "/approval" in url)
    if "/interaction/" in page.url:
        shots("upstream-consent")
        page.click('button[type="submit"]')
    answer = _approve_and_land(page, shots, federation)
    tokens = federation.exchange(answer["code"])
    claims = id_token_claims(tokens["id_token"])
    assert claims["email"] == f"{account}@example.com"
    assert claims["groups"] == ["oidc-devs"]

    first = federation.refresh(tokens["refresh_token"])
    assert first.status_code == 200, first.text
    federation.oidc.remove_account(account)
    refused = federation.refresh(first.json()["refresh_token"])
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == "invalid_grant"
    again = federation.refresh(first.json()["refresh_token"])
    assert again.status_code == 400
    assert "upstream" not in again.json().get("error_description", "")


def test_saml_post_binding_through_the_same_origin_hop(
    page: Page, shots: Shots, federation: Federation
) -> None:
    posts: list[tuple[str, bool]] = []

    def on_request(request: object) -> None:
        from playwright.sync_api import Request

        assert isinstance(request, Request)
        if request.method == "POST" and "/callback" in request.url:
            posts.append((request.url, "pc_hop=1" in (request.post_data or "")))

    page.on("request", on_request)
    federation.saml.current_user = "alice"
    _picker(page, shots, federation)
    # Our page POSTs the AuthnRequest to the IdP, whose auto-post page POSTs the response
    # back cross-site; our hop page re-posts it from our origin; then the approval page.
    page.click("#connector-saml")
    answer = _approve_and_land(page, shots, federation)
    assert [hop for _, hop in posts] == [False, True], posts
    tokens = federation.exchange(answer["code"])
    claims = id_token_claims(tokens["id_token"])
    assert claims["email"] == "alice@example.com"
    assert claims["groups"] == ["admins", "developers", "everyone"]
    # No refresh connector: the refresh token works without asking the IdP (documented).
    assert federation.refresh(tokens["refresh_token"]).status_code == 200


#: Holds every script-driven form submission (ours and the IdP's auto-post pages) until the test
#: has taken its screenshot; the submission itself is then the browser's own, so SameSite and
#: the cross-site POST behave as without the hold. Playwright injects it outside the page CSP.
_HOLD_SUBMIT = """
(() => {
  const submit = HTMLFormElement.prototype.submit;
  HTMLFormElement.prototype.submit = function () {
    const form = this;
    window.__pcHeld = () => submit.call(form);
  };
})();
"""


def _release(page: Page) -> None:
    page.wait_for_function("() => typeof window.__pcHeld === 'function'")
    with page.expect_navigation():
        page.evaluate("() => { setTimeout(() => window.__pcHeld(), 0); }")


def test_saml_every_page_of_the_post_binding(
    page: Page, shots: Shots, federation: Federation
) -> None:
    """The same login as above, each auto-submitting page held for its screenshot."""
    page.add_init_script(_HOLD_SUBMIT)
    federation.saml.current_user = "bob"
    try:
        _picker(page, shots, federation)
        page.click("#connector-saml")
        page.wait_for_function("() => typeof window.__pcHeld === 'function'")
        assert page.url.startswith(federation.issuer.issuer + "/auth/saml")
        shots("post-to-idp")
        _release(page)
        page.wait_for_function("() => typeof window.__pcHeld === 'function'")
        assert page.url.startswith(federation.saml.base_url)
        shots("idp-auto-post")
        _release(page)
        page.wait_for_function("() => typeof window.__pcHeld === 'function'")
        assert "Finishing your login." in page.content()
        assert page.url == federation.issuer.issuer + "/callback"
        shots("same-origin-hop")
        _release(page)
        answer = _approve_and_land(page, shots, federation)
        claims = id_token_claims(federation.exchange(answer["code"])["id_token"])
        assert claims["email"] == "bob@example.com"
        assert claims["groups"] == ["everyone"]
    finally:
        federation.saml.current_user = "alice"


def test_upstream_refusal_is_a_page_with_a_retry_link(
    page: Page, shots: Shots, federation: Federation
) -> None:
    """The user cancels at the upstream provider, which comes back with error=access_denied:
    a page for people (no stack trace, not a 500) with a link back to the login methods."""
    _picker(page, shots, federation)
    page.click("#connector-upstream")
    page.wait_for_selector('input[name="login"]')
    shots("upstream-login")
    page.click("text=[ Cancel ]")
    page.wait_for_selector(".pc-retry")
    shots("refused")
    assert "The identity provider refused the login." in page.inner_text(".pc-error")
    assert "Traceback" not in page.content()
    page.click(".pc-retry")
    page.wait_for_selector("#connector-ldap")
    shots("picker-again")
