"""Fixtures for the connector suites: real upstream peers started once per test session."""

from __future__ import annotations

from tests.support.slapd import slapd_server  # noqa: F401
