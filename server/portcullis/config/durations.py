"""Go-style durations ("24h", "1h30m", "3s", "500ms") as Dex writes them, parsed to seconds."""

from __future__ import annotations

import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Return seconds; raise ValueError with a message fit for a config error."""
    value = text.strip()
    if value in ("0", ""):
        return 0.0
    total, pos = 0.0, 0
    for match in _PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(value) or pos == 0:
        raise ValueError(f"not a duration: {text!r} (use Go syntax such as '10m', '24h', '1h30m')")
    return total
