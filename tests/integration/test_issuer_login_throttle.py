"""The password-login throttle against a real `portcullis serve --workers 2` on SQLite, attacked
as in issue 9: parallel guesses at the login form and at the password grant (finding 1), and a
stranger trying to keep a known user out (finding 2). Client addresses come from
X-Forwarded-For, trusted from the loopback proxy."""

from __future__ import annotations

import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.support.issuer import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    APP_REDIRECT,
    DEV_EMAIL,
    DEV_PASSWORD,
    Browser,
    Issuer,
    StartIssuer,
    form_action,
    hidden_fields,
)

pytestmark = pytest.mark.integration

ATTACKER = "198.51.100.66"
OWNER = "192.0.2.7"
GUESSES = 25
LIMIT = 5  # web.passwordThrottle.maxFailuresPerUser default


def _throttled_issuer(start_issuer: StartIssuer, throttle: dict[str, Any] | None = None) -> Issuer:
    web: dict[str, Any] = {
        "clientRemoteIP": {"header": "X-Forwarded-For", "trustedProxies": ["127.0.0.1/32"]}
    }
    if throttle:
        web["passwordThrottle"] = throttle
    issuer = start_issuer({"web": web}, run=False)
    issuer.serve_args = ["--workers", "2"]
    return issuer.start()


def _params() -> dict[str, str]:
    return {
        "client_id": "example-app",
        "redirect_uri": APP_REDIRECT,
        "response_type": "code",
        "scope": "openid email",
        "state": secrets.token_urlsafe(8),
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "code_challenge_method": "S256",
    }


def _parallel(send: Any, count: int) -> list[httpx.Response]:
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(send, range(count)))


def test_parallel_wrong_guesses_are_throttled_at_the_form_and_the_grant(
    start_issuer: StartIssuer,
) -> None:
    issuer = _throttled_issuer(start_issuer)
    with Browser(issuer) as browser:
        steps = browser.reach_password_form(_params())
        action = form_action(steps.password_page, steps.password_form_url)
        fields = hidden_fields(steps.password_page)
        cookies = dict(browser.http.cookies)

    def guess_form(n: int) -> httpx.Response:
        wrong = f"wrong-form-{n:04d}x"
        issuer.remember(wrong)
        # A connection per guess: the two worker processes both get some.
        with httpx.Client(cookies=cookies, timeout=30.0) as http:
            return http.post(
                action,
                data={**fields, "login": ADMIN_EMAIL, "password": wrong},
                headers={"X-Forwarded-For": ATTACKER},
            )

    form = _parallel(guess_form, GUESSES)
    statuses = sorted(r.status_code for r in form)
    assert statuses == [401] * LIMIT + [429] * (GUESSES - LIMIT), statuses

    def guess_grant(n: int) -> httpx.Response:
        wrong = f"wrong-grant-{n:04d}x"
        issuer.remember(wrong)
        return httpx.post(
            issuer.url("/token"),
            data={"grant_type": "password", "username": DEV_EMAIL, "password": wrong},
            auth=issuer.app_auth(),
            headers={"X-Forwarded-For": ATTACKER},
            timeout=30.0,
        )

    grant = _parallel(guess_grant, GUESSES)
    assert all(r.status_code == 400 for r in grant), [r.text for r in grant]
    throttled = [r for r in grant if "retry-after" in r.headers]
    assert len(throttled) == GUESSES - LIMIT
    assert all(r.json()["error"] == "invalid_grant" for r in grant)


def test_a_stranger_cannot_keep_a_known_user_out(start_issuer: StartIssuer) -> None:
    issuer = _throttled_issuer(start_issuer)
    with Browser(issuer) as browser:
        steps = browser.reach_password_form(_params())
        attacker = {"X-Forwarded-For": ATTACKER}
        for n in range(2 * LIMIT):
            wrong = f"wrong-password-{n:04d}x"
            issuer.remember(wrong)
            response = browser.submit_password(steps, ADMIN_EMAIL, wrong, attacker)
            assert response.status_code == (401 if n < LIMIT else 429), n

        owner = {"X-Forwarded-For": OWNER}
        response = browser.submit_password(steps, ADMIN_EMAIL, ADMIN_PASSWORD, owner)
        if response.status_code == 429:
            # At most the first progressive delay (web.passwordThrottle.userDelay, 1s).
            wait = int(response.headers["retry-after"])
            assert wait <= 1, wait
            time.sleep(wait)
            response = browser.submit_password(steps, ADMIN_EMAIL, ADMIN_PASSWORD, owner)
        assert response.status_code == 303, response.status_code

    with Browser(issuer) as browser:
        steps = browser.reach_password_form(_params())
        still = browser.submit_password(steps, ADMIN_EMAIL, ADMIN_PASSWORD, attacker)
        assert still.status_code == 429


def test_retry_after_is_the_real_time_left(start_issuer: StartIssuer) -> None:
    issuer = _throttled_issuer(start_issuer, {"window": "1m"})
    attacker = {"X-Forwarded-For": ATTACKER}
    for n in range(LIMIT):
        wrong = f"wrong-grant-{n:04d}x"
        issuer.remember(wrong)
        response = httpx.post(
            issuer.url("/token"),
            data={"grant_type": "password", "username": DEV_EMAIL, "password": wrong},
            auth=issuer.app_auth(),
            headers=attacker,
        )
        assert "retry-after" not in response.headers
    time.sleep(3)
    refused = httpx.post(
        issuer.url("/token"),
        data={"grant_type": "password", "username": DEV_EMAIL, "password": DEV_PASSWORD},
        auth=issuer.app_auth(),
        headers=attacker,
    )
    assert refused.status_code == 400
    assert 50 <= int(refused.headers["retry-after"]) <= 57
