"""The ``gitea`` connector against the Gitea stand-in (tests/support/gitea_api.py), reached
through its documented ``baseURL`` key: login, org/team restriction, teams across pages,
refresh with expiring tokens, and error and rate-limit answers."""

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
from portcullis.connectors.gitea import CONNECTOR_TYPE, GiteaConnector
from portcullis.connectors.oauth2_common import UpstreamError
from portcullis.connectors.registry import CONNECTOR_TYPES
from portcullis.issuer import check_connectors, connector_models
from portcullis.storage.models import Identity
from pydantic import ValidationError

from tests.support.connector_login import browser_login
from tests.support.gitea_api import CALLBACK, CLIENT_ID, CLIENT_SECRET, GiteaAPI, gitea_browser

pytestmark = pytest.mark.anyio

OFFLINE = Scopes(offline_access=True, groups=True)
CORPUS = Path(__file__).parents[1] / "unit" / "config" / "fixtures" / "dex"


def make(api: GiteaAPI, env: ConnectorEnv, **overrides: Any) -> GiteaConnector:
    raw: dict[str, Any] = {
        "baseURL": api.base_url,
        "clientID": CLIENT_ID,
        "clientSecret": CLIENT_SECRET,
        "redirectURI": CALLBACK,
    }
    raw.update(overrides)
    config = CONNECTOR_TYPE.config_model.model_validate(raw)
    connector = CONNECTOR_TYPE.open("gitea", "Gitea", "gitea", config, env)
    assert isinstance(connector, GiteaConnector)
    return connector


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def new_user(api: GiteaAPI, full_name: str = "") -> str:
    login = unique("user")
    api.add_user(login, full_name)
    return login


async def login(connector: GiteaConnector, user: str, scopes: Scopes = OFFLINE) -> Identity:
    return await browser_login(connector, lambda url: gitea_browser(url, user), scopes, CALLBACK)


def test_registered_under_dex_name() -> None:
    assert CONNECTOR_TYPES["gitea"] is CONNECTOR_TYPE


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"org": "a"}, "org"),
        ({"orgs": [{"name": ""}]}, "orgs.0.name"),
        ({"baseURL": "gitea.example.com"}, "baseURL must be an absolute"),
        ({"insecureCA": True}, "insecureCA"),
    ],
)
def test_config_refusals_name_the_key(overrides: dict[str, Any], message: str) -> None:
    raw = {"clientID": "id", "clientSecret": "s", "redirectURI": CALLBACK, **overrides}
    with pytest.raises(ValidationError, match=message):
        CONNECTOR_TYPE.config_model.model_validate(raw)


def test_opening_touches_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (CORPUS / "gitea-orgs.yaml").read_text()
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
    assert [c.type for c in config.connectors] == ["gitea"]


async def test_login_and_all_groups_across_pages(gitea_api: GiteaAPI, env: ConnectorEnv) -> None:
    user = new_user(gitea_api, "Ada")
    org = unique("org")
    teams = [f"team-{i:03d}" for i in range(120)]
    for team in teams:
        gitea_api.add_team(org, team, user)
    connector = make(gitea_api, env, loadAllGroups=True)
    start = await connector.login_url(OFFLINE, CALLBACK, "st")
    assert start.url.startswith(f"{gitea_api.base_url}/login/oauth/authorize?")
    assert "scope" not in parse_qs(urlsplit(start.url).query)
    gitea_api.requests.clear()
    identity = await login(connector, user)
    assert identity.user_id == str(gitea_api.users[user].id)
    assert identity.username == "Ada"
    assert identity.preferred_username == user
    assert identity.email == f"{user}@example.org"
    assert identity.groups == (org, *(f"{org}:{t}" for t in teams))
    assert gitea_api.requests.count("/api/v1/user/teams") == 3  # 50 + 50 + 20 via Link next
    nameless = new_user(gitea_api)
    assert (await login(connector, nameless, Scopes())).username == f"{nameless}@example.org"
    assert set(json.loads(identity.connector_data)) == {"accessToken", "refreshToken", "expiry"}
    by_login = await login(make(gitea_api, env, useLoginAsID=True), user, Scopes())
    assert by_login.user_id == user
    assert by_login.username == "Ada"
    assert by_login.groups == ()
    assert by_login.connector_data == b""


async def test_orgs_and_teams_restrict_login(gitea_api: GiteaAPI, env: ConnectorEnv) -> None:
    org, other = unique("acme"), unique("other")
    member, wrong_team, outsider = new_user(gitea_api), new_user(gitea_api), new_user(gitea_api)
    gitea_api.add_team(org, "ops", member)
    gitea_api.add_team(org, "docs", member, wrong_team)
    gitea_api.add_team(other, "ops", member, outsider)
    connector = make(gitea_api, env, orgs=[{"name": org, "teams": ["ops"]}])
    assert (await login(connector, member)).groups == (org, f"{org}:ops")
    with pytest.raises(ConnectorError, match="not a member of the Gitea organizations"):
        await login(connector, wrong_team)  # in the org, not in a listed team (Dex admits)
    whole_org = make(gitea_api, env, orgs=[{"name": org}])
    assert (await login(whole_org, wrong_team)).groups == (org,)
    with pytest.raises(ConnectorError, match="not a member"):
        await login(whole_org, outsider)


async def test_refresh_renews_expired_tokens_and_rechecks(
    gitea_api: GiteaAPI, env: ConnectorEnv, caplog: pytest.LogCaptureFixture
) -> None:
    org = unique("acme")
    user = new_user(gitea_api)
    team = gitea_api.add_team(org, "ops", user)
    connector = make(gitea_api, env, orgs=[{"name": org}])
    identity = await login(connector, user)
    data = json.loads(identity.connector_data)
    # Within its hour the access token is used as is.
    same = await connector.refresh(OFFLINE, identity)
    assert same.connector_data == identity.connector_data
    gitea_api.expire_access_tokens(user)
    expired = replace(
        identity,
        connector_data=json.dumps({**data, "expiry": "2000-01-01T00:00:00Z"}).encode(),
    )
    caplog.set_level(logging.DEBUG)
    renewed = await connector.refresh(OFFLINE, expired)
    new_data = json.loads(renewed.connector_data)
    assert new_data["refreshToken"] != data["refreshToken"]
    team.members.discard(user)
    with pytest.raises(ConnectorError, match="not a member"):
        await connector.refresh(OFFLINE, renewed)
    gitea_api.revoke_grant(user)
    stale = replace(
        renewed,
        connector_data=json.dumps({**new_data, "expiry": "2000-01-01T00:00:00Z"}).encode(),
    )
    with pytest.raises(UpstreamError, match="invalid_grant"):
        await make(gitea_api, env).refresh(OFFLINE, stale)
    for secret in (data["refreshToken"], new_data["refreshToken"], new_data["accessToken"]):
        assert secret not in caplog.text


async def test_revoked_token_rate_limit_and_5xx(
    gitea_api: GiteaAPI, env: ConnectorEnv, caplog: pytest.LogCaptureFixture
) -> None:
    user = new_user(gitea_api)
    gitea_api.add_team(unique("org"), "t", user)
    connector = make(gitea_api, env, loadAllGroups=True)
    identity = await login(connector, user)
    caplog.set_level(logging.WARNING)
    gitea_api.revoke_grant(user)
    with pytest.raises(ConnectorError, match="no longer accepts this login"):
        await connector.refresh(OFFLINE, identity)
    assert "HTTP 401 (invalid username, password or token)" in caplog.text
    gitea_api.throttle_retry_after = 9
    with pytest.raises(ConnectorError, match=r"rate limiting logins .*try again in 9 seconds"):
        await login(connector, user)
    gitea_api.fail_next = ("/user/teams", 500)
    with pytest.raises(ConnectorError, match=r"failed \(user teams: HTTP 500\)"):
        await login(connector, user)
    assert "answered HTTP 500" in caplog.text
    with pytest.raises(UpstreamError, match="unauthorized_client"):
        await login(make(gitea_api, env, clientSecret="wrong"), user)
    forged = Identity(user_id="1", username="x", connector_data=b'{"accessToken":"x"}')
    with pytest.raises(ConnectorError, match="no longer accepts"):
        await connector.refresh(OFFLINE, forged)
