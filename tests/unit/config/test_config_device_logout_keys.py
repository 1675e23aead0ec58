"""The config keys of the device flow, token exchange and RP-initiated logout, in Dex's names:
``oauth2.grantTypes`` with the two URNs, ``expiry.deviceRequests``, and a client's
``postLogoutRedirectURIs`` (absolute http(s) URLs, errors at their YAML path)."""

from __future__ import annotations

import pytest
from portcullis.config.load import ConfigError
from portcullis.issuer import parse_config

BASE = """
issuer: http://127.0.0.1:5556/dex
storage: {type: memory}
web: {http: 127.0.0.1:5556}
enablePasswordDB: true
"""

DEVICE = "urn:ietf:params:oauth:grant-type:device_code"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


def test_device_and_token_exchange_grants_and_device_expiry_load() -> None:
    config = parse_config(
        BASE
        + f"oauth2: {{grantTypes: [authorization_code, '{DEVICE}', '{EXCHANGE}']}}\n"
        + "expiry: {deviceRequests: 10m}\n"
        + "staticClients: [{id: ci, secret: ci-secret-0123456789, "
        + f"grantTypes: ['{EXCHANGE}']}}]\n",
        environ={},
    )
    assert config.raw.oauth2.enabled_grant_types() == ("authorization_code", DEVICE, EXCHANGE)
    assert config.raw.expiry.device_requests == 600.0
    assert config.clients[0].grant_types == (EXCHANGE,)


def test_post_logout_redirect_uris_load_for_a_client() -> None:
    config = parse_config(
        BASE
        + "staticClients: [{id: app, secret: app-secret-0123456789, "
        + "redirectURIs: ['https://app.example/cb'], "
        + "postLogoutRedirectURIs: ['https://app.example/bye']}]\n",
        environ={},
    )
    assert config.clients[0].post_logout_redirect_uris == ("https://app.example/bye",)


@pytest.mark.parametrize("uri", ["/relative", "javascript:alert(1)", "ftp://x.example/"])
def test_a_post_logout_redirect_uri_must_be_an_http_url(uri: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            BASE
            + "staticClients: [{id: app, secret: app-secret-0123456789, "
            + "redirectURIs: ['https://app.example/cb'], "
            + f"postLogoutRedirectURIs: ['{uri}']}}]\n",
            environ={},
        )
    assert "staticClients[0].postLogoutRedirectURIs[0]" in str(caught.value)
