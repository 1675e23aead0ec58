"""Answer a Kubernetes ``TokenReview`` (authentication.k8s.io v1 and v1beta1) for a bearer token
this issuer minted: the decision only, no HTTP.

The token is checked by the issuer's own reader (signature against the current and retired
keys, ``iss``, ``exp``, revoked ``jti`` and revoked session ``sid``), so ending a session or
revoking a token locks a kubectl user out at the next uncached request, which direct OIDC
verification in kube-apiserver cannot do. Error texts say what kind of check failed, never
which detail (no claim values, no key ids), because they end up in the API server's logs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from portcullis.config.model import TokenReviewSection
from portcullis.kube.usermap import ClaimMapping, UnmappableTokenError

log = logging.getLogger("portcullis.kube")

API_VERSIONS = ("authentication.k8s.io/v1", "authentication.k8s.io/v1beta1")
INVALID_TOKEN = "invalid bearer token"  # noqa: S105 - a message, not a secret
WRONG_AUDIENCE = "the token is not issued for this cluster"


class MalformedReviewError(ValueError):
    """The request body is not a TokenReview; the message is safe to return."""


@dataclass(frozen=True)
class ReviewRequest:
    api_version: str
    token: str
    audiences: tuple[str, ...]


def parse_review(body: Any) -> ReviewRequest:
    if not isinstance(body, dict):
        raise MalformedReviewError("the body must be a TokenReview object")
    api_version = body.get("apiVersion")
    if api_version not in API_VERSIONS:
        raise MalformedReviewError(f"apiVersion must be one of {', '.join(API_VERSIONS)}")
    if body.get("kind") != "TokenReview":
        raise MalformedReviewError("kind must be TokenReview")
    spec = body.get("spec")
    if not isinstance(spec, dict):
        raise MalformedReviewError("spec is missing")
    token = spec.get("token", "")
    if not isinstance(token, str):
        raise MalformedReviewError("spec.token must be a string")
    audiences = spec.get("audiences") or []
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise MalformedReviewError("spec.audiences must be a list of strings")
    return ReviewRequest(str(api_version), token, tuple(audiences))


def _token_audiences(claims: dict[str, Any]) -> set[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return {aud}
    if isinstance(aud, list):
        return {a for a in aud if isinstance(a, str)}
    return set()


class TokenReviewer:
    """``verify`` is the issuer's token reader (claims of a valid, unrevoked JWT, else None).
    It touches storage and does crypto: call :meth:`review` from a worker thread."""

    def __init__(
        self,
        verify: Callable[[str], dict[str, Any] | None],
        section: TokenReviewSection,
    ) -> None:
        self._verify = verify
        self._accepted = frozenset(section.audiences)
        self._strict = section.strict_review_audiences
        self._mapping = ClaimMapping.from_config(section)

    def review(self, request: ReviewRequest) -> dict[str, Any]:
        """The response object (same apiVersion as the request)."""
        return {
            "apiVersion": request.api_version,
            "kind": "TokenReview",
            "status": self._status(request),
        }

    def _status(self, request: ReviewRequest) -> dict[str, Any]:
        claims = self._verify(request.token) if request.token else None
        if claims is None:
            return _denied(INVALID_TOKEN)
        token_auds = _token_audiences(claims)
        if not token_auds & self._accepted:
            return _denied(WRONG_AUDIENCE)
        # spec.audiences: who the caller is. When they overlap the token's audiences we say so
        # in status.audiences (audience-aware answer). When they do not, kube-apiserver's own
        # --api-audiences were sent and it will accept an answer without status.audiences
        # (the audiences configured here already decided), unless strict mode forbids that.
        compatible = sorted(token_auds & set(request.audiences))
        if request.audiences and not compatible and self._strict:
            return _denied(WRONG_AUDIENCE)
        try:
            user = self._mapping.user(claims)
        except UnmappableTokenError as exc:
            return _denied(str(exc))
        status: dict[str, Any] = {"authenticated": True, "user": user.as_status_user()}
        if compatible:
            status["audiences"] = compatible
        log.debug("tokenreview: authenticated %s", user.username)
        return status


def _denied(reason: str) -> dict[str, Any]:
    log.debug("tokenreview: not authenticated (%s)", reason)
    return {"authenticated": False, "error": reason}
