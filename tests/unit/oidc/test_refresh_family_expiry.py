"""Refresh-family expiry on the in-process provider: the absolute lifetime counts from the login
and is never extended by use, the idle limit counts from the last use; an expired family is
ended (and its JWTs revoked) on its next presentation, and introspection reports it inactive."""

from __future__ import annotations

import pytest
from portcullis.oidc.refresh import family_expiry, parse_refresh_token
from portcullis.oidc.settings import RefreshPolicy
from portcullis.storage.models import Client

from tests.support.oidc_provider import START, World, make_world

pytestmark = pytest.mark.anyio

EXPIRED = "the refresh token has expired"


def _inactive(world: World, refresh_token: str) -> bool:
    app = world.provider.clients.get("app")
    assert app is not None
    return world.provider.reader.introspect(app, {"token": refresh_token}) == {"active": False}


async def test_absolute_lifetime_is_not_extended_by_use() -> None:
    world = make_world(refresh="reuseInterval: 3s, absoluteLifetime: 1h")
    tokens = await world.login()
    for _ in range(3):
        world.clock.advance(15 * 60)
        tokens = await world.refresh(tokens["refresh_token"])
    family_id = parse_refresh_token(tokens["refresh_token"])
    assert family_id is not None
    assert world.storage.get_refresh_token(family_id[0]).expires_at == START + 3600
    assert not _inactive(world, tokens["refresh_token"])

    world.clock.advance(15 * 60 + 1)  # 1h and 1s after the login
    assert _inactive(world, tokens["refresh_token"])
    refused = await world.refuse(grant_type="refresh_token", refresh_token=tokens["refresh_token"])

    assert (refused.error, refused.description) == ("invalid_grant", EXPIRED)
    assert not world.family_exists(tokens["refresh_token"])
    # Ending the family revoked the JWTs of its last rotation, though they had not expired.
    assert world.provider.reader.verified_claims(tokens["access_token"], check_expiry=False) is None


async def test_idle_limit_counts_from_the_last_use() -> None:
    world = make_world(refresh="reuseInterval: 3s, validIfNotUsedFor: 10m")
    tokens = await world.login()
    for _ in range(4):  # 36 minutes in all, never 10 idle
        world.clock.advance(9 * 60)
        tokens = await world.refresh(tokens["refresh_token"])

    world.clock.advance(10 * 60 + 1)
    refused = await world.refuse(grant_type="refresh_token", refresh_token=tokens["refresh_token"])

    assert refused.description == EXPIRED
    assert not world.family_exists(tokens["refresh_token"])


async def test_the_earlier_limit_wins() -> None:
    world = make_world(refresh="reuseInterval: 3s, validIfNotUsedFor: 50m, absoluteLifetime: 1h")
    tokens = await world.login()
    world.clock.advance(40 * 60)
    tokens = await world.refresh(tokens["refresh_token"])  # idle limit now 1h30 > absolute 1h

    world.clock.advance(20 * 60 + 1)
    refused = await world.refuse(grant_type="refresh_token", refresh_token=tokens["refresh_token"])

    assert refused.description == EXPIRED


async def test_without_limits_a_family_never_expires(world: World) -> None:
    tokens = await world.login()
    world.clock.advance(400 * 24 * 3600)
    refreshed = await world.refresh(tokens["refresh_token"])
    assert world.jwt_valid(refreshed["id_token"])


def _client(absolute: float | None) -> Client:
    return Client(
        id="c", secret_hash="", redirect_uris=(), refresh_token_absolute_lifetime=absolute
    )


def test_a_clients_own_absolute_lifetime_overrides_the_servers() -> None:
    policy = RefreshPolicy(
        disable_rotation=False,
        reuse_interval=3.0,
        valid_if_not_used_for=0.0,
        absolute_lifetime=3600.0,
    )
    assert family_expiry(policy, _client(None), 1000.0, 2000.0) == 4600.0
    assert family_expiry(policy, _client(60.0), 1000.0, 2000.0) == 1060.0
    no_limits = RefreshPolicy(
        disable_rotation=False, reuse_interval=3.0, valid_if_not_used_for=0.0, absolute_lifetime=0
    )
    assert family_expiry(no_limits, _client(None), 1000.0, 2000.0) == 0.0
