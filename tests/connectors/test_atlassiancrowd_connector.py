"""The ``atlassian-crowd`` connector against the Crowd REST stand-in (tests/support/crowd_api.py):
login by password, nested groups across pages, the groups restriction, refresh that fails
closed, the application's own credential errors, rate limits and 5xx."""

from __future__ import annotations

import json
import logging
import secrets
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from portcullis.config.load import parse_config
from portcullis.connectors.atlassiancrowd import CONNECTOR_TYPE, CrowdConnector
from portcullis.connectors.base import ConnectorEnv, ConnectorError, Scopes
from portcullis.connectors.registry import CONNECTOR_TYPES
from portcullis.issuer import check_connectors, connector_models
from pydantic import ValidationError

from tests.support.crowd_api import APP_NAME, APP_PASSWORD, CrowdAPI

pytestmark = pytest.mark.anyio

GROUPS = Scopes(offline_access=True, groups=True)
CORPUS = Path(__file__).parents[1] / "unit" / "config" / "fixtures" / "dex"


def make(api: CrowdAPI, env: ConnectorEnv, **overrides: Any) -> CrowdConnector:
    raw: dict[str, Any] = {
        "baseURL": api.base_url,
        "clientID": APP_NAME,
        "clientSecret": APP_PASSWORD,
    }
    raw.update(overrides)
    config = CONNECTOR_TYPE.config_model.model_validate(raw)
    connector = CONNECTOR_TYPE.open("crowd", "Crowd", "atlassian-crowd", config, env)
    assert isinstance(connector, CrowdConnector)
    return connector


def new_user(api: CrowdAPI) -> tuple[str, str]:
    name, password = f"ada.{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    api.add_user(name, password)
    return name, password


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def test_registered_under_dex_name() -> None:
    assert CONNECTOR_TYPES["atlassian-crowd"] is CONNECTOR_TYPE


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"baseURL": "crowd.example.org"}, "baseURL must be an absolute"),
        ({"baseURL": "https://c.example/crowd/rest/usermanagement/1"}, "without /rest/"),
        ({"clientSecret": ""}, "clientSecret must not be empty"),
        ({"preferredUsernameField": "mail"}, "preferredUsernameField"),
        ({"groups": [""]}, "group names must not be empty"),
        ({"clientId": "x"}, "clientId"),
    ],
)
def test_config_refusals_name_the_key(overrides: dict[str, Any], message: str) -> None:
    raw = {"baseURL": "https://crowd.example.org/crowd", "clientID": "a", "clientSecret": "s"}
    with pytest.raises(ValidationError, match=message):
        CONNECTOR_TYPE.config_model.model_validate({**raw, **overrides})


def test_opening_touches_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (CORPUS / "atlassian-crowd-groups.yaml").read_text()
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
    assert [c.type for c in config.connectors] == ["atlassian-crowd"]


async def test_login_identity_and_nested_groups_across_pages(
    crowd_api: CrowdAPI, env: ConnectorEnv
) -> None:
    name, password = new_user(crowd_api)
    teams = [unique(f"team-{i:02d}") for i in range(12)]
    for team in teams:
        crowd_api.add_to_group(team, name)
    parent = unique("engineering")
    crowd_api.parents[teams[0]] = parent
    connector = make(crowd_api, env, preferredUsernameField="email", usernamePrompt="Login")
    assert connector.prompt == "Login"
    crowd_api.page_cap = 5
    crowd_api.requests.clear()
    try:
        identity = await connector.login(GROUPS, name, password)
    finally:
        crowd_api.page_cap = 1000
    assert identity is not None
    assert identity.user_id == crowd_api.users[name].key
    assert identity.username == name
    assert identity.preferred_username == identity.email == f"{name}@example.org"
    assert identity.email_verified
    assert set(identity.groups) == {*teams, parent}
    assert len(identity.groups) == 13
    # 13 groups at 5 per page: three full-or-partial pages and the empty one that ends them.
    assert crowd_api.requests.count("GET /user/group/nested") == 4
    assert json.loads(identity.connector_data) == {"username": name}
    plain = await make(crowd_api, env).login(Scopes(), name, password)
    assert plain is not None
    assert (plain.groups, plain.preferred_username) == ((), "")
    assert make(crowd_api, env).prompt == "Username"


async def test_wrong_password_unknown_user_and_empty_password(
    crowd_api: CrowdAPI, env: ConnectorEnv
) -> None:
    name, password = new_user(crowd_api)
    connector = make(crowd_api, env)
    assert await connector.login(GROUPS, name, password + "x") is None
    assert await connector.login(GROUPS, "nobody-" + name, password) is None
    crowd_api.requests.clear()
    assert await connector.login(GROUPS, name, "") is None
    assert crowd_api.requests == []  # an empty password is never sent
    # A username with query syntax reaches Crowd as one value, not as extra parameters.
    odd = f"eve&username={name}#"
    crowd_api.add_user(odd, "pw-" + password)
    identity = await connector.login(GROUPS, odd, "pw-" + password)
    assert identity is not None
    assert identity.username == odd
    crowd_api.users[name].active = False
    with pytest.raises(ConnectorError, match="account is inactive"):
        await connector.login(GROUPS, name, password)
    crowd_api.users[name].active = True
    crowd_api.users[name].expired = True
    with pytest.raises(ConnectorError, match="password has expired"):
        await connector.login(GROUPS, name, password)


async def test_groups_restrict_login_with_or_without_the_scope(
    crowd_api: CrowdAPI, env: ConnectorEnv
) -> None:
    admins, other = unique("admins"), unique("other")
    member, member_password = new_user(crowd_api)
    outsider, outsider_password = new_user(crowd_api)
    crowd_api.add_to_group(admins, member)
    crowd_api.add_to_group(other, member)
    crowd_api.add_to_group(other, outsider)
    connector = make(crowd_api, env, groups=[admins])
    identity = await connector.login(GROUPS, member, member_password)
    assert identity is not None
    assert identity.groups == (admins,)
    for scopes in (GROUPS, Scopes()):  # Dex enforces it only with the groups scope
        with pytest.raises(ConnectorError, match="not a member of the Atlassian Crowd groups"):
            await connector.login(scopes, outsider, outsider_password)


async def test_refresh_rereads_and_fails_closed(crowd_api: CrowdAPI, env: ConnectorEnv) -> None:
    admins, ops = unique("admins"), unique("ops")
    name, password = new_user(crowd_api)
    crowd_api.add_to_group(admins, name)
    crowd_api.add_to_group(ops, name)
    connector = make(crowd_api, env, groups=[admins, ops])
    identity = await connector.login(GROUPS, name, password)
    assert identity is not None
    assert set(identity.groups) == {admins, ops}
    crowd_api.remove_from_group(ops, name)
    crowd_api.requests.clear()
    refreshed = await connector.refresh(GROUPS, identity)
    assert refreshed.groups == (admins,)
    assert "POST /session" in crowd_api.requests  # Crowd re-checks the application access
    crowd_api.remove_from_group(admins, name)
    with pytest.raises(ConnectorError, match="not a member"):
        await connector.refresh(GROUPS, refreshed)
    crowd_api.add_to_group(admins, name)
    crowd_api.users[name].active = False
    with pytest.raises(ConnectorError, match="account is inactive"):
        await connector.refresh(GROUPS, refreshed)
    crowd_api.users[name].active = True
    crowd_api.app_groups = {unique("crowd-users")}
    try:
        with pytest.raises(ConnectorError, match="no longer lets you use this application"):
            await connector.refresh(GROUPS, refreshed)
    finally:
        crowd_api.app_groups = set()
    crowd_api.delete_user(name)
    with pytest.raises(ConnectorError, match="no longer exists"):
        await connector.refresh(GROUPS, refreshed)
    crowd_api.add_user(name, password)  # a new account under the old name
    with pytest.raises(ConnectorError, match="account was replaced"):
        await connector.refresh(GROUPS, refreshed)
    with pytest.raises(ConnectorError, match="unreadable"):
        await connector.refresh(GROUPS, replace(refreshed, connector_data=b"{"))


async def test_application_credentials_and_address_refused(
    crowd_api: CrowdAPI, env: ConnectorEnv, caplog: pytest.LogCaptureFixture
) -> None:
    name, password = new_user(crowd_api)
    caplog.set_level(logging.DEBUG)
    wrong = make(crowd_api, env, clientSecret="not-the-app-password")
    with pytest.raises(ConnectorError, match="not set up correctly"):
        await wrong.login(GROUPS, name, password)
    assert "check clientID/clientSecret" in caplog.text
    crowd_api.refuse_remote_address = True
    try:
        with pytest.raises(ConnectorError, match="not set up correctly"):
            await make(crowd_api, env).login(GROUPS, name, password)
    finally:
        crowd_api.refuse_remote_address = False
    for secret in ("not-the-app-password", APP_PASSWORD, password):
        assert secret not in caplog.text


async def test_rate_limit_and_5xx(
    crowd_api: CrowdAPI, env: ConnectorEnv, caplog: pytest.LogCaptureFixture
) -> None:
    name, password = new_user(crowd_api)
    crowd_api.add_to_group(unique("g"), name)
    connector = make(crowd_api, env)
    caplog.set_level(logging.DEBUG)
    crowd_api.throttle_retry_after = 11
    with pytest.raises(ConnectorError, match=r"rate limiting logins .*try again in 11 seconds"):
        await connector.login(GROUPS, name, password)
    crowd_api.fail_next = ("/user/group/nested", 500)
    with pytest.raises(ConnectorError, match=r"failed \(Crowd groups lookup: HTTP 500\)"):
        await connector.login(GROUPS, name, password)
    crowd_api.fail_next = ("/session", 503)
    with pytest.raises(ConnectorError, match=r"failed \(Crowd login: HTTP 503\)"):
        await connector.login(GROUPS, name, password)
    identity = await connector.login(GROUPS, name, password)
    assert identity is not None
    crowd_api.fail_next = ("/user", 502)
    with pytest.raises(ConnectorError, match=r"failed \(Crowd refresh user lookup: HTTP 502\)"):
        await connector.refresh(GROUPS, identity)
    assert "answered HTTP 502" in caplog.text
    for secret in (password, APP_PASSWORD):
        assert secret not in caplog.text
