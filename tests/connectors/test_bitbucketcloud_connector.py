"""The ``bitbucket-cloud`` connector against the Bitbucket Cloud stand-in
(tests/support/bitbucket_api.py), reached through the connector's test-only ``endpoints``
argument: login, workspaces across pages, teams restriction, workspace permissions, refresh of
expiring tokens, and error and rate-limit answers."""

from __future__ import annotations

import json
import logging
import secrets
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from portcullis.config.load import parse_config
from portcullis.connectors.base import ConnectorEnv, ConnectorError, Scopes
from portcullis.connectors.bitbucketcloud import (
    CONNECTOR_TYPE,
    BitbucketCloudConfig,
    BitbucketCloudConnector,
    BitbucketEndpoints,
)
from portcullis.connectors.oauth2_common import UpstreamError
from portcullis.connectors.registry import CONNECTOR_TYPES
from portcullis.issuer import check_connectors, connector_models
from portcullis.storage.models import Identity
from pydantic import ValidationError

from tests.support.bitbucket_api import (
    CALLBACK,
    CLIENT_ID,
    CLIENT_SECRET,
    BitbucketAPI,
    bitbucket_browser,
)
from tests.support.connector_login import browser_login

pytestmark = pytest.mark.anyio

OFFLINE = Scopes(offline_access=True, groups=True)
CORPUS = Path(__file__).parents[1] / "unit" / "config" / "fixtures" / "dex"


def make(api: BitbucketAPI, env: ConnectorEnv, **overrides: Any) -> BitbucketCloudConnector:
    raw: dict[str, Any] = {
        "clientID": CLIENT_ID,
        "clientSecret": CLIENT_SECRET,
        "redirectURI": CALLBACK,
    }
    raw.update(overrides)
    config = CONNECTOR_TYPE.config_model.model_validate(raw)
    assert isinstance(config, BitbucketCloudConfig)
    endpoints = BitbucketEndpoints(web=api.base_url, api=f"{api.base_url}/2.0")
    return BitbucketCloudConnector("bb", "Bitbucket", "bitbucket-cloud", config, env, endpoints)


def new_user(api: BitbucketAPI, **kwargs: Any) -> str:
    username = f"user{secrets.token_hex(4)}"
    api.add_user(username, **kwargs)
    return username


async def login(
    connector: BitbucketCloudConnector, user: str, scopes: Scopes = OFFLINE
) -> Identity:
    return await browser_login(
        connector, lambda url: bitbucket_browser(url, user), scopes, CALLBACK
    )


def test_registered_under_dex_name() -> None:
    assert CONNECTOR_TYPES["bitbucket-cloud"] is CONNECTOR_TYPE


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"team": ["a"]}, "team"),
        ({"redirectURI": "callback"}, "redirectURI"),
        ({"getWorkspacePermissions": "sometimes"}, "getWorkspacePermissions"),
    ],
)
def test_config_refusals_name_the_key(overrides: dict[str, Any], message: str) -> None:
    raw = {"clientID": "id", "clientSecret": "s", "redirectURI": CALLBACK, **overrides}
    with pytest.raises(ValidationError, match=message):
        CONNECTOR_TYPE.config_model.model_validate(raw)


def test_opening_touches_no_network(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    text = (CORPUS / "bitbucket-cloud-teams.yaml").read_text()
    config = parse_config(text, environ={}, connector_models=connector_models())
    attempts: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(repr(args))
        raise OSError("network I/O while opening connectors")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    caplog.set_level(logging.WARNING)
    check_connectors(config, fips_mode=False)
    assert attempts == []
    assert [c.type for c in config.connectors] == ["bitbucket-cloud"]
    assert "includeTeamGroups is deprecated and has no effect" in caplog.text


async def test_login_workspaces_across_pages(
    bitbucket_api: BitbucketAPI, env: ConnectorEnv
) -> None:
    user = new_user(
        bitbucket_api,
        emails=[("old@example.com", False, True), ("me@example.com", True, True)],
    )
    slugs = sorted(f"ws-{secrets.token_hex(3)}-{i:03d}" for i in range(230))
    bitbucket_api.users[user].workspaces = dict.fromkeys(slugs, "member")
    connector = make(bitbucket_api, env)
    start = await connector.login_url(OFFLINE, CALLBACK, "st")
    assert start.url.startswith(f"{bitbucket_api.base_url}/site/oauth2/authorize?")
    assert parse_qs(urlsplit(start.url).query)["scope"] == ["account email"]
    bitbucket_api.requests.clear()
    identity = await login(connector, user)
    assert identity.user_id == bitbucket_api.users[user].uuid
    assert identity.username == user
    assert identity.email == "me@example.com"
    assert identity.email_verified is True
    assert identity.groups == tuple(slugs)
    assert bitbucket_api.requests.count("/2.0/user/workspaces") == 3  # 100 + 100 + 30 via next
    assert set(json.loads(identity.connector_data)) == {"accessToken", "refreshToken", "expiry"}
    plain = await login(connector, user, Scopes())
    assert plain.groups == ()
    assert plain.connector_data == b""


async def test_no_confirmed_primary_email_is_refused(
    bitbucket_api: BitbucketAPI, env: ConnectorEnv
) -> None:
    user = new_user(bitbucket_api, emails=[("x@example.com", True, False)])
    with pytest.raises(ConnectorError, match="no confirmed primary email"):
        await login(make(bitbucket_api, env), user)


async def test_teams_restriction_and_permissions(
    bitbucket_api: BitbucketAPI, env: ConnectorEnv
) -> None:
    member, outsider = new_user(bitbucket_api), new_user(bitbucket_api)
    bitbucket_api.users[member].workspaces = {"platform": "owner", "hobby": "collaborator"}
    bitbucket_api.users[outsider].workspaces = {"hobby": "member"}
    restricted = make(bitbucket_api, env, teams=["platform"])
    assert (await login(restricted, member)).groups == ("platform",)
    with pytest.raises(ConnectorError, match="not a member of the Bitbucket workspaces required"):
        await login(restricted, outsider)
    with_permissions = make(bitbucket_api, env, getWorkspacePermissions=True)
    assert (await login(with_permissions, member)).groups == (
        "hobby",
        "platform",
        "hobby:collaborator",
        "platform:owner",
    )


async def test_refresh_renews_expired_tokens_and_rechecks(
    bitbucket_api: BitbucketAPI, env: ConnectorEnv, caplog: pytest.LogCaptureFixture
) -> None:
    user = new_user(bitbucket_api)
    bitbucket_api.users[user].workspaces = {"platform": "member", "ops": "member"}
    connector = make(bitbucket_api, env, teams=["platform", "ops"])
    identity = await login(connector, user)
    data = json.loads(identity.connector_data)
    bitbucket_api.expire_access_tokens(user)
    with pytest.raises(ConnectorError, match="no longer accepts this login"):
        await connector.refresh(OFFLINE, identity)  # stated expiry not reached, token dead
    expired = replace(
        identity, connector_data=json.dumps({**data, "expiry": "2000-01-01T00:00:00Z"}).encode()
    )
    del bitbucket_api.users[user].workspaces["ops"]
    caplog.set_level(logging.DEBUG)
    renewed = await connector.refresh(OFFLINE, expired)
    assert renewed.groups == ("platform",)
    new_data = json.loads(renewed.connector_data)
    assert new_data["accessToken"] != data["accessToken"]
    bitbucket_api.users[user].workspaces.clear()
    with pytest.raises(ConnectorError, match="not a member"):
        await connector.refresh(OFFLINE, renewed)
    bitbucket_api.revoke_grant(user)
    stale = replace(
        renewed,
        connector_data=json.dumps({**new_data, "expiry": "2000-01-01T00:00:00Z"}).encode(),
    )
    with pytest.raises(UpstreamError, match="invalid_grant"):
        await make(bitbucket_api, env).refresh(OFFLINE, stale)
    for secret in (data["refreshToken"], new_data["accessToken"]):
        assert secret not in caplog.text


async def test_rate_limit_5xx_and_refusals(
    bitbucket_api: BitbucketAPI, env: ConnectorEnv, caplog: pytest.LogCaptureFixture
) -> None:
    user = new_user(bitbucket_api)
    bitbucket_api.users[user].workspaces = {"platform": "member"}
    connector = make(bitbucket_api, env, getWorkspacePermissions=True)
    caplog.set_level(logging.WARNING)
    bitbucket_api.throttle_retry_after = 42
    with pytest.raises(ConnectorError, match=r"rate limiting logins .*try again in 42 seconds"):
        await login(connector, user)
    assert "Rate limit for this resource has been exceeded" in caplog.text
    bitbucket_api.fail_next = ("/user/workspaces/platform/permission", 502)
    with pytest.raises(ConnectorError, match=r"failed \(workspace permission: HTTP 502\)"):
        await login(connector, user)
    assert "answered HTTP 502" in caplog.text
    with pytest.raises(UpstreamError, match="invalid_grant"):
        await connector.handle_callback(OFFLINE, {"code": "nope"}, b"")
    with pytest.raises(UpstreamError, match="invalid_client"):
        await login(make(bitbucket_api, env, clientSecret="wrong"), user)
    with pytest.raises(UpstreamError, match="access_denied"):
        await connector.handle_callback(OFFLINE, {"error": "access_denied"}, b"")
    identity = await login(connector, user)
    forged = Identity(user_id="{other}", username="x", connector_data=identity.connector_data)
    with pytest.raises(ConnectorError, match="different user"):
        await connector.refresh(OFFLINE, forged)
