"""The ``serve`` path imports only what its config uses (issue 13, start-up and memory).

Every module a worker imports costs start-up CPU and resident memory in every worker, and the
frozen image starts with the CLI's ``serve``: gRPC (grpcio), PostgreSQL (psycopg), the LDAP and
SAML stacks (ldap3; lxml and signxml) and the upstream OIDC/OAuth client (httpx and the
``oidc`` connector) are loaded only when the config names grpc.addr, postgres or such a
connector. This runs the steps ``portcullis serve`` takes before it listens (FIPS check, config
load, the connectors' pre-flight open, the app factory, the serve module) in a fresh
interpreter and checks ``sys.modules``, so a top-level import that undoes the laziness fails
here instead of showing up as a slower start in a benchmark. The second test runs the same
steps with a config that names LDAP, SAML and OIDC connectors, so the check is shown to see
those stacks when they are loaded.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.federation import DEX_CONFIG
from tests.support.fresh_interpreter import demo_config_file, run_snippet
from tests.support.image import demo_config, pbkdf2_hash
from tests.support.saml_idp import IssuingCA

# Top-level names (a name matches itself and its submodules) a sqlite demo config never needs.
NOT_FOR_SQLITE_DEMO = (
    "grpc",
    "grpc_reflection",
    "psycopg",
    "psycopg_binary",
    "ldap3",
    "lxml",
    "signxml",
    "saml2",
    "xmlsec",
    "httpx",
    "portcullis.admin.server",
    "portcullis.storage.postgres",
    "portcullis.connectors.ldap",
    "portcullis.connectors.saml",
    "portcullis.connectors.oidc",
    "portcullis.connectors.oauth2_common",
    "portcullis.kube.webhook",
    # Not a stack the config leaves out, but one a worker needs only at its first HTML page.
    "jinja2",
)

# What cmd_serve does before it binds and serves (portcullis.cli.cmd_serve), then the serve
# module it hands over to; prints the loaded module names.
_SERVE_PATH = """
import json, sys
from portcullis import cli
fips_mode, fips_status = cli._fips()
from portcullis.issuer import check_connectors, create_issuer
import portcullis.serve
config = cli._load_config(sys.argv[1], fips_mode)
assert config is not None
check_connectors(config, fips_mode=fips_mode)
issuer = create_issuer(config, fips_mode=fips_mode, fips_status=fips_status)
assert issuer.app is not None
issuer.close()
json.dump(sorted(sys.modules), sys.stdout)
"""


def _modules_after_serve_path(config_text: str, tmp_path: Path) -> set[str]:
    config = tmp_path / "config.yaml"
    config.write_text(config_text, encoding="utf-8")
    modules = run_snippet(_SERVE_PATH, str(config), cwd=tmp_path, env={"PORTCULLIS_FIPS": "0"})
    return set(modules)


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(m == n or m.startswith(n + ".") for m in modules))


def test_sqlite_demo_serve_path_loads_no_unconfigured_stack(tmp_path: Path) -> None:
    text = demo_config(18501, 18502, pbkdf2_hash("password")).replace(
        "/var/lib/portcullis/portcullis.db", str(tmp_path / "demo.db")
    )
    # The config names none of them.
    assert "grpc" not in text
    assert "connectors:" not in text
    modules = _modules_after_serve_path(text, tmp_path)
    assert "portcullis.storage.sqlite" in modules  # the path ran, with its storage backend
    assert _loaded(modules, NOT_FOR_SQLITE_DEMO) == []


def test_configured_connectors_load_their_stacks(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(IssuingCA.create("Lazy imports CA").pem)
    text = DEX_CONFIG.format(web=18503, telemetry=18504, db=tmp_path / "x.db", ca=ca)
    modules = _modules_after_serve_path(text, tmp_path)
    stacks = ("ldap3", "lxml", "signxml", "httpx", "portcullis.connectors.oidc")
    assert _loaded(modules, stacks) == sorted(stacks)
    assert _loaded(modules, ("grpc", "psycopg")) == []  # neither grpc.addr nor postgres


_BEFORE_FORK = """
import gc, json, sys
from portcullis import cli
from portcullis.serve import share_before_fork
config = cli._load_config(sys.argv[1], False)
assert config is not None
before = "portcullis.storage.sqlite" in sys.modules
share_before_fork(config)
json.dump({"before": before, "frozen": gc.get_freeze_count(), "modules": sorted(sys.modules)},
          sys.stdout)
"""


def test_serve_shares_the_storage_backend_with_its_workers(tmp_path: Path) -> None:
    """``serve --workers N`` imports the configured backend (and freezes the parent's objects)
    before it forks, so the workers share SQLAlchemy's pages instead of importing it each."""
    config = demo_config_file(tmp_path, 18505, 18506)
    result = run_snippet(_BEFORE_FORK, str(config), cwd=tmp_path)
    modules = set(result["modules"])
    assert not result["before"]  # loading the config alone does not import the backend
    assert {"portcullis.storage.sqlite", "sqlalchemy"} <= modules
    assert _loaded(modules, ("psycopg", "portcullis.storage.postgres")) == []
    assert result["frozen"] > 10_000
    assert not (tmp_path / "demo.db").exists()  # imported, not opened
