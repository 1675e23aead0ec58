"""The upstream ``oidc`` connector against a real node-oidc-provider.

Every login goes through the connector's real HTTP code: ``login_url`` (discovery), the user's
browser at the upstream (login + consent forms), the callback parameters, ``handle_callback``
(code exchange with client authentication and PKCE, JWKS, ID token verification).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from portcullis.connectors.base import ConnectorEnv, ConnectorError, Scopes
from portcullis.connectors.oidc import CONNECTOR_TYPE, OIDCConfig, OIDCConnector, open_oidc
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


def make(peer: OIDCPeer, env: ConnectorEnv, **overrides: Any) -> OIDCConnector:
    raw: dict[str, Any] = {
        "issuer": peer.issuer,
        "clientID": CLIENT_ID,
        "clientSecret": CLIENT_SECRET,
        "redirectURI": CALLBACK,
        "scopes": ["profile", "email", "groups", "offline_access"],
        "insecureEnableGroups": True,
    }
    raw.update(overrides)
    config = CONNECTOR_TYPE.config_model.model_validate(raw)
    connector = CONNECTOR_TYPE.open("upstream", "Upstream", "oidc", config, env)
    assert isinstance(connector, OIDCConnector)
    return connector


def new_user(peer: OIDCPeer, **claims: Any) -> str:
    """A fresh upstream account (tests that change users never disturb the others)."""
    user = f"user-{secrets.token_hex(4)}"
    peer.set_account(user, {**ALICE, "preferred_username": user, **claims})
    return user


async def login(
    connector: OIDCConnector,
    user: str,
    scopes: Scopes = OFFLINE,
    verify: str | bool = True,
) -> Identity:
    state = secrets.token_urlsafe(16)
    start = await connector.login_url(scopes, CALLBACK, state)
    params = await asyncio.to_thread(browser_login, start.url, CALLBACK, user, verify=verify)
    assert params["state"] == state
    return await connector.handle_callback(scopes, params, start.connector_state)


async def test_login_maps_claims_groups_and_email(oidc_peer: OIDCPeer, env: ConnectorEnv) -> None:
    connector = make(oidc_peer, env)
    start = await connector.login_url(OFFLINE, CALLBACK, "st")
    query = parse_qs(urlsplit(start.url).query)
    # Auto-detected PKCE S256 from discovery, a nonce, offline access with prompt=consent.
    assert query["code_challenge_method"] == ["S256"]
    assert query["prompt"] == ["consent"]
    assert query["scope"] == ["openid profile email groups offline_access"]
    stored = json.loads(start.connector_state)
    assert query["nonce"] == [stored["nonce"]]
    assert len(stored["verifier"]) >= 43

    identity = await login(connector, "alice")
    assert identity.user_id == "alice"
    assert identity.username == "Alice Liddell"
    assert identity.preferred_username == "alice"
    assert identity.email == "alice@example.com"
    assert identity.email_verified is True
    assert identity.groups == ("admins", "devs")
    data = json.loads(identity.connector_data)
    assert set(data) == {"rt", "sub"}
    assert data["sub"] == "alice"
    assert data["rt"]


async def test_groups_need_insecure_enable_groups(oidc_peer: OIDCPeer, env: ConnectorEnv) -> None:
    identity = await login(make(oidc_peer, env, insecureEnableGroups=False), "alice")
    assert identity.groups == ()


async def test_claim_mapping_and_claim_modifications(
    oidc_peer: OIDCPeer, env: ConnectorEnv
) -> None:
    connector = make(
        oidc_peer,
        env,
        userNameKey="nickname",
        userIDKey="email",
        overrideClaimMapping=True,
        claimMapping={"preferred_username": "nickname"},
        claimModifications={
            "filterGroupClaims": {"groupsFilter": "^dev"},
            "modifyGroupNames": {"prefix": "up:", "suffix": "!"},
            "newGroupFromClaims": [
                {"prefix": "org", "delimiter": "::", "claims": ["preferred_username", "email"]}
            ],
        },
    )
    identity = await login(connector, "alice")
    assert identity.user_id == "alice@example.com"
    assert identity.username == "ally"
    assert identity.preferred_username == "ally"
    assert identity.groups == ("up:devs!", "org::alice::alice@example.com")


async def test_get_user_info_merges_userinfo_claims(oidc_peer: OIDCPeer, env: ConnectorEnv) -> None:
    # With only "openid" in the token the ID token is thin; getUserInfo fills it like Dex.
    connector = make(oidc_peer, env, getUserInfo=True, scopes=["profile", "email", "groups"])
    identity = await login(connector, "alice", Scopes(groups=True))
    assert identity.email == "alice@example.com"
    assert identity.groups == ("admins", "devs")
    assert identity.connector_data == b""  # nothing to keep without offline_access


async def test_nonce_of_another_login_is_refused(oidc_peer: OIDCPeer, env: ConnectorEnv) -> None:
    oidc_peer.mutate_next_token({"nonce": "nonce-of-another-login"})
    with pytest.raises(ConnectorError, match="does not belong to this login"):
        await login(make(oidc_peer, env), "alice")


async def test_callback_with_another_logins_state_is_refused(
    oidc_peer: OIDCPeer, env: ConnectorEnv
) -> None:
    connector = make(oidc_peer, env)
    start = await connector.login_url(OFFLINE, CALLBACK, "one")
    other = await connector.login_url(OFFLINE, CALLBACK, "two")
    params = await asyncio.to_thread(browser_login, start.url, CALLBACK, "alice")
    # The other login's PKCE verifier does not match the code: the upstream refuses it.
    with pytest.raises(ConnectorError, match="invalid_grant"):
        await connector.handle_callback(OFFLINE, params, other.connector_state)


async def test_tampered_id_token_is_refused(oidc_peer: OIDCPeer, env: ConnectorEnv) -> None:
    oidc_peer.mutate_next_token({"sub": "bob"}, resign=False)
    with pytest.raises(ConnectorError, match="invalid signature"):
        await login(make(oidc_peer, env), "alice")


async def test_id_token_signed_by_a_key_outside_the_jwks_is_refused(
    oidc_peer: OIDCPeer, env: ConnectorEnv
) -> None:
    oidc_peer.mutate_next_token({}, foreign_key=True)
    with pytest.raises(ConnectorError, match="invalid signature"):
        await login(make(oidc_peer, env), "alice")


@pytest.mark.parametrize("alg", ["none", "HS256"])
async def test_unsigned_or_hmac_id_token_is_refused(
    oidc_peer: OIDCPeer, env: ConnectorEnv, alg: str
) -> None:
    # HS256 keyed with our client secret: what an algorithm-confusion attack would forge.
    oidc_peer.mutate_next_token({"sub": "bob"}, header={"alg": alg}, hmac_key=CLIENT_SECRET)
    with pytest.raises(ConnectorError, match="refused algorithm"):
        await login(make(oidc_peer, env), "alice")


async def test_id_token_for_another_audience_is_refused(
    oidc_peer: OIDCPeer, env: ConnectorEnv
) -> None:
    oidc_peer.mutate_next_token({"aud": "another-client"})
    with pytest.raises(ConnectorError, match="another client"):
        await login(make(oidc_peer, env), "alice")


async def test_several_audiences_need_azp_for_us(oidc_peer: OIDCPeer, env: ConnectorEnv) -> None:
    connector = make(oidc_peer, env)
    oidc_peer.mutate_next_token({"aud": [CLIENT_ID, "another-client"], "azp": None})
    with pytest.raises(ConnectorError, match="azp"):
        await login(connector, "alice")
    oidc_peer.mutate_next_token({"aud": [CLIENT_ID, "another-client"], "azp": "another-client"})
    with pytest.raises(ConnectorError, match="azp"):
        await login(connector, "alice")
    oidc_peer.mutate_next_token({"aud": [CLIENT_ID, "another-client"], "azp": CLIENT_ID})
    assert (await login(connector, "alice")).user_id == "alice"


async def test_expired_id_token_is_refused(oidc_peer: OIDCPeer, env: ConnectorEnv) -> None:
    now = int(time.time())
    oidc_peer.mutate_next_token({"exp": now - 600, "iat": now - 1200})
    with pytest.raises(ConnectorError, match="expired"):
        await login(make(oidc_peer, env), "alice")


async def test_id_token_from_another_issuer_is_refused(
    oidc_peer: OIDCPeer, env: ConnectorEnv
) -> None:
    oidc_peer.mutate_next_token({"iss": "https://evil.example"})
    with pytest.raises(ConnectorError, match="wrong issuer"):
        await login(make(oidc_peer, env), "alice")


async def test_key_rollover_during_a_session(oidc_peer: OIDCPeer, env: ConnectorEnv) -> None:
    connector = make(oidc_peer, env)
    user = new_user(oidc_peer)
    identity = await login(connector, user)  # JWKS fetched and cached with the first key
    oidc_peer.rotate_keys(keep_old=False)  # the old key is gone from the JWKS
    # A new login is signed with a kid the cache does not know: one refetch finds it.
    assert (await login(connector, "alice")).user_id == "alice"
    # The refreshed ID token is signed with the new key too.
    refreshed = await connector.refresh(OFFLINE, identity)
    assert refreshed.user_id == user


async def test_allowed_groups_refuse_other_users(oidc_peer: OIDCPeer, env: ConnectorEnv) -> None:
    connector = make(oidc_peer, env, allowedGroups=["admins"])
    with pytest.raises(ConnectorError, match="not a member of a group allowed"):
        await login(connector, "bob")
    assert (await login(connector, "alice")).groups == ("admins",)


async def test_refresh_reflects_changed_groups_and_rotates_upstream_token(
    oidc_peer: OIDCPeer, env: ConnectorEnv
) -> None:
    connector = make(oidc_peer, env)
    user = new_user(oidc_peer, groups=["devs"])
    identity = await login(connector, user)
    assert identity.groups == ("devs",)
    oidc_peer.set_account(user, {**ALICE, "preferred_username": user, "groups": ["ops", "sre"]})
    refreshed = await connector.refresh(OFFLINE, identity)
    assert refreshed.user_id == user
    assert refreshed.groups == ("ops", "sre")
    old_rt = json.loads(identity.connector_data)["rt"]
    new_rt = json.loads(refreshed.connector_data)["rt"]
    assert new_rt
    assert new_rt != old_rt  # the provider rotates refresh tokens
    # A refresh request that narrows the scopes keeps the session refreshable.
    again = await connector.refresh(Scopes(groups=True), refreshed)
    assert again.groups == ("ops", "sre")
    assert json.loads(again.connector_data)["rt"]
    assert (await connector.refresh(OFFLINE, again)).user_id == user


async def test_refresh_reapplies_allowed_groups(oidc_peer: OIDCPeer, env: ConnectorEnv) -> None:
    connector = make(oidc_peer, env, allowedGroups=["admins"])
    user = new_user(oidc_peer, groups=["admins"])
    identity = await login(connector, user)
    oidc_peer.set_account(user, {**ALICE, "groups": ["devs"]})
    with pytest.raises(ConnectorError, match="not a member of a group allowed"):
        await connector.refresh(OFFLINE, identity)


async def test_refresh_fails_after_the_user_is_removed(
    oidc_peer: OIDCPeer, env: ConnectorEnv
) -> None:
    connector = make(oidc_peer, env)
    user = new_user(oidc_peer)
    identity = await login(connector, user)
    oidc_peer.remove_account(user)
    with pytest.raises(ConnectorError, match="refused the refresh"):
        await connector.refresh(OFFLINE, identity)


async def test_refresh_fails_after_the_user_is_disabled(
    oidc_peer: OIDCPeer, env: ConnectorEnv
) -> None:
    connector = make(oidc_peer, env)
    user = new_user(oidc_peer)
    identity = await login(connector, user)
    oidc_peer.set_account(user, {**ALICE, "disabled": True})
    with pytest.raises(ConnectorError, match="invalid_grant"):
        await connector.refresh(OFFLINE, identity)


async def test_provider_revokes_the_grant_when_a_rotated_token_is_replayed(
    oidc_peer: OIDCPeer, env: ConnectorEnv
) -> None:
    """The hazard the single-flight exists for, shown on the real provider: two processes
    (two connector instances, no shared state) refreshing the same session."""
    user = new_user(oidc_peer)
    identity = await login(make(oidc_peer, env), user)
    first, second = make(oidc_peer, env), make(oidc_peer, env)
    refreshed = await first.refresh(OFFLINE, identity)
    with pytest.raises(ConnectorError, match="invalid_grant"):
        await second.refresh(OFFLINE, identity)
    with pytest.raises(ConnectorError, match="invalid_grant"):  # the whole grant is gone
        await first.refresh(OFFLINE, refreshed)


async def test_two_concurrent_refreshes_both_succeed_against_a_rotating_provider(
    oidc_peer: OIDCPeer, env: ConnectorEnv
) -> None:
    connector = make(oidc_peer, env)
    user = new_user(oidc_peer)
    identity = await login(connector, user)
    before = oidc_peer.stats()["refresh_token"]
    oidc_peer.set_token_delay(300)  # both calls certainly overlap
    try:
        one, two = await asyncio.gather(
            connector.refresh(OFFLINE, identity), connector.refresh(OFFLINE, identity)
        )
    finally:
        oidc_peer.set_token_delay(0)
    assert one == two
    assert oidc_peer.stats()["refresh_token"] == before + 1  # one upstream refresh
    # A caller arriving right after (a client retry) gets the same result, no replay upstream.
    assert await connector.refresh(OFFLINE, identity) == one
    # And the session goes on with the new upstream token.
    assert (await connector.refresh(OFFLINE, one)).user_id == user


async def test_basic_auth_unsupported_sends_the_secret_in_the_form(
    oidc_peer: OIDCPeer, env: ConnectorEnv
) -> None:
    connector = make(
        oidc_peer,
        env,
        clientID=POST_CLIENT_ID,
        clientSecret=POST_CLIENT_SECRET,
        basicAuthUnsupported=True,
    )
    assert (await login(connector, "alice")).user_id == "alice"


async def test_client_auth_style_is_detected_when_not_configured(
    oidc_peer: OIDCPeer, env: ConnectorEnv
) -> None:
    # Like golang.org/x/oauth2's auto-detection: Basic is refused, the form is accepted.
    connector = make(oidc_peer, env, clientID=POST_CLIENT_ID, clientSecret=POST_CLIENT_SECRET)
    assert (await login(connector, "alice")).user_id == "alice"


async def test_wrong_client_secret_is_a_clear_error(oidc_peer: OIDCPeer, env: ConnectorEnv) -> None:
    with pytest.raises(ConnectorError, match="invalid_client"):
        await login(make(oidc_peer, env, clientSecret="wrong"), "alice")


async def test_upstream_error_redirect_is_a_clear_error(
    oidc_peer: OIDCPeer, env: ConnectorEnv
) -> None:
    connector = make(oidc_peer, env)
    start = await connector.login_url(OFFLINE, CALLBACK, "st")
    params = {"error": "access_denied", "error_description": "End-User aborted", "state": "st"}
    with pytest.raises(ConnectorError, match="access_denied: End-User aborted"):
        await connector.handle_callback(OFFLINE, params, start.connector_state)


async def test_callback_url_must_match_redirect_uri(oidc_peer: OIDCPeer, env: ConnectorEnv) -> None:
    with pytest.raises(ConnectorError, match="redirectURI"):
        await make(oidc_peer, env).login_url(OFFLINE, "http://127.0.0.1:9/other", "st")


async def test_upstream_down_is_a_quick_connector_error(env: ConnectorEnv) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = OIDCConfig.model_validate(
        {"issuer": f"http://127.0.0.1:{port}", "clientID": "c", "redirectURI": CALLBACK}
    )
    connector = open_oidc("down", "Down", "oidc", config, env)  # opening needs no upstream
    assert isinstance(connector, OIDCConnector)
    started = time.monotonic()
    with pytest.raises(ConnectorError, match="unreachable"):
        await connector.login_url(OFFLINE, CALLBACK, "st")
    with pytest.raises(ConnectorError, match="unreachable"):  # failures are not cached
        await connector.login_url(OFFLINE, CALLBACK, "st")
    assert time.monotonic() - started < 5


async def test_root_cas_trust_an_https_provider(tls_oidc_peer: OIDCPeer, env: ConnectorEnv) -> None:
    ca = str(ca_of(tls_oidc_peer))
    untrusting = make(tls_oidc_peer, env)
    with pytest.raises(ConnectorError, match="TLS verification failed"):
        await untrusting.login_url(OFFLINE, CALLBACK, "st")
    connector = make(tls_oidc_peer, env, rootCAs=[ca])
    identity = await login(connector, "alice", verify=ca)
    assert identity.email == "alice@example.com"
    # The inline PEM form of rootCAs works too (Dex accepts path, PEM or base64 PEM).
    inline = make(tls_oidc_peer, env, rootCAs=[ca_of(tls_oidc_peer).read_text()])
    assert (await inline.login_url(OFFLINE, CALLBACK, "st")).url.startswith("https://")


def _errors(raw: dict[str, Any]) -> list[tuple[str, str]]:
    base = {"issuer": "https://idp.example", "clientID": "c", "redirectURI": CALLBACK}
    with pytest.raises(ValidationError) as info:
        OIDCConfig.model_validate({**base, **raw})
    return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in info.value.errors()]


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        ({"hostedDomains": ["example.com"]}, "hostedDomains", "google connector"),
        ({"pkceChallenge": "plain"}, "pkceChallenge", "S256"),
        ({"pkceChallenge": "S512"}, "pkceChallenge", ""),
        ({"unknownKey": 1}, "unknownKey", "Extra inputs"),
        (
            {"providerDiscoveryOverrides": {"endSessionURL": "https://x/logout"}},
            "providerDiscoveryOverrides",
            "endSessionURL is not supported",
        ),
        (
            {"providerDiscoveryOverrides": {"tokenURL": "ftp://x"}},
            "providerDiscoveryOverrides",
            "tokenURL must be an absolute http(s) URL",
        ),
        (
            {"claimModifications": {"filterGroupClaims": {"groupsFilter": "("}}},
            "claimModifications.filterGroupClaims.groupsFilter",
            "not a valid regular expression",
        ),
        ({"claimMapping": {"mail": "x"}}, "claimMapping.mail", "Extra inputs"),
        ({"rootCAs": ["not a certificate"]}, "rootCAs", "rootCAs.0 is not a PEM certificate"),
        ({"issuer": "idp.example"}, "issuer", "absolute http(s) URL"),
        ({"clientID": ""}, "clientID", ""),
        ({"allowedGroups": ["admins"]}, "", "allowedGroups needs insecureEnableGroups"),
    ],
)
def test_config_errors_name_the_field(raw: dict[str, Any], field: str, message: str) -> None:
    errors = _errors(raw)
    assert any(loc == field and message in msg for loc, msg in errors), errors


def test_missing_required_keys_are_named() -> None:
    with pytest.raises(ValidationError) as info:
        OIDCConfig.model_validate({"issuer": "https://idp.example"})
    missing = {str(e["loc"][0]) for e in info.value.errors() if e["type"] == "missing"}
    assert missing == {"clientID", "redirectURI"}


def test_dex_example_config_loads_unchanged() -> None:
    """The configuration block of Dex's oidc connector docs (values filled in)."""
    config = OIDCConfig.model_validate(
        {
            "issuer": "https://accounts.google.com",
            "clientID": "id",
            "clientSecret": "s3cr3t-value",
            "redirectURI": "http://127.0.0.1:5556/dex/callback",
            "basicAuthUnsupported": True,
            "scopes": ["profile", "email", "groups"],
            "insecureSkipEmailVerified": True,
            "insecureEnableGroups": True,
            "allowedGroups": ["a"],
            "getUserInfo": True,
            "userIDKey": "nickname",
            "userNameKey": "nickname",
            "acrValues": ["x"],
            "promptType": "consent",
            "claimMapping": {"preferred_username": "u", "email": "mail", "groups": "cg"},
            "claimModifications": {
                "newGroupFromClaims": [
                    {"prefix": "e", "delimiter": "::", "clearDelimiter": False, "claims": ["o"]}
                ],
                "filterGroupClaims": {"groupsFilter": ".*"},
                "modifyGroupNames": {"prefix": "p-", "suffix": "s"},
            },
            "overrideClaimMapping": False,
            "providerDiscoveryOverrides": {"tokenURL": "", "authURL": ""},
            "issuerAlias": "https://accounts.google.com",
            "pkceChallenge": "S256",
            "rootCAs": [],
            "insecureSkipVerify": False,
        }
    )
    assert config.client_secret.get_secret_value() == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(config)


def test_insecure_skip_verify_is_refused_in_fips_mode(env: ConnectorEnv) -> None:
    config = OIDCConfig.model_validate(
        {
            "issuer": "https://idp.example",
            "clientID": "c",
            "redirectURI": CALLBACK,
            "insecureSkipVerify": True,
        }
    )
    fips = ConnectorEnv(env.storage, env.clock, env.issuer, fips_mode=True)
    with pytest.raises(ValueError, match=r"^insecureSkipVerify: refused in FIPS mode"):
        open_oidc("x", "X", "oidc", config, fips)


async def test_a_cancelled_refresh_does_not_lose_the_rotated_token(
    oidc_peer: OIDCPeer, env: ConnectorEnv
) -> None:
    """The client hangs up mid-refresh: the upstream call finishes anyway and the client's
    retry gets its result instead of replaying the consumed token."""
    connector = make(oidc_peer, env)
    user = new_user(oidc_peer)
    identity = await login(connector, user)
    before = oidc_peer.stats()["refresh_token"]
    oidc_peer.set_token_delay(400)
    try:
        first = asyncio.ensure_future(connector.refresh(OFFLINE, identity))
        await asyncio.sleep(0.1)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        retried = await connector.refresh(OFFLINE, identity)
    finally:
        oidc_peer.set_token_delay(0)
    assert retried.user_id == user
    assert oidc_peer.stats()["refresh_token"] == before + 1
    assert (await connector.refresh(OFFLINE, retried)).user_id == user


async def test_auth_request_carries_acr_values_and_prompt_type(
    oidc_peer: OIDCPeer, env: ConnectorEnv
) -> None:
    connector = make(oidc_peer, env, acrValues=["gold", "silver"], promptType="login")
    query = parse_qs(urlsplit((await connector.login_url(OFFLINE, CALLBACK, "st")).url).query)
    assert query["acr_values"] == ["gold silver"]
    assert query["prompt"] == ["login"]
    # Without offline_access there is no prompt at all (Dex).
    plain = await connector.login_url(Scopes(), CALLBACK, "st")
    assert "prompt" not in parse_qs(urlsplit(plain.url).query)


async def test_discovery_naming_another_issuer_is_refused_unless_aliased(
    oidc_peer: OIDCPeer, env: ConnectorEnv
) -> None:
    # A trailing slash is a different issuer string (OIDC Discovery §4.3).
    mismatched = make(oidc_peer, env, issuer=oidc_peer.issuer + "/")
    with pytest.raises(ConnectorError, match="names another issuer"):
        await mismatched.login_url(OFFLINE, CALLBACK, "st")
    aliased = make(oidc_peer, env, issuer=oidc_peer.issuer + "/", issuerAlias=oidc_peer.issuer)
    assert (await login(aliased, "alice")).user_id == "alice"


async def test_provider_discovery_overrides_are_used(
    oidc_peer: OIDCPeer, env: ConnectorEnv
) -> None:
    connector = make(
        oidc_peer,
        env,
        providerDiscoveryOverrides={"tokenURL": f"{oidc_peer.issuer}/no-such-token-endpoint"},
    )
    with pytest.raises(ConnectorError, match="HTTP 404"):
        await login(connector, "alice")
    working = make(
        oidc_peer,
        env,
        providerDiscoveryOverrides={
            "tokenURL": f"{oidc_peer.issuer}/token",
            "jwksURL": f"{oidc_peer.issuer}/jwks",
        },
    )
    assert (await login(working, "alice")).user_id == "alice"


async def test_upstream_tokens_and_secrets_never_reach_the_logs(
    oidc_peer: OIDCPeer, env: ConnectorEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger at DEBUG, as `logger.level: debug`
    connector = make(oidc_peer, env)
    user = new_user(oidc_peer)
    identity = await login(connector, user)
    refreshed = await connector.refresh(OFFLINE, identity)
    oidc_peer.remove_account(user)
    with pytest.raises(ConnectorError):
        await connector.refresh(OFFLINE, refreshed)
    secrets_seen = [
        CLIENT_SECRET,
        json.loads(identity.connector_data)["rt"],
        json.loads(refreshed.connector_data)["rt"],
    ]
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "upstream refresh refused" in text  # DEBUG records were captured
    # The transport's loggers (headers, full URLs) stay at WARNING whatever the level.
    assert not any(record.name.startswith(("httpx", "httpcore")) for record in caplog.records)
    for value in secrets_seen:
        assert value not in text
