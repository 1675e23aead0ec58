"""The issuer, started with the config the chart renders, answers where the chart's probes,
Service ports and `helm test` hook expect it to.

Only the listen addresses (0.0.0.0 -> free loopback ports) and file paths (the pod's volumes ->
a temp dir holding the same bytes: sqlite database, chart-generated TLS certificate and key,
chart-generated storage sealing key) are
changed; everything else is the chart's output.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.chart import FULLNAME, REPO_ROOT, find, render_set

PORTCULLIS = REPO_ROOT / ".venv" / "bin" / "portcullis"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(params=["ingress-tls", "https-selfsigned"])
def served_chart_config(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    value_set: str = request.param
    _, docs = render_set(value_set)
    secret = find(docs, "Secret", FULLNAME)
    config = yaml.safe_load(base64.b64decode(secret["data"]["config.yaml"]))
    web_port, telemetry_port = _free_port(), _free_port()
    assert config["telemetry"] == {"http": "0.0.0.0:5558"}
    config["telemetry"]["http"] = f"127.0.0.1:{telemetry_port}"
    ca_file = ""
    if "https" in config["web"]:
        assert config["web"]["https"] == "0.0.0.0:5554"
        config["web"]["https"] = f"127.0.0.1:{web_port}"
        tls = find(docs, "Secret", f"{FULLNAME}-tls")["data"]
        for key in ("tls.crt", "tls.key", "ca.crt"):
            (tmp_path / key).write_bytes(base64.b64decode(tls[key]))
        assert config["web"]["tlsCert"] == "/etc/portcullis/tls/tls.crt"
        assert config["web"]["tlsKey"] == "/etc/portcullis/tls/tls.key"
        config["web"]["tlsCert"] = str(tmp_path / "tls.crt")
        config["web"]["tlsKey"] = str(tmp_path / "tls.key")
        ca_file = str(tmp_path / "ca.crt")
    else:
        assert config["web"] == {"http": "0.0.0.0:5556"}
        config["web"]["http"] = f"127.0.0.1:{web_port}"
    assert config["storage"]["config"]["file"] == "/var/lib/portcullis/portcullis.db"
    config["storage"]["config"]["file"] = str(tmp_path / "portcullis.db")
    # The chart's generated sealing key Secret, as the pod mounts it.
    assert config["storageSealing"] == {"keyFile": "/etc/portcullis/sealing/key"}
    sealing = find(docs, "Secret", f"{FULLNAME}-sealing")["data"]
    (tmp_path / "sealing.key").write_bytes(base64.b64decode(sealing["key"]))
    config["storageSealing"]["keyFile"] = str(tmp_path / "sealing.key")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))

    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        [str(PORTCULLIS), "serve", str(config_file)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    telemetry = f"http://127.0.0.1:{telemetry_port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if _get(f"{telemetry}/healthz/ready")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail("issuer did not become ready:\n" + (tmp_path / "server.log").read_text())
        yield {
            "value_set": value_set,
            "issuer": config["issuer"],
            "web": f"127.0.0.1:{web_port}",
            "telemetry": telemetry,
            "ca_file": ca_file,
        }
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.mark.integration
def test_probes_discovery_and_helm_test_hook_work_against_the_real_issuer(
    served_chart_config: dict[str, str],
) -> None:
    telemetry = served_chart_config["telemetry"]
    assert _get(f"{telemetry}/healthz/live")[0] == 200
    assert _get(f"{telemetry}/healthz/ready")[0] == 200
    assert _get(f"{telemetry}/metrics")[0] == 200

    # The chart's `helm test` script, pointed at this server instead of the Service: it checks
    # discovery at the issuer URL (over TLS against the chart's CA when https.enabled).
    _, docs = render_set(served_chart_config["value_set"])
    container = find(docs, "Pod")["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["ISSUER"] == served_chart_config["issuer"].rstrip("/")
    if served_chart_config["ca_file"]:
        env["CA_FILE"] = served_chart_config["ca_file"]
    curl = shutil.which("curl")
    assert curl, "curl is installed by `make test-system-deps`"
    result = subprocess.run(
        ["/bin/sh", "-ec", container["command"][2]],
        env={**env, "TARGET": served_chart_config["web"], "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"discovery OK for {env['ISSUER']}" in result.stdout
