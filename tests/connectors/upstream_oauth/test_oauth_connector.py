"""The generic ``oauth`` connector against a real node-oidc-provider used as a plain OAuth2
server (authorization endpoint, token endpoint, userinfo at /me)."""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from portcullis.connectors.base import ConnectorEnv, ConnectorError, Scopes
from portcullis.connectors.oauth import CONNECTOR_TYPE, OAuthConfig, OAuthConnector
from portcullis.storage.models import Identity
from pydantic import ValidationError

from tests.support.oidc_peer import OIDCPeer, browser_login
from tests.support.oidc_upstream import (
    ALICE,
    CALLBACK,
    CLIENT_ID,
    CLIENT_SECRET,
    POST_CLIENT_ID,
    POST_CLIENT_SECRET,
    ca_of,
)

pytestmark = pytest.mark.anyio

OFFLINE = Scopes(offline_access=True, groups=True)


def make(peer: OIDCPeer, env: ConnectorEnv, **overrides: Any) -> OAuthConnector:
    raw: dict[str, Any] = {
        "clientID": CLIENT_ID,
        "clientSecret": CLIENT_SECRET,
        "redirectURI": CALLBACK,
        # A fixed query on the authorization URL is kept: node-oidc-provider, like the OIDC
        # spec, grants offline_access only with prompt=consent.
        "authorizationURL": f"{peer.issuer}/auth?prompt=consent",
        "tokenURL": f"{peer.issuer}/token",
        "userInfoURL": f"{peer.issuer}/me",
        "scopes": ["openid", "profile", "email", "groups", "offline_access"],
        "userIDKey": "sub",
        "claimMapping": {"userNameKey": "name"},
    }
    raw.update(overrides)
    config = CONNECTOR_TYPE.config_model.model_validate(raw)
    connector = CONNECTOR_TYPE.open("plain", "Plain OAuth", "oauth", config, env)
    assert isinstance(connector, OAuthConnector)
    return connector


def new_user(peer: OIDCPeer, **claims: Any) -> str:
    user = f"user-{secrets.token_hex(4)}"
    peer.set_account(user, {**ALICE, "preferred_username": user, **claims})
    return user


async def login(
    connector: OAuthConnector, user: str, scopes: Scopes = OFFLINE, verify: Any = True
) -> Identity:
    state = secrets.token_urlsafe(16)
    start = await connector.login_url(scopes, CALLBACK, state)
    params = await asyncio.to_thread(browser_login, start.url, CALLBACK, user, verify=verify)
    assert params["state"] == state
    return await connector.handle_callback(scopes, params, start.connector_state)


async def test_login_maps_userinfo_keys(oidc_peer: OIDCPeer, env: ConnectorEnv) -> None:
    connector = make(oidc_peer, env)
    start = await connector.login_url(OFFLINE, CALLBACK, "st")
    query = parse_qs(urlsplit(start.url).query)
    assert query["prompt"] == ["consent"]
    assert query["client_id"] == [CLIENT_ID]
    identity = await login(connector, "alice")
    assert identity.user_id == "alice"
    assert identity.username == "Alice Liddell"
    assert identity.preferred_username == "alice"
    assert identity.email == "alice@example.com"
    assert identity.email_verified is True
    assert identity.groups == ("admins", "devs")
    assert set(json.loads(identity.connector_data)) == {"rt"}


async def test_groups_only_when_requested_and_custom_keys(
    oidc_peer: OIDCPeer, env: ConnectorEnv
) -> None:
    connector = make(
        oidc_peer,
        env,
        userIDKey="email",
        claimMapping={"userNameKey": "nickname", "preferredUsernameKey": "name", "emailKey": ""},
    )
    identity = await login(connector, "alice", Scopes(groups=False))
    assert identity.user_id == "alice@example.com"
    assert identity.username == "ally"
    assert identity.preferred_username == "Alice Liddell"
    assert identity.email == "alice@example.com"  # "" means the default key, as in Dex
    assert identity.groups == ()
    assert identity.connector_data == b""


async def test_missing_email_verified_counts_only_with_insecure_skip(
    oidc_peer: OIDCPeer, env: ConnectorEnv
) -> None:
    user = new_user(oidc_peer, email_verified=None)
    oidc_peer.set_account(user, {k: v for k, v in ALICE.items() if k != "email_verified"})
    assert (await login(make(oidc_peer, env), user)).email_verified is False
    skip = make(oidc_peer, env, insecureSkipEmailVerified=True)
    assert (await login(skip, user)).email_verified is True


async def test_missing_user_id_key_is_refused(oidc_peer: OIDCPeer, env: ConnectorEnv) -> None:
    with pytest.raises(ConnectorError, match='"id"'):
        await login(make(oidc_peer, env, userIDKey=""), "alice")  # default "id": absent


async def test_refresh_reflects_changed_groups(oidc_peer: OIDCPeer, env: ConnectorEnv) -> None:
    connector = make(oidc_peer, env)
    user = new_user(oidc_peer, groups=["devs"])
    identity = await login(connector, user)
    oidc_peer.set_account(user, {**ALICE, "groups": ["ops"]})
    refreshed = await connector.refresh(OFFLINE, identity)
    assert refreshed.groups == ("ops",)
    assert refreshed.connector_data != identity.connector_data  # rotated upstream token
    assert (await connector.refresh(OFFLINE, refreshed)).user_id == user


async def test_refresh_fails_after_the_user_is_removed(
    oidc_peer: OIDCPeer, env: ConnectorEnv
) -> None:
    connector = make(oidc_peer, env)
    user = new_user(oidc_peer)
    identity = await login(connector, user)
    oidc_peer.remove_account(user)
    with pytest.raises(ConnectorError, match="refused the refresh"):
        await connector.refresh(OFFLINE, identity)


async def test_refresh_without_upstream_refresh_token_rereads_userinfo(
    oidc_peer: OIDCPeer, env: ConnectorEnv
) -> None:
    connector = make(oidc_peer, env, scopes=["openid", "profile", "email", "groups"])
    user = new_user(oidc_peer)
    identity = await login(connector, user)
    assert set(json.loads(identity.connector_data)) == {"at"}
    oidc_peer.set_account(user, {**ALICE, "groups": ["ops"]})
    assert (await connector.refresh(OFFLINE, identity)).groups == ("ops",)
    oidc_peer.remove_account(user)
    with pytest.raises(ConnectorError, match="refused the userinfo"):
        await connector.refresh(OFFLINE, identity)


async def test_two_concurrent_refreshes_both_succeed(
    oidc_peer: OIDCPeer, env: ConnectorEnv
) -> None:
    connector = make(oidc_peer, env)
    user = new_user(oidc_peer)
    identity = await login(connector, user)
    oidc_peer.set_token_delay(300)
    try:
        one, two = await asyncio.gather(
            connector.refresh(OFFLINE, identity), connector.refresh(OFFLINE, identity)
        )
    finally:
        oidc_peer.set_token_delay(0)
    assert one == two
    assert (await connector.refresh(OFFLINE, one)).user_id == user


async def test_client_secret_post_is_detected(oidc_peer: OIDCPeer, env: ConnectorEnv) -> None:
    connector = make(oidc_peer, env, clientID=POST_CLIENT_ID, clientSecret=POST_CLIENT_SECRET)
    assert (await login(connector, "alice")).user_id == "alice"


async def test_root_cas_and_https(tls_oidc_peer: OIDCPeer, env: ConnectorEnv) -> None:
    ca = ca_of(tls_oidc_peer)
    with pytest.raises(ConnectorError, match="TLS verification failed"):
        await login(make(tls_oidc_peer, env), "alice", verify=ca)
    identity = await login(make(tls_oidc_peer, env, rootCAs=[str(ca)]), "alice", verify=ca)
    assert identity.user_id == "alice"


async def test_upstream_error_redirect_is_a_clear_error(
    oidc_peer: OIDCPeer, env: ConnectorEnv
) -> None:
    with pytest.raises(ConnectorError, match="access_denied"):
        await make(oidc_peer, env).handle_callback(OFFLINE, {"error": "access_denied"}, b"")


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        ({"tokenURL": "not-a-url"}, "tokenURL", "absolute http(s) URL"),
        ({"groupsKey": "g"}, "groupsKey", "Extra inputs"),
        ({"claimMapping": {"userIDKey": "x"}}, "claimMapping.userIDKey", "Extra inputs"),
        ({"rootCAs": ["nope"]}, "rootCAs", "rootCAs.0 is not a PEM certificate"),
    ],
)
def test_config_errors_name_the_field(raw: dict[str, Any], field: str, message: str) -> None:
    base = {
        "clientID": "c",
        "redirectURI": CALLBACK,
        "authorizationURL": "https://p.example/auth",
        "tokenURL": "https://p.example/token",
        "userInfoURL": "https://p.example/me",
    }
    with pytest.raises(ValidationError) as info:
        OAuthConfig.model_validate({**base, **raw})
    errors = [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in info.value.errors()]
    assert any(loc == field and message in msg for loc, msg in errors), errors


def test_missing_endpoints_are_named() -> None:
    with pytest.raises(ValidationError) as info:
        OAuthConfig.model_validate({"clientID": "c", "redirectURI": CALLBACK})
    missing = {str(e["loc"][0]) for e in info.value.errors() if e["type"] == "missing"}
    assert missing == {"tokenURL", "authorizationURL", "userInfoURL"}


def test_dex_example_config_loads_unchanged() -> None:
    config = OAuthConfig.model_validate(
        {
            "clientID": "id",
            "clientSecret": "s3cr3t-value",
            "redirectURI": "http://127.0.0.1:5556/dex/callback",
            "tokenURL": "https://www.reddit.com/api/v1/access_token",
            "authorizationURL": "https://www.reddit.com/api/v1/authorize",
            "userInfoURL": "https://www.reddit.com/api/v1/me",
            "insecureSkipEmailVerified": True,
            "insecureSkipVerify": False,
            "rootCAs": [],
            "scopes": ["identity"],
            "userIDKey": "",
            "claimMapping": {
                "userNameKey": "",
                "preferredUsernameKey": "",
                "groupsKey": "",
                "emailKey": "",
                "emailVerifiedKey": "",
            },
        }
    )
    assert config.user_id_key == "id"
    assert config.claim_mapping.groups_key == "groups"
    assert "s3cr3t-value" not in repr(config)
