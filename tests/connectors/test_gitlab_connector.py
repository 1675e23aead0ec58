"""The ``gitlab`` connector against the GitLab stand-in (tests/support/gitlab_api.py), reached
through its documented ``baseURL`` key: login, groups with inherited memberships across pages,
``groups`` restriction, refresh with rotating tokens, and GitLab's error and rate-limit answers."""

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
from portcullis.config.load import parse_config
from portcullis.connectors.base import ConnectorEnv, ConnectorError, Scopes
from portcullis.connectors.gitlab import CONNECTOR_TYPE, GitLabConnector
from portcullis.connectors.oauth2_common import UpstreamError
from portcullis.connectors.registry import CONNECTOR_TYPES
from portcullis.issuer import check_connectors, connector_models
from portcullis.storage.models import Identity
from pydantic import ValidationError

from tests.support.connector_login import browser_login
from tests.support.gitlab_api import CALLBACK, CLIENT_ID, CLIENT_SECRET, GitLabAPI, gitlab_browser

pytestmark = pytest.mark.anyio

OFFLINE = Scopes(offline_access=True, groups=True)
CORPUS = Path(__file__).parents[1] / "unit" / "config" / "fixtures" / "dex"


def make(api: GitLabAPI, env: ConnectorEnv, **overrides: Any) -> GitLabConnector:
    raw: dict[str, Any] = {
        "baseURL": api.base_url,
        "clientID": CLIENT_ID,
        "clientSecret": CLIENT_SECRET,
        "redirectURI": CALLBACK,
    }
    raw.update(overrides)
    config = CONNECTOR_TYPE.config_model.model_validate(raw)
    connector = CONNECTOR_TYPE.open("gitlab", "GitLab", "gitlab", config, env)
    assert isinstance(connector, GitLabConnector)
    return connector


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def new_user(api: GitLabAPI, **fields: Any) -> str:
    username = unique("user")
    api.add_user(username, **fields)
    return username


async def login(
    connector: GitLabConnector, api: GitLabAPI, user: str, scopes: Scopes = OFFLINE
) -> Identity:
    return await browser_login(
        connector, lambda url: gitlab_browser(api, url, user), scopes, CALLBACK
    )


# -- config ------------------------------------------------------------------------------------


def test_registered_under_dex_name() -> None:
    assert CONNECTOR_TYPES["gitlab"] is CONNECTOR_TYPE


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"group": ["a"]}, "group"),
        ({"baseURL": "gitlab.example.com"}, "baseURL must be an absolute"),
        ({"redirectURI": "/callback"}, "redirectURI"),
        ({"rootCAData": "bm90IGEgY2VydA=="}, "rootCAData is not a PEM"),
        ({"useLoginAsID": "maybe"}, "useLoginAsID"),
    ],
)
def test_config_refusals_name_the_key(overrides: dict[str, Any], message: str) -> None:
    raw = {"clientID": "id", "clientSecret": "s", "redirectURI": CALLBACK, **overrides}
    with pytest.raises(ValidationError, match=message):
        CONNECTOR_TYPE.config_model.model_validate(raw)


def test_base_url_defaults_to_gitlab_com() -> None:
    raw = {"clientID": "id", "clientSecret": "s", "redirectURI": CALLBACK}
    assert CONNECTOR_TYPE.config_model.model_validate(raw).base_url == "https://gitlab.com"  # type: ignore[attr-defined]


def test_opening_touches_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (CORPUS / "gitlab-groups.yaml").read_text()
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
    assert [c.type for c in config.connectors] == ["gitlab"]


# -- login -------------------------------------------------------------------------------------


async def test_login_url_scopes(gitlab_api: GitLabAPI, env: ConnectorEnv) -> None:
    connector = make(gitlab_api, env)
    start = await connector.login_url(Scopes(), CALLBACK, "st")
    assert start.url.startswith(f"{gitlab_api.base_url}/oauth/authorize?")
    query = parse_qs(urlsplit(start.url).query)
    assert query["scope"] == ["read_user"]
    assert query["state"] == ["st"]
    start = await connector.login_url(Scopes(groups=True), CALLBACK, "st")
    assert parse_qs(urlsplit(start.url).query)["scope"] == ["read_user openid"]
    restricted = make(gitlab_api, env, groups=["g"], inheritedGroups=True)
    start = await restricted.login_url(Scopes(), CALLBACK, "st")
    assert parse_qs(urlsplit(start.url).query)["scope"] == ["read_user openid read_api"]
    with pytest.raises(ConnectorError, match="redirectURI"):
        await connector.login_url(Scopes(), "http://elsewhere/cb", "st")


async def test_login_groups_inherited_and_permissions(
    gitlab_api: GitLabAPI, env: ConnectorEnv
) -> None:
    user = new_user(gitlab_api, name="Linus")
    top = gitlab_api.add_group(unique("top"))
    sub = gitlab_api.add_group("platform", parent=top)
    other = gitlab_api.add_group(unique("public"), public=True)  # visible, not a member
    gitlab_api.set_member(top, user, 30)
    gitlab_api.set_member(sub, user, 50)
    identity = await login(make(gitlab_api, env), gitlab_api, user)
    assert identity.user_id == str(gitlab_api.users[user].id)
    assert identity.username == "Linus"
    assert identity.preferred_username == user
    assert identity.email == f"{user}@example.com"
    assert identity.email_verified is True
    assert set(identity.groups) == {top.full_path, sub.full_path}
    assert other.full_path not in identity.groups
    assert set(json.loads(identity.connector_data)) == {"refreshToken"}
    with_roles = make(gitlab_api, env, getGroupsPermission=True, useLoginAsID=True)
    identity = await login(with_roles, gitlab_api, user)
    assert identity.user_id == user
    assert set(identity.groups) == {
        top.full_path,
        f"{top.full_path}:developer",
        sub.full_path,
        f"{sub.full_path}:owner",
    }
    no_groups = await login(make(gitlab_api, env), gitlab_api, user, Scopes())
    assert no_groups.groups == ()
    assert no_groups.connector_data == b""


async def test_inherited_groups_across_three_pages(
    gitlab_api: GitLabAPI, env: ConnectorEnv
) -> None:
    user = new_user(gitlab_api)
    prefix = unique("many")
    groups = [gitlab_api.add_group(f"{prefix}-{i:03d}") for i in range(230)]
    for group in groups:
        gitlab_api.set_member(group, user, 10)
    public = gitlab_api.add_group(unique("public"), public=True)
    gitlab_api.requests.clear()
    identity = await login(make(gitlab_api, env, inheritedGroups=True), gitlab_api, user)
    assert set(identity.groups) == {g.full_path for g in groups}
    assert public.full_path not in identity.groups  # visible, but not the user's
    assert gitlab_api.requests.count("/api/v4/groups") == 3  # 100 + 100 + 30, X-Next-Page


async def test_inherited_groups_roles_from_members_api(
    gitlab_api: GitLabAPI, env: ConnectorEnv
) -> None:
    user = new_user(gitlab_api)
    top = gitlab_api.add_group(unique("top"))
    sub = gitlab_api.add_group("child", parent=top)
    docs = gitlab_api.add_group(unique("docs"))
    gitlab_api.set_member(top, user, 40)
    gitlab_api.set_member(docs, user, 20)
    connector = make(gitlab_api, env, inheritedGroups=True, getGroupsPermission=True)
    identity = await login(connector, gitlab_api, user)
    assert set(identity.groups) == {
        top.full_path,
        f"{top.full_path}:maintainer",
        sub.full_path,
        f"{sub.full_path}:maintainer",  # a role on a group covers its subgroups
        docs.full_path,
        f"{docs.full_path}:reporter",  # not in userinfo: from members/all
    }
    # Without inheritedGroups, roles come from userinfo only (owner/maintainer/developer).
    plain = await login(make(gitlab_api, env, getGroupsPermission=True), gitlab_api, user)
    assert f"{docs.full_path}:reporter" not in plain.groups
    assert f"{sub.full_path}:maintainer" in plain.groups


async def test_required_groups_restrict_login_and_claims(
    gitlab_api: GitLabAPI, env: ConnectorEnv
) -> None:
    allowed, noise = gitlab_api.add_group(unique("ops")), gitlab_api.add_group(unique("misc"))
    member, outsider = new_user(gitlab_api), new_user(gitlab_api)
    gitlab_api.set_member(allowed, member, 40)
    gitlab_api.set_member(noise, member, 40)
    gitlab_api.set_member(noise, outsider, 40)
    connector = make(gitlab_api, env, groups=[allowed.full_path])
    identity = await login(connector, gitlab_api, member, Scopes(offline_access=True))
    assert identity.groups == (allowed.full_path,)
    with pytest.raises(ConnectorError, match="not a member of the GitLab groups required"):
        await login(connector, gitlab_api, outsider)


async def test_refused_code_client_and_error_redirect(
    gitlab_api: GitLabAPI, env: ConnectorEnv
) -> None:
    connector = make(gitlab_api, env)
    with pytest.raises(UpstreamError, match="invalid_grant"):
        await connector.handle_callback(OFFLINE, {"code": "0" * 64}, b"")
    with pytest.raises(UpstreamError, match="access_denied"):
        await connector.handle_callback(OFFLINE, {"error": "access_denied"}, b"")
    user = new_user(gitlab_api)
    with pytest.raises(UpstreamError, match="invalid_client"):
        await login(make(gitlab_api, env, clientSecret="wrong"), gitlab_api, user)


# -- refresh -----------------------------------------------------------------------------------


async def test_refresh_rotates_and_rechecks_groups(
    gitlab_api: GitLabAPI, env: ConnectorEnv
) -> None:
    user = new_user(gitlab_api, name="Ada")
    ops, dev = gitlab_api.add_group(unique("ops")), gitlab_api.add_group(unique("dev"))
    gitlab_api.set_member(ops, user, 30)
    gitlab_api.set_member(dev, user, 30)
    connector = make(gitlab_api, env, groups=[ops.full_path, dev.full_path])
    identity = await login(connector, gitlab_api, user)
    assert set(identity.groups) == {ops.full_path, dev.full_path}
    gitlab_api.set_member(dev, user, None)
    refreshed = await connector.refresh(OFFLINE, identity)
    assert refreshed.groups == (ops.full_path,)
    assert refreshed.connector_data != identity.connector_data  # GitLab rotated the token
    # The consumed refresh token is dead upstream; a replay inside the window is served from
    # the single-flight cache rather than being sent again.
    assert await connector.refresh(OFFLINE, identity) == refreshed
    gitlab_api.set_member(ops, user, None)
    with pytest.raises(ConnectorError, match="not a member of the GitLab groups required"):
        await connector.refresh(OFFLINE, refreshed)


async def test_refresh_after_revocation_fails(
    gitlab_api: GitLabAPI, env: ConnectorEnv, caplog: pytest.LogCaptureFixture
) -> None:
    user = new_user(gitlab_api)
    connector = make(gitlab_api, env)
    identity = await login(connector, gitlab_api, user)
    refresh_token = json.loads(identity.connector_data)["refreshToken"]
    gitlab_api.revoke_all(user)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(UpstreamError, match="invalid_grant"):
        await connector.refresh(OFFLINE, identity)
    assert refresh_token not in caplog.text


async def test_revoked_access_token_is_a_clear_error(
    gitlab_api: GitLabAPI, env: ConnectorEnv, caplog: pytest.LogCaptureFixture
) -> None:
    # A session whose upstream issued no refresh token keeps the access token (Dex's form).
    user = new_user(gitlab_api)
    connector = make(gitlab_api, env)
    identity = await login(connector, gitlab_api, user, Scopes(groups=True))
    token = next(t for t, g in gitlab_api.access_tokens.items() if g.user == user)
    stored = replace_data(identity, {"accessToken": token})
    gitlab_api.revoke_all(user)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConnectorError, match="no longer accepts this login"):
        await connector.refresh(OFFLINE, stored)
    assert "HTTP 401 (Token was revoked" in caplog.text
    assert token not in caplog.text


def replace_data(identity: Identity, data: dict[str, str]) -> Identity:
    from dataclasses import replace

    return replace(identity, connector_data=json.dumps(data).encode())


async def test_refresh_refuses_another_user(gitlab_api: GitLabAPI, env: ConnectorEnv) -> None:
    user = new_user(gitlab_api)
    connector = make(gitlab_api, env)
    identity = await login(connector, gitlab_api, user)
    forged = Identity(user_id="1", username="victim", connector_data=identity.connector_data)
    with pytest.raises(ConnectorError, match="different user"):
        await connector.refresh(OFFLINE, forged)


# -- rate limits and upstream failures ---------------------------------------------------------


async def test_rate_limit_with_retry_after(
    gitlab_api: GitLabAPI, env: ConnectorEnv, caplog: pytest.LogCaptureFixture
) -> None:
    user = new_user(gitlab_api)
    connector = make(gitlab_api, env)
    state = "st"
    start = await connector.login_url(OFFLINE, CALLBACK, state)
    params = await asyncio.to_thread(gitlab_browser, gitlab_api, start.url, user)
    gitlab_api.throttle_retry_after = 30
    caplog.set_level(logging.WARNING)
    with pytest.raises(ConnectorError, match=r"rate limiting logins .*try again in 30 seconds"):
        await connector.handle_callback(OFFLINE, params, b"")
    assert "rate limited: HTTP 429" in caplog.text


async def test_membership_5xx_fails_the_login(
    gitlab_api: GitLabAPI, env: ConnectorEnv, caplog: pytest.LogCaptureFixture
) -> None:
    user = new_user(gitlab_api)
    group = gitlab_api.add_group(unique("g"))
    gitlab_api.set_member(group, user, 20)
    connector = make(gitlab_api, env, inheritedGroups=True, getGroupsPermission=True)
    gitlab_api.fail_next = (f"/groups/{group.id}/members", 503)
    caplog.set_level(logging.WARNING)
    with pytest.raises(ConnectorError, match=r"failed \(group membership: HTTP 503\)"):
        await login(connector, gitlab_api, user)
    assert "answered HTTP 503" in caplog.text


async def test_userinfo_5xx_fails_the_login(gitlab_api: GitLabAPI, env: ConnectorEnv) -> None:
    user = new_user(gitlab_api)
    gitlab_api.fail_next = ("/oauth/userinfo", 502)
    with pytest.raises(ConnectorError, match=r"failed \(userinfo: HTTP 502\)"):
        await login(make(gitlab_api, env), gitlab_api, user)
