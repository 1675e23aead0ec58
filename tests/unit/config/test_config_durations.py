"""Go-style durations as Dex writes them (config/durations.py)."""

from __future__ import annotations

import pytest
from portcullis.config.durations import parse_duration


def format_duration(seconds: float) -> str:
    """Go's Duration.String() for whole seconds: the inverse the round-trip tests need (the
    server itself never formats durations)."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
        f"{secs}s" if secs else "",
    ]
    return "".join(parts) or "0s"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("3s", 3.0),
        ("10m", 600.0),
        ("24h", 86400.0),
        ("1h30m", 5400.0),
        ("1h30m15s", 5415.0),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
        ("250us", 0.00025),
        ("2160h", 2160 * 3600.0),
    ],
)
def test_parse_duration_accepts_go_syntax(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["10", "ten minutes", "1d", "h", "1h 30m", "-5m", "5m3", "m5"])
def test_parse_duration_rejects_anything_else_with_a_hint(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration") as caught:
        parse_duration(text)
    assert "10m" in str(caught.value)


@pytest.mark.parametrize("seconds", [1, 59, 60, 61, 3600, 5415, 86400 + 1])
def test_format_duration_round_trips_whole_seconds(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_format_duration_of_zero() -> None:
    assert format_duration(0) == "0s"
