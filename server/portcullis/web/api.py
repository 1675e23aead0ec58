"""JSON endpoints: discovery, JWKS, token, userinfo, introspection, revocation (with CORS)."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from anyio.to_thread import run_sync
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from portcullis.oidc import resources
from portcullis.oidc.errors import OAuthError, invalid_request
from portcullis.oidc.provider import Provider
from portcullis.web.security import ClientIPResolver

log = logging.getLogger("portcullis.api")

Handler = Callable[[Request], Awaitable[Response]]
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
FORM_TYPE = "application/x-www-form-urlencoded"


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(data, separators=(",", ":")).encode(),
        status_code=status,
        media_type="application/json",
        headers={**NO_STORE, **(headers or {})},
    )


def _oauth_error(error: OAuthError) -> Response:
    return _json(error.as_dict(), error.status, error.headers)


class Cors:
    """CORS for the endpoints Dex allows it on, limited to web.allowedOrigins."""

    def __init__(self, allowed_origins: list[str], allowed_headers: list[str]) -> None:
        self._any = "*" in allowed_origins
        self._origins = set(allowed_origins)
        self._headers = ", ".join(
            dict.fromkeys(["Authorization", "Content-Type", *allowed_headers])
        )

    def wrap(self, handler: Handler) -> Handler:
        async def wrapped(request: Request) -> Response:
            origin = request.headers.get("origin")
            allowed = origin is not None and (self._any or origin in self._origins)
            if request.method == "OPTIONS":
                if not allowed:
                    return Response(status_code=403)
                return Response(
                    status_code=204,
                    headers={
                        "Access-Control-Allow-Origin": origin or "",
                        "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                        "Access-Control-Allow-Headers": self._headers,
                        "Access-Control-Max-Age": "600",
                        "Vary": "Origin",
                    },
                )
            response = await handler(request)
            if allowed:
                response.headers["Access-Control-Allow-Origin"] = origin or ""
                response.headers["Vary"] = "Origin"
            return response

        return wrapped


#: Starlette's form parser refuses more fields than this (its ``max_fields``).
MAX_FORM_FIELDS = 1000


def form_values(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """One value per parameter from a form's (name, value) pairs, in first-seen order; raise
    invalid_request naming a parameter that is repeated. Shared by :func:`_form` and the raw
    token route (web.hot_paths), so both refuse exactly the same forms."""
    grouped: dict[str, list[str]] = {}
    for key, value in items:
        grouped.setdefault(key, []).append(value)
    values: dict[str, str] = {}
    for key, found in grouped.items():
        if key == resources.PARAMETER:
            # RFC 8707: the one parameter that may repeat (joined; see oidc.resources).
            values[key] = resources.join(found)
            continue
        if len(found) > 1:
            # RFC 6749 §3.1: parameters must not be repeated.
            raise invalid_request(f"the {key} parameter is repeated")
        values[key] = found[0]
    return values


def is_form(content_type: str) -> bool:
    """Whether a Content-Type header names an urlencoded form (parameters ignored)."""
    return content_type.split(";")[0].strip().lower() == FORM_TYPE


async def _form(request: Request) -> dict[str, str]:
    if not is_form(request.headers.get("content-type", "")):
        raise invalid_request(f"the request body must be {FORM_TYPE}")
    form = await request.form()
    return form_values((key, str(value)) for key, value in form.multi_items())


# The same helpers for the other JSON routes of the web layer (the device flow, logout).
json_response = _json
oauth_error_response = _oauth_error
read_form = _form


class ApiRoutes:
    def __init__(self, provider: Provider, ip_resolver: ClientIPResolver) -> None:
        self.provider = provider
        self.ip = ip_resolver

    async def discovery(self, request: Request) -> Response:
        etag = self.provider.discovery_etag
        headers = {"Cache-Control": "public, max-age=3600", "ETag": etag}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(self.provider.discovery, media_type="application/json", headers=headers)

    async def keys(self, request: Request) -> Response:
        state = self.provider.keys.cached()
        headers = {"Cache-Control": "public, max-age=600", "ETag": state.jwks_etag}
        if request.headers.get("if-none-match") == state.jwks_etag:
            return Response(status_code=304, headers=headers)
        return Response(state.jwks_body, media_type="application/json", headers=headers)

    async def token(self, request: Request) -> Response:
        if request.method != "POST":
            return _oauth_error(OAuthError("invalid_request", "use POST", status=405))
        try:
            form = await _form(request)
            result = await self.provider.tokens.handle(
                form, request.headers.get("authorization"), self.ip.resolve(request)
            )
        except OAuthError as error:
            log.info("token request refused: %s", error.error)
            return _oauth_error(error)
        return _json(result)

    async def introspect(self, request: Request) -> Response:
        try:
            form = await _form(request)
            authorization = request.headers.get("authorization")

            def introspect() -> dict[str, Any]:
                caller = self.provider.clients.authenticate(authorization, form, allow_public=False)
                return self.provider.reader.introspect(caller, form)

            result = await run_sync(introspect)
        except OAuthError as error:
            return _oauth_error(error)
        return _json(result)

    async def revoke(self, request: Request) -> Response:
        try:
            form = await _form(request)
            authorization = request.headers.get("authorization")

            def revoke() -> None:
                caller = self.provider.clients.authenticate(authorization, form, allow_public=True)
                self.provider.reader.revoke(caller, form)

            await run_sync(revoke)
        except OAuthError as error:
            return _oauth_error(error)
        return Response(status_code=200, headers=NO_STORE)

    async def userinfo(self, request: Request) -> Response:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not token and request.method == "POST":
            try:
                token = (await _form(request)).get("access_token", "")
            except OAuthError:
                token = ""
        if not token:
            return JSONResponse(
                {"error": "invalid_request", "error_description": "no access token"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="portcullis"', **NO_STORE},
            )
        claims = await run_sync(self.provider.reader.userinfo, token)
        if claims is None:
            return JSONResponse(
                {"error": "invalid_token", "error_description": "the access token is not valid"},
                status_code=401,
                headers={
                    "WWW-Authenticate": 'Bearer realm="portcullis", error="invalid_token"',
                    **NO_STORE,
                },
            )
        return _json(claims)
