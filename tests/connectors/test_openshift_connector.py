"""The ``openshift`` connector against the OpenShift stand-in (tests/support/openshift_api.py):
metadata discovery at the first login (never at start), login, groups and the groups
restriction, refresh with the stored token, and error and rate-limit answers."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from portcullis.clock import SystemClock
from portcullis.config.load import parse_config
from portcullis.connectors.base import ConnectorEnv, ConnectorError, Scopes
from portcullis.connectors.oauth2_common import UpstreamError
from portcullis.connectors.openshift import CONNECTOR_TYPE, OpenShiftConnector
from portcullis.connectors.registry import CONNECTOR_TYPES
from portcullis.issuer import check_connectors, connector_models
from portcullis.storage.memory import MemoryStorage
from portcullis.storage.models import Identity
from pydantic import ValidationError

from tests.support.connector_login import browser_login
from tests.support.openshift_api import (
    CALLBACK,
    CLIENT_ID,
    CLIENT_SECRET,
    OpenShiftAPI,
    openshift_browser,
)

pytestmark = pytest.mark.anyio

OFFLINE = Scopes(offline_access=True, groups=True)
CORPUS = Path(__file__).parents[1] / "unit" / "config" / "fixtures" / "dex"


def env(fips_mode: bool = False) -> ConnectorEnv:
    return ConnectorEnv(
        storage=MemoryStorage(),
        clock=SystemClock(),
        issuer="http://127.0.0.1:5556/dex",
        fips_mode=fips_mode,
    )


def make(api: OpenShiftAPI, **overrides: Any) -> OpenShiftConnector:
    raw: dict[str, Any] = {
        "issuer": api.base_url,
        "clientID": CLIENT_ID,
        "clientSecret": CLIENT_SECRET,
        "redirectURI": CALLBACK,
    }
    raw.update(overrides)
    config = CONNECTOR_TYPE.config_model.model_validate(raw)
    connector = CONNECTOR_TYPE.open("openshift", "OpenShift", "openshift", config, env())
    assert isinstance(connector, OpenShiftConnector)
    return connector


def new_user(api: OpenShiftAPI, *groups: str) -> str:
    name = f"user-{secrets.token_hex(4)}"
    api.add_user(name, *groups)
    return name


async def login(connector: OpenShiftConnector, user: str, scopes: Scopes = OFFLINE) -> Identity:
    return await browser_login(
        connector, lambda url: openshift_browser(url, user), scopes, CALLBACK
    )


def test_registered_under_dex_name() -> None:
    assert CONNECTOR_TYPES["openshift"] is CONNECTOR_TYPE


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"issuer": "api.example.com:6443"}, "issuer must be an absolute"),
        ({"redirectURI": "/callback"}, "redirectURI must be an absolute"),
        ({"rootCA": "/nonexistent/ca.pem"}, "no such file"),
        ({"groups": [""]}, "group names must not be empty"),
        ({"insecureSkipVerify": True}, "insecureSkipVerify"),
    ],
)
def test_config_refusals_name_the_key(overrides: dict[str, Any], message: str) -> None:
    raw = {"issuer": "https://api.example.com:6443", "clientID": "c", "clientSecret": "s"}
    raw = {**raw, "redirectURI": CALLBACK, **overrides}
    with pytest.raises(ValidationError, match=message):
        CONNECTOR_TYPE.config_model.model_validate(raw)


def test_insecure_ca_refused_in_fips_mode() -> None:
    raw = {
        "issuer": "https://api.example.com:6443",
        "clientID": "c",
        "clientSecret": "s",
        "redirectURI": CALLBACK,
        "insecureCA": True,
    }
    config = CONNECTOR_TYPE.config_model.model_validate(raw)
    with pytest.raises(ValueError, match="insecureCA: refused in FIPS mode"):
        CONNECTOR_TYPE.open("o", "O", "openshift", config, env(fips_mode=True))
    assert isinstance(CONNECTOR_TYPE.open("o", "O", "openshift", config, env()), OpenShiftConnector)


def test_opening_touches_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (CORPUS / "openshift-groups.yaml").read_text()
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
    assert [c.type for c in config.connectors] == ["openshift"]


async def test_login_identity_and_groups(openshift_api: OpenShiftAPI) -> None:
    user = new_user(openshift_api, "developers", "system:authenticated:oauth", "developers")
    connector = make(openshift_api)
    openshift_api.requests.clear()
    start = await connector.login_url(OFFLINE, CALLBACK, "st")
    assert openshift_api.requests == ["/.well-known/oauth-authorization-server"]
    query = parse_qs(urlsplit(start.url).query)
    assert start.url.startswith(f"{openshift_api.base_url}/oauth/authorize?")
    assert query["scope"] == ["user:info"]
    assert query["client_id"] == [CLIENT_ID]
    identity = await login(connector, user)
    assert identity.user_id == openshift_api.users[user].uid
    assert identity.username == identity.preferred_username == user
    assert identity.groups == ("developers", "system:authenticated:oauth")
    assert set(json.loads(identity.connector_data)) == {"accessToken", "expiry"}
    assert openshift_api.requests.count("/.well-known/oauth-authorization-server") == 1
    online = await login(connector, user, Scopes())
    assert online.connector_data == b""
    # A callback handled by a worker that never built a login URL discovers on its own.
    fresh = make(openshift_api)
    state = "s2"
    params = await asyncio.to_thread(
        openshift_browser, (await connector.login_url(OFFLINE, CALLBACK, state)).url, user
    )
    assert (await fresh.handle_callback(OFFLINE, params, b"")).user_id == identity.user_id
    with pytest.raises(ConnectorError, match="does not match this connector's redirectURI"):
        await connector.login_url(OFFLINE, "http://evil.example/callback", "st")


async def test_groups_restrict_login_and_refresh(openshift_api: OpenShiftAPI) -> None:
    member = new_user(openshift_api, "admins", "viewers")
    outsider = new_user(openshift_api, "viewers")
    connector = make(openshift_api, groups=["admins", "ops"])
    identity = await login(connector, member)
    assert identity.groups == ("admins", "viewers")  # Dex passes every group on
    with pytest.raises(ConnectorError, match="not a member of the OpenShift groups"):
        await login(connector, outsider)
    refreshed = await connector.refresh(OFFLINE, identity)
    assert refreshed.user_id == identity.user_id
    assert refreshed.connector_data == identity.connector_data
    openshift_api.users[member].groups = ["viewers"]
    with pytest.raises(ConnectorError, match="not a member"):
        await connector.refresh(OFFLINE, refreshed)


async def test_revoked_token_deleted_user_and_replaced_user(
    openshift_api: OpenShiftAPI, caplog: pytest.LogCaptureFixture
) -> None:
    user = new_user(openshift_api, "g")
    connector = make(openshift_api)
    identity = await login(connector, user)
    caplog.set_level(logging.DEBUG)
    openshift_api.users[user].groups = ["g", "h"]
    assert (await connector.refresh(OFFLINE, identity)).groups == ("g", "h")
    openshift_api.users[user].uid = "00000000-0000-0000-0000-000000000000"  # re-created
    with pytest.raises(ConnectorError, match="refreshed a different user"):
        await connector.refresh(OFFLINE, identity)
    openshift_api.revoke_tokens(user)
    with pytest.raises(ConnectorError, match="no longer accepts this login"):
        await connector.refresh(OFFLINE, identity)
    assert "HTTP 401 (Unauthorized)" in caplog.text
    token = json.loads(identity.connector_data)["accessToken"]
    assert token not in caplog.text
    assert CLIENT_SECRET not in caplog.text


async def test_refused_client_denied_scope_rate_limit_and_5xx(
    openshift_api: OpenShiftAPI, caplog: pytest.LogCaptureFixture
) -> None:
    user = new_user(openshift_api)
    connector = make(openshift_api)
    caplog.set_level(logging.WARNING)
    with pytest.raises(UpstreamError, match="unauthorized_client"):
        await login(make(openshift_api, clientSecret="wrong"), user)
    with pytest.raises(UpstreamError, match="invalid_scope"):
        await connector.handle_callback(OFFLINE, {"error": "invalid_scope", "state": "x"}, b"")
    with pytest.raises(UpstreamError, match="invalid_grant"):
        await connector.handle_callback(OFFLINE, {"code": "forged", "state": "x"}, b"")
    openshift_api.throttle_retry_after = 5
    with pytest.raises(ConnectorError, match=r"rate limiting logins .*try again in 5 seconds"):
        await make(openshift_api).login_url(OFFLINE, CALLBACK, "st")
    identity = await login(connector, user)
    openshift_api.fail_next = ("/apis/user.openshift.io", 503)
    with pytest.raises(ConnectorError, match=r"failed \(user: HTTP 503\)"):
        await connector.refresh(OFFLINE, identity)
    openshift_api.fail_next = ("/.well-known", 500)
    with pytest.raises(ConnectorError, match=r"failed \(OAuth server metadata: HTTP 500\)"):
        await make(openshift_api).login_url(OFFLINE, CALLBACK, "st")
    assert "answered HTTP 500" in caplog.text
