"""The config the chart renders into its Secret is accepted by the issuer's own validator.

`portcullis check-config FILE` exits 0 for a valid file and 2 listing each problem with its YAML
path. Some values sets have used features the chart supported ahead of the server (PostgreSQL
storage, the gRPC admin API, the Kubernetes features); for those the test pins exactly which paths
the server still rejects, so the list shrinks visibly as the server catches up, and any other
problem fails the test.
"""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.chart import FULLNAME, REPO_ROOT, VALUE_SETS, documents, find, render, render_set

PORTCULLIS = REPO_ROOT / ".venv" / "bin" / "portcullis"

# Paths the current server reports as unsupported, per values set (see the module docstring).
SERVER_GAPS: dict[str, set[str]] = {}
CHART_CONFIG_SETS = [name for name in VALUE_SETS if name != "existing-secret"]


def _check_config(path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        # Referenced by the values sets through secretEnv / $VAR, as Kubernetes would inject them.
        "KUBERNETES_CLIENT_SECRET": "client-secret-for-tests",
        "PORTCULLIS_STORAGE_PASSWORD": "db-password-for-tests",
    }
    return subprocess.run(
        [str(PORTCULLIS), "check-config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _problem_paths(output: str) -> set[str]:
    """YAML paths of the problems check-config lists (indented `path: message` lines)."""
    paths = set()
    for line in output.splitlines():
        if line.startswith("  ") and ":" in line:
            paths.add(line.strip().split(":", 1)[0].split(".")[0].split("[")[0])
    return paths


@pytest.mark.parametrize("value_set", CHART_CONFIG_SETS)
def test_rendered_config_passes_portcullis_check_config(value_set: str, tmp_path: Path) -> None:
    assert PORTCULLIS.exists(), "the issuer CLI is installed by `make test-venv`"
    _, docs = render_set(value_set)
    secret = find(docs, "Secret", FULLNAME)
    config_file = tmp_path / "config.yaml"
    config_file.write_bytes(base64.b64decode(secret["data"]["config.yaml"]))

    result = _check_config(config_file)
    output = result.stdout + result.stderr
    gaps = SERVER_GAPS.get(value_set, set())
    if not gaps:
        assert result.returncode == 0, output
    else:
        assert result.returncode == 2, output
        assert _problem_paths(output) == gaps, output


def test_check_config_rejects_a_broken_rendered_config(tmp_path: Path) -> None:
    """Guards the guard: a config with a wrong field is reported by path."""
    _, docs = render_set("defaults")
    text = base64.b64decode(find(docs, "Secret", FULLNAME)["data"]["config.yaml"]).decode()
    broken = tmp_path / "config.yaml"
    broken.write_text(text.replace("http: 0.0.0.0:5556", "http: not-an-address"))
    result = _check_config(broken)
    assert result.returncode == 2
    assert "web" in _problem_paths(result.stdout + result.stderr)


def _rendered_config(values: dict[str, object], tmp_path: Path) -> tuple[dict[str, object], Path]:
    docs = documents(render(values))
    text = base64.b64decode(find(docs, "Secret", FULLNAME)["data"]["config.yaml"]).decode()
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return yaml.safe_load(text), path


def test_grpc_with_https_serves_the_admin_api_over_the_serving_certificate(tmp_path: Path) -> None:
    config, path = _rendered_config(
        {"grpc": {"enabled": True}, "https": {"enabled": True}}, tmp_path
    )
    assert config["grpc"] == {
        "addr": "0.0.0.0:5557",
        "tlsCert": "/etc/portcullis/tls/tls.crt",
        "tlsKey": "/etc/portcullis/tls/tls.key",
    }
    result = _check_config(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grpc_without_tls_or_opt_in_is_refused_by_the_server(tmp_path: Path) -> None:
    _, path = _rendered_config({"grpc": {"enabled": True}}, tmp_path)
    result = _check_config(path)
    assert result.returncode == 2
    assert "allowInsecure" in result.stdout + result.stderr
    assert _problem_paths(result.stdout + result.stderr) == {"grpc"}
