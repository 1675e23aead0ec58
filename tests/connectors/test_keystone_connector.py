"""The ``keystone`` connector against the Keystone v3 stand-in (tests/support/keystone_api.py):
login by password, groups, refresh that fails closed, and error and rate-limit answers."""

from __future__ import annotations

import logging
import secrets
import socket
from pathlib import Path
from typing import Any

import pytest
from portcullis.config.load import parse_config
from portcullis.connectors.base import ConnectorEnv, ConnectorError, Scopes
from portcullis.connectors.keystone import CONNECTOR_TYPE, KeystoneConnector
from portcullis.connectors.registry import CONNECTOR_TYPES
from portcullis.issuer import check_connectors, connector_models
from pydantic import ValidationError

from tests.support.keystone_api import ADMIN, ADMIN_PASSWORD, DOMAIN, KeystoneAPI, KeystoneUser

pytestmark = pytest.mark.anyio

GROUPS = Scopes(offline_access=True, groups=True)
CORPUS = Path(__file__).parents[1] / "unit" / "config" / "fixtures" / "dex"


def make(api: KeystoneAPI, env: ConnectorEnv, **overrides: Any) -> KeystoneConnector:
    raw: dict[str, Any] = {
        "keystoneHost": api.base_url,
        "domain": DOMAIN,
        "keystoneUsername": ADMIN,
        "keystonePassword": ADMIN_PASSWORD,
    }
    raw.update(overrides)
    config = CONNECTOR_TYPE.config_model.model_validate(raw)
    connector = CONNECTOR_TYPE.open("keystone", "Keystone", "keystone", config, env)
    assert isinstance(connector, KeystoneConnector)
    return connector


def new_user(api: KeystoneAPI, email: str = "") -> tuple[KeystoneUser, str]:
    password = secrets.token_urlsafe(12)
    return api.add_user(f"user-{secrets.token_hex(4)}", password, email=email), password


def test_registered_under_dex_name() -> None:
    assert CONNECTOR_TYPES["keystone"] is CONNECTOR_TYPE


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"keystoneHost": "keystone:5000"}, "keystoneHost must be an absolute"),
        ({"keystoneHost": "https://k.example/v3"}, "without the API version"),
        ({"keystonePassword": ""}, "keystonePassword must not be empty"),
        ({"domain": ""}, "domain"),
        ({"adminUsername": "x"}, "adminUsername"),
    ],
)
def test_config_refusals_name_the_key(overrides: dict[str, Any], message: str) -> None:
    raw = {
        "keystoneHost": "https://keystone.example.org:5000",
        "domain": "default",
        "keystoneUsername": "admin",
        "keystonePassword": "pw",
        **overrides,
    }
    with pytest.raises(ValidationError, match=message):
        CONNECTOR_TYPE.config_model.model_validate(raw)


def test_opening_touches_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (CORPUS / "keystone-domain.yaml").read_text()
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
    assert [c.type for c in config.connectors] == ["keystone"]


async def test_login_email_and_groups(keystone_api: KeystoneAPI, env: ConnectorEnv) -> None:
    user, password = new_user(keystone_api, email="ada@example.org")
    keystone_api.add_to_group("ops", user)
    keystone_api.add_to_group("admins", user)
    connector = make(keystone_api, env)
    assert connector.prompt == "Username"
    keystone_api.requests.clear()
    identity = await connector.login(GROUPS, user.name, password)
    assert identity is not None
    assert identity.user_id == user.id
    assert identity.username == user.name
    assert (identity.email, identity.email_verified) == ("ada@example.org", True)
    assert identity.groups == ("admins", "ops")
    assert identity.connector_data == b""  # no Keystone token is kept
    assert keystone_api.requests == [
        "POST /v3/auth/tokens",
        f"GET /v3/users/{user.id}",
        f"GET /v3/users/{user.id}/groups",
    ]
    # Without the groups scope no groups are read (as Dex).
    keystone_api.requests.clear()
    plain = await connector.login(Scopes(), user.name, password)
    assert plain is not None
    assert plain.groups == ()
    assert all("/groups" not in r for r in keystone_api.requests)
    bare, bare_password = new_user(keystone_api)
    no_mail = await connector.login(Scopes(), bare.name, bare_password)
    assert no_mail is not None
    assert (no_mail.email, no_mail.email_verified) == ("", False)


async def test_wrong_password_unknown_user_and_empty_password(
    keystone_api: KeystoneAPI, env: ConnectorEnv
) -> None:
    user, password = new_user(keystone_api)
    connector = make(keystone_api, env)
    assert await connector.login(GROUPS, user.name, password + "x") is None
    assert await connector.login(GROUPS, "nobody-" + user.name, password) is None
    assert await make(keystone_api, env, domain="other").login(GROUPS, user.name, password) is None
    keystone_api.requests.clear()
    assert await connector.login(GROUPS, user.name, "") is None
    assert await connector.login(GROUPS, "", password) is None
    assert keystone_api.requests == []  # an empty password never leaves Portcullis
    user.enabled = False
    assert await connector.login(GROUPS, user.name, password) is None


async def test_refresh_rereads_groups_and_fails_closed(
    keystone_api: KeystoneAPI, env: ConnectorEnv
) -> None:
    user, password = new_user(keystone_api, email="bo@example.org")
    keystone_api.add_to_group("ops", user)
    keystone_api.add_to_group("dev", user)
    connector = make(keystone_api, env)
    identity = await connector.login(GROUPS, user.name, password)
    assert identity is not None
    assert identity.groups == ("dev", "ops")
    keystone_api.remove_from_group("ops", user)
    refreshed = await connector.refresh(GROUPS, identity)
    assert refreshed.groups == ("dev",)
    assert refreshed.user_id == user.id
    assert refreshed.email == "bo@example.org"
    user.enabled = False
    with pytest.raises(ConnectorError, match="account is disabled"):
        await connector.refresh(GROUPS, refreshed)
    user.enabled = True
    keystone_api.delete_user(user)
    with pytest.raises(ConnectorError, match="no longer exists"):
        await connector.refresh(GROUPS, refreshed)


async def test_admin_account_refused_or_without_rights(
    keystone_api: KeystoneAPI, env: ConnectorEnv, caplog: pytest.LogCaptureFixture
) -> None:
    user, password = new_user(keystone_api)
    identity = await make(keystone_api, env).login(GROUPS, user.name, password)
    assert identity is not None
    caplog.set_level(logging.DEBUG)
    wrong = make(keystone_api, env, keystonePassword="not-the-admin-password")
    with pytest.raises(ConnectorError, match="admin account was refused"):
        await wrong.refresh(GROUPS, identity)
    assert "check keystoneUsername/keystonePassword" in caplog.text
    # An ordinary account as "admin": Keystone's policy answers 403 for someone else's record.
    other, other_password = new_user(keystone_api)
    weak = make(keystone_api, env, keystoneUsername=other.name, keystonePassword=other_password)
    with pytest.raises(ConnectorError, match=r"refused the Keystone refresh user lookup request"):
        await weak.refresh(GROUPS, identity)
    assert "HTTP 403 (You are not authorized to perform the requested action" in caplog.text
    assert "not-the-admin-password" not in caplog.text
    assert other_password not in caplog.text


async def test_truncated_group_list_is_an_error(
    keystone_api: KeystoneAPI, env: ConnectorEnv
) -> None:
    user, password = new_user(keystone_api)
    for index in range(5):
        keystone_api.add_to_group(f"team-{index}", user)
    keystone_api.list_limit = 3
    try:
        with pytest.raises(ConnectorError, match="only part of your groups"):
            await make(keystone_api, env).login(GROUPS, user.name, password)
    finally:
        keystone_api.list_limit = None


async def test_rate_limit_and_5xx(
    keystone_api: KeystoneAPI, env: ConnectorEnv, caplog: pytest.LogCaptureFixture
) -> None:
    user, password = new_user(keystone_api)
    connector = make(keystone_api, env)
    caplog.set_level(logging.INFO)
    keystone_api.throttle_retry_after = 7
    with pytest.raises(ConnectorError, match=r"rate limiting logins .*try again in 7 seconds"):
        await connector.login(GROUPS, user.name, password)
    keystone_api.fail_next = ("/v3/users", 503)
    with pytest.raises(ConnectorError, match=r"failed \(user lookup: HTTP 503\)"):
        await connector.login(GROUPS, user.name, password)
    keystone_api.fail_next = ("/v3/auth/tokens", 500)
    with pytest.raises(ConnectorError, match=r"failed \(login: HTTP 500\)"):
        await connector.login(GROUPS, user.name, password)
    assert "answered HTTP 500" in caplog.text
    identity = await connector.login(GROUPS, user.name, password)
    assert identity is not None
    keystone_api.fail_next = ("/v3/auth/tokens", 502)
    with pytest.raises(ConnectorError, match=r"failed \(admin login: HTTP 502\)"):
        await connector.refresh(GROUPS, identity)
    for secret in (password, ADMIN_PASSWORD, *keystone_api.tokens):
        assert secret not in caplog.text


async def test_unreachable_keystone_is_a_clear_error(env: ConnectorEnv) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = CONNECTOR_TYPE.config_model.model_validate(
        {
            "keystoneHost": f"http://127.0.0.1:{port}",
            "domain": "default",
            "keystoneUsername": "admin",
            "keystonePassword": "pw",
        }
    )
    connector = CONNECTOR_TYPE.open("keystone", "Keystone", "keystone", config, env)
    assert isinstance(connector, KeystoneConnector)
    with pytest.raises(ConnectorError, match=r"unreachable \(login\)"):
        await connector.login(GROUPS, "ada", "pw")


async def test_tokens_never_logged_even_at_debug(
    keystone_api: KeystoneAPI, env: ConnectorEnv, caplog: pytest.LogCaptureFixture
) -> None:
    # `logger.level: debug` makes the root logger DEBUG; the HTTP transport's own traces
    # (httpcore logs every response header) must not carry Keystone's X-Subject-Token.
    user, password = new_user(keystone_api)
    keystone_api.add_to_group("ops", user)
    connector = make(keystone_api, env)
    caplog.set_level(logging.DEBUG)
    before = set(keystone_api.tokens)
    identity = await connector.login(GROUPS, user.name, password)
    assert identity is not None
    await connector.refresh(GROUPS, identity)
    issued = set(keystone_api.tokens) - before
    assert len(issued) == 2  # the user's token at login, the admin token at refresh
    for secret in (*issued, password, ADMIN_PASSWORD):
        assert secret not in caplog.text
