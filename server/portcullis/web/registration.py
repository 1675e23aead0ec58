"""HTTP for RFC 7591 dynamic client registration (``POST {issuer}/register``) and the RFC 7592
client configuration endpoint (``GET``/``DELETE {issuer}/register/{client_id}`` with the
registration access token as a bearer token). The rules live in ``oidc.registration``; this
module only reads JSON, maps errors to status codes and keeps bodies bounded (the body-limit
middleware's default, 16 KiB, covers the route)."""

from __future__ import annotations

import json
import logging
from typing import Any

from anyio.to_thread import run_sync
from starlette.requests import Request
from starlette.responses import Response

from portcullis.oidc.registration import (
    ClientRegistration,
    RegistrationAccessDeniedError,
    RegistrationError,
    RegistrationRateLimitedError,
)
from portcullis.web.api import json_response
from portcullis.web.security import ClientIPResolver

log = logging.getLogger("portcullis.registration")

_UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="portcullis", error="invalid_token"'}


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    return header[7:].strip() if header[:7].lower() == "bearer " else ""


class RegistrationRoutes:
    def __init__(self, registration: ClientRegistration, ip_resolver: ClientIPResolver) -> None:
        self.registration = registration
        self.ip = ip_resolver

    async def register(self, request: Request) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return json_response(
                {
                    "error": "invalid_client_metadata",
                    "error_description": "the request body must be application/json",
                },
                400,
            )
        try:
            metadata: Any = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            metadata = None
        if not isinstance(metadata, dict):
            return json_response(
                {
                    "error": "invalid_client_metadata",
                    "error_description": "the body must be a JSON object",
                },
                400,
            )
        try:
            body = await run_sync(self.registration.register, metadata, self.ip.resolve(request))
        except RegistrationError as error:
            log.info("client registration refused: %s", error.error)
            return json_response(error.as_dict(), 400)
        except RegistrationRateLimitedError as limited:
            return json_response(
                {
                    "error": "slow_down",
                    "error_description": "too many registrations from this address",
                },
                429,
                {"Retry-After": str(limited.retry_after)},
            )
        log.info("registered client %r", body["client_id"])
        return json_response(body, 201)

    async def configuration(self, request: Request) -> Response:
        client_id = request.path_params["client_id"]
        token = _bearer(request)
        try:
            if request.method == "DELETE":
                await run_sync(self.registration.delete, client_id, token)
                log.info("registered client %r deleted by its registration token", client_id)
                return Response(status_code=204, headers={"Cache-Control": "no-store"})
            body = await run_sync(self.registration.read, client_id, token)
        except RegistrationAccessDeniedError:
            return json_response(
                {"error": "invalid_token", "error_description": "unknown client or wrong token"},
                401,
                _UNAUTHORIZED,
            )
        return json_response(body)
