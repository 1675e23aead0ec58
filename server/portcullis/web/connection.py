"""The HTTP/1.1 connection protocol every listener serves with: uvicorn's httptools protocol plus
the bounds uvicorn does not enforce (issue 9, findings 3 and 8).

* **Timeouts** (``web.timeouts``): *idle*, no request on a new or kept-alive connection (uvicorn
  only arms its keep-alive timer after a first response, so a connection that never sends
  stayed open for ever); *readHeader*, from a request's first byte to its last header line
  (slowloris); *readBody*, from the headers to the last body byte. A late request head gets a
  408; a late body closes the connection (the app sees the client as gone and logs it at INFO).
* **Header bounds** (``web.limits``): header line count, bytes per line and bytes of the whole
  head, each answered 431. The head is counted as it arrives, so a 1 MB header is refused after
  the first ``maxHeaderBytes``, never buffered whole.
* **Host**: exactly one non-empty Host header (RFC 9112 §3.2), else 400, for every listener,
  before any app runs.

* **One send per response**: uvicorn writes a response's head and its body with two
  ``transport.write`` calls, i.e. two ``send`` system calls and, with TCP_NODELAY, two packets.
  The writes of one event-loop iteration are joined into one (:class:`_CorkedTransport`): under
  load on /keys that halved the time spent in the kernel's send path.

* **Static answers before the ASGI cycle**: with the main app's :class:`StaticAnswers`
  (web.hot_paths), a GET whose request target is exactly the discovery or JWKS path, without a
  body, an Origin, an upgrade or a 100-continue, on HTTP/1.1, with no earlier response still
  being written, is answered here from the precomputed bytes: no scope, no request task, no ASGI
  call. The bytes are those uvicorn writes for the same answer from web.hot_paths (its Date
  header, the security headers, ``connection: close`` when the client asked for it), the
  metrics and the access log are recorded by the same code, and keep-alive continues as after
  any response. The bounds above apply first: such a request is only answered once its head was
  read within the limits. Anything else goes to uvicorn and the app unchanged.

A refusal is written straight to the socket, then the connection is closed after a short
lingering period in which further input is discarded: closing a socket with unread input
makes the kernel send a reset that can destroy the answer before the client reads it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from asyncio import TimerHandle
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

if TYPE_CHECKING:
    from portcullis.web.balance import WorkerSlot
    from portcullis.web.hot_paths import StaticAnswer, StaticAnswers

log = logging.getLogger("portcullis.connection")

#: A static answer decided at the end of a request head: path, answer, If-None-Match,
#: keep-alive, start time.
_Pending = tuple[str, "Callable[[], StaticAnswer]", bytes | None, bool, float]

#: Bytes held for one joined send at most; more is written through at once.
CORK_LIMIT = 64 * 1024

#: Seconds a refused connection keeps reading (and discarding) before it is closed.
LINGER = 1.0
# At shutdown, how long a connection without a request in progress (new, or kept alive between
# requests) may still send one (Go's http.Server.Shutdown waits for "new" connections too). A
# client that connected, or reused its connection, just before SIGTERM has its request on the
# wire; closing that connection at once would turn it into "server disconnected without a
# response" or a reset.
NEW_CONNECTION_GRACE = 1.0

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


@dataclass(frozen=True)
class ConnectionBounds:
    """What one connection may cost; from ``web.timeouts`` and ``web.limits``."""

    idle: float = 15.0
    read_header: float = 10.0
    read_body: float = 30.0
    max_headers: int = 100
    max_header_line_bytes: int = 8192
    max_header_bytes: int = 16384


class _RefusalError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _CorkedTransport:
    """The connection's transport, with the writes of one event-loop iteration joined.

    The first write of an iteration is held and a flush is scheduled with ``call_soon``; every
    write until then is appended, so a response's head and body (and a pipelined response
    after it) leave in one ``send``. Order is kept: everything goes through the one buffer,
    and ``close``/``write_eof`` flush it first. Everything else is the real transport's."""

    __slots__ = ("_loop", "_pending", "_pending_bytes", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None
        self._pending_bytes = 0

    def write(self, data: bytes) -> None:
        if self._pending is None:
            self._pending = [data]
            self._pending_bytes = len(data)
            self._loop.call_soon(self._flush)
        else:
            self._pending.append(data)
            self._pending_bytes += len(data)
        if self._pending_bytes >= CORK_LIMIT:
            # A large response goes out now, so the real transport's high-water mark (and
            # uvicorn's flow control, which waits on it) still bounds what is buffered.
            self._flush()

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        self._pending_bytes = 0
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedHttpProtocol(HttpToolsProtocol):
    """See the module docstring. ``bounds`` is set on a subclass by :func:`protocol_class`."""

    bounds = ConnectionBounds()
    #: The main app's precomputed GET answers (None on the telemetry and webhook listeners).
    static: StaticAnswers | None = None
    #: Where this worker counts the listener's connections when several workers share it
    #: (web.balance); None for a single worker.
    slot: WorkerSlot | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A static answer decided at the end of the head, written when the message completes.
        self._static_pending: _Pending | None = None
        self._defaults_for: object = None
        self._default_lines = b""
        # uvicorn types this int, but only hands it to loop.call_later: a fraction is fine.
        self.timeout_keep_alive = self.bounds.idle  # type: ignore[assignment]
        self._timer: TimerHandle | None = None
        self._phase = "idle"  # idle -> head -> body -> idle (or refused)
        self._head_bytes = 0
        self._header_count = 0
        self._host_count = 0
        self._host_empty = False
        # Set once any request byte arrived: a connection without one is "new" at shutdown.
        self._used = False
        self._draining = False
        # Requests begun on this connection, and how many had begun when draining started.
        self._requests = 0
        self._requests_at_drain = 0

    # -- connection ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.slot is not None:
            self.slot.change(+1)
        # Flow control keeps the real transport (super() gave it that one); every write of
        # this protocol and of its request cycles goes through the cork.
        self.transport = cast(asyncio.Transport, _CorkedTransport(transport, self.loop))
        # uvicorn arms its keep-alive timer only after a response: arm it for the first
        # request too, so a connection that never sends is closed.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.bounds.idle, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self.slot is not None:
            self.slot.release()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """The server is draining. A busy connection closes after its response (uvicorn's
        behaviour). Any other one, new or kept alive between requests, gets
        ``NEW_CONNECTION_GRACE`` to send a request, which is answered with
        ``connection: close``; without one it is closed when the grace ends.

        Closing an idle kept-alive connection at once (uvicorn, Go) races the client: a request
        it sent just before the close arrives unread, or in the loop step before the socket is
        really closed, and the close resets the connection; the client sees a request it had
        sent fail without an answer (seen under load: a thread logging in in a loop got
        ReadError at shutdown). With the grace, every request that reaches the server before
        the grace ends is answered; a client sees the close only between requests."""
        self._draining = True
        cycle = self.cycle  # uvicorn types it non-optional; None until a request
        busy = cycle is not None and not cycle.response_complete
        if busy or self.transport.is_closing():
            super().shutdown()
            return
        self._requests_at_drain = self._requests
        self.loop.call_later(min(NEW_CONNECTION_GRACE, self.bounds.idle), self._close_if_idle)

    def _close_if_idle(self) -> None:
        """The grace is over: close unless a request began meanwhile (it is answered with
        ``connection: close``, which closes the connection after its response)."""
        if (
            self._phase == "idle"
            and self._requests == self._requests_at_drain
            and not self.transport.is_closing()
        ):
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._phase == "refused":
            return  # lingering: read and discard until the close
        self._used = True
        self._unset_keepalive_if_required()
        if self._phase == "idle":
            self._requests += 1
            self._phase = "head"
            self._head_bytes = 0
            self._arm(self.bounds.read_header, self._head_timed_out)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _RefusalError):
                self._refuse(exc.__context__.status, exc.__context__.reason)
                return
            self._parser_error()
            return
        except httptools.HttpParserError:
            self._parser_error()
            return
        except httptools.HttpParserUpgrade:
            # As uvicorn does without a WebSocket library: the request is served as plain
            # HTTP/1.1 (its cycle started with the headers) and the upgrade is ignored.
            return
        if self._phase == "head":
            # Everything received since the request began is still head: bound it here, so a
            # header line that never ends is refused after max_header_bytes, not buffered.
            self._head_bytes += len(data)
            if self._head_bytes > self.bounds.max_header_bytes:
                self._refuse(431, "request head too large")

    def _parser_error(self) -> None:
        log.debug("invalid HTTP request from %s", self.client[0] if self.client else "?")
        self._refuse(400, "invalid HTTP request")

    # -- parser callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = 0
        self._host_count = 0
        self._host_empty = False
        if self._phase != "head":  # a pipelined request already in this buffer
            self._phase = "head"
            self._head_bytes = 0
            self._arm(self.bounds.read_header, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        if len(self.url) + len(url) > self.bounds.max_header_line_bytes:
            raise _RefusalError(431, "request line too long")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.bounds.max_headers:
            raise _RefusalError(431, f"more than {self.bounds.max_headers} header lines")
        if len(name) + len(value) > self.bounds.max_header_line_bytes:
            raise _RefusalError(431, "header line too long")
        if name.lower() == b"host":
            self._host_count += 1
            self._host_empty = self._host_empty or not value.strip()
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._host_count != 1 or self._host_empty:
            raise _RefusalError(400, "exactly one non-empty Host header is required")
        self._phase = "body"
        if self.static is not None and self._static_request(self.static):
            return  # no body follows: the message completes in this same parser call
        self._arm(self.bounds.read_body, self._body_timed_out)
        super().on_headers_complete()
        if self._draining:
            self.cycle.keep_alive = False  # the last request on a draining connection

    def on_message_complete(self) -> None:
        self._phase = "idle"
        self._cancel_timer()
        pending = self._static_pending
        if pending is not None:
            self._static_pending = None
            self._answer_static(*pending)
            return
        super().on_message_complete()

    # -- static answers ------------------------------------------------------------------
    def _static_request(self, static: StaticAnswers) -> bool:
        """Whether this request is one the protocol answers itself (see the module docstring);
        if so it is remembered for :meth:`on_message_complete`."""
        found = static.get_raw.get(self.url)
        if found is None:
            return False
        parser = self.parser
        cycle = self.cycle
        if (
            parser.get_method() != b"GET"
            or parser.get_http_version() != "1.1"
            or parser.should_upgrade()
            or self.expect_100_continue
            or self.root_path
            # uvicorn's own access log, written by its request cycle (off in serve)
            or (self.access_log and self.access_logger.isEnabledFor(logging.INFO))
            or self.limit_concurrency is not None
            or self.pipeline
            or (cycle is not None and not cycle.response_complete)  # keep the answers' order
            or self.flow.write_paused  # the cycle's send waits for the client to read
        ):
            return False
        if_none_match = None
        for name, value in self.headers:
            if name == b"if-none-match":
                if if_none_match is None:
                    if_none_match = value
            elif name == b"content-length":
                if value != b"0":
                    return False  # a body to read and discard: uvicorn's job
            elif name in (b"origin", b"transfer-encoding"):
                return False  # CORS headers, or a chunked body: the app's job
        path, answer = found
        self._static_pending = (
            path,
            answer,
            if_none_match,
            parser.should_keep_alive() and not self._draining,
            time.perf_counter(),
        )
        return True

    def _answer_static(
        self,
        path: str,
        answer: Callable[[], StaticAnswer],
        if_none_match: bytes | None,
        keep_alive: bool,
        start: float,
    ) -> None:
        """Write the answer as uvicorn's request cycle would, then what uvicorn does after a
        complete response (``on_response_complete``)."""
        assert self.static is not None
        static = answer()
        defaults = self.server_state.default_headers  # the Date header, renewed every second
        if defaults is not self._defaults_for:
            self._defaults_for = defaults
            self._default_lines = b"".join(b"%s: %s\r\n" % pair for pair in defaults)
        if if_none_match == static.etag:
            status, lines, body = 304, static.not_modified_lines, b""
        else:
            status, lines, body = 200, static.ok_lines, static.body
        close = b"" if keep_alive else b"connection: close\r\n"
        self.transport.write(
            b"".join((STATUS_LINE[status], self._default_lines, lines, close, b"\r\n", body))
        )
        if not keep_alive:
            self.transport.close()
        self.static.record(path, "GET", status, time.perf_counter() - start, self.client)
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    # -- timeouts ------------------------------------------------------------------------
    def _arm(self, delay: float, callback: Any) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self._phase == "head":
            log.info(
                "closing a connection from %s: request head not received within %gs",
                self.client[0] if self.client else "?",
                self.bounds.read_header,
            )
            self._refuse(408, "request head not received in time")

    def _body_timed_out(self) -> None:
        self._timer = None
        if self._phase != "body" or self.transport.is_closing():
            return
        log.info(
            "closing a connection from %s: request body not received within %gs",
            self.client[0] if self.client else "?",
            self.bounds.read_body,
        )
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            self._refuse(408, "request body not received in time")
        else:
            self._phase = "refused"
            self.transport.close()

    # -- refusing ------------------------------------------------------------------------
    def _refuse(self, status: int, reason: str) -> None:
        """Answer ``status`` directly (no app runs, or the running one is cut off), then close
        after a short linger."""
        self._phase = "refused"
        self._cancel_timer()
        self._unset_keepalive_if_required()
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The app (if running) now sees a disconnect and its sends are dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        body = (reason + "\n").encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])
            + b"content-type: text/plain; charset=utf-8\r\n"
            + b"content-length: %d\r\n" % len(body)
            + b"connection: close\r\n\r\n"
            + body
        )
        self.flow.resume_reading()
        self.loop.call_later(LINGER, self.transport.close)

    def eof_received(self) -> None:
        if self._phase == "refused":
            self.transport.close()


def protocol_class(
    bounds: ConnectionBounds,
    static: StaticAnswers | None = None,
    slot: WorkerSlot | None = None,
) -> type[GuardedHttpProtocol]:
    """A protocol class with ``bounds`` (uvicorn takes a class, not an instance); ``static``
    only for a listener serving the main app; ``slot`` when several workers share the
    listener."""
    return type(
        "BoundedHttpProtocol",
        (GuardedHttpProtocol,),
        {"bounds": bounds, "static": static, "slot": slot},
    )
