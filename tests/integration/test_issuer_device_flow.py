"""The device flow (RFC 8628) against a real `portcullis serve`: the device's requests over HTTP,
the person's side through the HTML pages (user-code form, connector picker, password form,
approval), every polling answer, and the Dex paths and discovery keys."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest

from tests.support.issuer import (
    ADMIN_USER_ID,
    Browser,
    Issuer,
    form_action,
    hidden_fields,
    issuers_in,
)
from tests.support.oidc_checks import dex_subject, verify_id_token

pytestmark = pytest.mark.integration

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
GRANTS = ["authorization_code", "refresh_token", "password", "client_credentials", DEVICE_GRANT]


@pytest.fixture(scope="module")
def device_issuer(
    tmp_path_factory: pytest.TempPathFactory, portcullis_cli: Path
) -> Iterator[Issuer]:
    with issuers_in(tmp_path_factory.mktemp("device")) as start:
        yield start({"oauth2": {"grantTypes": GRANTS}, "expiry": {"deviceRequests": "2m"}})


def _device_code(issuer: Issuer, scope: str = "openid email groups offline_access") -> Any:
    response = httpx.post(issuer.url("/device/code"), data={"client_id": "kubectl", "scope": scope})
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    started = response.json()
    issuer.remember(started["device_code"])
    return started


def _poll(issuer: Issuer, device_code: str) -> httpx.Response:
    return issuer.token(
        {"grant_type": DEVICE_GRANT, "device_code": device_code, "client_id": "kubectl"}
    )


def _enter_code(browser: Browser, issuer: Issuer, typed: str, page_url: str) -> httpx.Response:
    page = browser.get(page_url)
    assert page.status_code == 200, page.text[:1000]
    fields = hidden_fields(page.text)
    browser.issuer.remember(*fields.values())
    return browser.http.post(form_action(page.text, page_url), data={**fields, "user_code": typed})


def test_discovery_advertises_the_device_endpoint(device_issuer: Issuer) -> None:
    document = device_issuer.discovery()
    assert document["device_authorization_endpoint"] == device_issuer.url("/device/code")
    assert DEVICE_GRANT in document["grant_types_supported"]


def test_device_login_through_the_html_forms(device_issuer: Issuer) -> None:
    started = _device_code(device_issuer)
    assert started["verification_uri"] == device_issuer.url("/device")
    assert started["expires_in"] == 120
    assert started["interval"] == 5

    pending = _poll(device_issuer, started["device_code"])
    assert pending.status_code == 400
    assert pending.json()["error"] == "authorization_pending"
    too_fast = _poll(device_issuer, started["device_code"])
    assert too_fast.json()["error"] == "slow_down"

    with Browser(device_issuer) as browser:
        # The person types the code in lower case without the dash.
        typed = started["user_code"].lower().replace("-", "")
        entered = _enter_code(browser, device_issuer, typed, device_issuer.url("/device"))
        assert entered.status_code == 303, entered.text[:1000]
        auth_url = urljoin(str(entered.url), entered.headers["location"])
        assert auth_url.startswith(device_issuer.url("/auth?"))
        steps = browser.login(auth_url)
        assert steps.final is not None
        callback = urljoin(str(steps.final.url), steps.final.headers["location"])
        assert callback.startswith(device_issuer.url("/device/callback?"))
        done = browser.get(callback)
        assert done.status_code == 200, done.text[:1000]
        assert "Device logged in" in done.text
        assert started["user_code"] in done.text

    time.sleep(10.5)  # the interval grew to 10 s with the slow_down
    granted = _poll(device_issuer, started["device_code"])
    assert granted.status_code == 200, granted.text
    tokens = granted.json()
    claims = verify_id_token(
        device_issuer,
        tokens["id_token"],
        client_id="kubectl",
        nonce=None,
        access_token=tokens["access_token"],
    )
    assert claims["sub"] == dex_subject(ADMIN_USER_ID, "local")
    assert claims["groups"] == ["admins"]
    assert tokens["refresh_token"]

    again = _poll(device_issuer, started["device_code"])
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"


def test_denied_device_login_answers_access_denied(device_issuer: Issuer) -> None:
    started = _device_code(device_issuer, "openid")
    with Browser(device_issuer) as browser:
        entered = _enter_code(
            browser,
            device_issuer,
            "",
            device_issuer.url(f"/device?user_code={started['user_code']}"),
        )
        # The prefilled code is in the page; an empty submission is refused.
        assert entered.status_code == 400
        page_url = started["verification_uri_complete"]
        page = browser.get(page_url)
        assert started["user_code"] in page.text
        entered = _enter_code(browser, device_issuer, started["user_code"], page_url)
        assert entered.status_code == 303
        steps = browser.login(urljoin(str(entered.url), entered.headers["location"]), approve=False)
        assert steps.final is not None
        done = browser.get(urljoin(str(steps.final.url), steps.final.headers["location"]))
        assert "denied" in done.text
    denied = _poll(device_issuer, started["device_code"])
    assert denied.json()["error"] == "access_denied"


def test_user_code_entry_errors(device_issuer: Issuer) -> None:
    with Browser(device_issuer) as browser:
        wrong = _enter_code(browser, device_issuer, "BCDF-GHJK", device_issuer.url("/device"))
        assert wrong.status_code == 400
        assert "not valid or has expired" in wrong.text
        # Without the page's CSRF token (or cookie) the form is refused.
        forged = httpx.post(
            device_issuer.url("/device/auth/verify_code"),
            data={"user_code": "BCDF-GHJK", "csrf_token": "x"},
        )
        assert forged.status_code == 403


def test_unknown_client_and_bad_device_code(device_issuer: Issuer) -> None:
    unknown = httpx.post(device_issuer.url("/device/code"), data={"client_id": "nobody"})
    assert unknown.status_code == 401
    assert unknown.json()["error"] == "invalid_client"
    bad = _poll(device_issuer, "not-a-device-code")
    assert bad.json()["error"] == "invalid_grant"


def test_expired_device_code(tmp_path: Path, portcullis_cli: Path) -> None:
    with issuers_in(tmp_path) as start:
        issuer = start({"oauth2": {"grantTypes": GRANTS}, "expiry": {"deviceRequests": "1s"}})
        started = _device_code(issuer, "openid")
        time.sleep(1.5)
        expired = _poll(issuer, started["device_code"])
        assert expired.json()["error"] == "expired_token"


def test_without_the_grant_there_are_no_device_routes(issuer: Issuer) -> None:
    assert "device_authorization_endpoint" not in issuer.discovery()
    assert httpx.post(issuer.url("/device/code"), data={"client_id": "kubectl"}).status_code == 404
    assert httpx.get(issuer.url("/device")).status_code == 404
