"""RP-initiated logout in the protocol core: a verified id_token_hint (expired ones too) ends
that client's refresh family for that session, and its JWTs; post_logout_redirect_uri only when
registered for the client the request speaks for; no valid hint ends nothing."""

from __future__ import annotations

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from portcullis.oidc.logout import LogoutError

from tests.support.oidc_provider import APP_LOGOUT_REDIRECT, World

pytestmark = pytest.mark.anyio

BYE = APP_LOGOUT_REDIRECT


async def test_logout_with_a_hint_ends_the_session_and_its_tokens(world: World) -> None:
    tokens = await world.login()
    other = await world.login()  # a second session of the same user and client stays
    plan = world.provider.logout.plan(
        {"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": BYE, "state": "s1"}
    )
    assert (plan.client_id, plan.redirect_uri, plan.state, plan.hinted) == ("app", BYE, "s1", True)
    assert plan.family_id
    world.provider.logout.end(plan)

    assert not world.family_exists(tokens["refresh_token"])
    assert not world.jwt_valid(tokens["access_token"])
    refused = await world.refuse(grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert refused.error == "invalid_grant"
    assert world.family_exists(other["refresh_token"])
    assert world.jwt_valid(other["access_token"])
    # A second logout with the same hint is harmless.
    again = world.provider.logout.plan({"id_token_hint": tokens["id_token"]})
    assert again.family_id == ""


async def test_an_expired_hint_is_accepted(world: World) -> None:
    tokens = await world.login()
    world.clock.advance(2 * 3600)  # idTokens: 1h
    assert not world.jwt_valid(tokens["id_token"])
    plan = world.provider.logout.plan({"id_token_hint": tokens["id_token"]})
    assert plan.family_id
    world.provider.logout.end(plan)
    assert not world.family_exists(tokens["refresh_token"])


async def test_a_forged_or_foreign_hint_is_refused(world: World) -> None:
    tokens = await world.login()
    claims = world.provider.reader.verified_claims(tokens["id_token"], check_expiry=False)
    assert claims is not None
    forged = jwt.encode({"alg": "RS256", "kid": "x"}, dict(claims), RSAKey.generate_key(2048))
    for hint in (forged, "not-a-jwt", tokens["id_token"][:-4] + "AAAA"):
        with pytest.raises(LogoutError, match="not an ID token issued here"):
            world.provider.logout.plan({"id_token_hint": hint})
    assert world.family_exists(tokens["refresh_token"])


async def test_redirects_only_to_uris_registered_for_that_client(world: World) -> None:
    tokens = await world.login()
    for uri in ("https://evil.example/", BYE + "/", BYE + "?x=1", "http://127.0.0.1:5555/callback"):
        with pytest.raises(LogoutError, match="not registered"):
            world.provider.logout.plan(
                {"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": uri}
            )
    with pytest.raises(LogoutError, match="needs an id_token_hint or a client_id"):
        world.provider.logout.plan({"post_logout_redirect_uri": BYE})
    with pytest.raises(LogoutError, match="not registered"):
        world.provider.logout.plan({"client_id": "kubectl", "post_logout_redirect_uri": BYE})
    with pytest.raises(LogoutError, match="does not match"):
        world.provider.logout.plan({"id_token_hint": tokens["id_token"], "client_id": "kubectl"})
    assert world.family_exists(tokens["refresh_token"])


def test_without_a_hint_nothing_is_ended_and_confirmation_is_needed(world: World) -> None:
    plan = world.provider.logout.plan({"client_id": "app", "post_logout_redirect_uri": BYE})
    assert (plan.hinted, plan.family_id, plan.redirect_uri) == (False, "", BYE)


def test_discovery_advertises_the_end_session_endpoint(world: World) -> None:
    assert '"end_session_endpoint": "http://127.0.0.1:5556/dex/logout"' in (
        world.provider.discovery.decode()
    )
