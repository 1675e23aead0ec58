"""Behaviour that depends on configuration or on the server's life cycle: expiry, refresh-token
policies, PKCE enforcement, approval skipping, throttling, restarts and key rotation."""

from __future__ import annotations

import dataclasses
import json
import secrets
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from portcullis.storage.models import Keys
from portcullis.storage.sqlite import SQLiteStorage

from tests.support.issuer import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    ADMIN_USER_ID,
    APP_REDIRECT,
    DEV_EMAIL,
    DEV_PASSWORD,
    Browser,
    Issuer,
    StartIssuer,
    issuers_in,
    query_of,
)
from tests.support.oidc_checks import (
    app_client,
    authorization_url,
    dex_subject,
    jwt_header,
    new_verifier,
    verify_id_token,
)

pytestmark = pytest.mark.integration

CHALLENGE_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"  # RFC 7636 appendix B
CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def _params(**overrides: str) -> dict[str, str]:
    params = {
        "client_id": "example-app",
        "redirect_uri": APP_REDIRECT,
        "response_type": "code",
        "scope": "openid email offline_access",
        "state": secrets.token_urlsafe(8),
        "code_challenge": CHALLENGE,
        "code_challenge_method": "S256",
    }
    params.update(overrides)
    return {k: v for k, v in params.items() if v}


def _password_grant(issuer: Issuer, scope: str = "openid email offline_access") -> dict[str, Any]:
    response = issuer.token(
        {"grant_type": "password", "username": DEV_EMAIL, "password": DEV_PASSWORD, "scope": scope},
        auth=issuer.app_auth(),
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _refresh(issuer: Issuer, refresh_token: str) -> httpx.Response:
    return issuer.token(
        {"grant_type": "refresh_token", "refresh_token": refresh_token}, auth=issuer.app_auth()
    )


def _exchange(
    issuer: Issuer, code: str, verifier: str | None = CHALLENGE_VERIFIER
) -> httpx.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": APP_REDIRECT}
    if verifier:
        data["code_verifier"] = verifier
    return issuer.token(data, auth=issuer.app_auth())


# -- expiry ------------------------------------------------------------------------------------


def test_expired_code_and_expired_tokens_are_refused(start_issuer: StartIssuer) -> None:
    issuer = start_issuer({"expiry": {"authCodes": "1s", "idTokens": "1s"}})
    with Browser(issuer) as browser:
        code = query_of(browser.authorize_code(_params()))["code"]
    tokens = _password_grant(issuer)
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    time.sleep(2.1)
    response = _exchange(issuer, code)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert httpx.get(issuer.url("/userinfo"), headers=bearer).status_code == 401
    introspected = httpx.post(
        issuer.url("/token/introspect"),
        data={"token": tokens["access_token"]},
        auth=issuer.app_auth(),
    )
    assert introspected.json() == {"active": False}
    # The refresh token outlives the ID token: the session continues.
    assert _refresh(issuer, tokens["refresh_token"]).status_code == 200


def test_expired_login_request_is_refused(start_issuer: StartIssuer) -> None:
    issuer = start_issuer({"expiry": {"authRequests": "3s"}})
    with Browser(issuer) as browser:
        steps = browser.reach_password_form(_params())
        time.sleep(3.2)
        late = browser.submit_password(steps)
    assert late.status_code == 400
    assert "location" not in late.headers


# -- refresh policies --------------------------------------------------------------------------


def test_refresh_reuse_grace_then_reuse_detection_revokes_the_family(
    start_issuer: StartIssuer,
) -> None:
    issuer = start_issuer({"expiry": {"refreshTokens": {"reuseInterval": "1s"}}})
    first = _password_grant(issuer)["refresh_token"]
    rotated = _refresh(issuer, first)
    assert rotated.status_code == 200, rotated.text
    successor = rotated.json()["refresh_token"]
    assert successor != first
    # A retry inside reuseInterval (the response got lost) gets the same successor.
    retry = _refresh(issuer, first)
    assert retry.status_code == 200, retry.text
    assert retry.json()["refresh_token"] == successor
    time.sleep(1.5)
    # After the interval, presenting the old token again is theft: the family dies.
    reuse = _refresh(issuer, first)
    assert reuse.status_code == 400
    assert reuse.json()["error"] == "invalid_grant"
    revoked = _refresh(issuer, successor)
    assert revoked.status_code == 400
    assert revoked.json()["error"] == "invalid_grant"


def test_reuse_of_an_older_generation_revokes_the_family(start_issuer: StartIssuer) -> None:
    """RFC 9700 §4.14.2: an attacker who stole R0 refreshes twice (R1, R2) and keeps the session
    alive; when the legitimate client finally presents R0, the server must see the reuse and
    revoke the family, not just refuse R0 and leave the attacker's R2 working."""
    issuer = start_issuer({"expiry": {"refreshTokens": {"reuseInterval": "1s"}}})
    stolen = _password_grant(issuer)["refresh_token"]
    first = _refresh(issuer, stolen)
    assert first.status_code == 200, first.text
    second = _refresh(issuer, first.json()["refresh_token"])
    assert second.status_code == 200, second.text
    attackers = second.json()["refresh_token"]
    time.sleep(1.5)
    legit = _refresh(issuer, stolen)
    assert legit.status_code == 400
    assert legit.json()["error"] == "invalid_grant"
    after = _refresh(issuer, attackers)
    assert after.status_code == 400, "the family survived the reuse of an older refresh token"
    assert after.json()["error"] == "invalid_grant"


def test_refresh_with_rotation_disabled_keeps_the_same_token(start_issuer: StartIssuer) -> None:
    issuer = start_issuer({"expiry": {"refreshTokens": {"disableRotation": True}}})
    token = _password_grant(issuer)["refresh_token"]
    for _ in range(3):
        response = _refresh(issuer, token)
        assert response.status_code == 200, response.text
        assert response.json()["refresh_token"] == token


def test_refresh_token_idle_limit(start_issuer: StartIssuer) -> None:
    issuer = start_issuer({"expiry": {"refreshTokens": {"validIfNotUsedFor": "1s"}}})
    token = _password_grant(issuer)["refresh_token"]
    fresh = _refresh(issuer, token)
    assert fresh.status_code == 200, fresh.text
    time.sleep(1.5)
    stale = _refresh(issuer, fresh.json()["refresh_token"])
    assert stale.status_code == 400
    assert stale.json()["error"] == "invalid_grant"


# -- PKCE, approval, token lifetimes, algorithms ---------------------------------------------


def test_pkce_enforced_for_confidential_clients(start_issuer: StartIssuer) -> None:
    issuer = start_issuer({"oauth2": {"pkce": {"enforce": True}}})
    params = _params(code_challenge="", code_challenge_method="")
    with Browser(issuer) as browser:
        response = browser.open_authorize(params)
    assert response.status_code in (302, 303)
    assert query_of(response.headers["location"])["error"] == "invalid_request"
    with Browser(issuer) as browser:
        code = query_of(browser.authorize_code(_params()))["code"]
    assert _exchange(issuer, code).status_code == 200


def test_without_enforcement_a_confidential_client_may_skip_pkce(issuer_plain: Issuer) -> None:
    params = _params(code_challenge="", code_challenge_method="")
    with Browser(issuer_plain) as browser:
        code = query_of(browser.authorize_code(params))["code"]
    assert _exchange(issuer_plain, code, verifier=None).status_code == 200


def test_skip_approval_redirects_straight_to_the_client(issuer_plain: Issuer) -> None:
    with Browser(issuer_plain) as browser:
        steps = browser.login(_params())
    assert steps.approval_page == "", "the approval screen was shown despite skipApprovalScreen"
    assert steps.final is not None
    assert steps.final.headers["location"].startswith(APP_REDIRECT + "?code=")
    # prompt=consent still asks.
    with Browser(issuer_plain) as browser:
        consent = browser.login(_params(prompt="consent"))
    assert 'value="approve"' in consent.approval_page


def test_per_client_id_token_lifetime(issuer_plain: Issuer) -> None:
    body = _password_grant(issuer_plain, scope="openid")
    claims = verify_id_token(
        issuer_plain,
        body["id_token"],
        client_id="example-app",
        nonce=None,
        access_token=body["access_token"],
    )
    assert claims["exp"] - claims["iat"] == 600
    assert body["expires_in"] == 600
    # Other clients keep the server-wide 1h.
    bot = issuer_plain.token(
        {"grant_type": "client_credentials", "scope": "openid"},
        auth=("service-bot", issuer_plain.creds.bot),
    ).json()
    assert bot["expires_in"] == 3600


@pytest.fixture(scope="module")
def issuer_plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Issuer]:
    """skipApprovalScreen, ES256 signing, hybrid flow enabled; example-app has a 10m ID-token
    lifetime and may only use the local connector."""

    def edit(config: dict[str, Any]) -> None:
        config["staticClients"][0]["idTokensValidFor"] = "10m"
        config["staticClients"][0]["allowedConnectors"] = ["local"]
        config["oauth2"]["grantTypes"].append("implicit")
        config["staticClients"][0]["grantTypes"].append("implicit")

    with issuers_in(tmp_path_factory.mktemp("plain")) as start:
        yield start(
            {
                "oauth2": {
                    "skipApprovalScreen": True,
                    "responseTypes": ["code", "id_token", "token"],
                },
                "signer": {"config": {"algorithm": "ES256"}},
            },
            edit,
        )


def test_es256_signing_is_verifiable(issuer_plain: Issuer) -> None:
    body = _password_grant(issuer_plain, scope="openid")
    assert jwt_header(body["id_token"])["alg"] == "ES256"
    keys = issuer_plain.jwks()["keys"]
    assert {k["kty"] for k in keys} == {"EC"}
    assert "ES256" in issuer_plain.discovery()["id_token_signing_alg_values_supported"]
    verify_id_token(
        issuer_plain,
        body["id_token"],
        client_id="example-app",
        nonce=None,
        access_token=body["access_token"],
    )


def test_allowed_connectors_limit_the_login_methods(issuer_plain: Issuer) -> None:
    with Browser(issuer_plain) as browser:
        first = browser.open_authorize(_params())
        assert first.status_code == 303, "a picker was shown although one connector is allowed"
        assert "/auth/local?" in first.headers["location"]
        refused = browser.open_authorize(_params(connector_id="mock"))
    assert refused.status_code in (302, 303)
    assert refused.headers["location"].startswith(APP_REDIRECT)
    assert query_of(refused.headers["location"])["error"] == "invalid_request"


def test_hybrid_flow_returns_code_and_id_token_in_the_fragment(issuer_plain: Issuer) -> None:
    nonce = secrets.token_urlsafe(8)
    params = _params(response_type="code id_token", nonce=nonce)
    with Browser(issuer_plain) as browser:
        steps = browser.login(params)
    assert steps.final is not None
    location = steps.final.headers["location"]
    assert location.startswith(APP_REDIRECT + "#")
    fragment = {k: v[0] for k, v in parse_qs(location.split("#", 1)[1]).items()}
    assert fragment["state"] == params["state"]
    issuer_plain.remember(fragment["code"], fragment["id_token"])
    claims = verify_id_token(
        issuer_plain,
        fragment["id_token"],
        client_id="example-app",
        nonce=nonce,
        access_token=None,
        code=fragment["code"],
    )
    assert claims["sub"] == dex_subject(ADMIN_USER_ID, "local")
    # The code from the front channel still redeems once at the token endpoint.
    assert _exchange(issuer_plain, fragment["code"]).status_code == 200


def test_hybrid_flow_is_refused_when_not_enabled(start_issuer: StartIssuer) -> None:
    issuer = start_issuer()
    with Browser(issuer) as browser:
        response = browser.open_authorize(_params(response_type="code id_token", nonce="n"))
    assert response.status_code in (302, 303)
    location = response.headers["location"]
    assert location.startswith(APP_REDIRECT + "#")
    assert "error=unsupported_response_type" in location
    assert "code=" not in location


# -- throttling --------------------------------------------------------------------------------


def test_password_form_throttles_after_repeated_failures(start_issuer: StartIssuer) -> None:
    issuer = start_issuer({"web": {"passwordThrottle": {"maxFailuresPerUser": 3, "window": "5m"}}})
    with Browser(issuer) as browser:
        steps = browser.reach_password_form(_params())
        for attempt in range(3):
            wrong = browser.submit_password(steps, ADMIN_EMAIL, f"wrong-password-{attempt:04d}x")
            assert wrong.status_code == 401, wrong.status_code
        blocked = browser.submit_password(steps, ADMIN_EMAIL, ADMIN_PASSWORD)
        assert blocked.status_code == 429
        assert int(blocked.headers["retry-after"]) > 0
        assert "location" not in blocked.headers
    # The password grant shares the counter.
    grant = issuer.token(
        {"grant_type": "password", "username": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
        auth=issuer.app_auth(),
    )
    assert grant.status_code in (400, 429)
    assert grant.json()["error"] in ("invalid_grant", "slow_down")
    # Another user is not affected.
    assert _password_grant(issuer, scope="openid")["access_token"]


def test_password_form_throttles_per_client_ip_across_users(start_issuer: StartIssuer) -> None:
    issuer = start_issuer(
        {"web": {"passwordThrottle": {"maxFailuresPerUser": 50, "maxFailuresPerIP": 3}}}
    )
    with Browser(issuer) as browser:
        steps = browser.reach_password_form(_params())
        for n in range(3):
            sprayed = browser.submit_password(steps, f"user{n}@example.com", "Spray-Password-1")
            assert sprayed.status_code == 401
        blocked = browser.submit_password(steps, ADMIN_EMAIL, ADMIN_PASSWORD)
        assert blocked.status_code == 429


def _spray_then_login(issuer: Issuer, spray_from: list[str], login_from: str) -> int:
    """Failed logins with X-Forwarded-For values, then the right password; its status."""
    with Browser(issuer) as browser:
        steps = browser.reach_password_form(_params())
        for n, address in enumerate(spray_from):
            failed = browser.submit_password(
                steps, f"user{n}@example.com", "Spray-Password-1", {"X-Forwarded-For": address}
            )
            assert failed.status_code == 401
        ok = browser.submit_password(
            steps, ADMIN_EMAIL, ADMIN_PASSWORD, {"X-Forwarded-For": login_from}
        )
        return ok.status_code


def test_forwarded_client_ip_is_ignored_from_untrusted_peers(start_issuer: StartIssuer) -> None:
    issuer = start_issuer(
        {
            "web": {
                "passwordThrottle": {"maxFailuresPerUser": 50, "maxFailuresPerIP": 2},
                "clientRemoteIP": {"header": "X-Forwarded-For", "trustedProxies": ["10.0.0.0/8"]},
            }
        }
    )
    # Rotating the header does not escape the per-IP limit: the peer (127.0.0.1) is counted.
    assert _spray_then_login(issuer, ["203.0.113.1", "203.0.113.2"], "203.0.113.3") == 429


def test_forwarded_client_ip_is_honoured_from_trusted_proxies(start_issuer: StartIssuer) -> None:
    issuer = start_issuer(
        {
            "web": {
                "passwordThrottle": {"maxFailuresPerUser": 50, "maxFailuresPerIP": 2},
                "clientRemoteIP": {
                    "header": "X-Forwarded-For",
                    "trustedProxies": ["127.0.0.1/32"],
                },
            }
        }
    )
    # Failures from one client behind the proxy do not lock out another client.
    assert _spray_then_login(issuer, ["203.0.113.1", "203.0.113.1"], "203.0.113.9") == 303
    assert _spray_then_login(issuer, [], "203.0.113.1") == 429


# -- life cycle --------------------------------------------------------------------------------


def test_refresh_tokens_and_signing_key_survive_a_restart(start_issuer: StartIssuer) -> None:
    issuer = start_issuer()
    client = app_client(issuer)
    verifier, nonce = new_verifier(), secrets.token_urlsafe(8)
    with Browser(issuer) as browser:
        redirect = browser.authorize_code(authorization_url(issuer, client, verifier, nonce))
    token = client.fetch_token(
        issuer.url("/token"), authorization_response=redirect, code_verifier=verifier
    )
    issuer.remember(token["refresh_token"], token["access_token"], token["id_token"])
    client.close()
    kids_before = {k["kid"] for k in issuer.jwks()["keys"]}
    # A login that is half-way through when the server restarts.
    half_way = Browser(issuer)
    steps = half_way.reach_password_form(_params())
    assert issuer.stop() == 0
    issuer.start()
    finished = half_way.submit_password(steps)
    assert finished.status_code == 303, finished.text[:500]
    half_way.close()
    assert {k["kid"] for k in issuer.jwks()["keys"]} == kids_before
    verify_id_token(
        issuer,
        token["id_token"],
        client_id="example-app",
        nonce=nonce,
        access_token=token["access_token"],
    )
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    assert httpx.get(issuer.url("/userinfo"), headers=bearer).status_code == 200
    refreshed = _refresh(issuer, token["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    assert jwt_header(refreshed.json()["id_token"])["kid"] in kids_before


def test_key_rotation_keeps_the_retired_key_published(start_issuer: StartIssuer) -> None:
    issuer = start_issuer()
    old = _password_grant(issuer, scope="openid email")
    old_kid = jwt_header(old["id_token"])["kid"]
    assert issuer.stop() == 0
    # Make the rotation due, as if the period had passed while the server was down.
    storage = SQLiteStorage(str(issuer.db_path))
    try:
        storage.update_keys(lambda keys: dataclasses.replace(keys, next_rotation=time.time() - 60))
        stored: Keys = storage.get_keys()
        assert stored.signing_key is not None
        assert stored.signing_key.jwk["kid"] == old_kid
    finally:
        storage.close()
    issuer.start()
    new = _password_grant(issuer, scope="openid email")
    new_kid = jwt_header(new["id_token"])["kid"]
    assert new_kid != old_kid, "the key did not rotate although the rotation was due"
    jwks = issuer.jwks()
    assert {old_kid, new_kid} <= {k["kid"] for k in jwks["keys"]}
    # Tokens signed before the rotation still verify against the published set.
    verify_id_token(
        issuer,
        old["id_token"],
        client_id="example-app",
        nonce=None,
        access_token=old["access_token"],
        jwks=jwks,
    )
    verify_id_token(
        issuer,
        new["id_token"],
        client_id="example-app",
        nonce=None,
        access_token=new["access_token"],
        jwks=jwks,
    )
    bearer = {"Authorization": f"Bearer {old['access_token']}"}
    assert httpx.get(issuer.url("/userinfo"), headers=bearer).status_code == 200
    # Not rotated again on the next restart: the schedule moved on.
    assert issuer.stop() == 0
    issuer.start()
    assert jwt_header(_password_grant(issuer, scope="openid")["id_token"])["kid"] == new_kid


def test_sigterm_drains_in_flight_requests_and_exits_0(start_issuer: StartIssuer) -> None:
    """Clients keep logging in (bcrypt keeps each request busy) while SIGTERM arrives: every
    request the server accepted gets its answer; later ones are refused at connect."""
    issuer = start_issuer()
    outcomes: list[str] = []
    stop = threading.Event()

    def keep_granting() -> None:
        while not stop.is_set():
            try:
                response = issuer.token(
                    {"grant_type": "password", "username": DEV_EMAIL, "password": DEV_PASSWORD},
                    auth=issuer.app_auth(),
                )
                outcomes.append(str(response.status_code))
            except httpx.ConnectError:
                outcomes.append("not accepted")
                return
            except httpx.HTTPError as exc:
                outcomes.append(f"broken: {type(exc).__name__}")
                return

    threads = [threading.Thread(target=keep_granting) for _ in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while outcomes.count("200") < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert issuer.stop() == 0
    stop.set()
    for thread in threads:
        thread.join(30)
    assert outcomes.count("200") >= 4, outcomes
    assert all(o in ("200", "not accepted") for o in outcomes), outcomes


def test_a_connection_accepted_before_sigterm_still_gets_its_answer(
    start_issuer: StartIssuer,
) -> None:
    """A client that connected just before SIGTERM and sends its request a moment later (its
    request was on the wire) gets the answer, with ``connection: close`` — not a connection
    closed under it, which clients report as "server disconnected without a response" for a
    request the server had in fact accepted. The same holds for a kept-alive connection's next
    request; a connection that sends nothing more is closed when the grace ends."""
    issuer = start_issuer()
    host = "127.0.0.1"
    fresh = socket.create_connection((host, issuer.web_port), timeout=10)
    kept = socket.create_connection((host, issuer.web_port), timeout=10)
    quiet = socket.create_connection((host, issuer.web_port), timeout=10)
    request = (
        f"GET {urlsplit(issuer.url('/.well-known/openid-configuration')).path} HTTP/1.1\r\n"
        f"Host: {host}:{issuer.web_port}\r\n\r\n"
    ).encode()
    for sock in (kept, quiet):
        sock.sendall(request)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # served, now idle keep-alive
    time.sleep(0.2)  # all accepted by the server
    assert issuer.proc is not None
    issuer.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)  # the server is draining
    for sock in (fresh, kept):
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        head = answer.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 200"), answer[:200]
        assert b"connection: close" in head
    started = time.monotonic()
    assert quiet.recv(65536) == b""  # closed by the drain, nothing half-sent
    assert time.monotonic() - started < 3
    for sock in (fresh, kept, quiet):
        sock.close()
    assert issuer.stop() == 0


def test_changing_the_signing_algorithm_takes_effect_at_the_next_start(
    start_issuer: StartIssuer,
) -> None:
    """An operator who switches signer.config.algorithm (e.g. because kube-apiserver is told
    --oidc-signing-algs=ES256) must get ES256 tokens after the restart, not RS256 ones until the
    next scheduled rotation hours later; the old key stays published for old tokens."""
    issuer = start_issuer()
    old = _password_grant(issuer, scope="openid")
    assert jwt_header(old["id_token"])["alg"] == "RS256"
    assert issuer.stop() == 0
    issuer.config["signer"]["config"]["algorithm"] = "ES256"
    issuer.start()
    new = _password_grant(issuer, scope="openid")
    assert jwt_header(new["id_token"])["alg"] == "ES256", "still signing with the old algorithm"
    jwks = issuer.jwks()
    assert {k["kty"] for k in jwks["keys"]} == {"RSA", "EC"}
    verify_id_token(
        issuer,
        old["id_token"],
        client_id="example-app",
        nonce=None,
        access_token=old["access_token"],
        jwks=jwks,
    )


def test_two_worker_processes_share_logins_keys_and_sessions(start_issuer: StartIssuer) -> None:
    """With --workers 2 every request may land on either process: a login started on one must
    finish on the other, both sign with the one stored key, refresh rotation stays single-use."""
    issuer = start_issuer(run=False)
    issuer.serve_args = ["--workers", "2"]
    issuer.start()
    kids = {
        jwt_header(_password_grant(issuer, scope="openid")["id_token"])["kid"] for _ in range(6)
    }
    assert len(kids) == 1, f"workers sign with different keys: {kids}"
    for _ in range(3):
        with Browser(issuer, keepalive=False) as browser:
            code = query_of(browser.authorize_code(_params()))["code"]
        tokens = _exchange(issuer, code)
        assert tokens.status_code == 200, tokens.text
    token = _password_grant(issuer)["refresh_token"]
    for _ in range(4):
        response = _refresh(issuer, token)
        assert response.status_code == 200, response.text
        token = response.json()["refresh_token"]
    assert issuer.stop() == 0


# -- logs --------------------------------------------------------------------------------------


def test_logs_never_contain_tokens_codes_secrets_or_passwords(start_issuer: StartIssuer) -> None:
    issuer = start_issuer({"logger": {"level": "debug", "format": "json"}})
    wrong_passwords = [f"WrongPassword-{secrets.token_hex(8)}" for _ in range(2)]
    issuer.remember(*wrong_passwords)
    # A full browser login with a failed attempt first.
    with Browser(issuer) as browser:
        steps = browser.reach_password_form(_params())
        assert browser.submit_password(steps, DEV_EMAIL, wrong_passwords[0]).status_code == 401
        redirect = browser.authorize_code(_params(), email=DEV_EMAIL, password=DEV_PASSWORD)
    code = query_of(redirect)["code"]
    tokens = _exchange(issuer, code).json()
    _exchange(issuer, code)  # replay: logged as a refusal, without the code
    _refresh(issuer, tokens["refresh_token"])
    issuer.token(
        {"grant_type": "password", "username": DEV_EMAIL, "password": wrong_passwords[1]},
        auth=issuer.app_auth(),
    )
    issuer.token(
        {"grant_type": "client_credentials"}, auth=("service-bot", "bad-" + issuer.creds.bot)
    )
    issuer.token({"grant_type": "client_credentials"}, auth=("service-bot", issuer.creds.bot))
    httpx.post(
        issuer.url("/token/introspect"),
        data={"token": tokens["access_token"]},
        auth=issuer.app_auth(),
    )
    httpx.post(
        issuer.url("/token/revoke"), data={"token": tokens["access_token"]}, auth=issuer.app_auth()
    )
    httpx.get(
        issuer.url("/userinfo"), headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    metrics = httpx.get(issuer.telemetry + "/metrics").text
    assert not [v for v in issuer.sensitive if v in metrics], "a secret value is in /metrics"
    assert issuer.stop() == 0
    logs = issuer.logs()
    lines = [line for line in logs.splitlines() if line.startswith("{")]
    assert lines, "no JSON log lines"
    for line in lines:
        json.loads(line)
    assert "failed password login" in logs or "token request refused" in logs, "nothing logged"
    assert len(issuer.sensitive) >= 8
    leaked = issuer.leaked_secrets()
    assert not leaked, f"{len(leaked)} secret value(s) in the log"
    assert issuer.creds.app not in logs
    assert DEV_PASSWORD not in logs
