"""Storage conformance for device requests (RFC 8628): every backend in BACKENDS."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from portcullis.storage.base import AlreadyExistsError, NotFoundError, Storage

NOW = 1_700_000_000.0


def test_device_request_round_trips_by_id_and_user_code(storage: Storage, samples: Any) -> None:
    record = samples.device_request()
    storage.create_device_request(record)
    assert storage.get_device_request("dev-1") == record
    assert storage.get_device_request_by_user_code("BCDFGHJK") == record


def test_pending_device_request_without_identity_round_trips(
    storage: Storage, samples: Any
) -> None:
    record = samples.device_request(status="pending", identity=None, connector_id="")
    storage.create_device_request(record)
    assert storage.get_device_request("dev-1") == record


def test_device_request_ids_and_user_codes_are_unique(storage: Storage, samples: Any) -> None:
    storage.create_device_request(samples.device_request("dev-1", "BCDFGHJK"))
    with pytest.raises(AlreadyExistsError):
        storage.create_device_request(samples.device_request("dev-1", "ZZZZZZZZ"))
    with pytest.raises(AlreadyExistsError):
        storage.create_device_request(samples.device_request("dev-2", "BCDFGHJK"))
    with pytest.raises(NotFoundError):
        storage.get_device_request("dev-2")
    with pytest.raises(NotFoundError):
        storage.get_device_request_by_user_code("ZZZZZZZZ")


def test_missing_device_request_raises_not_found(storage: Storage) -> None:
    with pytest.raises(NotFoundError):
        storage.get_device_request("nope")
    with pytest.raises(NotFoundError):
        storage.get_device_request_by_user_code("BCDFGHJK")
    with pytest.raises(NotFoundError):
        storage.update_device_request("nope", lambda r: r)


def test_device_request_update_is_stored_and_keeps_its_keys(storage: Storage, samples: Any) -> None:
    storage.create_device_request(samples.device_request(status="pending", identity=None))
    updated = storage.update_device_request(
        "dev-1",
        lambda r: dataclasses.replace(r, status="approved", identity=samples.identity("u2")),
    )
    assert storage.get_device_request("dev-1") == updated
    assert updated.identity == samples.identity("u2")
    with pytest.raises(ValueError, match="key"):
        storage.update_device_request("dev-1", lambda r: dataclasses.replace(r, id="other"))
    with pytest.raises(ValueError, match="key"):
        storage.update_device_request(
            "dev-1", lambda r: dataclasses.replace(r, user_code="ZZZZZZZZ")
        )
    assert storage.get_device_request_by_user_code("BCDFGHJK") == updated


def test_concurrent_redemptions_consume_a_device_request_once(
    storage: Storage, samples: Any
) -> None:
    """The token endpoint redeems inside update_device_request: only one of many concurrent
    pollers may see the approved state."""
    storage.create_device_request(samples.device_request(status="approved"))
    winners: list[int] = []

    def redeem(i: int) -> None:
        def consume(current: Any) -> Any:
            if current.status != "approved":
                return current
            winners.append(i)
            return dataclasses.replace(current, status="consumed")

        storage.update_device_request("dev-1", consume)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(redeem, range(16)))
    assert len(winners) == 1
    assert storage.get_device_request("dev-1").status == "consumed"


def test_gc_collects_expired_device_requests_only(storage: Storage, samples: Any) -> None:
    storage.create_device_request(samples.device_request("old", "BCDFGHJK", expiry=NOW - 1))
    storage.create_device_request(samples.device_request("live", "ZZZZZZZZ", expiry=NOW + 1))
    result = storage.garbage_collect(NOW)
    assert result.device_requests == 1
    assert result.total == 1
    with pytest.raises(NotFoundError):
        storage.get_device_request("old")
    with pytest.raises(NotFoundError):
        storage.get_device_request_by_user_code("BCDFGHJK")
    assert storage.get_device_request("live").id == "live"
    # The user code of a collected request is free again.
    storage.create_device_request(samples.device_request("new", "BCDFGHJK", expiry=NOW + 60))
