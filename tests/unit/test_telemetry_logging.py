"""The text log keeps one record on one line whatever a URL or header carries (issue 9,
finding 7); the JSON log stays one valid object per line."""

from __future__ import annotations

import json
import logging
import sys

from portcullis.telemetry import JSONFormatter, TextFormatter, escape_controls


def _record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("portcullis.access", logging.INFO, __file__, 1, message, args, None)


def test_control_characters_are_escaped() -> None:
    assert escape_controls("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert escape_controls("\x1b[31m\x00\x7f\x85") == "\\x1b[31m\\x00\\x7f\\x85"
    assert escape_controls("line\u2028sep") == "line\\u2028sep"
    assert escape_controls("plain ü 日本") == "plain ü 日本"


def test_the_text_formatter_escapes_arguments_but_keeps_tracebacks() -> None:
    formatter = TextFormatter("%(levelname)s %(message)s")
    forged = "/dex/static/x\n2026-01-01 INFO admin logged in"
    assert formatter.format(_record("GET %s 404", forged)) == (
        "INFO GET /dex/static/x\\n2026-01-01 INFO admin logged in 404"
    )
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("failed on %s", "a\nb")
        record.exc_info = sys.exc_info()
    text = formatter.format(record)
    assert text.startswith("INFO failed on a\\nb\nTraceback (most recent call last):\n")


def test_the_json_formatter_output_is_one_valid_line() -> None:
    line = JSONFormatter().format(_record("GET %s", '/x\n"}\x1b\x00'))
    assert "\n" not in line
    assert json.loads(line)["msg"] == 'GET /x\n"}\x1b\x00'
