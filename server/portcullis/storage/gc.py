"""Periodic garbage collection of expired storage records, run as an asyncio task.

Started and stopped with the app lifespan::

    stop = asyncio.Event()
    task = asyncio.create_task(run_gc_loop(storage, clock, 300.0, stop, logger))
    ...
    stop.set(); await task

Each pass deletes at most ``batch_size`` records per kind (short transactions, no long lock on a
shared database, Dex #4979). When a pass fills a batch there is a backlog, so the next pass runs
at once, up to ``max_passes`` per tick, instead of waiting a whole interval. The storage calls run
in a worker thread so a slow disk never stalls the event loop. Errors are logged and the loop
keeps going: a failed GC must never take the issuer down. Only counts are logged, never records.
"""

from __future__ import annotations

import asyncio
import logging

from portcullis.clock import Clock
from portcullis.storage.base import Storage, StorageError
from portcullis.storage.models import GCResult


def _describe(result: GCResult) -> str:
    return (
        f"auth_requests={result.auth_requests} auth_codes={result.auth_codes} "
        f"refresh_tokens={result.refresh_tokens} revoked_tokens={result.revoked_tokens} "
        f"verification_keys={result.verification_keys} login_attempts={result.login_attempts} "
        f"single_use_keys={result.single_use_keys} device_requests={result.device_requests} "
        f"denied_subjects={result.denied_subjects} clients={result.clients}"
    )


def _backlog(result: GCResult, batch_size: int) -> bool:
    """True when some kind filled its batch, so more expired records are probably waiting."""
    return (
        max(
            result.auth_requests,
            result.auth_codes,
            result.refresh_tokens,
            result.revoked_tokens,
            result.login_attempts,
            result.single_use_keys,
            result.device_requests,
            result.denied_subjects,
            result.clients,
        )
        >= batch_size
    )


async def collect_once(
    storage: Storage,
    clock: Clock,
    logger: logging.Logger,
    batch_size: int = 500,
    max_passes: int = 20,
) -> GCResult | None:
    """Run GC passes until no batch is full (at most max_passes); return the summed counts, or
    None if the storage failed (logged; foreign exception texts are not, they may quote data)."""
    total = GCResult()
    for _ in range(max_passes):
        try:
            result = await asyncio.to_thread(storage.garbage_collect, clock.now(), batch_size)
        except StorageError as exc:
            # Our own messages: the table and the driver's reason, never parameters or keys.
            logger.error("storage garbage collection failed: %s", exc)
            return None
        except Exception as exc:
            logger.error("storage garbage collection failed: %s", type(exc).__name__)
            return None
        total = GCResult(
            auth_requests=total.auth_requests + result.auth_requests,
            auth_codes=total.auth_codes + result.auth_codes,
            refresh_tokens=total.refresh_tokens + result.refresh_tokens,
            revoked_tokens=total.revoked_tokens + result.revoked_tokens,
            verification_keys=total.verification_keys + result.verification_keys,
            login_attempts=total.login_attempts + result.login_attempts,
            single_use_keys=total.single_use_keys + result.single_use_keys,
            device_requests=total.device_requests + result.device_requests,
            denied_subjects=total.denied_subjects + result.denied_subjects,
            clients=total.clients + result.clients,
        )
        if not _backlog(result, batch_size):
            break
    if total.total:
        logger.info(
            "storage garbage collection removed %d records: %s", total.total, _describe(total)
        )
    else:
        logger.debug("storage garbage collection: nothing expired")
    return total


async def run_gc_loop(
    storage: Storage,
    clock: Clock,
    interval: float,
    stop: asyncio.Event,
    logger: logging.Logger,
    *,
    batch_size: int = 500,
    max_passes: int = 20,
) -> None:
    """Collect garbage now and then every ``interval`` seconds until ``stop`` is set."""
    if interval <= 0:
        raise ValueError(f"interval must be positive, got {interval}")
    while not stop.is_set():
        await collect_once(storage, clock, logger, batch_size, max_passes)
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            continue
