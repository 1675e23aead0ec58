"""Run the issuer: bind every listener first (clear error if a port is taken), then serve them
from one or more worker processes that share the sockets and the storage.

Signals: SIGTERM/SIGINT stop accepting, let in-flight requests finish (up to the drain
timeout) and exit 0. With several workers the parent forwards the signal and exits 0 only if
every worker did.

Several workers: a worker killed by a signal (OOM killer, SIGKILL, a crash in native code) is
replaced at once, so one dead process never takes the issuer down — every session lives in
storage, so nothing is lost with it; a worker that keeps dying (more than
``RESTART_LIMIT`` times in ``RESTART_WINDOW`` seconds) stops the server instead of flapping. A
worker that *exits* with a code (it could not open storage or bind) takes the others down, as a
half-served issuer is worse than a clear failure. Metric values are shared between workers
through a private directory (prometheus-client multiprocess mode) so ``/metrics`` is the sum.

The gRPC admin API (grpc.addr) is served by one process only — the single process, or worker 0
of several — because grpcio binds its own socket (see portcullis.admin.server).

Several workers share each listening socket, and take its connections in turn so that each
holds about as many as the others (web.balance): a burst of keep-alive connections would
otherwise pile onto whichever worker woke first.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, cast

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from portcullis import __version__
from portcullis.config.load import Config, ConfigError
from portcullis.fips import TLS_CIPHERS_FIPS
from portcullis.issuer import create_issuer
from portcullis.kube.callers import CallerCheckError
from portcullis.storage.base import StorageError
from portcullis.storage.factory import import_backend
from portcullis.telemetry import share_metrics_between_workers
from portcullis.web.balance import BalancedAcceptor, ConnectionShares, WorkerSlot
from portcullis.web.connection import ConnectionBounds, protocol_class

log = logging.getLogger("portcullis")

EXIT_LISTEN_FAILED = 1
RESTART_LIMIT = 5
RESTART_WINDOW = 60.0
EXIT_CONFIG_ERROR = 2  # as the CLI's usage errors: the config must change


class _SharedSignalServer(uvicorn.Server):
    """uvicorn installs its own handlers per server; we stop all listeners together instead.

    With a ``slot`` (several workers share the socket) the socket is accepted from by a
    :class:`BalancedAcceptor` instead of ``loop.create_server``; everything else — the
    lifespan, the protocol, the state, the shutdown — is uvicorn's own."""

    def __init__(self, config: uvicorn.Config, slot: WorkerSlot | None = None) -> None:
        super().__init__(config)
        self._slot = slot

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if self._slot is None or sockets is None:
            await super().startup(sockets)
            return
        # uvicorn.Server.startup's branch for sockets handed in, with the acceptor in place of
        # loop.create_server (tests/unit/test_serve_balance.py runs it against uvicorn's).
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)
        config = self.config

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            protocol: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                _loop=_loop,
            )
            return protocol

        loop = asyncio.get_running_loop()
        acceptors = [
            BalancedAcceptor(loop, sock, create_protocol, self._slot, ssl_context=config.ssl)
            for sock in sockets
        ]
        # uvicorn only calls close() and wait_closed() on what it keeps here.
        self.servers = cast("list[asyncio.base_events.Server]", acceptors)
        for acceptor in acceptors:
            acceptor.start()
        self.started = True


@dataclass(frozen=True)
class Listener:
    name: str  # the config key, for error messages
    address: str
    sock: socket.socket
    telemetry: bool = False
    tls: bool = False
    webhook: bool = False  # the Kubernetes TokenReview webhook (its own app and certificate)


def _resolve(name: str, address: str) -> tuple[socket.AddressFamily, str, int]:
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - an empty host means all, like Go
    try:
        ip = ipaddress.ip_address(host)
        return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), host, int(port_text)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, int(port_text), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot listen on {name} {address}: {exc.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    return family, str(sockaddr[0]), int(port_text)


def _bind(name: str, address: str) -> socket.socket:
    family, host, port = _resolve(name, address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit this on Linux: without it, a response written as headers + body
    # waits for the client's delayed ACK (~40 ms per request).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {name} {address}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def bind_listeners(config: Config) -> list[Listener]:
    raw = config.raw
    wanted = [
        ("web.http", raw.web.http, False, False),
        ("web.https", raw.web.https, False, True),
        ("telemetry.http", raw.telemetry.http, True, False),
    ]
    listeners: list[Listener] = []
    review = raw.kubernetes.token_review
    try:
        for name, address, telemetry, tls in wanted:
            if address:
                listeners.append(Listener(name, address, _bind(name, address), telemetry, tls))
        if review.enabled and review.addr:
            name = "kubernetes.tokenReview.addr"
            sock = _bind(name, review.addr)
            listeners.append(
                Listener(name, review.addr, sock, tls=bool(review.tls_cert), webhook=True)
            )
        if raw.grpc.addr:
            # grpcio binds this port itself, later, in one worker: probe it now so a taken port
            # fails before anything starts.
            _bind("grpc.addr", raw.grpc.addr).close()
    except OSError:
        for listener in listeners:
            listener.sock.close()
        raise
    return listeners


def _tls_context(config: Config, fips_mode: bool, *, webhook: bool = False) -> ssl.SSLContext:
    raw = config.raw.kubernetes.token_review if webhook else config.raw.web
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert raw.tls_cert
    assert raw.tls_key
    context.load_cert_chain(raw.tls_cert, raw.tls_key)
    context.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if raw.tls_min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    if raw.tls_max_version == "1.2":
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    if fips_mode:
        context.set_ciphers(TLS_CIPHERS_FIPS)
    return context


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's event loop (locked in the runtime requirements and frozen into the image).

    uvicorn installs uvloop only when it runs the loop itself (``uvicorn.run``); we run the
    loop ourselves (several listeners, one signal handler), so without this every worker ran
    on the pure-Python asyncio loop, where a profile of /.well-known/openid-configuration under
    load spent half its samples in ``_SelectorSocketTransport.write``."""
    import uvloop

    return uvloop.new_event_loop


# Seconds; see run_worker. Measured with bench.run (refresh, sqlite): 5 ms (the default)
# against 0.5 ms, see bench/README.md, "Thread hand-offs".
WORKER_SWITCH_INTERVAL = 0.0005

#: The cyclic collector's thresholds in a serving worker (CPython's default: 700, 10, 10).
#: See settle_worker_heap; measured in bench/README.md, "sixth round".
WORKER_GC_THRESHOLDS = (10_000, 20, 20)


def settle_worker_heap() -> None:
    """Move what the worker built to start (issuer, app, connectors, templates) out of the
    cyclic collector's generations, and collect young objects less often.

    Why: under load the tail latency of a worker was its garbage collections, not its
    requests. A full collection walks every tracked object the worker holds; with start-up's
    objects in the oldest generation that walk stopped the event loop for milliseconds at a
    time while 50 requests waited (refresh on one worker: p99 55 -> 31 ms, bench/README.md).
    Frozen objects are never walked again (nothing here is garbage: it lives as long as the
    worker). A request's objects are freed by reference counting when it ends; the collector
    only finds cycles, so a gen-0 threshold of 10,000 net new container objects (a few
    hundred KiB) bounds what can wait for it, and each young collection walks the requests
    in flight once per 10,000 allocations instead of once per 700.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*WORKER_GC_THRESHOLDS)


def run_worker(
    config: Config,
    listeners: list[Listener],
    *,
    fips_mode: bool,
    fips_status: dict[str, Any],
    drain_timeout: float,
    admin_api: bool = True,
    metrics_dir: str | None = None,
    shares: dict[str, ConnectionShares] | None = None,
    index: int = 0,
) -> int:
    """Serve every listener in this process until a stop signal; returns the exit code.

    ``admin_api``: whether this process also serves grpc.addr (only one process does).
    ``metrics_dir``: where the workers of one server share their metric values.
    ``shares``: per listener name, the connection counts of the workers sharing it (several
    workers only); ``index`` is this worker's slot in them."""
    # A thread waiting for the GIL (SQLite's committer between two statements of a group
    # commit, a worker thread back from a syscall) waits this long before the event loop must
    # let it in; CPython's default of 5 ms, paid at every GIL hand-off of a group commit that
    # holds the cross-process write lock, showed up as idle cores and a longer tail.
    sys.setswitchinterval(WORKER_SWITCH_INTERVAL)
    if metrics_dir:
        share_metrics_between_workers(metrics_dir)
    try:
        issuer = create_issuer(
            config, fips_mode=fips_mode, fips_status=fips_status, metrics_dir=metrics_dir
        )
    except StorageError as exc:
        print(f"portcullis: storage ({config.raw.storage.type}): {exc}", file=sys.stderr)
        return EXIT_LISTEN_FAILED
    except ConfigError as exc:  # a connector refused to open (see issuer.build_connectors)
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except CallerCheckError as exc:
        print(f"portcullis: {exc}", file=sys.stderr)
        return EXIT_LISTEN_FAILED
    admin_server = None
    if admin_api and config.raw.grpc.addr:
        # Imported here so a process without grpc.addr never loads grpcio.
        from portcullis.admin.server import AdminListenError

        try:
            admin_server = issuer.start_admin_server()
        except AdminListenError as exc:
            print(f"portcullis: {exc}", file=sys.stderr)
            issuer.close()
            return EXIT_LISTEN_FAILED
    web = config.raw.web
    bounds = ConnectionBounds(
        idle=web.timeouts.idle,
        read_header=web.timeouts.read_header,
        read_body=web.timeouts.read_body,
        max_headers=web.limits.max_headers,
        max_header_line_bytes=web.limits.max_header_line_bytes,
        max_header_bytes=web.limits.max_header_bytes,
    )
    common: dict[str, Any] = {
        "timeout_keep_alive": web.timeouts.idle,
        "access_log": False,
        "log_config": None,
        "timeout_graceful_shutdown": drain_timeout,
        "proxy_headers": False,
        "server_header": False,
    }
    servers: list[tuple[_SharedSignalServer, socket.socket]] = []
    for listener in listeners:
        app = issuer.telemetry if listener.telemetry else issuer.app
        if listener.webhook:
            assert issuer.webhook is not None
            app = issuer.webhook
        side = listener.telemetry or listener.webhook  # the main app's lifespan runs once
        slot = shares[listener.name].slot(index) if shares else None
        # Every listener: timeouts, header bounds and the Host check (web.connection); the
        # main app's discovery and JWKS GETs are answered by the protocol itself.
        protocol = protocol_class(bounds, None if side else issuer.static_answers, slot)
        uv_config = uvicorn.Config(app, lifespan="off" if side else "on", http=protocol, **common)
        server = _SharedSignalServer(uv_config, slot)
        if listener.tls:
            # uvicorn wraps accepted connections with config.ssl once loaded.
            uv_config.load()
            uv_config.ssl = _tls_context(config, fips_mode, webhook=listener.webhook)
        servers.append((server, listener.sock))

    async def run() -> None:
        loop = asyncio.get_running_loop()

        def stop(signame: str) -> None:
            log.info("received %s: draining in-flight requests", signame)
            for server, _ in servers:
                server.should_exit = True
            if admin_server is not None:
                admin_server.stop(grace=drain_timeout)  # returns at once; waited for below

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop, sig.name)

        async def settle_once_started() -> None:
            # After the lifespan start-up (the key loop, the first key read) has run too.
            while not all(server.started for server, _ in servers):
                if any(server.should_exit for server, _ in servers):
                    return
                await asyncio.sleep(0.01)
            settle_worker_heap()

        settle = asyncio.create_task(settle_once_started())
        try:
            await asyncio.gather(*(server.serve(sockets=[sock]) for server, sock in servers))
        finally:
            settle.cancel()

    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(run())
    finally:
        if admin_server is not None:
            admin_server.stop(grace=drain_timeout).wait(drain_timeout + 1)
        issuer.close()
    failed = [s for s, _ in servers if not s.started]
    return 1 if failed else 0


def serve(
    config: Config,
    *,
    workers: int,
    fips_mode: bool,
    fips_status: dict[str, Any],
    drain_timeout: float,
) -> int:
    try:
        listeners = bind_listeners(config)
    except OSError as exc:
        print(f"portcullis: {exc}", file=sys.stderr)
        return EXIT_LISTEN_FAILED
    log.info(
        "serving issuer %s on %s (version %s, storage %s, %d worker(s), FIPS %s)",
        config.issuer,
        ", ".join(f"{listener.name}={listener.address}" for listener in listeners),
        __version__,
        config.raw.storage.type,
        workers,
        "on" if fips_mode else "off",
    )
    kwargs: dict[str, Any] = {
        "fips_mode": fips_mode,
        "fips_status": fips_status,
        "drain_timeout": drain_timeout,
    }
    if workers <= 1:
        code = run_worker(config, listeners, **kwargs)
        log.info("stopped")
        return code
    return _supervise(config, listeners, workers, kwargs)


def share_before_fork(config: Config) -> None:
    """Make what every worker loads anyway shared memory of the workers, not a copy in each.

    Each worker would import the storage backend (SQLAlchemy, psycopg) for itself; imported
    here once, its pages are shared copy-on-write. ``gc.freeze()`` then moves every object the
    parent holds (modules, classes, the config) out of the collector's generations: a worker's
    collections never walk them, so they never write to (and copy) those pages. The garbage of
    start-up is collected first, as freezing would keep it for good. Measured in
    bench/README.md (issue 13 item 3, second round): ~30 -> ~20 MiB private per worker."""
    import_backend(config)
    gc.collect()
    gc.freeze()


def _supervise(
    config: Config, listeners: list[Listener], workers: int, kwargs: dict[str, Any]
) -> int:
    """Fork workers after binding (sockets are shared; storage connections are opened in each
    child, never inherited), replace a worker killed by a signal, and wait for all of them."""
    metrics_dir = tempfile.mkdtemp(prefix="portcullis-metrics-")
    shares = {listener.name: ConnectionShares(workers) for listener in listeners}
    children: dict[int, int] = {}  # pid -> worker index
    restarts: list[float] = []
    stopping = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                code = run_worker(
                    config,
                    listeners,
                    admin_api=index == 0,
                    metrics_dir=metrics_dir,
                    shares=shares,
                    index=index,
                    **kwargs,
                )
            finally:
                os._exit(code)
        children[pid] = index

    stop_signals: set[int] = set()

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        stop_signals.add(signum)
        for child in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    share_before_fork(config)
    for index in range(workers):
        spawn(index)
    worst = 0
    try:
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            if pid not in children:
                continue
            index = children.pop(pid)
            for share in shares.values():
                # Its connections are gone with it: the others stop leaving new ones to it.
                share.retire(index)
            code = os.waitstatus_to_exitcode(status)
            if stopping and -code in stop_signals:
                # Killed by the stop signal we forwarded before it had installed its own
                # handler, i.e. while still starting: it served nothing, so a clean stop.
                code = 0
            if code < 0 and not stopping:
                now = time.monotonic()
                restarts[:] = [t for t in restarts if now - t < RESTART_WINDOW]
                if len(restarts) < RESTART_LIMIT:
                    restarts.append(now)
                    log.error(
                        "worker %d (pid %d) was killed by signal %d; starting a replacement",
                        index,
                        pid,
                        -code,
                    )
                    spawn(index)
                    continue
                log.error(
                    "worker %d (pid %d) was killed by signal %d, the %d. time in %.0f s: stopping",
                    index,
                    pid,
                    -code,
                    RESTART_LIMIT + 1,
                    RESTART_WINDOW,
                )
            if code != 0:
                if not stopping:
                    log.error("worker %d exited with %d", pid, code)
                # One worker dying takes the others down: a half-served issuer is worse.
                forward(signal.SIGTERM, None)
                worst = worst or (code if code > 0 else 1)
    finally:
        for listener in listeners:
            listener.sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    log.info("stopped")
    return worst
