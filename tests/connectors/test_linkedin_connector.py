"""The ``linkedin`` connector against the LinkedIn stand-in (tests/support/linkedin_api.py),
reached through the connector's test-only ``endpoints`` argument: login (profile and primary
email), refresh as Dex does it (the profile re-read with the stored access token) and with
programmatic refresh tokens, a revoked app, LinkedIn's throttle and 5xx answers.

Nothing here is paginated: ``/v2/me`` and the ``emailAddress`` primary-contact query each answer
one member, and LinkedIn has no groups to list (the connector never sets any)."""

from __future__ import annotations

import json
import logging
import secrets
import socket
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from portcullis.config.load import parse_config
from portcullis.connectors.base import ConnectorEnv, ConnectorError, Scopes
from portcullis.connectors.linkedin import (
    CONNECTOR_TYPE,
    LinkedInConfig,
    LinkedInConnector,
    LinkedInEndpoints,
)
from portcullis.connectors.oauth2_common import UpstreamError
from portcullis.connectors.registry import CONNECTOR_TYPES
from portcullis.issuer import check_connectors, connector_models
from portcullis.storage.models import Identity
from pydantic import ValidationError

from tests.support.connector_login import browser_login
from tests.support.linkedin_api import (
    ACCESS_TOKEN_LIFETIME_S,
    CALLBACK,
    CLIENT_ID,
    CLIENT_SECRET,
    LinkedInAPI,
    linkedin_browser,
)

pytestmark = pytest.mark.anyio

OFFLINE = Scopes(offline_access=True, groups=True)
CORPUS = Path(__file__).parents[1] / "unit" / "config" / "fixtures" / "dex"


@pytest.fixture
def linkedin(linkedin_api: LinkedInAPI) -> Any:
    """The session's stand-in with its per-test knobs back at LinkedIn's defaults."""
    yield linkedin_api
    linkedin_api.programmatic_refresh = False
    linkedin_api.access_token_lifetime = ACCESS_TOKEN_LIFETIME_S
    linkedin_api.throttle_next = False
    linkedin_api.fail_next = None


def make(api: LinkedInAPI, env: ConnectorEnv, **overrides: Any) -> LinkedInConnector:
    raw: dict[str, Any] = {
        "clientID": CLIENT_ID,
        "clientSecret": CLIENT_SECRET,
        "redirectURI": CALLBACK,
    }
    raw.update(overrides)
    config = CONNECTOR_TYPE.config_model.model_validate(raw)
    assert isinstance(config, LinkedInConfig)
    endpoints = LinkedInEndpoints(web=api.base_url, api=f"{api.base_url}/v2")
    return LinkedInConnector("linkedin", "LinkedIn", "linkedin", config, env, endpoints)


def new_member(api: LinkedInAPI, first: str = "Ada", last: str = "Lovelace") -> str:
    login = f"member{secrets.token_hex(4)}"
    api.add_member(login, first, last)
    return login


async def login(connector: LinkedInConnector, member: str, scopes: Scopes = OFFLINE) -> Identity:
    return await browser_login(
        connector, lambda url: linkedin_browser(url, member), scopes, CALLBACK
    )


# -- config ------------------------------------------------------------------------------------


def test_registered_under_dex_name() -> None:
    assert CONNECTOR_TYPES["linkedin"] is CONNECTOR_TYPE


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"clientId": "x"}, "clientId"),
        ({"redirectURI": "callback"}, "redirectURI"),
        ({"scopes": ["openid"]}, "scopes"),
        ({"clientID": ""}, "clientID"),
    ],
)
def test_config_refusals_name_the_key(overrides: dict[str, Any], message: str) -> None:
    raw = {"clientID": "id", "clientSecret": "s", "redirectURI": CALLBACK, **overrides}
    with pytest.raises(ValidationError, match=message):
        CONNECTOR_TYPE.config_model.model_validate(raw)


def test_opening_touches_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (CORPUS / "linkedin.yaml").read_text()
    config = parse_config(text, environ={}, connector_models=connector_models())
    attempts: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(repr(args))
        raise OSError("network I/O while opening connectors")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    check_connectors(config, fips_mode=False)
    assert attempts == []
    assert [c.type for c in config.connectors] == ["linkedin"]


# -- login -------------------------------------------------------------------------------------


async def test_login_reads_profile_and_primary_email(
    linkedin: LinkedInAPI, env: ConnectorEnv
) -> None:
    member = new_member(linkedin, "Grace", "Hopper")
    connector = make(linkedin, env)
    start = await connector.login_url(OFFLINE, CALLBACK, "st")
    assert start.url.startswith(f"{linkedin.base_url}/oauth/v2/authorization?")
    assert parse_qs(urlsplit(start.url).query)["scope"] == ["r_liteprofile r_emailaddress"]
    linkedin.requests.clear()
    identity = await login(connector, member)
    assert identity.user_id == linkedin.members[member].id
    assert identity.username == "Grace Hopper"
    assert identity.email == f"{member}@example.com"
    assert identity.email_verified is True
    assert identity.groups == ()  # LinkedIn has no groups, even when the client asks for them
    assert linkedin.requests == [
        "/v2/me",
        "/v2/emailAddress?q=members&projection=(elements*(handle~))",
    ]
    # Dex's connector data: the access token, here with its expiry (60 days).
    assert set(json.loads(identity.connector_data)) == {"accessToken", "expiry"}
    plain = await login(connector, member, Scopes())
    assert plain.connector_data == b""
    with pytest.raises(ConnectorError, match="redirectURI"):
        await connector.login_url(OFFLINE, "http://elsewhere/cb", "st")


async def test_name_falls_back_to_the_email(linkedin: LinkedInAPI, env: ConnectorEnv) -> None:
    member = new_member(linkedin, "", "")
    identity = await login(make(linkedin, env), member, Scopes())
    assert identity.username == f"{member}@example.com"


async def test_refused_code_client_and_cancelled_login(
    linkedin: LinkedInAPI, env: ConnectorEnv
) -> None:
    connector = make(linkedin, env)
    with pytest.raises(UpstreamError, match=r"invalid_request.*authorization code expired"):
        await connector.handle_callback(OFFLINE, {"code": "AQTexpired"}, b"")
    with pytest.raises(UpstreamError, match="user_cancelled_authorize"):
        await login(connector, "nobody-signed-in")
    member = new_member(linkedin)
    with pytest.raises(UpstreamError, match="invalid_client"):
        await login(make(linkedin, env, clientSecret="wrong"), member)
    assert {"grant_type": "authorization_code"} in linkedin.token_forms


# -- refresh -----------------------------------------------------------------------------------


async def test_refresh_rereads_the_profile_with_the_stored_token(
    linkedin: LinkedInAPI, env: ConnectorEnv
) -> None:
    """Dex's refresh: no token call, the profile and email read again (LinkedIn issues no
    refresh token to ordinary apps)."""
    member = new_member(linkedin, "Ada", "Lovelace")
    connector = make(linkedin, env)
    identity = await login(connector, member)
    linkedin.members[member].last_name = "King"
    linkedin.members[member].email = f"{member}@example.org"
    forms = len(linkedin.token_forms)
    refreshed = await connector.refresh(OFFLINE, identity)
    assert (refreshed.username, refreshed.email) == ("Ada King", f"{member}@example.org")
    assert refreshed.connector_data == identity.connector_data
    assert len(linkedin.token_forms) == forms  # no upstream token call
    forged = Identity(user_id="someone-else", username="x", connector_data=identity.connector_data)
    with pytest.raises(ConnectorError, match="different member"):
        await connector.refresh(OFFLINE, forged)
    with pytest.raises(ConnectorError, match="cannot be refreshed"):
        await connector.refresh(OFFLINE, Identity(user_id="x", username="x"))


async def test_revoked_app_ends_the_session(
    linkedin: LinkedInAPI, env: ConnectorEnv, caplog: pytest.LogCaptureFixture
) -> None:
    member = new_member(linkedin)
    connector = make(linkedin, env)
    identity = await login(connector, member)
    token = json.loads(identity.connector_data)["accessToken"]
    linkedin.revoke_app(member)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConnectorError, match="no longer accepts this login"):
        await connector.refresh(OFFLINE, identity)
    assert "HTTP 401 (The token used in the request has been revoked by the user)" in caplog.text
    assert token not in caplog.text


async def test_programmatic_refresh_tokens_renew_an_expired_access_token(
    linkedin: LinkedInAPI, env: ConnectorEnv, caplog: pytest.LogCaptureFixture
) -> None:
    linkedin.programmatic_refresh = True
    linkedin.access_token_lifetime = 30  # inside the one-minute renewal margin: due at once
    member = new_member(linkedin)
    connector = make(linkedin, env)
    identity = await login(connector, member)
    data = json.loads(identity.connector_data)
    assert set(data) == {"accessToken", "refreshToken", "expiry"}
    caplog.set_level(logging.DEBUG)
    renewed = await connector.refresh(OFFLINE, identity)
    new_data = json.loads(renewed.connector_data)
    assert new_data["accessToken"] != data["accessToken"]
    assert new_data["refreshToken"] == data["refreshToken"]
    assert linkedin.token_forms[-1] == {"grant_type": "refresh_token"}
    linkedin.revoke_app(member)
    # A fresh connector: this one still holds the renewal's result for a minute (single flight).
    with pytest.raises(UpstreamError, match=r"invalid_request.*refresh token is invalid"):
        await make(linkedin, env).refresh(OFFLINE, renewed)
    for secret in (data["accessToken"], data["refreshToken"], new_data["accessToken"]):
        assert secret not in caplog.text


# -- throttling and upstream failures ----------------------------------------------------------


async def test_throttle_and_5xx_fail_the_login_clearly(
    linkedin: LinkedInAPI, env: ConnectorEnv, caplog: pytest.LogCaptureFixture
) -> None:
    member = new_member(linkedin)
    connector = make(linkedin, env)
    caplog.set_level(logging.WARNING)
    linkedin.throttle_next = True
    with pytest.raises(ConnectorError, match=r"rate limiting logins \(profile\); try again later"):
        await login(connector, member)
    assert "rate limited: HTTP 429" in caplog.text
    assert "APPLICATION DAY limit" in caplog.text
    linkedin.fail_next = ("/v2/emailAddress", 500)
    with pytest.raises(ConnectorError, match=r"failed \(email address: HTTP 500\)"):
        await login(connector, member)
    assert "answered HTTP 500" in caplog.text
