"""The issuer's public ASGI app: the OIDC endpoints, the login pages, static files and the
health check, under the issuer's path.

Built once by the assembly (portcullis.issuer) from what it hands in; request handlers only read
what is built here. Other adapters' browser routes (the kubeconfig page) are handed in as
``extra_routes`` and mounted beside web's own, so web never imports them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Scope

from portcullis.config.load import Config
from portcullis.oidc.provider import Provider
from portcullis.storage.base import StorageError
from portcullis.telemetry import AccessLogMiddleware, Metrics, run_ready_check
from portcullis.web import security
from portcullis.web.api import ApiRoutes, Cors
from portcullis.web.body_limit import (
    BodyLimitMiddleware,
    BodyTooLargeError,
    route_limits,
)
from portcullis.web.body_limit import too_large_handler as too_large
from portcullis.web.device import DeviceRoutes
from portcullis.web.hot_paths import HotPaths, StaticAnswers
from portcullis.web.login import LoginRoutes
from portcullis.web.logout import LogoutRoutes
from portcullis.web.pages import Pages, static_dirs
from portcullis.web.registration import RegistrationRoutes

log = logging.getLogger("portcullis")

#: RFC 8414's well-known suffix for OAuth 2.0 authorization server metadata.
AS_METADATA_PATH = "/.well-known/oauth-authorization-server"


def secure_cookies(config: Config) -> bool:
    """Cookies get the Secure flag when the issuer is served over https."""
    return urlsplit(config.issuer).scheme == "https"


def client_ip_resolver(config: Config) -> security.ClientIPResolver:
    remote_ip = config.raw.web.client_remote_ip
    return security.ClientIPResolver(remote_ip.header, remote_ip.trusted_proxies)


#: Longest static path looked up; longer ones cannot name a file we ship (and the kernel
#: refuses names over 255 bytes per component with ENAMETOOLONG).
_MAX_STATIC_PATH = 512


def _first_existing(dirs: list[Path], name: str) -> Path | None:
    """The file ``name`` in the first of ``dirs`` holding it, or None.

    The name comes from the URL, decoded: a NUL byte or an over-long component makes the
    file-system calls raise (ValueError, ENAMETOOLONG), which used to surface as a 500. Such a
    name cannot be a file we serve, so it is simply not found."""
    if len(name) > _MAX_STATIC_PATH or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        return None
    for directory in dirs:
        try:
            candidate = (directory / name).resolve()
            if candidate.is_file() and directory.resolve() in candidate.parents:
                return candidate
        except (OSError, ValueError):
            return None
    return None


def web_app(
    config: Config,
    provider: Provider,
    *,
    pages: Pages,
    ip_resolver: security.ClientIPResolver,
    metrics: Metrics,
    readiness: Callable[[], dict[str, Any]],
    extra_routes: Sequence[BaseRoute] = (),
    lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]] | None = None,
    hot_paths: bool = True,
) -> Starlette:
    """The public app. ``readiness`` answers /healthz (run off the event loop); ``extra_routes``
    are relative to the issuer path; ``lifespan`` runs the assembly's background work.
    ``hot_paths``: answer discovery, JWKS and /token in raw ASGI in front of the routes
    (web.hot_paths); off only to compare the two answers in tests."""
    raw = config.raw
    base = config.issuer_path
    https = secure_cookies(config)
    headers = security.default_headers(https)
    for name, value in raw.web.headers.model_dump(by_alias=True).items():
        if value is not None:
            headers[name] = value
    login = LoginRoutes(provider, pages, ip_resolver, secure_cookies=https)
    api = ApiRoutes(provider, ip_resolver)
    device = DeviceRoutes(provider, pages, ip_resolver, secure_cookies=https)
    logout = LogoutRoutes(provider, pages, secure_cookies=https)
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
        report = await run_ready_check(readiness)
        text = "Health check passed\n" if report["ready"] else "Health check failed\n"
        return PlainTextResponse(text, status_code=200 if report["ready"] else 503)

    async def not_found(request: Request, exc: Exception) -> Response:
        return pages.error(404, "Not found", "There is nothing at this address.")

    json_paths = {
        f"{base}{p}"
        for p in ("/token", "/userinfo", "/token/introspect", "/token/revoke", "/keys")
        + (("/device/token", "/device/code") if provider.device.enabled else ())
    } | {f"{base}/.well-known/openid-configuration"}

    async def storage_unavailable(request: Request, exc: Exception) -> Response:
        # The database is down or unreachable: a condition of the deployment, not a bug, so a
        # 503 the client may retry (and one log line naming the database, which the storage
        # layer has scrubbed of credentials) rather than a 500 with a traceback. The request
        # path is attacker-controlled and stays out of the line.
        log.warning("storage unavailable, answering 503: %s", exc)
        retry = {"Retry-After": "5", "Cache-Control": "no-store"}
        if request.url.path in json_paths:
            return JSONResponse(
                {
                    "error": "temporarily_unavailable",
                    "error_description": "the issuer's storage is unavailable; retry later",
                },
                status_code=503,
                headers=retry,
            )
        page = pages.error(
            503, "Temporarily unavailable", "The service cannot log you in right now. Retry later."
        )
        page.headers.update(retry)
        return page

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s", request.url.path, exc_info=exc)
        return pages.error(500, "Something went wrong", "The server failed. Try again later.")

    get_post = ["GET", "POST"]
    routes: list[BaseRoute] = [
        Route(
            "/.well-known/openid-configuration",
            cors.wrap(api.discovery),
            methods=["GET", "OPTIONS"],
        ),
        # RFC 8414 metadata at the issuer-relative location (some clients append the suffix
        # to the issuer, as they do for OIDC discovery). The RFC's own location, with the
        # issuer path inserted after the host, is mounted at the root below.
        Route(AS_METADATA_PATH, cors.wrap(api.discovery), methods=["GET", "OPTIONS"]),
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
        Route("/logout", logout.logout, methods=get_post),
        Route("/static/{path:path}", static_file, methods=["GET"]),
        Route("/theme/{path:path}", theme_file, methods=["GET"]),
        Route("/robots.txt", robots, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        *extra_routes,
    ]
    if provider.device.enabled:
        # Dex's paths. Absent (404) unless the device grant is enabled, like its discovery key.
        routes += [
            Route("/device/code", cors.wrap(device.device_code), methods=["POST", "OPTIONS"]),
            Route("/device/token", cors.wrap(device.device_token), methods=["POST", "OPTIONS"]),
            Route("/device", device.page, methods=["GET"]),
            Route("/device/auth/verify_code", device.verify, methods=["POST"]),
            Route("/device/callback", device.callback, methods=["GET"]),
        ]

    # RFC 8414 §3.1: for issuer https://host/dex the metadata is at
    # https://host/.well-known/oauth-authorization-server/dex, outside the issuer's path. With
    # no issuer path the two locations coincide and the inner route serves both.
    root_metadata = Route(
        AS_METADATA_PATH + base, cors.wrap(api.discovery), methods=["GET", "OPTIONS"]
    )

    if provider.registration.enabled:
        # RFC 7591/7592. Absent (404) unless enabled, like its metadata key.
        registration = RegistrationRoutes(provider.registration, ip_resolver)
        routes += [
            Route("/register", cors.wrap(registration.register), methods=["POST", "OPTIONS"]),
            Route(
                "/register/{client_id}",
                cors.wrap(registration.configuration),
                methods=["GET", "DELETE", "OPTIONS"],
            ),
        ]

    def route_of(scope: Scope) -> str:
        route = scope.get("route")
        if route is root_metadata:
            return str(root_metadata.path)
        path = getattr(route, "path", None)
        return f"{base}{path}" if isinstance(path, str) else "unmatched"

    inner = Starlette(routes=routes)
    static = (
        StaticAnswers(base=base, provider=provider, metrics=metrics, security_headers=headers)
        if hot_paths
        else None
    )
    hot = (
        [
            Middleware(
                HotPaths,
                base=base,
                provider=provider,
                ip_resolver=ip_resolver,
                static=static,
                storage_unavailable=storage_unavailable,
            )
        ]
        if static is not None
        else []
    )
    app = Starlette(
        routes=[root_metadata, Mount(base or "/", app=inner)] if base else routes,
        middleware=[
            *hot,
            Middleware(AccessLogMiddleware, metrics=metrics, route_of=route_of),
            Middleware(security.SecurityHeadersMiddleware, headers=headers),
            # Before any route reads a body: 413 from Content-Length or the running count.
            Middleware(BodyLimitMiddleware, limits=route_limits(base)),
        ],
        exception_handlers={
            404: not_found,
            500: server_error,
            BodyTooLargeError: too_large,
            StorageError: storage_unavailable,
        },
        lifespan=lifespan,
    )
    # For the HTTP protocol (web.connection), which answers exact-match static GETs itself.
    app.state.static_answers = static
    # The mounted app answers its own exceptions first (its error middleware would otherwise
    # send a plain 500 before the outer app sees them).
    inner.exception_handlers = {
        404: not_found,
        BodyTooLargeError: too_large,
        StorageError: storage_unavailable,
    }
    return app
