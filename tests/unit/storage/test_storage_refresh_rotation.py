"""Conformance of ``Storage.rotate_refresh_token``, the refresh grant's single-statement hot
path: exactly when it applies, what it writes, and that concurrent uses of one secret rotate
the family once (runs once per backend)."""

from __future__ import annotations

import asyncio
import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from portcullis.storage.base import NotFoundError, Storage
from portcullis.storage.models import RefreshRotation, RefreshToken

CURRENT = "cd" * 32  # the sample family's token_hash
PREVIOUS = "ef" * 32  # its obsolete_token_hash
NEW = "0a" * 32
CREATED = 1_700_000_000.125  # the sample family's created_at
USED_AT = 1_700_000_200.5


def _rotation(**changes: Any) -> RefreshRotation:
    fields: dict[str, Any] = {
        "family_id": "rt-1",
        "presented_hash": CURRENT,
        "client_id": "example-app",
        "connector_ids": ("local", "mock"),
        "now": USED_AT,
        "new_token_hash": NEW,
        "successor_sealed": "sealed-next",
        "absolute_lifetime": 86400.0,
        "idle_deadline": USED_AT + 3600.0,
    }
    fields.update(changes)
    return RefreshRotation(**fields)


@pytest.fixture
def family(storage: Storage, samples: Any) -> RefreshToken:
    token: RefreshToken = samples.refresh_token("rt-1")
    storage.create_refresh_token(token)
    return token


def test_current_secret_rotates_in_place(storage: Storage, family: RefreshToken) -> None:
    updated = storage.rotate_refresh_token(_rotation())
    expected = dataclasses.replace(
        family,
        token_hash=NEW,
        obsolete_token_hash=CURRENT,
        successor_sealed="sealed-next",
        last_used=USED_AT,
        expires_at=USED_AT + 3600.0,
    )
    assert updated == expected
    assert storage.get_refresh_token("rt-1") == expected


def test_rotation_disabled_keeps_the_secrets(storage: Storage, family: RefreshToken) -> None:
    updated = storage.rotate_refresh_token(_rotation(new_token_hash="", successor_sealed=""))
    expected = dataclasses.replace(family, last_used=USED_AT, expires_at=USED_AT + 3600.0)
    assert updated == expected
    assert storage.get_refresh_token("rt-1") == expected


@pytest.mark.parametrize(
    ("absolute", "idle", "expected"),
    [
        (86400.0, USED_AT + 3600.0, USED_AT + 3600.0),  # idle limit comes first
        (100.0, USED_AT + 3600.0, CREATED + 100.0),  # absolute limit comes first
        (86400.0, 0.0, CREATED + 86400.0),  # no idle limit
        (0.0, USED_AT + 60.0, USED_AT + 60.0),  # no absolute limit
        (0.0, 0.0, 0.0),  # never expires
    ],
)
def test_new_expiry_is_the_earlier_limit(
    storage: Storage, family: RefreshToken, absolute: float, idle: float, expected: float
) -> None:
    updated = storage.rotate_refresh_token(
        _rotation(absolute_lifetime=absolute, idle_deadline=idle)
    )
    assert updated is not None
    assert updated.expires_at == pytest.approx(expected)
    assert storage.get_refresh_token("rt-1").expires_at == pytest.approx(expected)


@pytest.mark.parametrize(
    "changes",
    [
        {"presented_hash": PREVIOUS},  # a retry or a replay: the caller decides
        {"presented_hash": "12" * 32},  # neither secret
        {"presented_hash": ""},
        {"client_id": "other-app"},
        {"connector_ids": ("ldap",)},  # e.g. a connector that refreshes upstream
        {"connector_ids": ()},
        {"now": 1_700_086_400.5},  # past expires_at
    ],
    ids=["previous", "neither", "empty", "client", "connector", "no-connectors", "expired"],
)
def test_nothing_changes_unless_every_condition_holds(
    storage: Storage, family: RefreshToken, changes: dict[str, Any]
) -> None:
    assert storage.rotate_refresh_token(_rotation(**changes)) is None
    assert storage.get_refresh_token("rt-1") == family


def test_live_until_the_expiry_instant(storage: Storage, family: RefreshToken) -> None:
    assert storage.rotate_refresh_token(_rotation(now=family.expires_at)) is not None


def test_a_family_that_never_expires_rotates(storage: Storage, samples: Any) -> None:
    storage.create_refresh_token(samples.refresh_token("rt-1", expires_at=0.0))
    assert storage.rotate_refresh_token(_rotation(now=USED_AT + 10**9)) is not None


def test_unknown_family_is_not_created(storage: Storage) -> None:
    assert storage.rotate_refresh_token(_rotation()) is None
    with pytest.raises(NotFoundError):
        storage.get_refresh_token("rt-1")


def test_a_secret_rotates_the_family_once_under_concurrency(
    storage: Storage, family: RefreshToken
) -> None:
    """Eight workers present the same current secret at once: exactly one rotation wins, the
    rest see a family whose current secret is no longer theirs."""
    rotations = [_rotation(new_token_hash=f"{i:02x}" * 32) for i in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(storage.rotate_refresh_token, rotations))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    stored = storage.get_refresh_token("rt-1")
    assert stored == winners[0]
    assert stored.obsolete_token_hash == CURRENT


def test_rotation_can_store_the_refreshed_identity(
    storage: Storage, family: RefreshToken, samples: Any
) -> None:
    refreshed = samples.identity(
        "user-1", groups=("new-group",), email="new@example.com", connector_data=b"\x01new"
    )
    updated = storage.rotate_refresh_token(_rotation(identity=refreshed))
    assert updated is not None
    assert updated.identity == refreshed
    assert storage.get_refresh_token("rt-1") == updated
    assert storage.list_refresh_tokens("user-1", "local") == [updated]


@pytest.mark.parametrize(
    ("kind", "value"),
    [("client", "example-app"), ("client", "another-app"), ("group", "admins"), ("sub", "x")],
)
def test_a_family_older_than_a_live_denial_is_left_alone(
    storage: Storage, family: RefreshToken, kind: str, value: str
) -> None:
    """The one statement cannot tell whether a denial concerns this family (the subject is
    encoded outside SQL), so any live denial recorded at or after the family's creation makes
    it match nothing and the caller's general path decides with the precise check. Even one
    that names someone else: a slower refresh, never a denied family refreshed."""
    storage.deny_subject(kind, value, family.created_at, USED_AT + 60)
    assert storage.rotate_refresh_token(_rotation()) is None
    assert storage.get_refresh_token("rt-1") == family


def test_denials_that_expired_or_predate_the_family_do_not_matter(
    storage: Storage, family: RefreshToken
) -> None:
    storage.deny_subject("client", "example-app", family.created_at - 1, USED_AT + 60)
    storage.deny_subject("group", "admins", family.created_at + 5, USED_AT - 1)
    assert storage.rotate_refresh_token(_rotation()) is not None


def test_awaited_rotation_rotates_once(storage: Storage, family: RefreshToken) -> None:
    """``rotate_refresh_token_async`` (what the grant awaits on the event loop) is the same
    statement: of eight concurrent uses of one secret exactly one rotates, and it is stored
    when its caller resumes."""

    async def use_eight_times() -> list[RefreshToken | None]:
        return list(
            await asyncio.gather(
                *(storage.rotate_refresh_token_async(_rotation()) for _ in range(8))
            )
        )

    results = asyncio.run(use_eight_times())
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert winners[0].token_hash == NEW
    assert winners[0].obsolete_token_hash == CURRENT
    assert storage.get_refresh_token("rt-1").token_hash == NEW
    assert asyncio.run(storage.rotate_refresh_token_async(_rotation(family_id="absent"))) is None


# -- rotate_refresh_token_or_read_async: the rotation, or the family for the general path -----


def test_rotate_or_read_rotates_like_the_rotation(storage: Storage, family: RefreshToken) -> None:
    found = asyncio.run(storage.rotate_refresh_token_or_read_async(_rotation()))
    assert found.rotated
    assert not found.denied_since
    assert found.family.token_hash == NEW
    assert found.family.obsolete_token_hash == CURRENT
    assert storage.get_refresh_token("rt-1") == found.family


@pytest.mark.parametrize(
    "changes",
    [
        {"presented_hash": PREVIOUS},
        {"presented_hash": "12" * 32},
        {"presented_hash": ""},
        {"client_id": "other-app"},
        {"connector_ids": ("ldap",)},
        {"connector_ids": ()},
        {"now": 1_700_086_400.5},
    ],
    ids=["previous", "neither", "empty", "client", "connector", "no-connectors", "expired"],
)
def test_rotate_or_read_hands_back_the_family_as_it_is(
    storage: Storage, family: RefreshToken, changes: dict[str, Any]
) -> None:
    """Whatever the rotation leaves alone comes back unchanged (what the general path would
    read), with no live denial to report."""
    found = asyncio.run(storage.rotate_refresh_token_or_read_async(_rotation(**changes)))
    assert not found.rotated
    assert found.family == family
    assert storage.get_refresh_token("rt-1") == family
    # As the general path's own read would say (a backend that cannot tell answers "check
    # the deny list", which is never wrong).
    assert found.denied_since is storage.get_refresh_token_for_use("rt-1", USED_AT)[1]


def test_rotate_or_read_reports_a_live_denial(storage: Storage, family: RefreshToken) -> None:
    storage.deny_subject("client", "example-app", family.created_at, USED_AT + 60)
    found = asyncio.run(storage.rotate_refresh_token_or_read_async(_rotation()))
    assert not found.rotated
    assert found.denied_since
    assert found.family == family


def test_rotate_or_read_of_an_unknown_family_is_not_found(storage: Storage) -> None:
    with pytest.raises(NotFoundError):
        asyncio.run(storage.rotate_refresh_token_or_read_async(_rotation()))
    with pytest.raises(NotFoundError):
        storage.get_refresh_token("rt-1")


def test_rotate_or_read_rotates_once_under_concurrency(
    storage: Storage, family: RefreshToken
) -> None:
    """Eight concurrent uses of one secret: one rotates; the others get the family as it was
    before or after that rotation (the compare-and-swap of the general path sorts them out),
    never a second rotation."""

    async def use_eight_times() -> list[Any]:
        return list(
            await asyncio.gather(
                *(
                    storage.rotate_refresh_token_or_read_async(
                        _rotation(new_token_hash=f"{i:02x}" * 32)
                    )
                    for i in range(8)
                )
            )
        )

    results = asyncio.run(use_eight_times())
    winners = [r for r in results if r.rotated]
    assert len(winners) == 1
    stored = storage.get_refresh_token("rt-1")
    assert stored == winners[0].family
    for loser in (r for r in results if not r.rotated):
        assert loser.family.id == "rt-1"
        assert loser.family.token_hash in {CURRENT, stored.token_hash}
