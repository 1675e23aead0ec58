"""Issue 9, finding 7: odd input and impatient clients are not server errors.

A NUL byte or an over-long name in a static path used to crash the handler (500, tracebacks);
a client hanging up mid-body was logged as an ERROR with tracebacks and counted as a 500; control
characters from the URL reached the text log raw (a forged log line is one %0A away).
"""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest

from tests.support import raw_http
from tests.support.issuer import Issuer, StartIssuer

pytestmark = pytest.mark.integration


def _metric_lines(issuer: Issuer, route: str) -> list[str]:
    text = httpx.get(issuer.telemetry + "/metrics", timeout=10).text
    return [
        line
        for line in text.splitlines()
        if line.startswith("portcullis_http_requests_total{") and f'route="{route}"' in line
    ]


def _assert_no_errors(logs: str) -> None:
    assert "Traceback" not in logs, logs[-4000:]
    assert not re.search(r" (ERROR|CRITICAL) ", logs), logs[-4000:]


@pytest.mark.parametrize(
    "path",
    [
        "/static/%00",
        "/static/main.css%00.png",
        "/theme/%00/logo.png",
        "/theme/styles.css%00",
        "/static/" + "a" * 300,
        "/theme/" + "b" * 5000,
    ],
)
def test_invalid_static_and_theme_paths_are_404_never_500(issuer: Issuer, path: str) -> None:
    before = len(issuer.logs())
    response = httpx.get(issuer.url(path), timeout=10)
    assert response.status_code == 404, (response.status_code, response.text[:200])
    _assert_no_errors(issuer.logs()[before:])


def test_a_client_disconnecting_mid_body_is_not_an_error_nor_a_500(issuer: Issuer) -> None:
    before = len(issuer.logs())
    head = (
        b"POST /dex/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 5000\r\n\r\n"
    )
    for _ in range(3):
        with raw_http.connect(issuer.web_port) as sock:
            sock.sendall(head + b"grant_type=authorization_code&code=")
            time.sleep(0.2)
    deadline = time.monotonic() + 10
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = _metric_lines(issuer, "/dex/token")
        if any('code="499"' in line and line.endswith(" 3.0") for line in lines):
            break
        time.sleep(0.2)
    assert any('code="499"' in line and line.endswith(" 3.0") for line in lines), lines
    assert not any('code="500"' in line for line in lines), lines
    logs = issuer.logs()[before:]
    _assert_no_errors(logs)
    assert "client closed the connection" in logs


def test_control_characters_from_the_url_are_escaped_in_the_text_log(issuer: Issuer) -> None:
    before = len(issuer.logs())
    response = raw_http.exchange(
        issuer.web_port,
        b"GET /dex/static/forged%0A2026-01-01%20INFO%20admin%20logged%20in%1B%5B31m HTTP/1.1\r\n"
        b"Host: 127.0.0.1\r\n\r\n",
    )
    assert raw_http.status_of(response) == 404
    time.sleep(0.3)
    logs = issuer.logs()[before:]
    assert "forged\n2026" not in logs
    assert "\x1b" not in logs
    assert "forged\\n2026-01-01 INFO admin logged in\\x1b[31m" in logs, logs


def test_the_json_log_stays_one_valid_object_per_line(start_issuer: StartIssuer) -> None:
    issuer = start_issuer({"logger": {"level": "debug", "format": "json"}})
    raw_http.exchange(
        issuer.web_port,
        b"GET /dex/static/x%0A%22%7D%1B%00y HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    )
    time.sleep(0.3)
    paths = []
    for line in issuer.logs().splitlines():
        if line.strip():
            entry = json.loads(line)
            paths.append(entry.get("path", ""))
    assert '/dex/static/x\n"}\x1b\x00y' in paths, paths
