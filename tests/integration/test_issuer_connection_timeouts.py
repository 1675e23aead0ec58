"""Issue 9, finding 8: slow clients are cut off and every request names exactly one Host.

The probe kept connections open 90 s and more by sending nothing, or one header byte at a
time (slowloris): each one holds a socket and a parser. These tests drive a real
`portcullis serve` over raw sockets and time how long it takes the server to hang up.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import pytest

from tests.support import raw_http
from tests.support.issuer import Issuer, issuers_in

pytestmark = pytest.mark.integration

TIMEOUT = 2.0  # seconds: idle, readHeader and readBody of the server under test
SLACK = 1.5  # seconds of scheduling slack allowed on a shared CI machine


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Issuer]:
    """A server with 2-second connection timeouts."""
    with issuers_in(tmp_path_factory.mktemp("timeouts")) as start:
        yield start({"web": {"timeouts": {"idle": "2s", "readHeader": "2s", "readBody": "2s"}}})


def _trickle(sock: socket.socket, data: bytes, limit: float) -> float:
    """Send ``data`` one byte per second; the seconds until the server hangs up (``limit``
    or more when it never does)."""
    start = time.monotonic()
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return time.monotonic() - start
        sock.settimeout(1.0)
        try:
            if not sock.recv(4096):
                return time.monotonic() - start
            # An answer (408) before the request is complete: wait for the close.
            return time.monotonic() - start + raw_http.seconds_until_closed(sock, 2.0)
        except TimeoutError:
            pass
        except OSError:
            return time.monotonic() - start
        if time.monotonic() - start >= limit:
            break
    return time.monotonic() - start


def test_headers_sent_one_byte_per_second_are_cut_off(quick: Issuer) -> None:
    with raw_http.connect(quick.web_port) as sock:
        sock.sendall(b"GET /dex/healthz HTTP/1.1\r\n")
        elapsed = _trickle(sock, b"X-Slow: " + b"a" * 60, limit=15)
    assert elapsed < TIMEOUT + SLACK, f"still open after {elapsed:.1f}s"


def test_a_body_sent_one_byte_per_second_is_cut_off(quick: Issuer) -> None:
    before = len(quick.logs())
    with raw_http.connect(quick.web_port) as sock:
        sock.sendall(
            b"POST /dex/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 60\r\n\r\n"
        )
        elapsed = _trickle(sock, b"g" * 60, limit=15)
    assert elapsed < TIMEOUT + SLACK, f"still open after {elapsed:.1f}s"
    time.sleep(0.3)
    logs = quick.logs()[before:]
    assert "Traceback" not in logs, logs
    assert not re.search(r" ERROR ", logs), logs


def test_a_connection_that_sends_nothing_is_closed(quick: Issuer) -> None:
    with raw_http.connect(quick.web_port) as sock:
        elapsed = raw_http.seconds_until_closed(sock, 15)
    assert elapsed < TIMEOUT + SLACK, f"still open after {elapsed:.1f}s"


def test_an_idle_keep_alive_connection_is_closed(quick: Issuer) -> None:
    with raw_http.connect(quick.web_port) as sock:
        sock.sendall(b"GET /dex/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert raw_http.status_of(raw_http.read_response(sock)) == 200
        elapsed = raw_http.seconds_until_closed(sock, 15)
    assert elapsed < TIMEOUT + SLACK, f"still open after {elapsed:.1f}s"


def test_the_default_header_timeout_cuts_off_slowloris(issuer: Issuer) -> None:
    """The secure default (readHeader 10s) holds without any configuration."""
    with raw_http.connect(issuer.web_port) as sock:
        sock.sendall(b"GET /dex/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        elapsed = _trickle(sock, b"X-Slow: " + b"a" * 60, limit=25)
    assert elapsed < 10 + SLACK, f"still open after {elapsed:.1f}s"


# -- Host --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /dex/healthz HTTP/1.1\r\n\r\n",
        b"GET /dex/healthz HTTP/1.0\r\n\r\n",
        b"GET /dex/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n",
        b"GET /dex/healthz HTTP/1.1\r\nHost: \r\n\r\n",
    ],
    ids=["missing-1.1", "missing-1.0", "two", "empty"],
)
def test_a_request_without_exactly_one_host_is_400(issuer: Issuer, request_head: bytes) -> None:
    response = raw_http.exchange(issuer.web_port, request_head)
    assert raw_http.status_of(response) == 400, response[:300]


def test_a_request_with_one_host_is_served(issuer: Issuer) -> None:
    response = raw_http.exchange(
        issuer.web_port, b"GET /dex/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    assert raw_http.status_of(response) == 200, response[:300]
