"""The ``microsoft`` connector against the Entra ID / Graph stand-in
(tests/support/microsoft_api.py), reached through the connector's test-only ``endpoints``
argument: login, every page of groups (Dex #2108), group restriction and whitelist, refresh with
rotating tokens, and Microsoft's error and throttling answers."""

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
from portcullis.connectors.microsoft import (
    CONNECTOR_TYPE,
    MicrosoftConfig,
    MicrosoftConnector,
    MicrosoftEndpoints,
)
from portcullis.connectors.oauth2_common import UpstreamError
from portcullis.connectors.registry import CONNECTOR_TYPES
from portcullis.issuer import check_connectors, connector_models
from portcullis.storage.models import Identity
from pydantic import ValidationError

from tests.support.connector_login import browser_login
from tests.support.microsoft_api import (
    CALLBACK,
    CLIENT_ID,
    CLIENT_SECRET,
    TENANT,
    MicrosoftAPI,
    microsoft_browser,
)

pytestmark = pytest.mark.anyio

OFFLINE = Scopes(offline_access=True, groups=True)
CORPUS = Path(__file__).parents[1] / "unit" / "config" / "fixtures" / "dex"


def make(api: MicrosoftAPI, env: ConnectorEnv, **overrides: Any) -> MicrosoftConnector:
    raw: dict[str, Any] = {
        "clientID": CLIENT_ID,
        "clientSecret": CLIENT_SECRET,
        "redirectURI": CALLBACK,
        "tenant": TENANT,
    }
    raw.update(overrides)
    config = CONNECTOR_TYPE.config_model.model_validate(raw)
    assert isinstance(config, MicrosoftConfig)
    endpoints = MicrosoftEndpoints(login=api.base_url, graph=api.base_url)
    return MicrosoftConnector("microsoft", "Microsoft", "microsoft", config, env, endpoints)


def new_user(api: MicrosoftAPI, display_name: str = "") -> str:
    login = f"user{secrets.token_hex(4)}"
    api.add_user(login, display_name)
    return login


async def login(connector: MicrosoftConnector, user: str, scopes: Scopes = OFFLINE) -> Identity:
    return await browser_login(
        connector, lambda url: microsoft_browser(url, user), scopes, CALLBACK
    )


# -- config ------------------------------------------------------------------------------------


def test_registered_under_dex_name() -> None:
    assert CONNECTOR_TYPES["microsoft"] is CONNECTOR_TYPE


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tennant": "common"}, "tennant"),
        ({"groupNameFormat": "mail"}, "groupNameFormat must be name or id"),
        ({"tenant": "https://login.microsoftonline.com/x"}, "tenant must be"),
        ({"promptType": "always"}, "promptType must be one of"),
        ({"graphURL": "http://graph.example"}, "graphURL must be an https URL"),
        ({"apiURL": "ftp://login.example"}, "apiURL must be an https URL"),
        ({"preferredUsernameField": "upn"}, "preferredUsernameField must be one of"),
    ],
)
def test_config_refusals_name_the_key(overrides: dict[str, Any], message: str) -> None:
    raw = {"clientID": "id", "clientSecret": "s", "redirectURI": CALLBACK, **overrides}
    with pytest.raises(ValidationError, match=message):
        CONNECTOR_TYPE.config_model.model_validate(raw)


def test_defaults_and_national_cloud_keys() -> None:
    raw = {"clientID": "id", "clientSecret": "s", "redirectURI": CALLBACK}
    config = CONNECTOR_TYPE.config_model.model_validate(raw)
    assert isinstance(config, MicrosoftConfig)
    assert (config.tenant, config.group_name_format) == ("common", "name")
    assert config.api_url == "https://login.microsoftonline.com"
    assert config.graph_url == "https://graph.microsoft.com"
    us = CONNECTOR_TYPE.config_model.model_validate(
        {**raw, "apiURL": "https://login.microsoftonline.us/", "graphURL": ""}
    )
    assert isinstance(us, MicrosoftConfig)
    assert us.api_url == "https://login.microsoftonline.us"
    assert us.graph_url == "https://graph.microsoft.com"


def test_opening_touches_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (CORPUS / "microsoft-tenant.yaml").read_text()
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
    assert [c.type for c in config.connectors] == ["microsoft"]


# -- login -------------------------------------------------------------------------------------


async def test_login_url_scopes_prompt_and_domain_hint(
    microsoft_api: MicrosoftAPI, env: ConnectorEnv
) -> None:
    connector = make(microsoft_api, env, promptType="select_account", domainHint="contoso.com")
    start = await connector.login_url(OFFLINE, CALLBACK, "st")
    assert start.url.startswith(f"{microsoft_api.base_url}/{TENANT}/oauth2/v2.0/authorize?")
    query = parse_qs(urlsplit(start.url).query)
    assert query["scope"] == ["user.read directory.read.all offline_access"]
    assert query["prompt"] == ["select_account"]
    assert query["domain_hint"] == ["contoso.com"]
    common = make(microsoft_api, env, tenant="common", scopes=["openid", "profile", "User.Read"])
    start = await common.login_url(OFFLINE, CALLBACK, "st")
    # The multi-tenant endpoints have no directory to read groups from (as in Dex).
    assert parse_qs(urlsplit(start.url).query)["scope"] == [
        "openid profile User.Read offline_access"
    ]
    with pytest.raises(ConnectorError, match="redirectURI"):
        await connector.login_url(OFFLINE, "http://elsewhere/cb", "st")


async def test_login_maps_me_and_groups(microsoft_api: MicrosoftAPI, env: ConnectorEnv) -> None:
    user = new_user(microsoft_api, "Megan Bowen")
    security = microsoft_api.add_group("Kubernetes Admins")
    unified = microsoft_api.add_group("Marketing (M365)", security_enabled=False)
    microsoft_api.users[user].groups = [security.id, unified.id]
    identity = await login(make(microsoft_api, env), user)
    assert identity.user_id == microsoft_api.users[user].id
    assert identity.username == "Megan Bowen"
    assert identity.email == f"{user}@Contoso.com"
    assert identity.email_verified is True
    assert identity.groups == ("Kubernetes Admins", "Marketing (M365)")
    assert set(json.loads(identity.connector_data)) == {"refreshToken"}
    tuned = make(
        microsoft_api, env, onlySecurityGroups=True, groupNameFormat="id", emailToLowercase=True
    )
    identity = await login(tuned, user)
    assert identity.groups == (security.id,)
    assert identity.email == f"{user}@contoso.com"
    plain = await login(make(microsoft_api, env), user, Scopes())
    assert plain.groups == ()
    assert plain.connector_data == b""


async def test_every_page_of_groups_is_read(microsoft_api: MicrosoftAPI, env: ConnectorEnv) -> None:
    """Dex #2108: past one page (and past Entra's 200-group token limit) nothing is dropped."""
    user = new_user(microsoft_api)
    groups = [microsoft_api.add_group(f"g-{secrets.token_hex(3)}-{i:04d}") for i in range(2100)]
    microsoft_api.users[user].groups = [g.id for g in groups]
    microsoft_api.requests.clear()
    identity = await login(make(microsoft_api, env), user)
    assert identity.groups == tuple(g.display_name for g in groups)
    pages = [p for p in microsoft_api.requests if p.endswith("/microsoft.graph.group")]
    assert len(pages) == 3  # 999 + 999 + 102 through @odata.nextLink


async def test_required_groups_and_whitelist(
    microsoft_api: MicrosoftAPI, env: ConnectorEnv
) -> None:
    admins, others = microsoft_api.add_group("k8s-admins"), microsoft_api.add_group("others")
    member, outsider = new_user(microsoft_api), new_user(microsoft_api)
    microsoft_api.users[member].groups = [admins.id, others.id]
    microsoft_api.users[outsider].groups = [others.id]
    required = make(microsoft_api, env, groups=["k8s-admins"])
    assert (await login(required, member, Scopes())).groups == ("k8s-admins", "others")
    whitelist = make(microsoft_api, env, groups=["k8s-admins"], useGroupsAsWhitelist=True)
    assert (await login(whitelist, member)).groups == ("k8s-admins",)
    with pytest.raises(ConnectorError, match="not a member of the Microsoft groups required"):
        await login(required, outsider)


async def test_refused_code_client_and_error_redirect(
    microsoft_api: MicrosoftAPI, env: ConnectorEnv
) -> None:
    connector = make(microsoft_api, env)
    with pytest.raises(UpstreamError, match=r"invalid_grant.*AADSTS70008"):
        await connector.handle_callback(OFFLINE, {"code": "0.Aexpired"}, b"")
    with pytest.raises(UpstreamError, match="login_required"):
        await login(connector, "nobody-signed-in")
    user = new_user(microsoft_api)
    with pytest.raises(UpstreamError, match="invalid_client"):
        await login(make(microsoft_api, env, clientSecret="wrong"), user)


# -- refresh -----------------------------------------------------------------------------------


async def test_refresh_rotates_and_fails_closed_on_removal(
    microsoft_api: MicrosoftAPI, env: ConnectorEnv
) -> None:
    admins, ops = microsoft_api.add_group("admins"), microsoft_api.add_group("ops")
    user = new_user(microsoft_api, "Adele")
    microsoft_api.users[user].groups = [admins.id, ops.id]
    connector = make(microsoft_api, env, groups=["admins", "ops"], useGroupsAsWhitelist=True)
    identity = await login(connector, user)
    microsoft_api.users[user].groups = [ops.id]
    microsoft_api.users[user].display_name = "Adele Vance"
    refreshed = await connector.refresh(OFFLINE, identity)
    assert refreshed.groups == ("ops",)
    assert refreshed.username == "Adele Vance"
    assert refreshed.connector_data != identity.connector_data  # rotated
    microsoft_api.users[user].groups = []
    with pytest.raises(ConnectorError, match="not a member of the Microsoft groups required"):
        await connector.refresh(OFFLINE, refreshed)


async def test_refresh_after_revoked_sessions(
    microsoft_api: MicrosoftAPI, env: ConnectorEnv, caplog: pytest.LogCaptureFixture
) -> None:
    user = new_user(microsoft_api)
    connector = make(microsoft_api, env)
    identity = await login(connector, user)
    token = json.loads(identity.connector_data)["refreshToken"]
    microsoft_api.revoke_sessions(user)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(UpstreamError, match=r"invalid_grant.*AADSTS50173"):
        await connector.refresh(OFFLINE, identity)
    assert token not in caplog.text
    with pytest.raises(ConnectorError, match="cannot be refreshed"):
        await connector.refresh(OFFLINE, Identity(user_id="x", username="x"))


async def test_refresh_refuses_another_user(microsoft_api: MicrosoftAPI, env: ConnectorEnv) -> None:
    user = new_user(microsoft_api)
    connector = make(microsoft_api, env)
    identity = await login(connector, user)
    forged = Identity(user_id="someone-else", username="x", connector_data=identity.connector_data)
    with pytest.raises(ConnectorError, match="different user"):
        await connector.refresh(OFFLINE, forged)


# -- throttling and upstream failures ----------------------------------------------------------


async def test_graph_throttling_and_revoked_access_token(
    microsoft_api: MicrosoftAPI, env: ConnectorEnv, caplog: pytest.LogCaptureFixture
) -> None:
    user = new_user(microsoft_api)
    connector = make(microsoft_api, env)
    caplog.set_level(logging.WARNING)
    microsoft_api.throttle_retry_after = 17
    with pytest.raises(ConnectorError, match=r"rate limiting logins .*try again in 17 seconds"):
        await login(connector, user)
    assert "rate limited: HTTP 429" in caplog.text
    assert "Too many requests." in caplog.text
    # An access token revoked between the token answer and the Graph call.
    state = "st"
    start = await connector.login_url(OFFLINE, CALLBACK, state)
    params = await asyncio.to_thread(microsoft_browser, start.url, user)
    original = microsoft_api._issue

    def issue_then_revoke(grant: Any) -> dict[str, Any]:
        answer = original(grant)
        microsoft_api.revoked.add(answer["access_token"])
        del microsoft_api.access_tokens[answer["access_token"]]
        return answer

    microsoft_api._issue = issue_then_revoke  # type: ignore[method-assign]
    try:
        with pytest.raises(ConnectorError, match="no longer accepts this login"):
            await connector.handle_callback(OFFLINE, params, b"")
    finally:
        microsoft_api._issue = original  # type: ignore[method-assign]
    assert "HTTP 401 (Lifetime validation failed" in caplog.text


async def test_graph_5xx_fails_the_login(
    microsoft_api: MicrosoftAPI, env: ConnectorEnv, caplog: pytest.LogCaptureFixture
) -> None:
    user = new_user(microsoft_api)
    microsoft_api.users[user].groups = [microsoft_api.add_group("g").id]
    caplog.set_level(logging.WARNING)
    microsoft_api.fail_next = ("/v1.0/me/transitiveMemberOf", 503)
    with pytest.raises(ConnectorError, match=r"failed \(group memberships: HTTP 503\)"):
        await login(make(microsoft_api, env), user)
    assert "answered HTTP 503" in caplog.text


async def test_preferred_username_field(microsoft_api: MicrosoftAPI, env: ConnectorEnv) -> None:
    user = new_user(microsoft_api, "Lee Gu")
    microsoft_api.users[user].on_premises_sam_account_name = "LEEG"
    assert (await login(make(microsoft_api, env), user, Scopes())).preferred_username == ""
    for field, expected in [
        ("name", "Lee Gu"),
        ("email", f"{user}@contoso.com"),
        ("mailNickname", user),
        ("onPremisesSamAccountName", "LEEG"),
    ]:
        connector = make(microsoft_api, env, preferredUsernameField=field, emailToLowercase=True)
        identity = await login(connector, user, Scopes())
        assert identity.preferred_username == expected, field


async def test_client_assertion_replaces_the_secret(
    microsoft_api: MicrosoftAPI, env: ConnectorEnv, tmp_path: Path
) -> None:
    """Workload identity federation: the assertion file is re-read for every request, so a
    rotated assertion is used without a restart."""
    assertion = tmp_path / "azure-identity-token"
    first, second = f"eyJ.{secrets.token_hex(8)}.sig", f"eyJ.{secrets.token_hex(8)}.sig"
    microsoft_api.assertions.add(first)
    assertion.write_text(first + "\n")
    connector = make(
        microsoft_api, env, clientSecret="", clientAssertion=str(assertion), batchGroupLookups=True
    )
    user = new_user(microsoft_api)
    identity = await login(connector, user)
    microsoft_api.assertions.add(second)
    assertion.write_text(second)
    microsoft_api.assertions.discard(first)
    assert (await connector.refresh(OFFLINE, identity)).user_id == identity.user_id
    assertion.unlink()
    with pytest.raises(ConnectorError, match="clientAssertion"):
        await login(connector, user)
