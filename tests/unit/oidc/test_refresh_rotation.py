"""Refresh-token rotation through the token endpoint (oidc.grants.refresh_token + oidc.refresh):
each use replaces the secret, the family and its session id stay, rotation can be disabled, and
the pure rotation rule decides every case the same way as the store."""

from __future__ import annotations

import dataclasses

import pytest
from portcullis.oidc.errors import OAuthError
from portcullis.oidc.refresh import (
    Overtaken,
    Reused,
    Rotated,
    digest,
    parse_refresh_token,
    rotate_family,
    seal_successor,
    session_id,
)
from portcullis.oidc.settings import RefreshPolicy
from portcullis.storage.models import Identity, RefreshToken

from tests.support.oidc_provider import World, make_world

pytestmark = pytest.mark.anyio


def _parts(refresh_token: str) -> tuple[str, str]:
    parsed = parse_refresh_token(refresh_token)
    assert parsed is not None, refresh_token
    return parsed


async def test_refresh_rotates_the_secret_and_keeps_the_family(world: World) -> None:
    first = await world.login()
    family_id, secret0 = _parts(first["refresh_token"])

    world.clock.advance(60)
    second = await world.refresh(first["refresh_token"])

    same_family, secret1 = _parts(second["refresh_token"])
    assert same_family == family_id
    assert secret1 != secret0
    stored = world.storage.get_refresh_token(family_id)
    assert stored.token_hash == digest(secret1)
    assert stored.obsolete_token_hash == digest(secret0)
    assert stored.last_used == world.clock.now()
    # Every JWT of the family carries the same (hashed) session id.
    for tokens in (first, second):
        claims = world.provider.reader.verified_claims(tokens["access_token"])
        assert claims is not None
        assert claims["sid"] == session_id(family_id)
    assert second["scope"] == "openid offline_access groups"


async def test_storage_keeps_no_usable_secret(world: World) -> None:
    first = await world.login()
    second = await world.refresh(first["refresh_token"])
    family_id, secret1 = _parts(second["refresh_token"])

    stored = world.storage.get_refresh_token(family_id)
    dumped = repr(stored)
    assert secret1 not in dumped
    assert _parts(first["refresh_token"])[1] not in dumped


async def test_the_new_secret_works_and_the_family_keeps_rotating(world: World) -> None:
    tokens = await world.login()
    seen = {tokens["refresh_token"]}
    for _ in range(5):
        world.clock.advance(10)
        tokens = await world.refresh(tokens["refresh_token"])
        assert tokens["refresh_token"] not in seen
        seen.add(tokens["refresh_token"])
    assert len(world.storage.list_refresh_tokens()) == 1


async def test_rotation_disabled_returns_the_same_refresh_token() -> None:
    world = make_world(refresh="disableRotation: true")
    first = await world.login()
    world.clock.advance(60)
    second = await world.refresh(first["refresh_token"])
    world.clock.advance(60)
    third = await world.refresh(second["refresh_token"])

    assert first["refresh_token"] == second["refresh_token"] == third["refresh_token"]
    family_id, _ = _parts(first["refresh_token"])
    stored = world.storage.get_refresh_token(family_id)
    assert stored.obsolete_token_hash == ""
    assert stored.last_used == world.clock.now()
    assert world.jwt_valid(third["id_token"])


async def test_a_refresh_may_narrow_but_not_widen_the_scopes(world: World) -> None:
    first = await world.login(scope="openid offline_access")
    narrowed = await world.refresh(first["refresh_token"], scope="openid")
    assert narrowed["scope"] == "openid"

    refused = await world.refuse(
        grant_type="refresh_token",
        refresh_token=narrowed["refresh_token"],
        scope="openid groups",
    )
    assert refused.error == "invalid_scope"
    # A refused widening is not a use: the token still works.
    assert (await world.refresh(narrowed["refresh_token"]))["scope"] == "openid offline_access"


async def test_another_clients_refresh_token_is_refused(world: World) -> None:
    tokens = await world.login()
    with pytest.raises(OAuthError) as refused:
        await world.provider.tokens.handle(
            {
                "grant_type": "refresh_token",
                "refresh_token": tokens["refresh_token"],
                "client_id": "kubectl",
            },
            None,
            world.client_ip,
        )
    assert refused.value.error == "invalid_grant"
    assert "another client" in refused.value.description
    # Presenting it as the wrong client does not burn it for the right one.
    assert world.family_exists(tokens["refresh_token"])
    await world.refresh(tokens["refresh_token"])


async def test_malformed_and_unknown_refresh_tokens_are_invalid_grant(world: World) -> None:
    for value in ("not-a-token", "pcr1.unknownfamily.secret"):
        refused = await world.refuse(grant_type="refresh_token", refresh_token=value)
        assert refused.error == "invalid_grant"
    missing = await world.refuse(grant_type="refresh_token")
    assert missing.error == "invalid_request"


# -- the pure rule ---------------------------------------------------------------------------

POLICY = RefreshPolicy(
    disable_rotation=False, reuse_interval=3.0, valid_if_not_used_for=0.0, absolute_lifetime=0.0
)
IDENTITY = Identity(user_id="u1", username="u", email="u@example.com")


def _family(secret: str, previous: str = "", last_used: float = 100.0) -> RefreshToken:
    return RefreshToken(
        id="fam",
        token_hash=digest(secret),
        obsolete_token_hash=digest(previous) if previous else "",
        successor_sealed=seal_successor(previous, "fam", secret) if previous else "",
        client_id="app",
        connector_id="mock",
        identity=IDENTITY,
        scopes=("openid", "offline_access"),
        created_at=0.0,
        last_used=last_used,
    )


def test_rule_current_secret_rotates_and_seals_the_successor() -> None:
    updated, outcome = rotate_family(
        _family("s0"), "s0", identity=IDENTITY, policy=POLICY, expires_at=500.0, now=101.0
    )
    assert isinstance(outcome, Rotated)
    assert outcome.secret != "s0"
    assert updated.token_hash == digest(outcome.secret)
    assert updated.obsolete_token_hash == digest("s0")
    assert updated.expires_at == 500.0
    assert updated.last_used == 101.0
    # A retry with s0 right after gets exactly this successor.
    _, retry = rotate_family(
        updated, "s0", identity=IDENTITY, policy=POLICY, expires_at=500.0, now=102.0
    )
    assert retry == Rotated(outcome.secret)


def test_rule_previous_secret_inside_the_interval_gets_the_same_successor() -> None:
    family = _family("s1", previous="s0", last_used=100.0)
    updated, outcome = rotate_family(
        family, "s0", identity=IDENTITY, policy=POLICY, expires_at=0.0, now=103.0
    )
    assert outcome == Rotated("s1")
    assert updated == family  # a retry changes nothing (the interval counts from the rotation)


def test_rule_previous_secret_after_the_interval_is_reuse() -> None:
    family = _family("s1", previous="s0", last_used=100.0)
    updated, outcome = rotate_family(
        family, "s0", identity=IDENTITY, policy=POLICY, expires_at=0.0, now=103.5
    )
    assert outcome == Reused()
    assert updated == family


def test_rule_unsealable_successor_is_reuse_not_a_crash() -> None:
    family = dataclasses.replace(_family("s1", previous="s0"), successor_sealed="garbage!")
    _, outcome = rotate_family(
        family, "s0", identity=IDENTITY, policy=POLICY, expires_at=0.0, now=101.0
    )
    assert outcome == Reused()


def test_rule_any_other_secret_was_overtaken() -> None:
    family = _family("s2", previous="s1")
    updated, outcome = rotate_family(
        family, "s0", identity=IDENTITY, policy=POLICY, expires_at=0.0, now=101.0
    )
    assert outcome == Overtaken()
    assert updated == family


def test_rule_rotation_disabled_keeps_the_secret_and_refreshes_the_identity() -> None:
    policy = dataclasses.replace(POLICY, disable_rotation=True)
    fresh = dataclasses.replace(IDENTITY, groups=("admins",))
    updated, outcome = rotate_family(
        _family("s0"), "s0", identity=fresh, policy=policy, expires_at=900.0, now=150.0
    )
    assert outcome == Rotated("s0")
    assert updated.token_hash == digest("s0")
    assert updated.obsolete_token_hash == ""
    assert updated.identity == fresh
    assert (updated.last_used, updated.expires_at) == (150.0, 900.0)
