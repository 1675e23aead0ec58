"""The authproxy connector: Dex's keys and defaults, the trusted-proxy requirement, and what it
makes of the proxy's headers (the HTTP path is covered by tests/integration/
test_federation_web.py)."""

from __future__ import annotations

import pytest
from portcullis.clock import SystemClock
from portcullis.config.load import ConfigError, parse_config
from portcullis.connectors.authproxy import CONNECTOR_TYPE, AuthProxyConfig, AuthProxyConnector
from portcullis.connectors.base import ConnectorEnv, ConnectorError, Scopes
from portcullis.issuer import check_connectors, connector_models
from portcullis.storage.memory import MemoryStorage
from pydantic import ValidationError


def _env(trusted: tuple[str, ...] = ()) -> ConnectorEnv:
    return ConnectorEnv(
        MemoryStorage(), SystemClock(), "https://issuer.example/dex", False, trusted
    )


def _open(config: dict[str, object], trusted: tuple[str, ...] = ()) -> AuthProxyConnector:
    model = AuthProxyConfig.model_validate(config)
    connector = CONNECTOR_TYPE.open("proxy", "Proxy", "authproxy", model, _env(trusted))
    assert isinstance(connector, AuthProxyConnector)
    return connector


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_no_trusted_proxy_anywhere_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^trustedProxies: required"):
        _open({})


def test_unknown_keys_and_bad_header_names_are_config_errors() -> None:
    with pytest.raises(ValidationError, match="staticGroup"):
        AuthProxyConfig.model_validate({"staticGroup": ["x"]})
    with pytest.raises(ValidationError, match="not an HTTP header name"):
        AuthProxyConfig.model_validate({"userHeader": "X Remote User"})
    with pytest.raises(ValidationError, match="trustedProxies"):
        AuthProxyConfig.model_validate({"trustedProxies": ["not-a-network"]})


def test_login_url_is_the_callback_path_of_the_connector() -> None:
    connector = _open({"trustedProxies": ["10.0.0.1/32"]})
    redirect = connector.login_url("https://issuer.example/dex/callback", "req-1")
    assert redirect.url == "https://issuer.example/dex/callback/proxy?state=req-1"


@pytest.mark.anyio
async def test_dex_defaults_and_groups() -> None:
    connector = _open({"staticGroups": ["static"]}, trusted=("10.0.0.0/8",))
    identity = await connector.login(
        Scopes(),
        {"x-remote-user": " jo@example.org ", "x-remote-group": "a, b,,a\nc"},
        "10.1.2.3",
    )
    assert identity.user_id == "jo@example.org"
    assert identity.email == "jo@example.org"
    assert identity.email_verified
    assert identity.groups == ("a", "b", "c", "static")


@pytest.mark.anyio
async def test_own_trusted_proxies_win_over_the_web_list() -> None:
    connector = _open({"trustedProxies": ["192.0.2.7/32"]}, trusted=("10.0.0.0/8",))
    with pytest.raises(ConnectorError, match="only works through the login proxy"):
        await connector.login(Scopes(), {"x-remote-user": "jo"}, "10.1.2.3")
    identity = await connector.login(Scopes(), {"x-remote-user": "jo"}, "::ffff:192.0.2.7")
    assert identity.user_id == "jo"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-remote-user": ""},
        {"x-remote-user": "a\nb"},  # sent twice
        {"x-remote-user": "x" * 2000},
        {"x-remote-user": "jo\x00"},
        {"x-forwarded-user": "jo"},  # not the configured header
    ],
)
async def test_unusable_user_headers_are_refused(headers: dict[str, str]) -> None:
    connector = _open({"trustedProxies": ["127.0.0.1/32"]})
    with pytest.raises(ConnectorError, match="did not identify you"):
        await connector.login(Scopes(), headers, "127.0.0.1")


@pytest.mark.anyio
async def test_a_custom_user_header() -> None:
    connector = _open({"userHeader": "X-Forwarded-User", "trustedProxies": ["127.0.0.1/32"]})
    identity = await connector.login(Scopes(), {"x-forwarded-user": "jo"}, "127.0.0.1")
    assert identity.username == "jo"


def test_check_connectors_reports_open_errors_at_their_path() -> None:
    text = (
        "issuer: https://issuer.example/dex\nstorage: {type: memory}\n"
        "web: {http: '127.0.0.1:5556'}\n"
        "connectors:\n"
        "- {type: authproxy, id: a, name: A, config: {trustedProxies: ['10.0.0.0/8']}}\n"
        "- {type: authproxy, id: b, name: B}\n"
    )
    config = parse_config(text, environ={}, connector_models=connector_models())
    with pytest.raises(ConfigError) as raised:
        check_connectors(config, fips_mode=False)
    assert raised.value.problems == [
        "connectors[1].config: trustedProxies: required (the addresses of the authenticating "
        "proxy); set it here or in web.clientRemoteIP.trustedProxies, otherwise anyone could "
        "send the headers (connector 'b')"
    ]
