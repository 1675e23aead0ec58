"""Dex's second device polling path, ``POST /device/token``, against a real `portcullis serve`:
the same answers as ``/token`` for the device grant (every polling error, the tokens once, a code
used twice, an expired code, client authentication), and nothing but the device grant."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest

from tests.support.issuer import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    Browser,
    Issuer,
    form_action,
    hidden_fields,
    issuers_in,
)
from tests.support.oidc_checks import verify_id_token

pytestmark = pytest.mark.integration

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
GRANTS = ["authorization_code", "refresh_token", "password", "client_credentials", DEVICE_GRANT]


@pytest.fixture(scope="module")
def device_issuer(
    tmp_path_factory: pytest.TempPathFactory, portcullis_cli: Path
) -> Iterator[Issuer]:
    with issuers_in(tmp_path_factory.mktemp("device-token")) as start:
        yield start({"oauth2": {"grantTypes": GRANTS}, "expiry": {"deviceRequests": "2m"}})


def _start(issuer: Issuer, scope: str = "openid email groups offline_access") -> Any:
    response = httpx.post(issuer.url("/device/code"), data={"client_id": "kubectl", "scope": scope})
    assert response.status_code == 200, response.text
    started = response.json()
    issuer.remember(started["device_code"])
    return started


def _poll(issuer: Issuer, device_code: str, **extra: str) -> httpx.Response:
    form = {"grant_type": DEVICE_GRANT, "device_code": device_code, "client_id": "kubectl"}
    form.update(extra)
    response = httpx.post(issuer.url("/device/token"), data=form)
    issuer.remember_exchange({}, response)
    return response


def _approve(issuer: Issuer, user_code: str, *, approve: bool = True) -> None:
    with Browser(issuer) as browser:
        page_url = issuer.url(f"/device?user_code={user_code}")
        page = browser.get(page_url)
        fields = hidden_fields(page.text)
        issuer.remember(*fields.values())
        entered = browser.http.post(
            form_action(page.text, page_url), data={**fields, "user_code": user_code}
        )
        assert entered.status_code == 303, entered.text[:1000]
        steps = browser.login(
            urljoin(str(entered.url), entered.headers["location"]), approve=approve
        )
        assert steps.final is not None
        done = browser.get(urljoin(str(steps.final.url), steps.final.headers["location"]))
        assert done.status_code == 200, done.text[:1000]


def test_polling_at_device_token_gets_the_tokens_once(device_issuer: Issuer) -> None:
    started = _start(device_issuer)
    first = time.monotonic()
    pending = _poll(device_issuer, started["device_code"])
    assert pending.status_code == 400
    assert pending.headers["content-type"] == "application/json"
    assert pending.headers["cache-control"].startswith("no-store")
    assert pending.json()["error"] == "authorization_pending"
    _approve(device_issuer, started["user_code"])
    time.sleep(max(0.0, started["interval"] + 0.3 - (time.monotonic() - first)))
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
    assert claims["email"] == ADMIN_EMAIL
    assert tokens["refresh_token"]
    # The device code is spent: at this path and at /token alike.
    assert _poll(device_issuer, started["device_code"]).json()["error"] == "invalid_grant"
    again = device_issuer.token(
        {"grant_type": DEVICE_GRANT, "device_code": started["device_code"], "client_id": "kubectl"}
    )
    assert again.json()["error"] == "invalid_grant"


def test_polling_too_fast_and_a_denied_login(device_issuer: Issuer) -> None:
    started = _start(device_issuer, "openid")
    assert _poll(device_issuer, started["device_code"]).json()["error"] == "authorization_pending"
    slow = _poll(device_issuer, started["device_code"])
    assert slow.status_code == 400
    assert slow.json()["error"] == "slow_down"
    _approve(device_issuer, started["user_code"], approve=False)
    time.sleep(started["interval"] + 5.3)  # the interval grew by 5 s with the slow_down
    assert _poll(device_issuer, started["device_code"]).json()["error"] == "access_denied"


def test_only_the_device_grant_and_known_clients(device_issuer: Issuer) -> None:
    # Valid password-grant credentials: /token would issue tokens, this path must not.
    password = httpx.post(
        device_issuer.url("/device/token"),
        data={
            "grant_type": "password",
            "username": ADMIN_EMAIL,
            "password": ADMIN_PASSWORD,
            "scope": "openid",
            "client_id": "kubectl",
        },
    )
    assert password.status_code == 400
    assert password.json()["error"] == "invalid_grant"
    assert "id_token" not in password.text
    started = _start(device_issuer, "openid")
    stranger = _poll(device_issuer, started["device_code"], client_id="nobody")
    assert stranger.status_code == 401
    assert stranger.json()["error"] == "invalid_client"
    unknown = _poll(device_issuer, "not-a-device-code")
    assert unknown.json()["error"] == "invalid_grant"
    missing = _poll(device_issuer, "")
    assert missing.json()["error"] == "invalid_request"
    not_a_form = httpx.post(device_issuer.url("/device/token"), json={"grant_type": DEVICE_GRANT})
    assert not_a_form.status_code == 400
    assert not_a_form.json()["error"] == "invalid_request"
    assert httpx.get(device_issuer.url("/device/token")).status_code == 405


def test_expired_code_at_device_token(tmp_path: Path, portcullis_cli: Path) -> None:
    with issuers_in(tmp_path) as start:
        issuer = start({"oauth2": {"grantTypes": GRANTS}, "expiry": {"deviceRequests": "1s"}})
        started = _start(issuer, "openid")
        time.sleep(1.5)
        assert _poll(issuer, started["device_code"]).json()["error"] == "expired_token"


def test_without_the_device_grant_there_is_no_device_token_path(issuer: Issuer) -> None:
    response = httpx.post(issuer.url("/device/token"), data={"grant_type": DEVICE_GRANT})
    assert response.status_code == 404
