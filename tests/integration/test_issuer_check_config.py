"""`portcullis check-config` and `serve` on invalid files: exit 2, every problem with its YAML
path, nothing served."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.issuer import PORTCULLIS, REPO_ROOT, make_issuer

pytestmark = pytest.mark.integration


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PORTCULLIS), "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _write(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_the_dev_config_and_the_test_config_are_valid(tmp_path: Path) -> None:
    dev = _check(REPO_ROOT / "examples" / "config-dev.yaml")
    assert dev.returncode == 0, dev.stderr
    assert "valid" in dev.stdout
    issuer = make_issuer(tmp_path / "ok")
    ok = _check(_write(tmp_path, issuer.config))
    assert ok.returncode == 0, ok.stderr


def test_schema_errors_are_all_listed_with_their_yaml_paths(tmp_path: Path) -> None:
    config = make_issuer(tmp_path / "schema").config
    config["staticClients"][0]["redirectURIs"].append("callback-without-scheme")
    config["expiry"]["idTokens"] = "ten minutes"
    config["web"]["allowedOrigns"] = ["https://typo.example"]
    config["signer"]["config"]["keysRotationPeriod"] = "30s"
    config["staticPasswords"][0]["email"] = "not-an-email"
    result = _check(_write(tmp_path, config))
    assert result.returncode == 2, (result.stdout, result.stderr)
    for expected in (
        "staticClients[0].redirectURIs[1]: not an absolute URL",
        "expiry.idTokens:",
        "web.allowedOrigns: unknown key",
        "signer.config.keysRotationPeriod:",
        "staticPasswords[0].email:",
    ):
        assert expected in result.stderr, f"{expected!r} missing from:\n{result.stderr}"
    assert "5 problem(s)" in result.stderr
    assert "Traceback" not in result.stderr


def test_cross_field_errors_are_all_listed_with_their_yaml_paths(tmp_path: Path) -> None:
    config = make_issuer(tmp_path / "cross").config
    config["oauth2"]["passwordConnector"] = "ldap"
    config["staticClients"][2]["trustedPeers"] = ["nobody"]
    config["staticClients"][1]["redirectURIs"] = ["/elsewhere/device/callback"]
    config["staticPasswords"][0]["hash"] = "plaintext-password"
    config["staticClients"][0]["allowedConnectors"] = ["github"]
    result = _check(_write(tmp_path, config))
    assert result.returncode == 2, (result.stdout, result.stderr)
    for expected in (
        "oauth2.passwordConnector:",
        "staticClients[2].trustedPeers[0]:",
        "staticClients[1].redirectURIs[0]:",
        "staticPasswords[0].hash:",
        "staticClients[0].allowedConnectors[0]:",
    ):
        assert expected in result.stderr, f"{expected!r} missing from:\n{result.stderr}"
    # The offending hash is named, never echoed.
    assert "plaintext-password" not in result.stderr


def test_schema_and_cross_field_errors_are_reported_together(tmp_path: Path) -> None:
    """One pass must list everything: a typo elsewhere must not hide a bad client reference."""
    config = make_issuer(tmp_path / "both").config
    config["expiry"]["idTokens"] = "forever"
    config["staticClients"][2]["trustedPeers"] = ["nobody"]
    result = _check(_write(tmp_path, config))
    assert result.returncode == 2
    assert "expiry.idTokens:" in result.stderr
    assert "staticClients[2].trustedPeers[0]:" in result.stderr, result.stderr


def test_unreadable_and_non_yaml_files_are_config_errors(tmp_path: Path) -> None:
    missing = _check(tmp_path / "missing.yaml")
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("issuer: [unclosed\n")
    result = _check(broken)
    assert result.returncode == 2
    assert "line" in result.stderr


def test_serve_refuses_an_invalid_config_with_exit_2(tmp_path: Path) -> None:
    config = make_issuer(tmp_path / "serve").config
    config["storage"]["type"] = "etcd"
    result = subprocess.run(
        [str(PORTCULLIS), "serve", str(_write(tmp_path, config))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "storage" in result.stderr
