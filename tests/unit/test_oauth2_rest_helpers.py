"""The REST helpers the github/gitlab/microsoft connectors share (oauth2_common): Link-header
pagination, rate-limit detection and waits, and the origin check on pagination links."""

from __future__ import annotations

import httpx
import pytest
from portcullis.connectors.base import ConnectorError
from portcullis.connectors.oauth2_common import (
    ApiResponse,
    is_rate_limited,
    next_link,
    raise_for_api_status,
    retry_after_seconds,
    same_origin,
)


def response(
    status: int, headers: dict[str, str] | None = None, body: object = None
) -> ApiResponse:
    return ApiResponse(status, httpx.Headers(headers or {}), body, "https://api.example/x?t=secret")


def test_next_link_reads_rfc8288_in_any_order() -> None:
    github = (
        '<https://api.github.com/user/teams?per_page=100&page=2>; rel="next", '
        '<https://api.github.com/user/teams?per_page=100&page=3>; rel="last"'
    )
    assert next_link(httpx.Headers({"Link": github})).endswith("page=2")
    reordered = '<https://h/p?page=1>; rel="first", <https://h/p?page=4>; rel=next'
    assert next_link(httpx.Headers({"Link": reordered})) == "https://h/p?page=4"
    assert next_link(httpx.Headers({"Link": '<https://h/p?page=1>; rel="prev"'})) == ""
    assert next_link(httpx.Headers({})) == ""


def test_rate_limit_detection() -> None:
    assert is_rate_limited(response(429))
    assert is_rate_limited(response(403, {"X-RateLimit-Remaining": "0"}))
    assert is_rate_limited(response(403, {"Retry-After": "60"}))
    assert not is_rate_limited(response(403, {"X-RateLimit-Remaining": "12"}))
    assert not is_rate_limited(response(404, {"Retry-After": "60"}))


def test_google_rate_limit_reasons_mark_a_403() -> None:
    def google(reason: str) -> dict[str, object]:
        entry = {"message": "Rate Limit Exceeded", "domain": "usageLimits", "reason": reason}
        return {"error": {"code": 403, "message": "Rate Limit Exceeded", "errors": [entry]}}

    assert is_rate_limited(response(403, body=google("rateLimitExceeded")))
    assert is_rate_limited(response(403, body=google("userRateLimitExceeded")))
    assert not is_rate_limited(response(403, body=google("forbidden")))
    assert not is_rate_limited(response(403, body={"error": "rateLimitExceeded"}))
    assert not is_rate_limited(response(404, body=google("rateLimitExceeded")))


def test_retry_after_seconds() -> None:
    assert retry_after_seconds(httpx.Headers({"Retry-After": "30"}), 0) == 30
    assert retry_after_seconds(httpx.Headers({"X-RateLimit-Reset": "1100"}), 1000) == 100
    assert retry_after_seconds(httpx.Headers({"RateLimit-Reset": "900"}), 1000) == 0
    date = httpx.Headers({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert retry_after_seconds(date, 0) is None


def test_errors_name_the_call_and_never_the_query(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConnectorError, match=r"rate limiting logins \(teams\); try again in 5"):
        raise_for_api_status(response(429, {"Retry-After": "5"}), "teams", 0)
    with pytest.raises(ConnectorError, match="no longer accepts this login"):
        raise_for_api_status(response(401, body={"error": {"message": "expired"}}), "user", 0)
    with pytest.raises(ConnectorError, match=r"refused the user request \(HTTP 404\)"):
        raise_for_api_status(response(404, body={"message": "Not Found"}), "user", 0)
    raise_for_api_status(response(204), "membership", 0)
    assert "secret" not in caplog.text
    assert "HTTP 401 (expired)" in caplog.text


def test_same_origin() -> None:
    assert same_origin("https://API.github.com/user?page=2", "https://api.github.com")
    assert not same_origin("https://evil.example/user", "https://api.github.com")
    assert not same_origin("http://api.github.com/user", "https://api.github.com")
    assert not same_origin("https://api.github.com:444/user", "https://api.github.com")
