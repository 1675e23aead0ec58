"""Storage conformance of ``Storage.exchange_auth_code``, the code exchange's two writes in
one call (one group commit on SQLite): the code is consumed and the family ``start_family``
builds from it is stored; no family when it returns None; ``start_family`` never runs for a
code that was not consumed; and the code stays consumed when it raises or the family cannot
be stored, exactly as two separate calls would leave it (runs once per backend, through the
blocking call and through ``exchange_auth_code_async``, which the grant awaits on its event
loop: a worker thread by default, the group commit on SQLite, a loop-owned connection on
PostgreSQL)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from portcullis.storage.base import (
    AlreadyExistsError,
    CodeClientMismatchError,
    CodeReplayedError,
    NotFoundError,
    Storage,
)
from portcullis.storage.models import AuthCode, RefreshToken

NOW = 1_700_000_000.0

Exchange = Callable[
    [str, float, str, Callable[[AuthCode], RefreshToken | None]],
    tuple[AuthCode, RefreshToken | None],
]


@pytest.fixture(params=["sync", "async"])
def exchange(request: pytest.FixtureRequest, storage: Storage) -> Exchange:
    """``storage.exchange_auth_code``, or its awaited form run on a new event loop."""
    if request.param == "sync":
        return storage.exchange_auth_code

    def awaited(
        code_id: str,
        now: float,
        client_id: str,
        start_family: Callable[[AuthCode], RefreshToken | None],
    ) -> tuple[AuthCode, RefreshToken | None]:
        return asyncio.run(storage.exchange_auth_code_async(code_id, now, client_id, start_family))

    return awaited


def _family_of(samples: Any, family_id: str = "rt-1") -> Any:
    def start_family(code: AuthCode) -> RefreshToken:
        family: RefreshToken = samples.refresh_token(
            family_id, identity=code.identity, issued_by_code=code.id, nonce=code.nonce
        )
        return family

    return start_family


def test_the_code_is_consumed_and_its_family_stored(
    storage: Storage, samples: Any, exchange: Exchange
) -> None:
    storage.create_auth_code(samples.auth_code("c1"))
    code, family = exchange("c1", NOW, "example-app", _family_of(samples))
    assert code == dataclasses.replace(samples.auth_code("c1"), used_at=NOW)
    assert family is not None
    assert storage.get_refresh_token("rt-1") == family
    assert storage.refresh_tokens_issued_by_code("c1") == [family]
    with pytest.raises(CodeReplayedError):
        storage.consume_auth_code("c1", NOW + 1, "example-app")


def test_no_family_when_none_is_built(storage: Storage, samples: Any, exchange: Exchange) -> None:
    storage.create_auth_code(samples.auth_code("c1"))
    code, family = exchange("c1", NOW, "example-app", lambda _code: None)
    assert (code.used_at, family) == (NOW, None)
    assert storage.list_refresh_tokens() == []


@pytest.mark.parametrize("client_id", ["example-app", "intruder"])
def test_nothing_is_built_for_a_code_not_consumed(
    storage: Storage, samples: Any, exchange: Exchange, client_id: str
) -> None:
    storage.create_auth_code(samples.auth_code("c1"))
    storage.consume_auth_code("c1", NOW, "example-app")
    calls: list[AuthCode] = []

    def start_family(code: AuthCode) -> None:
        calls.append(code)

    expected = CodeReplayedError if client_id == "example-app" else CodeClientMismatchError
    with pytest.raises(expected):
        exchange("c1", NOW + 1, client_id, start_family)
    with pytest.raises(NotFoundError):
        exchange("unknown", NOW + 1, "example-app", start_family)
    assert calls == []


def test_another_clients_code_is_left_unused(
    storage: Storage, samples: Any, exchange: Exchange
) -> None:
    storage.create_auth_code(samples.auth_code("c1"))
    with pytest.raises(CodeClientMismatchError):
        exchange("c1", NOW, "intruder", _family_of(samples))
    assert storage.consume_auth_code("c1", NOW + 1, "example-app").used_at == NOW + 1
    assert storage.list_refresh_tokens() == []


def test_the_code_stays_consumed_when_the_builder_fails(
    storage: Storage, samples: Any, exchange: Exchange
) -> None:
    storage.create_auth_code(samples.auth_code("c1"))

    def refuse(code: AuthCode) -> None:
        raise ValueError("redirect_uri does not match")

    with pytest.raises(ValueError, match="redirect_uri does not match"):
        exchange("c1", NOW, "example-app", refuse)
    with pytest.raises(CodeReplayedError):
        storage.consume_auth_code("c1", NOW + 1, "example-app")
    assert storage.list_refresh_tokens() == []


def test_the_code_stays_consumed_when_the_family_exists(
    storage: Storage, samples: Any, exchange: Exchange
) -> None:
    storage.create_refresh_token(samples.refresh_token("rt-1"))
    storage.create_auth_code(samples.auth_code("c1"))
    with pytest.raises(AlreadyExistsError):
        exchange("c1", NOW, "example-app", _family_of(samples))
    with pytest.raises(CodeReplayedError):
        storage.consume_auth_code("c1", NOW + 1, "example-app")
    assert storage.get_refresh_token("rt-1") == samples.refresh_token("rt-1")


def test_concurrent_exchanges_of_one_code_start_one_family(
    storage: Storage, samples: Any, exchange: Exchange
) -> None:
    """Eight threads at once (with the awaited form: eight event loops at once, each with
    its own connections on PostgreSQL, within one bound)."""
    storage.create_auth_code(samples.auth_code("c1"))

    def exchange_once(i: int) -> str:
        try:
            exchange("c1", NOW, "example-app", _family_of(samples, f"rt-{i}"))
        except CodeReplayedError:
            return "replayed"
        return "won"

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(exchange_once, range(8)))
    assert sorted(outcomes) == ["replayed"] * 7 + ["won"]
    assert len(storage.list_refresh_tokens()) == 1


def test_concurrent_awaited_exchanges_of_one_code_start_one_family(
    storage: Storage, samples: Any
) -> None:
    """Eight exchanges of one code awaited together on one loop: one family, seven replays."""
    storage.create_auth_code(samples.auth_code("c1"))

    async def exchange_once(i: int) -> str:
        try:
            await storage.exchange_auth_code_async(
                "c1", NOW, "example-app", _family_of(samples, f"rt-{i}")
            )
        except CodeReplayedError:
            return "replayed"
        return "won"

    async def eight() -> list[str]:
        return list(await asyncio.gather(*(exchange_once(i) for i in range(8))))

    assert sorted(asyncio.run(eight())) == ["replayed"] * 7 + ["won"]
    assert len(storage.list_refresh_tokens()) == 1
