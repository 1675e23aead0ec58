"""Assemble the issuer's ASGI application from a loaded config.

Everything derived from the config (provider, templates, precomputed discovery/JWKS bytes) is
built once here; request handlers only read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.types import Scope

from portcullis.clock import Clock, SystemClock
from portcullis.config.load import Config
from portcullis.connectors.base import Connector
from portcullis.connectors.local import LocalPasswordConnector
from portcullis.connectors.registry import LOCAL_CONNECTOR_ID, build_connector
from portcullis.oidc.provider import Provider
from portcullis.storage.base import Storage, StorageError
from portcullis.storage.factory import open_storage
from portcullis.storage.models import Password
from portcullis.telemetry import AccessLogMiddleware, Metrics, run_ready_check, telemetry_app
from portcullis.web import security
from portcullis.web.api import ApiRoutes, Cors
from portcullis.web.login import LoginRoutes
from portcullis.web.pages import Pages, static_dirs

log = logging.getLogger("portcullis")

KEY_CHECK_INTERVAL = 30.0
KEY_REFRESH_INTERVAL = 5.0
GC_INTERVAL = 300.0


@dataclass
class Issuer:
    """The running issuer: the main app, the telemetry app and what they share."""

    config: Config
    provider: Provider
    app: Starlette
    telemetry: Starlette
    metrics: Metrics
    fips_status: dict[str, Any] = field(default_factory=dict)
    # The TokenReview webhook, served on its own listener (kubernetes.tokenReview.addr).
    webhook: Starlette | None = None

    def readiness(self) -> dict[str, Any]:
        checks: dict[str, Any] = {}
        try:
            self.provider.storage.ping()
            checks["storage"] = "ok"
        except StorageError as exc:
            checks["storage"] = f"unavailable: {type(exc).__name__}"
        try:
            checks["signing_key"] = self.provider.keys.cached().signing_kid and "ok"
        except Exception as exc:
            checks["signing_key"] = f"missing: {type(exc).__name__}"
        ready = all(v == "ok" for v in checks.values())
        report: dict[str, Any] = {"ready": ready, "checks": checks}
        if self.fips_status:
            report["fips"] = self.fips_status
        return report


def build_connectors(config: Config, storage: Storage, *, fips_mode: bool) -> dict[str, Connector]:
    connectors: dict[str, Connector] = {}
    for spec in config.connectors:
        assert spec.config is not None
        connector = build_connector(spec.id, spec.name, spec.type, spec.config)
        if connector.dev_only:
            log.warning(
                "connector %r (%s) is for development only: anyone can log in through it",
                spec.id,
                spec.type,
            )
        connectors[spec.id] = connector
    if config.raw.enable_password_db:
        static = [
            Password(
                email=p.email,
                hash=p.hash,
                username=p.username,
                user_id=p.user_id,
                name=p.name,
                preferred_username=p.preferred_username,
                email_verified=p.email_verified,
                groups=p.groups,
            )
            for p in config.passwords
        ]
        connectors[LOCAL_CONNECTOR_ID] = LocalPasswordConnector(
            storage, static, fips_mode=fips_mode
        )
    return connectors


def _first_existing(dirs: list[Path], name: str) -> Path | None:
    for directory in dirs:
        candidate = (directory / name).resolve()
        if candidate.is_file() and directory.resolve() in candidate.parents:
            return candidate
    return None


def create_issuer(
    config: Config,
    *,
    storage: Storage | None = None,
    clock: Clock | None = None,
    fips_mode: bool = False,
    fips_status: dict[str, Any] | None = None,
) -> Issuer:
    clock = clock or SystemClock()
    storage = storage or open_storage(config)
    connectors = build_connectors(config, storage, fips_mode=fips_mode)
    provider = Provider(config, storage, connectors, clock, fips_mode=fips_mode)
    provider.start()

    raw = config.raw
    base = config.issuer_path
    https = urlsplit(config.issuer).scheme == "https"
    headers = security.default_headers(https)
    for name, value in raw.web.headers.model_dump(by_alias=True).items():
        if value is not None:
            headers[name] = value
    pages = Pages(raw.frontend, base)
    ip_resolver = security.ClientIPResolver(
        raw.web.client_remote_ip.header, raw.web.client_remote_ip.trusted_proxies
    )
    login = LoginRoutes(provider, pages, ip_resolver, secure_cookies=https)
    api = ApiRoutes(provider, ip_resolver)
    cors = Cors(raw.web.allowed_origins, raw.web.allowed_headers)
    statics, themes = static_dirs(raw.frontend)

    async def static_file(request: Request) -> Response:
        found = _first_existing(statics, request.path_params["path"])
        if found is None:
            return PlainTextResponse("not found\n", status_code=404)
        return FileResponse(found, headers={"Cache-Control": "public, max-age=3600"})

    async def theme_file(request: Request) -> Response:
        found = _first_existing(themes, request.path_params["path"])
        if found is None:
            return PlainTextResponse("not found\n", status_code=404)
        return FileResponse(found, headers={"Cache-Control": "public, max-age=3600"})

    async def robots(request: Request) -> Response:
        return PlainTextResponse("User-agent: *\nDisallow: /\n")

    async def healthz(request: Request) -> Response:
        report = await run_ready_check(issuer.readiness)
        text = "Health check passed\n" if report["ready"] else "Health check failed\n"
        return PlainTextResponse(text, status_code=200 if report["ready"] else 503)

    async def not_found(request: Request, exc: Exception) -> Response:
        return pages.error(404, "Not found", "There is nothing at this address.")

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s", request.url.path, exc_info=exc)
        return pages.error(500, "Something went wrong", "The server failed. Try again later.")

    get_post = ["GET", "POST"]
    routes = [
        Route(
            "/.well-known/openid-configuration",
            cors.wrap(api.discovery),
            methods=["GET", "OPTIONS"],
        ),
        Route("/keys", cors.wrap(api.keys), methods=["GET", "OPTIONS"]),
        Route("/token", cors.wrap(api.token), methods=["POST", "OPTIONS"]),
        Route("/userinfo", cors.wrap(api.userinfo), methods=["GET", "POST", "OPTIONS"]),
        Route("/token/introspect", cors.wrap(api.introspect), methods=["POST", "OPTIONS"]),
        Route("/token/revoke", cors.wrap(api.revoke), methods=["POST", "OPTIONS"]),
        Route("/auth", login.auth, methods=get_post),
        Route("/auth/{connector}", login.auth_connector, methods=["GET"]),
        Route("/auth/{connector}/login", login.password_login, methods=get_post),
        Route("/callback", login.callback, methods=get_post),
        Route("/callback/{connector}", login.callback, methods=get_post),
        Route("/approval", login.approval, methods=get_post),
        Route("/static/{path:path}", static_file, methods=["GET"]),
        Route("/theme/{path:path}", theme_file, methods=["GET"]),
        Route("/robots.txt", robots, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        *_kubeconfig_routes(config, provider, pages, ip_resolver, secure_cookies=https),
    ]
    metrics = Metrics()

    def route_of(scope: Scope) -> str:
        route = scope.get("route")
        path = getattr(route, "path", None)
        return f"{base}{path}" if isinstance(path, str) else "unmatched"

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(_key_loop(provider, stop)),
            asyncio.create_task(_gc_loop(provider, stop)),
        ]
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)

    inner = Starlette(routes=routes)
    app = Starlette(
        routes=[Mount(base or "/", app=inner)] if base else routes,
        middleware=[
            Middleware(AccessLogMiddleware, metrics=metrics, route_of=route_of),
            Middleware(security.SecurityHeadersMiddleware, headers=headers),
        ],
        exception_handlers={404: not_found, 500: server_error},
        lifespan=lifespan,
    )
    inner.exception_handlers = {404: not_found}
    issuer = Issuer(
        config=config,
        provider=provider,
        app=app,
        telemetry=telemetry_app(metrics, lambda: issuer.readiness()),
        metrics=metrics,
        fips_status=fips_status or {},
        webhook=_kube_webhook(config, provider, metrics),
    )
    return issuer


def _kube_webhook(config: Config, provider: Provider, metrics: Metrics) -> Starlette | None:
    section = config.raw.kubernetes.token_review
    if not section.enabled:
        return None
    from portcullis.kube.tokenreview import TokenReviewer
    from portcullis.kube.webhook import webhook_app

    # The issuer's own reader: signature, iss, exp and jti/sid revocation, as for userinfo.
    reviewer = TokenReviewer(provider.reader.verified_claims, section)
    return webhook_app(reviewer, section, metrics)


async def _key_loop(provider: Provider, stop: asyncio.Event) -> None:
    """Every worker checks the schedule; the storage transaction makes one of them win. In
    between, the cached key set is refreshed so another replica's rotation shows up in /keys
    within KEY_REFRESH_INTERVAL, without /keys ever waiting on storage."""
    since_check = 0.0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=KEY_REFRESH_INTERVAL)
        if stop.is_set():
            return
        since_check += KEY_REFRESH_INTERVAL
        try:
            if since_check >= KEY_CHECK_INTERVAL:
                since_check = 0.0
                if await asyncio.to_thread(provider.keys.rotate_if_due):
                    log.info("rotated the signing key")
            await asyncio.to_thread(provider.keys.current)
        except Exception:
            log.exception("signing-key maintenance failed; will retry")


async def _gc_loop(provider: Provider, stop: asyncio.Event) -> None:
    from portcullis.storage.gc import run_gc_loop

    await run_gc_loop(provider.storage, provider.clock, GC_INTERVAL, stop, log)


def _kubeconfig_routes(
    config: Config,
    provider: Provider,
    pages: Pages,
    ip_resolver: security.ClientIPResolver,
    *,
    secure_cookies: bool,
) -> list[Route]:
    section = config.raw.kubernetes.kubeconfig_page
    if not section.enabled:
        return []
    from portcullis.kube.page import KubeconfigPage

    client = next(c for c in config.clients if c.id == section.client_id)  # checked on load
    page = KubeconfigPage(
        provider, pages, ip_resolver, section, client, secure_cookies=secure_cookies
    )
    return [
        Route("/kubeconfig", page.start, methods=["GET"]),
        Route("/kubeconfig/callback", page.callback, methods=["GET"]),
    ]
