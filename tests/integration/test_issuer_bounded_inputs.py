"""Issue 9, finding 3: unauthenticated input is bounded before it reaches memory or storage.

The probe stored a 1 MB ``state`` and ``nonce`` for 24 h per unauthenticated POST to /auth,
parsed a 51 MB form in full (RSS 80 -> 154 MB, never returned) and accepted a 1 MB header and
10,000 headers. Each test replays that against a real `portcullis serve`.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support import raw_http
from tests.support.issuer import APP_REDIRECT, Issuer, StartIssuer

pytestmark = pytest.mark.integration

MB = 1024 * 1024


def _auth_params(**overrides: str) -> dict[str, str]:
    params = {
        "client_id": "example-app",
        "redirect_uri": APP_REDIRECT,
        "response_type": "code",
        "scope": "openid email",
        "state": "s" * 16,
        "nonce": "n" * 16,
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "code_challenge_method": "S256",
    }
    params.update(overrides)
    return params


def _stored_auth_requests(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        count: int = conn.execute("SELECT count(*) FROM auth_requests").fetchone()[0]
        return count


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


# -- stored parameters -------------------------------------------------------------------------


def test_a_megabyte_state_and_nonce_posted_to_auth_are_refused_and_not_stored(
    issuer: Issuer,
) -> None:
    before = _stored_auth_requests(issuer.db_path)
    size = issuer.db_path.stat().st_size
    for _ in range(3):
        response = httpx.post(
            issuer.url("/auth"), data=_auth_params(state="s" * MB, nonce="n" * MB), timeout=30
        )
        assert response.status_code == 413, response.text[:300]
    assert _stored_auth_requests(issuer.db_path) == before
    assert issuer.db_path.stat().st_size < size + 256 * 1024


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("state", "s" * 3000),
        ("nonce", "n" * 3000),
        ("code_challenge", "c" * 200),
        ("scope", "openid " + "x" * 3000),
        ("login_hint", "h" * 1000),
        ("connector_id", "c" * 200),
        ("redirect_uri", APP_REDIRECT + "?" + "r" * 3000),
    ],
)
def test_an_over_long_auth_parameter_is_refused_by_name_and_not_stored(
    issuer: Issuer, name: str, value: str
) -> None:
    before = _stored_auth_requests(issuer.db_path)
    response = httpx.get(
        issuer.url("/auth"),
        params=_auth_params(**{name: value}),
        timeout=30,
        follow_redirects=False,
    )
    assert response.status_code == 400, (response.status_code, response.text[:300])
    assert f"the {name} parameter is too long" in response.text, response.text[:2000]
    assert _stored_auth_requests(issuer.db_path) == before


def test_pending_auth_requests_per_client_ip_are_bounded(start_issuer: StartIssuer) -> None:
    issuer = start_issuer(
        {"web": {"limits": {"pendingAuthRequestsPerIP": 3, "pendingAuthRequestsWindow": "10m"}}}
    )
    for _ in range(3):
        ok = httpx.get(issuer.url("/auth"), params=_auth_params(), timeout=30)
        assert ok.status_code == 200, ok.text[:300]
    assert _stored_auth_requests(issuer.db_path) == 3
    refused = httpx.get(issuer.url("/auth"), params=_auth_params(), timeout=30)
    assert refused.status_code == 429, refused.text[:300]
    assert 0 < int(refused.headers["Retry-After"]) <= 600
    assert _stored_auth_requests(issuer.db_path) == 3


# -- request bodies ----------------------------------------------------------------------------


def _stream_body(sock: socket.socket, fields: list[bytes], *, chunked: bool) -> None:
    """Send the body until the server stops reading (an error on our side)."""
    with contextlib.suppress(OSError):
        for field in fields:
            if chunked:
                sock.sendall(f"{len(field):x}\r\n".encode() + field + b"\r\n")
            else:
                sock.sendall(field)
        if chunked:
            sock.sendall(b"0\r\n\r\n")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_51_mb_form_is_refused_with_413_without_memory_growth(
    issuer: Issuer, chunked: bool
) -> None:
    assert issuer.proc is not None
    # A 51 MB form of 50 fields, as the probe sent it.
    fields = [b"f%02d=" % i + b"A" * (MB + 20 * 1024) + b"&" for i in range(50)]
    total = sum(len(field) for field in fields)
    assert total > 51 * 1000 * 1000
    framing = (
        b"Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {total}\r\n".encode()
    )
    rss_before = _rss_kib(issuer.proc.pid)
    start = time.monotonic()
    with raw_http.connect(issuer.web_port, timeout=30) as sock:
        sock.sendall(
            b"POST /dex/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n" + framing + b"\r\n"
        )
        sender = threading.Thread(
            target=_stream_body, args=(sock, fields), kwargs={"chunked": chunked}
        )
        sender.start()
        response = raw_http.read_response(sock, deadline=30)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sender.join(30)
    assert raw_http.status_of(response) == 413, response[:300]
    assert time.monotonic() - start < 10
    growth = _rss_kib(issuer.proc.pid) - rss_before
    assert growth < 8 * 1024, f"RSS grew by {growth} KiB"


# -- headers -----------------------------------------------------------------------------------


def test_a_megabyte_header_is_refused_with_431(issuer: Issuer) -> None:
    response = raw_http.exchange(
        issuer.web_port,
        b"GET /dex/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * MB + b"\r\n\r\n",
    )
    assert raw_http.status_of(response) == 431, response[:300]


def test_ten_thousand_headers_are_refused_with_431(issuer: Issuer) -> None:
    lines = b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))
    response = raw_http.exchange(
        issuer.web_port, b"GET /dex/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + lines + b"\r\n"
    )
    assert raw_http.status_of(response) == 431, response[:300]


def test_more_than_100_small_headers_are_refused_with_431(issuer: Issuer) -> None:
    lines = b"".join(b"X-H%d: v\r\n" % i for i in range(101))
    response = raw_http.exchange(
        issuer.web_port, b"GET /dex/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + lines + b"\r\n"
    )
    assert raw_http.status_of(response) == 431, response[:300]


def test_one_header_line_over_8_kib_is_refused_with_431(issuer: Issuer) -> None:
    response = raw_http.exchange(
        issuer.web_port,
        b"GET /dex/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: " + b"c" * 9000 + b"\r\n\r\n",
    )
    assert raw_http.status_of(response) == 431, response[:300]


def test_requests_within_the_limits_are_served(issuer: Issuer) -> None:
    lines = b"".join(b"X-H%d: v\r\n" % i for i in range(90))
    response = raw_http.exchange(
        issuer.web_port,
        b"GET /dex/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: "
        + b"l" * 7000
        + b"\r\n"
        + lines
        + b"\r\n",
    )
    assert raw_http.status_of(response) == 200, response[:300]
