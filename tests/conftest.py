"""Session fixtures more than one test directory shares.

``frozen_plugin``: the ``kubectl-portcullis`` binary as `make login-binary` builds it (~20 s to a
minute: PyInstaller), built once per session for both the plugin's own tests
(tests/kubectl_plugin) and the release tests that sign, publish and verify it (tests/release).
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def frozen_plugin(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`make login-binary`'s build (freeze venv cached in .cache/login like the Makefile's)."""
    # Imported here: most test sessions never freeze the plugin, and every session loads this
    # file (the release tooling and the plugin harness are costly imports).
    from portcullis_release.build import login_binary

    from tests.support.plugin import KREW_HOMEPAGE, KREW_URI_TEMPLATE

    return login_binary.build(
        REPO_ROOT,
        tmp_path_factory.mktemp("login"),
        REPO_ROOT / ".cache" / "login",
        1_700_000_000,
        work=tmp_path_factory.mktemp("login-work"),
        uri_template=KREW_URI_TEMPLATE,
        homepage=KREW_HOMEPAGE,
    )
