"""Refresh tokens in Dex's envelope (after `portcullis import-dex`) on the in-process provider:
accepted once and rotated into ours, never honoured twice (not even inside reuseInterval), and
subject to the same reuse rules as our own tokens."""

from __future__ import annotations

import pytest
from portcullis.connectors.authproxy import AuthProxyConfig, AuthProxyConnector
from portcullis.oidc.dex_refresh import encode_dex_refresh_token
from portcullis.oidc.refresh import digest
from portcullis.storage.models import ImportBatch, RefreshToken

from tests.support.oidc_provider import START, World, make_world

pytestmark = pytest.mark.anyio

DEX_ID = "dexrefreshid0123456789abcd"
DEX_SECRET = "dexrefreshtoken0123456789a"
REUSED = "the refresh token was already used; the session has been revoked"


async def _import_dex_family(world: World, connector_id: str = "mock") -> str:
    # The identity the mock connector asserts (its refresh re-checks it), taken from a login.
    await world.login()
    (ours,) = world.storage.list_refresh_tokens()
    world.storage.delete_refresh_token(ours.id)
    world.storage.import_batch(
        ImportBatch(
            refresh_tokens=(
                RefreshToken(
                    id=DEX_ID,
                    token_hash=digest(DEX_SECRET),
                    client_id="app",
                    connector_id=connector_id,
                    identity=ours.identity,
                    scopes=("openid", "offline_access"),
                    created_at=START - 3600,
                    last_used=START - 60,
                ),
            )
        )
    )
    return encode_dex_refresh_token(DEX_ID, DEX_SECRET)


async def test_dex_token_is_accepted_once_and_rotated_into_ours(world: World) -> None:
    dex_token = await _import_dex_family(world)
    tokens = await world.refresh(dex_token)
    assert tokens["refresh_token"].startswith(f"pcr1.{DEX_ID}.")
    assert world.jwt_valid(tokens["id_token"])
    # Ours keeps working.
    again = await world.refresh(tokens["refresh_token"])
    assert again["refresh_token"] != tokens["refresh_token"]


async def test_dex_token_twice_is_reuse_even_inside_the_interval(world: World) -> None:
    dex_token = await _import_dex_family(world)
    tokens = await world.refresh(dex_token)
    world.clock.advance(1)  # inside reuseInterval (3s): our own token would be retried
    refused = await world.refuse(grant_type="refresh_token", refresh_token=dex_token)
    assert refused.error == "invalid_grant"
    assert refused.description == REUSED
    assert not world.jwt_valid(tokens["access_token"])
    assert world.storage.list_refresh_tokens() == []


async def test_dex_token_with_a_wrong_secret_ends_the_family(world: World) -> None:
    await _import_dex_family(world)
    forged = encode_dex_refresh_token(DEX_ID, "not-the-token")
    refused = await world.refuse(grant_type="refresh_token", refresh_token=forged)
    assert refused.description == REUSED
    assert world.storage.list_refresh_tokens() == []


async def test_dex_token_of_an_unknown_family_is_invalid(world: World) -> None:
    refused = await world.refuse(
        grant_type="refresh_token", refresh_token=encode_dex_refresh_token("nope", "x")
    )
    assert refused.error == "invalid_grant"
    assert refused.description == "the refresh token is invalid or was revoked"


@pytest.mark.parametrize("family_connector", ["mock", "proxy"])
async def test_dex_token_is_accepted_with_a_connector_without_upstream_refresh(
    family_connector: str,
) -> None:
    """With a SAML or authproxy connector configured, the grant first tries the one-statement
    rotation, which takes only our own token format: a token in Dex's envelope must still go
    on to the general path (not be refused as malformed), whichever connector its family
    belongs to."""
    proxy = AuthProxyConnector("proxy", "Proxy", "authproxy", AuthProxyConfig(), ())
    world = make_world(extra_connectors=[proxy])
    dex_token = await _import_dex_family(world, connector_id=family_connector)
    tokens = await world.refresh(dex_token)
    assert tokens["refresh_token"].startswith(f"pcr1.{DEX_ID}.")
    assert world.jwt_valid(tokens["id_token"])
    assert world.connector.refreshes == (1 if family_connector == "mock" else 0)
    again = await world.refresh(tokens["refresh_token"])
    assert again["refresh_token"] != tokens["refresh_token"]
