"""Storage conformance for `portcullis revoke`: refresh families deleted by user, client or
group in one query, and the deny list of subjects (every backend, same behaviour)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from portcullis.storage.base import NotFoundError, Storage
from portcullis.storage.models import RefreshToken

NOW = 1_700_000_000.0


def _families(storage: Storage, samples: Any) -> None:
    for family_id, user, client, groups in (
        ("f1", "u1", "kubectl", ("admins", "dev ops")),
        ("f2", "u1", "other", ("ünïcode",)),
        ("f3", "u2", "kubectl", ("dev ops",)),
        ("f4", "u3", "kubectl", ("dev",)),  # "dev" is not "dev ops" nor a prefix match
    ):
        storage.create_refresh_token(
            samples.refresh_token(
                family_id, identity=samples.identity(user, groups=groups), client_id=client
            )
        )


def _left(storage: Storage) -> list[str]:
    return sorted(t.id for t in storage.list_refresh_tokens())


def test_delete_by_user_and_connector(storage: Storage, samples: Any) -> None:
    _families(storage, samples)
    assert storage.delete_refresh_tokens_matching(user_id="u1", connector_id="other-conn") == []
    assert storage.delete_refresh_tokens_matching(user_id="u1", connector_id="local") == [
        "f1",
        "f2",
    ]
    assert _left(storage) == ["f3", "f4"]


def test_delete_by_client(storage: Storage, samples: Any) -> None:
    _families(storage, samples)
    assert storage.delete_refresh_tokens_matching(client_id="kubectl") == ["f1", "f3", "f4"]
    assert _left(storage) == ["f2"]


@pytest.mark.parametrize(
    ("group", "deleted"),
    [("dev ops", ["f1", "f3"]), ("ünïcode", ["f2"]), ("dev", ["f4"]), ("nobody", [])],
)
def test_delete_by_group_matches_whole_group_names(
    storage: Storage, samples: Any, group: str, deleted: list[str]
) -> None:
    _families(storage, samples)
    assert storage.delete_refresh_tokens_matching(group=group) == deleted
    assert _left(storage) == sorted({"f1", "f2", "f3", "f4"} - set(deleted))


def test_delete_needs_a_filter(storage: Storage) -> None:
    with pytest.raises(ValueError, match="at least one filter"):
        storage.delete_refresh_tokens_matching()


def test_denials_keep_the_later_values_and_expire(storage: Storage) -> None:
    assert storage.subjects_revoked_at([("sub", "a")], NOW) == 0.0
    assert storage.subjects_revoked_at([], NOW) == 0.0
    storage.deny_subject("sub", "a", NOW, NOW + 100)
    storage.deny_subject("sub", "a", NOW - 50, NOW + 10)  # neither value goes back
    storage.deny_subject("group", "g", NOW + 5, NOW + 200)
    assert storage.subjects_revoked_at([("sub", "a")], NOW) == NOW
    assert storage.subjects_revoked_at([("sub", "a"), ("group", "g")], NOW) == NOW + 5
    assert storage.subjects_revoked_at([("group", "a"), ("sub", "g")], NOW) == 0.0  # kind counts
    # Past its expiry a denial no longer counts, and GC drops it.
    assert storage.subjects_revoked_at([("sub", "a")], NOW + 101) == 0.0
    result = storage.garbage_collect(NOW + 150)
    assert result.denied_subjects == 1
    assert storage.subjects_revoked_at([("group", "g")], NOW + 150) == NOW + 5
    assert storage.garbage_collect(NOW + 201).denied_subjects == 1
    assert storage.subjects_revoked_at([("group", "g")], NOW) == 0.0


@pytest.mark.parametrize("awaited", [False, True], ids=["sync", "async"])
def test_a_family_read_for_use_says_whether_a_live_denial_postdates_it(
    storage: Storage, samples: Any, awaited: bool
) -> None:
    """``get_refresh_token_for_use``: the refresh grant skips its precise deny-list query when
    no live denial is newer than the family (whoever it names). The base class's default answers
    True always (never wrong, never faster); every backend here answers exactly. The awaited
    form (``get_refresh_token_for_use_async``, on the loop's own connection on PostgreSQL)
    answers the same, each call on a new event loop."""

    def read(token_id: str, now: float) -> tuple[RefreshToken, bool]:
        if awaited:
            return asyncio.run(storage.get_refresh_token_for_use_async(token_id, now))
        return storage.get_refresh_token_for_use(token_id, now)

    family = samples.refresh_token("f1")
    storage.create_refresh_token(family)
    created = family.created_at
    assert read("f1", created + 10) == (family, False)
    storage.deny_subject("group", "older", created - 1, created + 100)
    storage.deny_subject("client", "expired", created + 1, created + 5)
    # An older denial and one no longer live do not count.
    assert read("f1", created + 10) == (family, False)
    storage.deny_subject("sub", "someone-else", created, created + 100)
    assert read("f1", created + 10) == (family, True)
    with pytest.raises(NotFoundError):
        read("missing", created + 10)


@pytest.mark.parametrize("count", [3, 5, 8, 9])
def test_any_number_of_subjects_is_looked_up(storage: Storage, count: int) -> None:
    """A user's groups come from upstream, so the subject list has any length (and may
    repeat): each position is looked up, whatever the count."""
    storage.deny_subject("group", "denied", NOW, NOW + 100)
    for position in range(count):
        subjects = [("group", f"g{i}") for i in range(count)]
        subjects[position] = ("group", "denied")
        assert storage.subjects_revoked_at([*subjects, subjects[0]], NOW) == NOW
    assert storage.subjects_revoked_at([("group", f"g{i}") for i in range(count)], NOW) == 0.0
