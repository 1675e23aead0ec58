"""A retry with the previous refresh secret inside ``reuseInterval`` (a client that lost the
response) must not call the connector's upstream refresh again: with an upstream that rotates
its own refresh tokens, that second call would spend the upstream token stored with the family
and end the session at the next real refresh. The retry gets the sealed successor and the
identity as of the rotation it repeats."""

from __future__ import annotations

import pytest
from portcullis.storage.models import Identity

from tests.support.oidc_provider import World

pytestmark = pytest.mark.anyio


async def test_a_retry_inside_the_reuse_interval_does_not_refresh_upstream(world: World) -> None:
    first = await world.login()
    second = await world.refresh(first["refresh_token"])
    assert world.connector.refreshes == 1

    world.clock.advance(2)  # reuseInterval is 3s
    retried = await world.refresh(first["refresh_token"])

    assert retried["refresh_token"] == second["refresh_token"]
    assert world.connector.refreshes == 1
    # The next real refresh goes upstream again.
    await world.refresh(second["refresh_token"])
    assert world.connector.refreshes == 2


def test_upstream_tokens_stay_out_of_an_identitys_repr() -> None:
    identity = Identity(user_id="u", username="alice", connector_data=b"upstream-refresh-XYZ")
    assert "upstream-refresh-XYZ" not in repr(identity)
    assert identity.connector_data == b"upstream-refresh-XYZ"
