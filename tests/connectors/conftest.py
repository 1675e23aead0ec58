"""Fixtures for the connector suites: real upstream peers started once per test session."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.support.slapd import slapd_server  # noqa: E402, F401
