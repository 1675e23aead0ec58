"""Refresh-token reuse detection (RFC 9700 §4.14.2) on the in-process provider: a retry inside
``reuseInterval`` gets the same successor; an older secret after it, or a secret two
generations old, ends the family and revokes every JWT minted for it (through ``sid``); and
concurrent refreshes that overtake each other resolve the same way."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from portcullis.oidc.errors import OAuthError
from portcullis.oidc.refresh import Overtaken, parse_refresh_token

from tests.support.oidc_provider import World

pytestmark = pytest.mark.anyio

REUSED = "the refresh token was already used; the session has been revoked"


def _assert_family_ended(world: World, *token_sets: dict[str, Any]) -> None:
    for tokens in token_sets:
        assert not world.family_exists(tokens["refresh_token"])
        assert not world.jwt_valid(tokens["access_token"])
        assert not world.jwt_valid(tokens["id_token"])
        assert world.provider.reader.userinfo(tokens["access_token"]) is None


async def test_retry_inside_the_reuse_interval_returns_the_same_successor(world: World) -> None:
    first = await world.login()
    second = await world.refresh(first["refresh_token"])

    world.clock.advance(2)  # reuseInterval is 3s
    retried = await world.refresh(first["refresh_token"])

    assert retried["refresh_token"] == second["refresh_token"]
    assert world.jwt_valid(second["access_token"])
    assert world.jwt_valid(retried["access_token"])
    # The successor still rotates normally afterwards.
    third = await world.refresh(second["refresh_token"])
    assert third["refresh_token"] != second["refresh_token"]


async def test_old_secret_after_the_reuse_interval_revokes_the_family(world: World) -> None:
    first = await world.login()
    second = await world.refresh(first["refresh_token"])

    world.clock.advance(4)
    refused = await world.refuse(grant_type="refresh_token", refresh_token=first["refresh_token"])

    assert (refused.error, refused.description) == ("invalid_grant", REUSED)
    _assert_family_ended(world, first, second)
    # The legitimate holder of the newest token is logged out too.
    after = await world.refuse(grant_type="refresh_token", refresh_token=second["refresh_token"])
    assert after.error == "invalid_grant"
    app = world.provider.clients.get("app")
    assert app is not None
    assert world.provider.reader.introspect(app, {"token": second["refresh_token"]}) == {
        "active": False
    }


async def test_a_secret_two_generations_old_revokes_the_family_even_inside_the_interval(
    world: World,
) -> None:
    first = await world.login()
    second = await world.refresh(first["refresh_token"])
    third = await world.refresh(second["refresh_token"])

    refused = await world.refuse(grant_type="refresh_token", refresh_token=first["refresh_token"])

    assert refused.description == REUSED
    _assert_family_ended(world, first, second, third)


async def test_reuse_ends_only_that_family(world: World) -> None:
    victim = await world.login()
    bystander = await world.login()
    await world.refresh(victim["refresh_token"])
    world.clock.advance(10)

    await world.refuse(grant_type="refresh_token", refresh_token=victim["refresh_token"])

    assert world.family_exists(bystander["refresh_token"])
    assert world.jwt_valid(bystander["access_token"])
    await world.refresh(bystander["refresh_token"])


async def _refresh_into(world: World, refresh_token: str, results: list[Any]) -> None:
    try:
        results.append(await world.refresh(refresh_token))
    except OAuthError as error:
        results.append(error)


async def test_concurrent_rotation_overtaken_by_one_gets_the_same_successor(
    world: World,
) -> None:
    first = await world.login()
    held: list[Any] = []
    async with anyio.create_task_group() as tasks:
        world.connector.hold_next_refresh = True
        tasks.start_soon(_refresh_into, world, first["refresh_token"], held)
        await world.connector.entered.wait()  # looked up, now waiting on "upstream"
        other = await world.refresh(first["refresh_token"])
        world.connector.release.set()

    assert len(held) == 1
    assert isinstance(held[0], dict), held[0]
    assert held[0]["refresh_token"] == other["refresh_token"]
    assert world.family_exists(other["refresh_token"])


async def test_concurrent_rotation_overtaken_twice_is_reuse(world: World) -> None:
    first = await world.login()
    held: list[Any] = []
    async with anyio.create_task_group() as tasks:
        world.connector.hold_next_refresh = True
        tasks.start_soon(_refresh_into, world, first["refresh_token"], held)
        await world.connector.entered.wait()
        second = await world.refresh(first["refresh_token"])
        third = await world.refresh(second["refresh_token"])
        world.connector.release.set()

    assert isinstance(held[0], OAuthError)
    assert held[0].description == REUSED
    _assert_family_ended(world, first, second, third)


async def test_store_reports_an_overtaken_rotation(world: World) -> None:
    first = await world.login()
    app = world.provider.clients.get("app")
    assert app is not None
    presented = await world.provider.refresh.lookup_for_grant_async(first["refresh_token"], app)
    second = await world.refresh(first["refresh_token"])
    await world.refresh(second["refresh_token"])

    outcome = await world.provider.refresh.rotate_async(app, presented, presented.family.identity)

    assert outcome == Overtaken()
    # rotate_async() only decides; it is the grant that ends the family.
    parsed = parse_refresh_token(first["refresh_token"])
    assert parsed is not None
    assert world.storage.get_refresh_token(parsed[0]).id == parsed[0]


async def test_revocation_with_the_previous_secret_ends_the_family(world: World) -> None:
    first = await world.login()
    second = await world.refresh(first["refresh_token"])
    app = world.provider.clients.get("app")
    assert app is not None

    world.provider.reader.revoke(app, {"token": first["refresh_token"]})

    _assert_family_ended(world, first, second)


async def test_revocation_by_another_client_is_ignored(world: World) -> None:
    tokens = await world.login()
    kubectl = world.provider.clients.get("kubectl")
    assert kubectl is not None

    world.provider.reader.revoke(kubectl, {"token": tokens["refresh_token"]})

    assert world.family_exists(tokens["refresh_token"])
    assert world.jwt_valid(tokens["access_token"])
