"""The TokenReview webhook's HTTP side: its own Starlette app for its own listener
(``kubernetes.tokenReview.addr``), so the issuer's public listener never exposes it and the
network policy can admit only the control plane to its port."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import anyio.to_thread
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from portcullis.config.model import TokenReviewSection
from portcullis.kube.callers import CallerAuthenticator, CallerCheckError, KubeAPI
from portcullis.kube.tokenreview import MalformedReviewError, TokenReviewer, parse_review
from portcullis.telemetry import AccessLogMiddleware, Metrics

log = logging.getLogger("portcullis.kube")

# A TokenReview carries one token (a few KiB at most); refuse anything far larger unread.
MAX_BODY = 64 * 1024
_NO_STORE = {"Cache-Control": "no-store"}


def _problem(status: int, message: str) -> Response:
    return JSONResponse(
        {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message},
        status_code=status,
        headers=_NO_STORE,
    )


def _bearer(request: Request) -> str:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


async def _read_limited(request: Request) -> bytes | None:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return None
    return body


def webhook_app(
    section: TokenReviewSection,
    verified_claims: Callable[[str], dict[str, Any] | None],
    metrics: Metrics,
) -> Starlette:
    """The webhook's app. ``verified_claims`` is the issuer's own token reader (signature,
    ``iss``, ``exp`` and jti/sid revocation, as for userinfo): the claims, or None.

    Raises CallerCheckError when caller authentication is on and the Kubernetes API access
    (service-account token, CA) cannot be read."""
    reviewer = TokenReviewer(verified_claims, section)
    callers = (
        CallerAuthenticator(KubeAPI.from_config(section.kube_api))
        if section.authenticate_callers
        else None
    )

    async def review(request: Request) -> Response:
        if callers is not None:
            try:
                decision = await anyio.to_thread.run_sync(callers.check, _bearer(request))
            except CallerCheckError as exc:
                log.warning("tokenreview: cannot check the caller: %s", exc)
                return _problem(503, "the caller cannot be checked right now")
            if decision.status != 200:
                return _problem(decision.status, decision.reason)
        body = await _read_limited(request)
        if body is None:
            return _problem(413, f"the body is larger than {MAX_BODY} bytes")
        try:
            parsed = parse_review(json.loads(body))
        except (ValueError, MalformedReviewError) as exc:
            message = str(exc) if isinstance(exc, MalformedReviewError) else "not JSON"
            return _problem(400, message)
        answer: dict[str, Any] = await anyio.to_thread.run_sync(reviewer.review, parsed)
        return JSONResponse(answer, headers=_NO_STORE)

    async def not_found(request: Request, exc: Exception) -> Response:
        return _problem(404, "not found")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return _problem(405, "use POST")

    def route_of(scope: Any) -> str:
        return section.path if scope.get("route") is not None else "unmatched"

    return Starlette(
        routes=[Route(section.path, review, methods=["POST"])],
        middleware=[Middleware(AccessLogMiddleware, metrics=metrics, route_of=route_of)],
        exception_handlers={404: not_found, 405: not_allowed},
    )
