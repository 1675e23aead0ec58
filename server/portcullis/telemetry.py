"""Observability: logging set-up (text or JSON), Prometheus metrics, health endpoints.

Access logs carry the path without its query string: authorization codes, states and request
ids travel in query strings and must never reach a log.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio
from anyio import to_thread
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# -- logging ---------------------------------------------------------------------------------


#: C0 controls, DEL and C1 controls: a newline forges a log line, ESC drives the terminal that
#: displays the log, NUL truncates it in some tools.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``)."""

    def escape(match: re.Match[str]) -> str:
        char = match.group()
        code = ord(char)
        return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")

    return _CONTROL.sub(escape, text)


class TextFormatter(logging.Formatter):
    """One record, one line: control characters in the message (which can come from a URL, a
    header or an upstream's error text) are escaped; a traceback, when there is one, follows
    on its own lines as usual."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


class JSONFormatter(logging.Formatter):
    def __init__(self, exclude: set[str] | None = None) -> None:
        super().__init__()
        self._exclude = exclude or set()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update({k: v for k, v in extra.items() if k not in self._exclude})
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, fmt: str, exclude_fields: list[str] | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JSONFormatter(set(exclude_fields or ())))
    else:
        formatter = TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel({"warn": "WARNING"}.get(level, level.upper()))
    # uvicorn's own access log prints query strings; ours does not.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


# -- metrics ---------------------------------------------------------------------------------


def share_metrics_between_workers(directory: str) -> None:
    """Keep this worker's metric values in memory-mapped files under ``directory``
    (prometheus-client's multiprocess mode), so that ``/metrics``, answered by whichever worker
    the kernel hands the connection to, reports the sum over every worker instead of one
    worker's share. Called once in each forked worker, before its first metric exists; the
    value class is process-wide by prometheus-client's design."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


class Metrics:
    """One registry per app instance: no module-level mutable state.

    With ``shared_dir`` (several workers, see :func:`share_metrics_between_workers`) the values
    live in files there and :attr:`exposition` aggregates every worker's files."""

    def __init__(self, shared_dir: str | None = None) -> None:
        self.registry = CollectorRegistry()
        if shared_dir:
            self.exposition = CollectorRegistry()
            MultiProcessCollector(self.exposition, path=shared_dir)  # type: ignore[no-untyped-call]
        else:
            self.exposition = self.registry
        self.requests = Counter(
            "portcullis_http_requests_total",
            "HTTP requests by route, method and status code.",
            ["route", "method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "portcullis_http_request_duration_seconds",
            "HTTP request latency by route.",
            ["route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )


#: The status recorded for a request whose client went away mid-request (never sent).
CLIENT_CLOSED = 499


class AccessLogMiddleware:
    """Counts and logs every request by route template (never the query string)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, route_of: Callable[[Scope], str]) -> None:
        self.app = app
        self.metrics = metrics
        self.route_of = route_of
        self.log = logging.getLogger("portcullis.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        except ClientDisconnect:
            # The client hung up before sending its whole request: nothing failed here and
            # nobody is left to answer. Counted as 499 (nginx's "client closed request"), not
            # as a 500, and logged without a traceback.
            status = CLIENT_CLOSED
            self.log.info(
                "%s %s: client closed the connection before sending its whole request",
                scope["method"],
                scope["path"],
            )
        finally:
            elapsed = time.perf_counter() - start
            route = self.route_of(scope)
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            client = scope.get("client")
            self.log.debug(
                "%s %s %d %.1fms",
                scope["method"],
                scope["path"],
                status,
                elapsed * 1000,
                extra={
                    "fields": {
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                        "remote": client[0] if client else "",
                    }
                },
            )


# -- health ----------------------------------------------------------------------------------

HealthCheck = Callable[[], dict[str, Any]]


READY_TIMEOUT = 3.0


async def run_ready_check(ready: HealthCheck) -> dict[str, Any]:
    """Run the (blocking) readiness check off the event loop, and answer "not ready" rather
    than hang when storage does not answer in time."""
    try:
        with anyio.fail_after(READY_TIMEOUT):
            return await to_thread.run_sync(ready, abandon_on_cancel=True)
    except TimeoutError:
        return {"ready": False, "checks": {"storage": "timed out"}}


def telemetry_app(metrics: Metrics, ready: HealthCheck) -> Starlette:
    """The telemetry listener: /metrics, /healthz, /healthz/live, /healthz/ready."""

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.exposition), media_type=CONTENT_TYPE_LATEST)

    async def live(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readiness(request: Request) -> Response:
        report = await run_ready_check(ready)
        return JSONResponse(report, status_code=200 if report["ready"] else 503)

    return Starlette(
        routes=[
            Route("/metrics", prometheus),
            Route("/healthz", readiness),
            Route("/healthz/live", live),
            Route("/healthz/ready", readiness),
        ]
    )
