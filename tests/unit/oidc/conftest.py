"""Fixtures for the protocol core's unit tests: an in-process provider (tests.support.oidc_provider)
on MemoryStorage with a frozen clock, no server process."""

from __future__ import annotations

import pytest

from tests.support.oidc_provider import World, make_world


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def world() -> World:
    return make_world()
