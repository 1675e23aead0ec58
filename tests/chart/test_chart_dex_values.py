"""Values files written for the upstream dex chart (0.24: its CI values and README-style files)
carry over: `portcullis-release chart migrate-values` gives Portcullis values and lists every
difference; those values render with the real Helm engine against the chart's schema, every
rendered object validates against the Kubernetes schemas, and the rendered config passes the
issuer's own check-config."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from portcullis_release.cli import main as release_main
from portcullis_release.distribute.dex_values import load_dex_values, migrate_values

from tests.support.chart import (
    FULLNAME,
    KUBE_VERSIONS,
    REPO_ROOT,
    documents,
    find,
    is_crd_kind,
    render,
    validate_builtin,
)

DEX_VALUES = Path(__file__).parent / "dex_values"
CARRIED = sorted(p.stem for p in DEX_VALUES.glob("*.yaml") if p.stem != "kubernetes-storage")
PORTCULLIS = REPO_ROOT / ".venv" / "bin" / "portcullis"


def _migrated(name: str) -> dict[str, object]:
    migration = migrate_values(load_dex_values(DEX_VALUES / f"{name}.yaml"))
    assert migration.blockers == []
    return migration.values


@pytest.mark.parametrize("name", CARRIED)
def test_dex_chart_values_render_validate_and_pass_check_config(name: str, tmp_path: Path) -> None:
    values = _migrated(name)
    docs = documents(render(values))
    for doc in docs:
        if not is_crd_kind(doc):
            validate_builtin(doc, KUBE_VERSIONS[-1])
    secret_name = values.get("configSecret", {}).get("name") or FULLNAME  # type: ignore[union-attr]
    secret = find(docs, "Secret", str(secret_name))
    config_file = tmp_path / "config.yaml"
    config_file.write_bytes(base64.b64decode(secret["data"]["config.yaml"]))
    env = {
        **os.environ,
        # What the values' envVars/envFrom inject in the cluster.
        "DEX_DB_PASSWORD": "db-password",
        "PORTCULLIS_STORAGE_PASSWORD": "db-password",
        "KUBE_CLIENT_SECRET": "client-secret",
        "LDAP_BIND_PW": "bind-password",
    }
    result = subprocess.run(
        [str(PORTCULLIS), "check-config", str(config_file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_postgres_password_secret_tls_secret_and_dropped_values_are_listed() -> None:
    migration = migrate_values(load_dex_values(DEX_VALUES / "postgres-https-grpc.yaml"))
    values = migration.values
    assert values["storage"] == {
        "type": "postgres",
        "postgres": {
            "host": "postgres.db.svc",
            "port": 5432,
            "database": "dex",
            "user": "dex",
            "ssl": {"mode": "verify-full", "caFile": "/etc/dex/pg/ca.crt"},
            "existingSecret": {"name": "dex-postgres", "key": "password"},
        },
    }
    assert values["https"] == {
        "enabled": True,
        "tls": {"mode": "existingSecret", "secretName": "dex-tls"},
    }
    assert "storage" not in values["config"]  # type: ignore[operator]
    assert "web" not in values["config"]  # type: ignore[operator]
    text = "\n".join(migration.differences)
    for expected in (
        "image: dropped",
        "service.loadBalancerIP: dropped",
        "serviceMonitor.scheme: dropped",
        "config.web.tlsCert (Secret dex-tls mounted at /etc/dex/tls) -> https.tls.mode",
        "config.grpc.addr: set by the chart",
    ):
        assert expected in text, text


def test_cli_prints_values_and_differences(capsys: pytest.CaptureFixture[str]) -> None:
    code = release_main(["chart", "migrate-values", str(DEX_VALUES / "sqlite-ldap.yaml")])
    out = capsys.readouterr().out
    assert code == 0
    assert "# difference: networkPolicy.egressRules -> networkPolicy.egress" in out
    assert "# difference: config.storage.config.file ('/var/dex/dex.db')" in out
    assert yaml.safe_load(out)["storage"] == {"type": "sqlite3"}


def test_cli_reports_a_storage_it_cannot_carry(capsys: pytest.CaptureFixture[str]) -> None:
    code = release_main(["chart", "migrate-values", str(DEX_VALUES / "kubernetes-storage.yaml")])
    captured = capsys.readouterr()
    assert code == 1
    assert "config.storage.type 'kubernetes': not available" in captured.err
    assert "portcullis import-dex --from k8s:DUMP.yaml" in captured.err
    assert "# BLOCKER: config.storage.type 'kubernetes'" in captured.out
