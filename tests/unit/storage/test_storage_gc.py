"""The periodic garbage collector: removes expired records, logs counts only, survives errors."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from portcullis.clock import FrozenClock
from portcullis.storage.base import Storage, StorageError
from portcullis.storage.gc import collect_once, run_gc_loop
from portcullis.storage.models import GCResult

START = 1_700_000_000.0
LOGGER = "portcullis.test.gc"


class FlakyStorage:
    """Delegates to a real storage but fails the first ``failures`` GC calls."""

    def __init__(self, inner: Storage, failures: int, error: Exception) -> None:
        self.inner = inner
        self.failures = failures
        self.error = error
        self.calls = 0

    def garbage_collect(self, now: float, batch_size: int = 500) -> GCResult:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return self.inner.garbage_collect(now, batch_size)


async def _wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never became true"
        await asyncio.sleep(0.01)


def test_gc_loop_removes_expired_records_and_stops_on_request(
    storage: Storage, samples: Any, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FrozenClock(START)
    storage.create_auth_code(samples.auth_code("secret-code-value", expiry=START + 60))
    storage.create_auth_request(samples.auth_request("live", expiry=START + 3600))

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_gc_loop(storage, clock, 0.02, stop, logging.getLogger(LOGGER))
        )
        await asyncio.sleep(0.1)  # several passes with nothing expired
        clock.advance(120)  # now the code has expired
        await _wait_until(lambda: "removed 1 records" in caplog.text)
        stop.set()
        await asyncio.wait_for(task, timeout=5)

    with caplog.at_level(logging.INFO, logger=LOGGER):
        asyncio.run(scenario())
    with pytest.raises(StorageError):
        storage.consume_auth_code("secret-code-value", clock.now(), "example-app")
    assert storage.get_auth_request("live").id == "live"
    assert "auth_codes=1" in caplog.text
    assert "secret-code-value" not in caplog.text  # counts only, never record keys


def test_gc_loop_survives_storage_errors(
    storage: Storage, samples: Any, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FrozenClock(START)
    storage.create_auth_code(samples.auth_code("c1", expiry=START - 1))
    flaky = FlakyStorage(
        storage, failures=2, error=StorageError("sqlite3 x.db: database is locked")
    )

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(run_gc_loop(flaky, clock, 0.01, stop, logging.getLogger(LOGGER)))
        await _wait_until(lambda: "removed 1 records" in caplog.text)
        stop.set()
        await asyncio.wait_for(task, timeout=5)

    with caplog.at_level(logging.INFO, logger=LOGGER):
        asyncio.run(scenario())
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 2
    assert "database is locked" in failures[0].getMessage()
    assert flaky.calls >= 3


def test_foreign_exception_text_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    """An unexpected exception may quote record data: only its type is logged."""
    flaky = FlakyStorage(None, failures=1, error=RuntimeError("token=hunter2"))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        result = asyncio.run(collect_once(flaky, FrozenClock(START), logging.getLogger(LOGGER)))
    assert result is None
    assert "RuntimeError" in caplog.text
    assert "hunter2" not in caplog.text


def test_one_tick_drains_a_backlog_in_bounded_batches(storage: Storage, samples: Any) -> None:
    for i in range(7):
        storage.create_auth_request(samples.auth_request(f"r{i}", expiry=START - 1))
    storage.create_auth_request(samples.auth_request("live", expiry=START + 1))
    counting = FlakyStorage(storage, failures=0, error=RuntimeError())

    result = asyncio.run(
        collect_once(counting, FrozenClock(START), logging.getLogger(LOGGER), batch_size=3)
    )

    assert result is not None
    assert result.auth_requests == 7
    assert counting.calls == 3  # 3 + 3 + 1: the last pass was not full, so it stopped there
    assert [r.id for r in [storage.get_auth_request("live")]] == ["live"]


def test_backlog_passes_are_capped_per_tick(storage: Storage, samples: Any) -> None:
    for i in range(10):
        storage.create_auth_request(samples.auth_request(f"r{i}", expiry=START - 1))
    result = asyncio.run(
        collect_once(
            storage, FrozenClock(START), logging.getLogger(LOGGER), batch_size=2, max_passes=2
        )
    )
    assert result is not None
    assert result.auth_requests == 4


def test_gc_loop_rejects_a_non_positive_interval(storage: Storage) -> None:
    with pytest.raises(ValueError, match="interval"):
        asyncio.run(
            run_gc_loop(storage, FrozenClock(), 0, asyncio.Event(), logging.getLogger(LOGGER))
        )
