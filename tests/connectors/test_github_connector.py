"""The ``github`` connector against the GitHub Enterprise stand-in (tests/support/github_api.py),
reached through its documented ``hostName``/``rootCA`` keys: login, org/team restriction, groups
across many pages, refresh re-checking membership, and GitHub's error and rate-limit answers."""

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
from portcullis.connectors.github import CONNECTOR_TYPE, GitHubConnector
from portcullis.connectors.oauth2_common import UpstreamError
from portcullis.connectors.registry import CONNECTOR_TYPES
from portcullis.issuer import check_connectors, connector_models
from portcullis.storage.models import Identity
from pydantic import ValidationError

from tests.support.connector_login import browser_login
from tests.support.github_api import (
    CALLBACK,
    CLIENT_ID,
    CLIENT_SECRET,
    GitHubAPI,
    browser_authorize,
)

pytestmark = pytest.mark.anyio

OFFLINE = Scopes(offline_access=True, groups=True)
CORPUS = Path(__file__).parents[1] / "unit" / "config" / "fixtures" / "dex"


def make(api: GitHubAPI, env: ConnectorEnv, **overrides: Any) -> GitHubConnector:
    raw: dict[str, Any] = {
        "clientID": CLIENT_ID,
        "clientSecret": CLIENT_SECRET,
        "redirectURI": CALLBACK,
        "hostName": api.host_name,
        "rootCA": str(api.ca_file),
    }
    raw.update(overrides)
    config = CONNECTOR_TYPE.config_model.model_validate(raw)
    connector = CONNECTOR_TYPE.open("github", "GitHub", "github", config, env)
    assert isinstance(connector, GitHubConnector)
    return connector


def name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def new_user(api: GitHubAPI, **fields: Any) -> str:
    login = name("user")
    fields.setdefault("emails", [(f"{login}@users.example.com", True, True)])
    api.add_user(login, **fields)
    return login


async def login(
    connector: GitHubConnector, api: GitHubAPI, user: str, scopes: Scopes = OFFLINE
) -> Identity:
    return await browser_login(
        connector, lambda url: browser_authorize(api, url, user), scopes, CALLBACK
    )


# -- config ------------------------------------------------------------------------------------


def test_registered_under_dex_name() -> None:
    assert CONNECTOR_TYPES["github"] is CONNECTOR_TYPE


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"orgz": []}, "orgz"),
        ({"orgs": [{"name": "a", "team": ["x"]}]}, "team"),
        ({"org": "a", "orgs": [{"name": "b"}]}, "org and orgs cannot be used together"),
        ({"teamNameField": "id"}, "teamNameField must be name, slug or both"),
        ({"hostName": "https://ghe.example.com"}, "hostName must be a host name"),
        ({"hostName": "ghe.example.com", "rootCA": "no-such-file"}, "rootCA is not a PEM"),
        ({"preferredEmailDomain": "example.*"}, "cannot end with"),
        ({"redirectURI": "callback"}, "redirectURI"),
    ],
)
def test_config_refusals_name_the_key(overrides: dict[str, Any], message: str) -> None:
    raw = {"clientID": "id", "clientSecret": "s", "redirectURI": CALLBACK, **overrides}
    with pytest.raises(ValidationError, match=message):
        CONNECTOR_TYPE.config_model.model_validate(raw)


def test_root_ca_requires_host_name(github_api: GitHubAPI) -> None:
    raw = {"clientID": "id", "clientSecret": "s", "redirectURI": CALLBACK}
    with pytest.raises(ValidationError, match="rootCA requires hostName"):
        CONNECTOR_TYPE.config_model.model_validate({**raw, "rootCA": str(github_api.ca_file)})


def test_dex_example_config_is_accepted() -> None:
    config = CONNECTOR_TYPE.config_model.model_validate(
        {
            "clientID": "$GITHUB_CLIENT_ID",
            "clientSecret": "$GITHUB_CLIENT_SECRET",
            "redirectURI": "http://127.0.0.1:5556/dex/callback",
            "orgs": [{"name": "my-organization"}, {"name": "my-org", "teams": ["red", "blue"]}],
            "loadAllGroups": False,
            "teamNameField": "slug",
            "useLoginAsID": False,
            "preferredEmailDomain": "*.example.com",
        }
    )
    assert "GITHUB_CLIENT_SECRET" not in repr(config)


# -- login -------------------------------------------------------------------------------------


async def test_login_url_asks_for_read_org_only_when_groups_matter(
    github_api: GitHubAPI, env: ConnectorEnv
) -> None:
    plain = make(github_api, env)
    start = await plain.login_url(Scopes(), CALLBACK, "st")
    query = parse_qs(urlsplit(start.url).query)
    assert start.url.startswith(f"{github_api.base_url}/login/oauth/authorize?")
    assert query["scope"] == ["user:email"]
    assert query["state"] == ["st"]
    assert query["client_id"] == [CLIENT_ID]
    with_groups = await plain.login_url(Scopes(groups=True), CALLBACK, "st")
    assert parse_qs(urlsplit(with_groups.url).query)["scope"] == ["user:email read:org"]
    restricted = make(github_api, env, orgs=[{"name": "acme"}])
    start = await restricted.login_url(Scopes(), CALLBACK, "st")
    assert parse_qs(urlsplit(start.url).query)["scope"] == ["user:email read:org"]
    with pytest.raises(ConnectorError, match="redirectURI"):
        await plain.login_url(Scopes(), "http://elsewhere/callback", "st")


async def test_login_with_orgs_and_teams(github_api: GitHubAPI, env: ConnectorEnv) -> None:
    org, other = name("acme"), name("other")
    user = new_user(
        github_api,
        name="Ada Lovelace",
        emails=[("old@ex.org", False, False), ("ada@ex.org", True, True)],
    )
    github_api.add_member(org, user)
    github_api.add_member(other, user)
    github_api.add_team(org, "Red Team", "red-team", user)
    github_api.add_team(org, "Blue", "blue", user)
    github_api.add_team(other, "Red Team", "red-team", user)  # same name, other org
    connector = make(
        github_api, env, orgs=[{"name": org, "teams": ["Red Team"]}, {"name": name("absent")}]
    )
    identity = await login(connector, github_api, user)
    assert identity.user_id == str(github_api.users[user].id)
    assert identity.username == "Ada Lovelace"
    assert identity.preferred_username == user
    assert identity.email == "ada@ex.org"  # the verified primary one, /user had none
    assert identity.email_verified is True
    assert identity.groups == (f"{org}:Red Team",)
    assert json.loads(identity.connector_data) == {"accessToken": github_api.tokens_of(user)[-1]}
    without_offline = await login(connector, github_api, user, Scopes(groups=True))
    assert without_offline.connector_data == b""


async def test_user_outside_the_orgs_or_teams_is_refused(
    github_api: GitHubAPI, env: ConnectorEnv
) -> None:
    org = name("acme")
    outsider, teamless = new_user(github_api), new_user(github_api)
    github_api.add_member(org, teamless)
    github_api.add_team(org, "admins", "admins")
    with pytest.raises(ConnectorError, match="not a member of the GitHub organizations"):
        await login(make(github_api, env, orgs=[{"name": org}]), github_api, outsider)
    only_admins = make(github_api, env, orgs=[{"name": org, "teams": ["admins"]}])
    with pytest.raises(ConnectorError, match="not a member"):
        await login(only_admins, github_api, teamless)


async def test_org_without_team_list_gives_every_team_across_pages(
    github_api: GitHubAPI, env: ConnectorEnv
) -> None:
    org = name("big")
    user = new_user(github_api)
    github_api.add_member(org, user)
    teams = [f"team-{i:03d}" for i in range(250)]
    for team in teams:
        github_api.add_team(org, team, team, user)
    github_api.requests.clear()
    identity = await login(make(github_api, env, orgs=[{"name": org}]), github_api, user)
    assert identity.groups == tuple(f"{org}:{team}" for team in teams)
    team_pages = [p for m, p in github_api.requests if p == "/user/teams"]
    assert len(team_pages) == 3  # 100 + 100 + 50, followed through Link rel="next"


async def test_load_all_groups_follows_every_page_of_orgs(
    github_api: GitHubAPI, env: ConnectorEnv
) -> None:
    user = new_user(github_api)
    orgs = sorted(name(f"org{i:03d}") for i in range(230))
    for org in orgs:
        github_api.add_member(org, user)
    github_api.add_team(orgs[0], "Core Devs", "core-devs", user)
    connector = make(github_api, env, loadAllGroups=True, teamNameField="both")
    github_api.requests.clear()
    identity = await login(connector, github_api, user)
    assert identity.groups[:3] == (orgs[0], f"{orgs[0]}:Core Devs", f"{orgs[0]}:core-devs")
    assert set(identity.groups) == set(orgs) | {f"{orgs[0]}:Core Devs", f"{orgs[0]}:core-devs"}
    assert len([p for _, p in github_api.requests if p == "/user/orgs"]) >= 3
    # Without the groups scope nothing is fetched, as in Dex.
    plain = await login(connector, github_api, user, Scopes(offline_access=True))
    assert plain.groups == ()


async def test_legacy_org_gives_bare_team_names_and_slug_field(
    github_api: GitHubAPI, env: ConnectorEnv
) -> None:
    org = name("legacy")
    member, outsider = new_user(github_api), new_user(github_api)
    github_api.add_member(org, member)
    github_api.add_team(org, "Site Reliability", "sre", member)
    identity = await login(make(github_api, env, org=org), github_api, member)
    assert identity.groups == ("Site Reliability",)
    slugs = await login(make(github_api, env, org=org, teamNameField="slug"), github_api, member)
    assert slugs.groups == ("sre",)
    with pytest.raises(ConnectorError, match=f"not a member of the GitHub organization {org}"):
        await login(make(github_api, env, org=org), github_api, outsider)


async def test_login_as_id_and_preferred_email_domain(
    github_api: GitHubAPI, env: ConnectorEnv
) -> None:
    user = new_user(
        github_api,
        public_email="public@example.org",
        emails=[
            ("public@example.org", True, True),
            ("apex@corp.example", True, False),  # "*" is exactly one label
            ("me@dev.corp.example", True, False),
        ],
    )
    connector = make(github_api, env, useLoginAsID=True, preferredEmailDomain="*.corp.example")
    identity = await login(connector, github_api, user, Scopes())
    assert identity.user_id == user
    assert identity.username == user  # no display name: the login, as in Dex
    assert identity.email == "me@dev.corp.example"
    fallback = make(github_api, env, preferredEmailDomain="nomatch.example")
    assert (await login(fallback, github_api, user, Scopes())).email == "public@example.org"
    public = make(github_api, env)
    assert (await login(public, github_api, user, Scopes())).email == "public@example.org"


async def test_no_verified_primary_email_is_refused(
    github_api: GitHubAPI, env: ConnectorEnv
) -> None:
    # Enterprise Server cannot verify addresses (every one counts): only a missing primary
    # address fails there.
    user = new_user(github_api, emails=[("a@ex.org", False, False)])
    with pytest.raises(ConnectorError, match="no verified primary email"):
        await login(make(github_api, env), github_api, user, Scopes())


async def test_refused_code_and_error_redirect(github_api: GitHubAPI, env: ConnectorEnv) -> None:
    connector = make(github_api, env)
    with pytest.raises(UpstreamError, match="bad_verification_code") as caught:
        await connector.handle_callback(OFFLINE, {"code": "0" * 20, "state": "s"}, b"")
    assert caught.value.error == "bad_verification_code"
    with pytest.raises(UpstreamError, match="access_denied"):
        await connector.handle_callback(
            OFFLINE, {"error": "access_denied", "error_description": "user said no"}, b""
        )
    with pytest.raises(ConnectorError, match="no authorization code"):
        await connector.handle_callback(OFFLINE, {"state": "s"}, b"")
    wrong_secret = make(github_api, env, clientSecret="not-the-secret")
    user = new_user(github_api)
    with pytest.raises(UpstreamError, match="incorrect_client_credentials"):
        await login(wrong_secret, github_api, user)


# -- refresh -----------------------------------------------------------------------------------


async def test_refresh_rechecks_membership_and_fails_closed(
    github_api: GitHubAPI, env: ConnectorEnv
) -> None:
    org = name("acme")
    user = new_user(github_api, name="Grace")
    github_api.add_member(org, user)
    github_api.add_team(org, "ops", "ops", user)
    dev = github_api.add_team(org, "dev", "dev", user)
    connector = make(github_api, env, orgs=[{"name": org, "teams": ["ops", "dev"]}])
    identity = await login(connector, github_api, user)
    assert identity.groups == (f"{org}:ops", f"{org}:dev")
    dev.members.discard(user)
    github_api.users[user].name = "Grace Hopper"
    refreshed = await connector.refresh(OFFLINE, identity)
    assert refreshed.groups == (f"{org}:ops",)
    assert refreshed.username == "Grace Hopper"
    assert refreshed.connector_data == identity.connector_data
    github_api.remove_member(org, user)
    with pytest.raises(ConnectorError, match="not a member"):
        await connector.refresh(OFFLINE, refreshed)


async def test_refresh_with_a_revoked_token_fails(
    github_api: GitHubAPI, env: ConnectorEnv, caplog: pytest.LogCaptureFixture
) -> None:
    user = new_user(github_api)
    connector = make(github_api, env)
    identity = await login(connector, github_api, user)
    token = json.loads(identity.connector_data)["accessToken"]
    assert token.startswith("gho_")
    assert len(token) == 40
    github_api.revoke(token)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConnectorError, match="no longer accepts this login"):
        await connector.refresh(OFFLINE, identity)
    assert "HTTP 401 (Bad credentials)" in caplog.text
    assert token not in caplog.text
    with pytest.raises(ConnectorError, match="cannot be refreshed"):
        await connector.refresh(OFFLINE, Identity(user_id="1", username="x"))


async def test_refresh_refuses_another_user_behind_the_token(
    github_api: GitHubAPI, env: ConnectorEnv
) -> None:
    user = new_user(github_api)
    connector = make(github_api, env)
    identity = await login(connector, github_api, user)
    forged = Identity(user_id="999999", username="victim", connector_data=identity.connector_data)
    with pytest.raises(ConnectorError, match="different user"):
        await connector.refresh(OFFLINE, forged)


# -- rate limits and upstream failures ---------------------------------------------------------


async def test_primary_rate_limit(
    github_api: GitHubAPI, env: ConnectorEnv, caplog: pytest.LogCaptureFixture
) -> None:
    org = name("acme")
    user = new_user(github_api)
    github_api.add_member(org, user)
    connector = make(github_api, env, orgs=[{"name": org}])
    identity = await login(connector, github_api, user)
    caplog.set_level(logging.WARNING)
    github_api.remaining = 1  # /user succeeds, the membership check hits the limit
    try:
        with pytest.raises(ConnectorError, match=r"rate limiting logins .*try again in \d+ s"):
            await connector.refresh(OFFLINE, identity)
    finally:
        github_api.remaining = None
    assert "rate limited: HTTP 403" in caplog.text
    assert "API rate limit exceeded" in caplog.text


async def test_secondary_rate_limit_with_retry_after(
    github_api: GitHubAPI, env: ConnectorEnv
) -> None:
    user = new_user(github_api)
    connector = make(github_api, env)
    identity = await login(connector, github_api, user)
    github_api.secondary_retry_after = 60
    with pytest.raises(ConnectorError, match="try again in 60 seconds"):
        await connector.refresh(OFFLINE, identity)


async def test_upstream_5xx_is_a_connector_error(
    github_api: GitHubAPI, env: ConnectorEnv, caplog: pytest.LogCaptureFixture
) -> None:
    org = name("acme")
    user = new_user(github_api)
    github_api.add_member(org, user)
    github_api.add_team(org, "t", "t", user)
    connector = make(github_api, env, orgs=[{"name": org}])
    caplog.set_level(logging.WARNING)
    github_api.fail_next = ("/user/teams", 502)
    with pytest.raises(ConnectorError, match=r"failed \(user teams: HTTP 502\)"):
        await login(connector, github_api, user)
    assert "answered HTTP 502" in caplog.text
    for token in github_api.tokens_of(user):
        assert token not in caplog.text


async def test_untrusted_certificate_without_root_ca(
    github_api: GitHubAPI, env: ConnectorEnv
) -> None:
    user = new_user(github_api)
    connector = make(github_api, env, rootCA="")
    state = "st"
    start = await connector.login_url(Scopes(), CALLBACK, state)
    params = await asyncio.to_thread(browser_authorize, github_api, start.url, user)
    with pytest.raises(ConnectorError, match="TLS verification failed"):
        await connector.handle_callback(Scopes(), params, b"")


def test_opening_touches_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """check-config and serve open connectors where GitHub may be unreachable."""
    text = (CORPUS / "github-orgs.yaml").read_text()
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
    assert [c.type for c in config.connectors] == ["github"]


async def test_github_app_tokens_expire_and_are_refreshed(
    github_api: GitHubAPI, env: ConnectorEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """GitHub App user tokens expire (8 h) and come with a rotating refresh token."""
    org = name("acme")
    user = new_user(github_api)
    github_api.add_member(org, user)
    github_api.add_team(org, "ops", "ops", user)
    connector = make(github_api, env, orgs=[{"name": org}])
    github_api.app_token_lifetime = 30  # inside the renewal margin: due at the first refresh
    try:
        identity = await login(connector, github_api, user)
    finally:
        github_api.app_token_lifetime = None
    data = json.loads(identity.connector_data)
    assert set(data) == {"accessToken", "refreshToken", "expiry"}
    assert data["accessToken"].startswith("ghu_")
    assert data["refreshToken"].startswith("ghr_")
    github_api.expire(data["accessToken"])
    github_api.app_token_lifetime = 28800
    caplog.set_level(logging.DEBUG)
    try:
        refreshed = await connector.refresh(OFFLINE, identity)
    finally:
        github_api.app_token_lifetime = None
    assert refreshed.groups == (f"{org}:ops",)
    renewed = json.loads(refreshed.connector_data)
    assert renewed["refreshToken"] != data["refreshToken"]  # rotated
    # Not yet expired: the stored access token is used, nothing is redeemed.
    assert (await connector.refresh(OFFLINE, refreshed)).connector_data == refreshed.connector_data
    # The consumed refresh token: served from the short result cache on this replica, refused
    # upstream (GitHub's HTTP 200 error body) on another one.
    stale = replace_data(refreshed, {**data, "expiry": "2000-01-01T00:00:00Z"})
    assert (await connector.refresh(OFFLINE, stale)).user_id == identity.user_id
    other_replica = make(github_api, env, orgs=[{"name": org}])
    with pytest.raises(UpstreamError, match="bad_refresh_token"):
        await other_replica.refresh(OFFLINE, stale)
    github_api.remove_member(org, user)
    with pytest.raises(ConnectorError, match="not a member"):
        await connector.refresh(OFFLINE, refreshed)
    for secret in (data["refreshToken"], renewed["refreshToken"], renewed["accessToken"]):
        assert secret not in caplog.text


def replace_data(identity: Identity, data: dict[str, str]) -> Identity:
    from dataclasses import replace

    return replace(identity, connector_data=json.dumps(data).encode())
