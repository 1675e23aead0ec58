"""Authorization-code replay (RFC 6749 §4.1.2) on the in-process provider: the second exchange
of a code is refused and ends everything the first one issued — the refresh family (and every
JWT of it, including later rotations) and the JWTs minted directly from the code."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from portcullis.connectors.mock import MOCK_IDENTITY

from tests.support.oidc_provider import APP_REDIRECT, World

pytestmark = pytest.mark.anyio

REPLAYED = "the authorization code was already used; tokens issued from it are revoked"


def _code(world: World, scope: str = "openid offline_access") -> str:
    """Run the login state machine to a code, as the browser routes would."""
    flow = world.provider.authorization
    request = flow.parse(
        {
            "client_id": "app",
            "redirect_uri": APP_REDIRECT,
            "response_type": "code",
            "scope": scope,
            "state": "xyz",
        },
        browser_binding="binding-digest",
    )
    logged_in = flow.record_login(request.id, "mock", MOCK_IDENTITY)
    location = urlsplit(flow.finish(logged_in))
    query = parse_qs(location.query)
    assert query["state"] == ["xyz"]
    return query["code"][0]


async def _exchange(world: World, code: str) -> dict[str, Any]:
    return await world.token(grant_type="authorization_code", code=code, redirect_uri=APP_REDIRECT)


async def test_code_replay_revokes_the_family_and_the_codes_tokens(world: World) -> None:
    code = _code(world)
    issued = await _exchange(world, code)
    rotated = await world.refresh(issued["refresh_token"])
    assert world.jwt_valid(issued["access_token"])

    world.clock.advance(5)
    refused = await world.refuse(
        grant_type="authorization_code", code=code, redirect_uri=APP_REDIRECT
    )

    assert (refused.error, refused.description) == ("invalid_grant", REPLAYED)
    assert not world.family_exists(issued["refresh_token"])
    for tokens in (issued, rotated):
        assert not world.jwt_valid(tokens["access_token"])
        assert not world.jwt_valid(tokens["id_token"])
    after = await world.refuse(grant_type="refresh_token", refresh_token=rotated["refresh_token"])
    assert after.error == "invalid_grant"


async def test_code_replay_without_offline_access_revokes_the_codes_jwts(world: World) -> None:
    code = _code(world, scope="openid")
    issued = await _exchange(world, code)
    assert "refresh_token" not in issued

    await world.refuse(grant_type="authorization_code", code=code, redirect_uri=APP_REDIRECT)

    assert not world.jwt_valid(issued["access_token"])
    assert not world.jwt_valid(issued["id_token"])


async def test_code_replay_leaves_other_logins_alone(world: World) -> None:
    replayed_code = _code(world)
    await _exchange(world, replayed_code)
    other = await _exchange(world, _code(world))

    await world.refuse(
        grant_type="authorization_code", code=replayed_code, redirect_uri=APP_REDIRECT
    )

    assert world.family_exists(other["refresh_token"])
    assert world.jwt_valid(other["access_token"])
