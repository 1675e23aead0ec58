"""The device flow (RFC 8628) in the protocol core, on MemoryStorage with a frozen clock: the
device authorization response, user-code entry, the browser leg through the real login state
machine (``/auth`` parameters, password login, approval) bound by PKCE, and every answer the
token endpoint gives a polling device."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from portcullis.config.model import DEVICE_CODE_GRANT
from portcullis.oidc.device import (
    USER_CODE_ALPHABET,
    DeviceVerificationError,
    device_code_digest,
    format_user_code,
    normalize_user_code,
)
from portcullis.oidc.errors import AuthorizeError, OAuthError
from portcullis.oidc.refresh import parse_refresh_token
from portcullis.oidc.throttle import ThrottledError
from portcullis.storage.base import NotFoundError
from portcullis.storage.models import Client

from tests.support.oidc_provider import ISSUER, PASSWORD, USERNAME, World, make_world

pytestmark = pytest.mark.anyio

GRANTS = f"authorization_code, refresh_token, password, {DEVICE_CODE_GRANT}"
CALLBACK = f"{ISSUER}/device/callback"
IP = "198.51.100.7"


@pytest.fixture
def device_world() -> World:
    return make_world(grants=GRANTS)


def _kubectl(world: World) -> Client:
    client = world.provider.clients.get("kubectl")
    assert client is not None
    return client


def _start(world: World, scope: str = "openid groups offline_access") -> dict[str, Any]:
    return world.provider.device.start(_kubectl(world), scope)


async def _poll(world: World, device_code: str, client_id: str = "kubectl") -> dict[str, Any]:
    return await world.provider.tokens.handle(
        {"grant_type": DEVICE_CODE_GRANT, "device_code": device_code, "client_id": client_id},
        None,
        IP,
    )


async def _refused(world: World, device_code: str, client_id: str = "kubectl") -> OAuthError:
    with pytest.raises(OAuthError) as refused:
        await _poll(world, device_code, client_id)
    return refused.value


async def _browser_leg(world: World, user_code: str, *, approve: bool = True) -> dict[str, str]:
    """What a person does at /device: enter the code, log in through /auth's state machine,
    approve or deny; returns the query of the redirect to /device/callback."""
    device = world.provider.device
    flow = world.provider.authorization
    request = device.verify_user_code(user_code, IP)
    params = device.authorize_params(request)
    assert params["redirect_uri"] == CALLBACK
    auth = flow.parse(params, browser_binding="binding")
    # Approval is always asked for a device, whatever skipApprovalScreen says.
    assert flow.needs_approval(auth)
    connector = await flow.password_connector(auth, "mock")
    logged_in = await flow.password_login(auth, connector, USERNAME, PASSWORD, IP)
    location = flow.finish(logged_in) if approve else flow.deny(logged_in)
    assert location.startswith(CALLBACK + "?")
    return dict(parse_qsl(urlsplit(location).query))


# -- /device/code --------------------------------------------------------------------------------
def test_device_authorization_response_has_every_rfc8628_field(device_world: World) -> None:
    started = _start(device_world)
    assert set(started) == {
        "device_code",
        "user_code",
        "verification_uri",
        "verification_uri_complete",
        "expires_in",
        "interval",
    }
    assert re.fullmatch(
        rf"[{USER_CODE_ALPHABET}]{{4}}-[{USER_CODE_ALPHABET}]{{4}}", started["user_code"]
    )
    assert started["verification_uri"] == f"{ISSUER}/device"
    assert started["verification_uri_complete"] == (
        f"{ISSUER}/device?user_code={started['user_code']}"
    )
    assert started["expires_in"] == 300  # expiry.deviceRequests, Dex's default 5m
    assert started["interval"] == 5
    assert len(started["device_code"]) >= 43
    # Only the digest of the device code is stored.
    stored = device_world.storage.get_device_request(device_code_digest(started["device_code"]))
    assert started["device_code"] not in repr(stored)
    with pytest.raises(NotFoundError):
        device_world.storage.get_device_request(started["device_code"])


def test_user_codes_avoid_ambiguous_characters() -> None:
    # No vowels (no words), no digits (no 0/O or 1/I confusion).
    assert not set(USER_CODE_ALPHABET) & set("AEIOUY0123456789")
    assert normalize_user_code("bcdf-ghjk") == "BCDFGHJK"
    assert normalize_user_code(" BCDF GHJK ") == "BCDFGHJK"
    assert normalize_user_code("BCDFGHJK") == "BCDFGHJK"
    assert normalize_user_code("BCDF-GHJ") is None
    assert normalize_user_code("BCDF-GHJA") is None  # A is not in the alphabet
    assert format_user_code("BCDFGHJK") == "BCDF-GHJK"


def test_unknown_scope_or_offline_without_refresh_is_refused(device_world: World) -> None:
    with pytest.raises(OAuthError) as refused:
        _start(device_world, "openid bogus-scope")
    assert refused.value.error == "invalid_scope"


def test_a_server_without_the_device_grant_refuses_device_authorization(world: World) -> None:
    assert not world.provider.device.enabled
    with pytest.raises(OAuthError) as refused:
        _start(world)
    assert refused.value.error == "unauthorized_client"
    assert "device_authorization_endpoint" not in world.provider.discovery.decode()


def test_discovery_advertises_the_device_endpoint_and_grant_when_enabled(
    device_world: World,
) -> None:
    document = device_world.provider.discovery.decode()
    assert f'"device_authorization_endpoint": "{ISSUER}/device/code"' in document
    assert DEVICE_CODE_GRANT in document


# -- the whole flow ------------------------------------------------------------------------------
async def test_approved_device_gets_tokens_once(device_world: World) -> None:
    started = _start(device_world)
    assert (await _refused(device_world, started["device_code"])).error == ("authorization_pending")
    device_world.clock.advance(5)

    query = await _browser_leg(device_world, started["user_code"].lower().replace("-", ""))
    page = device_world.provider.device.complete(query)
    assert page.status == "approved"

    tokens = await _poll(device_world, started["device_code"])
    assert tokens["token_type"] == "bearer"
    assert device_world.jwt_valid(tokens["id_token"])
    claims = device_world.provider.reader.verified_claims(tokens["id_token"])
    assert claims is not None
    assert claims["aud"] == "kubectl"
    assert "groups" in claims
    assert parse_refresh_token(tokens["refresh_token"]) is not None
    refreshed = await device_world.provider.tokens.handle(
        {
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": "kubectl",
        },
        None,
        IP,
    )
    assert device_world.jwt_valid(refreshed["id_token"])

    # A device code is single use, however long the device waits.
    device_world.clock.advance(30)
    second = await _refused(device_world, started["device_code"])
    assert second.error == "invalid_grant"
    assert "already used" in second.description


async def test_denied_request_answers_access_denied(device_world: World) -> None:
    started = _start(device_world)
    query = await _browser_leg(device_world, started["user_code"], approve=False)
    assert query["error"] == "access_denied"
    assert device_world.provider.device.complete(query).status == "denied"
    assert (await _refused(device_world, started["device_code"])).error == "access_denied"


async def test_expired_device_code_answers_expired_token(device_world: World) -> None:
    started = _start(device_world)
    device_world.clock.advance(301)
    refused = await _refused(device_world, started["device_code"])
    assert refused.error == "expired_token"
    with pytest.raises(DeviceVerificationError):
        device_world.provider.device.verify_user_code(started["user_code"], IP)


async def test_polling_faster_than_the_interval_slows_the_device_down(
    device_world: World,
) -> None:
    started = _start(device_world)
    code = started["device_code"]
    assert (await _refused(device_world, code)).error == "authorization_pending"
    device_world.clock.advance(2)
    slow = await _refused(device_world, code)
    assert slow.error == "slow_down"
    assert "10 seconds" in slow.description
    # The interval grew to 10 s and counts from the refused poll.
    device_world.clock.advance(9)
    slower = await _refused(device_world, code)
    assert slower.error == "slow_down"
    assert "15 seconds" in slower.description
    device_world.clock.advance(15)
    assert (await _refused(device_world, code)).error == "authorization_pending"


async def test_unknown_device_code_and_another_clients_code_are_invalid_grants(
    device_world: World,
) -> None:
    started = _start(device_world)
    assert (await _refused(device_world, "not-a-device-code")).error == "invalid_grant"
    with pytest.raises(OAuthError) as foreign:
        await device_world.provider.tokens.handle(
            {"grant_type": DEVICE_CODE_GRANT, "device_code": started["device_code"]},
            device_world.basic,
            IP,
        )
    assert foreign.value.error == "invalid_grant"
    missing = await _refused(device_world, "")
    assert missing.error == "invalid_request"


# -- the person's side ---------------------------------------------------------------------------
async def test_wrong_user_codes_are_refused_and_then_throttled(device_world: World) -> None:
    device = device_world.provider.device
    started = _start(device_world)
    for typed in ("BCDF-GHJK", "not a code", "AAAA-AAAA"):
        with pytest.raises(DeviceVerificationError):
            device.verify_user_code(typed, IP)
    for _ in range(17):  # maxFailuresPerIP defaults to 20
        with pytest.raises(DeviceVerificationError):
            device.verify_user_code("ZZZZ-ZZZZ", IP)
    # Over the limit even the right code is refused from this address...
    with pytest.raises(ThrottledError):
        device.verify_user_code(started["user_code"], IP)
    # ...but not from another one.
    assert device.verify_user_code(started["user_code"], "203.0.113.1").client_id == "kubectl"


async def test_a_decided_request_cannot_be_entered_or_completed_again(
    device_world: World,
) -> None:
    started = _start(device_world)
    query = await _browser_leg(device_world, started["user_code"])
    device_world.provider.device.complete(query)
    with pytest.raises(DeviceVerificationError):
        device_world.provider.device.verify_user_code(started["user_code"], IP)
    with pytest.raises(DeviceVerificationError):
        device_world.provider.device.complete(query)


async def test_a_login_not_started_by_the_device_page_cannot_approve_it(
    device_world: World,
) -> None:
    """An attacker who knows a victim's user code runs their own /auth with the device
    callback and the user code as state: without the request's PKCE verifier the code is
    refused and the request stays pending."""
    started = _start(device_world)
    flow = device_world.provider.authorization
    request = device_world.provider.device.verify_user_code(started["user_code"], IP)
    params = device_world.provider.device.authorize_params(request)
    params["code_challenge"] = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"  # the attacker's
    auth = flow.parse(params, browser_binding="attacker")
    connector = await flow.password_connector(auth, "mock")
    logged_in = await flow.password_login(auth, connector, USERNAME, PASSWORD, IP)
    query = dict(parse_qsl(urlsplit(flow.finish(logged_in)).query))
    with pytest.raises(DeviceVerificationError, match="does not belong"):
        device_world.provider.device.complete(query)
    assert (await _refused(device_world, started["device_code"])).error == ("authorization_pending")


def test_the_device_callback_is_not_a_redirect_uri_without_the_device_grant(
    world: World,
) -> None:
    with pytest.raises(AuthorizeError, match="not registered"):
        world.provider.authorization.parse(
            {
                "client_id": "kubectl",
                "redirect_uri": CALLBACK,
                "response_type": "code",
                "scope": "openid",
                "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
                "code_challenge_method": "S256",
            },
            browser_binding="b",
        )
