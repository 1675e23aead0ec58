"""``RefreshStore.rotate_current_async``, the refresh grant's one-statement path: it rotates only a
live family's current secret for its own client and an allowed connector, and whatever it
leaves alone is decided by the general path exactly as before (a retry inside reuseInterval
gets the same successor, a replay ends the family)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from portcullis.connectors.authproxy import AuthProxyConfig, AuthProxyConnector
from portcullis.oidc.denials import CLIENT
from portcullis.oidc.refresh import (
    FamilyRead,
    MalformedRefreshTokenError,
    Rotated,
    digest,
    format_refresh_token,
    parse_refresh_token,
)
from portcullis.storage.base import NotFoundError

from tests.support.oidc_provider import World, make_world

pytestmark = pytest.mark.anyio


def _left_alone(result: object, family: Any) -> bool:
    """Not rotated: the family handed to the general path, as stored (unchanged)."""
    return isinstance(result, FamilyRead) and result.family == family


def _split(token: str) -> tuple[str, str]:
    parsed = parse_refresh_token(token)
    assert parsed is not None
    return parsed


async def test_current_secret_rotates_in_one_statement(world: World) -> None:
    token = (await world.login())["refresh_token"]
    family_id, secret = _split(token)
    client = world.provider.clients.get("app")
    assert client is not None
    world.clock.advance(30)

    rotated = await world.provider.refresh.rotate_current_async(token, client, ("mock",))

    assert isinstance(rotated, tuple)
    family, outcome = rotated
    assert family.id == family_id
    assert outcome.secret != secret
    stored = world.storage.get_refresh_token(family_id)
    assert stored == family
    assert stored.token_hash == digest(outcome.secret)
    assert stored.obsolete_token_hash == digest(secret)
    assert stored.last_used == world.clock.now()
    # The successor works as a refresh token through the grant.
    again = await world.refresh(format_refresh_token(family_id, outcome.secret))
    assert _split(again["refresh_token"])[0] == family_id


async def test_previous_secret_is_left_to_the_general_path(world: World) -> None:
    token = (await world.login())["refresh_token"]
    client = world.provider.clients.get("app")
    assert client is not None
    rotated = await world.provider.refresh.rotate_current_async(token, client, ("mock",))
    assert isinstance(rotated, tuple)
    successor = rotated[1].secret

    # Not the current secret any more: nothing happens here ...
    stored = world.storage.get_refresh_token(_split(token)[0])
    again = await world.provider.refresh.rotate_current_async(token, client, ("mock",))
    assert _left_alone(again, stored)
    # ... and the grant treats it as the retry it is: the same successor inside the interval.
    world.clock.advance(1)
    retry = await world.refresh(token)
    assert _split(retry["refresh_token"])[1] == successor
    # After the interval it is a replay: the family ends.
    world.clock.advance(10)
    refused = await world.refuse(grant_type="refresh_token", refresh_token=token)
    assert refused.error == "invalid_grant"
    with pytest.raises(NotFoundError):
        world.storage.get_refresh_token(_split(token)[0])


async def test_other_client_connector_or_expired_family_is_not_touched(world: World) -> None:
    token = (await world.login())["refresh_token"]
    family_id, _ = _split(token)
    before = world.storage.get_refresh_token(family_id)
    store = world.provider.refresh
    app = world.provider.clients.get("app")
    assert app is not None

    assert _left_alone(await store.rotate_current_async(token, app, ("other-connector",)), before)
    other = dataclasses.replace(app, id="someone-else")
    assert _left_alone(await store.rotate_current_async(token, other, ("mock",)), before)
    assert world.storage.get_refresh_token(family_id) == before

    expired = dataclasses.replace(before, expires_at=world.clock.now() - 1)
    world.storage.update_refresh_token(family_id, lambda _: expired)
    assert _left_alone(await store.rotate_current_async(token, app, ("mock",)), expired)
    assert world.storage.get_refresh_token(family_id) == expired


async def test_a_denied_family_is_left_to_the_general_path(world: World) -> None:
    """``portcullis revoke`` deletes the families it denies; one created in the instant before
    the denial was written escapes that and must still be refused. The one-statement path
    leaves it alone (no rotation), and the general path's deny-list check ends it."""
    token = (await world.login())["refresh_token"]
    family_id, _ = _split(token)
    before = world.storage.get_refresh_token(family_id)
    app = world.provider.clients.get("app")
    assert app is not None
    world.clock.advance(1)
    world.storage.deny_subject(CLIENT, "app", world.clock.now(), world.clock.now() + 3600)

    found = await world.provider.refresh.rotate_current_async(token, app, ("mock",))
    assert _left_alone(found, before)
    assert isinstance(found, FamilyRead)
    assert found.denied_since  # the hint that sends the general path to the deny list
    assert world.storage.get_refresh_token(family_id) == before
    refused = await world.refuse(grant_type="refresh_token", refresh_token=token)
    assert (refused.error, refused.description) == (
        "invalid_grant",
        "the refresh token has been revoked",
    )
    with pytest.raises(NotFoundError):
        world.storage.get_refresh_token(family_id)


async def test_rotation_disabled_hands_back_the_same_secret() -> None:
    world = make_world("reuseInterval: 3s, disableRotation: true")
    token = (await world.login())["refresh_token"]
    client = world.provider.clients.get("app")
    assert client is not None
    world.clock.advance(5)
    rotated = await world.provider.refresh.rotate_current_async(token, client, ("mock",))
    assert isinstance(rotated, tuple)
    assert rotated[1] == Rotated(_split(token)[1])
    assert rotated[0].last_used == world.clock.now()


async def test_malformed_token_is_refused(world: World) -> None:
    client = world.provider.clients.get("app")
    assert client is not None
    with pytest.raises(MalformedRefreshTokenError):
        await world.provider.refresh.rotate_current_async("not-a-token", client, ("mock",))


async def test_the_grant_takes_it_per_connector(monkeypatch: pytest.MonkeyPatch) -> None:
    """A family of a connector without upstream refresh rotates in one statement (no read)
    even when another configured connector refreshes upstream; a family of that other
    connector still has the user re-checked upstream first."""
    proxy = AuthProxyConnector("proxy", "Proxy", "authproxy", AuthProxyConfig(), ())
    world = make_world(extra_connectors=[proxy])
    local_token = (await world.login())["refresh_token"]
    local_id, _ = _split(local_token)
    world.storage.update_refresh_token(
        local_id, lambda family: dataclasses.replace(family, connector_id="proxy")
    )
    upstream_token = (await world.login())["refresh_token"]

    read = world.storage.get_refresh_token

    def no_read(token_id: str) -> Any:
        raise AssertionError(f"family {token_id} was read")

    monkeypatch.setattr(world.storage, "get_refresh_token", no_read)
    rotated = await world.refresh(local_token)
    assert _split(rotated["refresh_token"])[0] == local_id
    assert world.connector.refreshes == 0

    monkeypatch.setattr(world.storage, "get_refresh_token", read)
    await world.refresh(upstream_token)
    assert world.connector.refreshes == 1
