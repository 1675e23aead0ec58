"""Fixtures for the connector suites: real upstream peers started once per test session."""

from __future__ import annotations

import pytest
from portcullis.clock import SystemClock
from portcullis.connectors.base import ConnectorEnv
from portcullis.storage.memory import MemoryStorage

from tests.support.bitbucket_api import bitbucket_api  # noqa: F401
from tests.support.crowd_api import crowd_api  # noqa: F401
from tests.support.gitea_api import gitea_api  # noqa: F401
from tests.support.github_api import github_api  # noqa: F401
from tests.support.gitlab_api import gitlab_api  # noqa: F401
from tests.support.google_api import google_api  # noqa: F401
from tests.support.keystone_api import keystone_api  # noqa: F401
from tests.support.linkedin_api import linkedin_api  # noqa: F401
from tests.support.microsoft_api import microsoft_api  # noqa: F401
from tests.support.openshift_api import openshift_api  # noqa: F401
from tests.support.slapd import slapd_server  # noqa: F401


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def env() -> ConnectorEnv:
    """What the issuer hands a connector it opens: fresh memory storage per test, the real
    clock, the issuer URL the stand-ins' registered callbacks point at."""
    return ConnectorEnv(
        storage=MemoryStorage(),
        clock=SystemClock(),
        issuer="http://127.0.0.1:5556/dex",
        fips_mode=False,
    )
