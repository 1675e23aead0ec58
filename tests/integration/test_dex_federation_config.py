"""A Dex config with ldap, oidc, oauth, saml and authproxy connectors, written the way Dex's
docs write them, passes `portcullis check-config` unchanged and serves (opening connectors does
no network I/O: none of the upstreams below exists)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.federation import DEX_CONFIG
from tests.support.issuer import PORTCULLIS, Issuer, Secrets, finish_issuer, free_port
from tests.support.saml_idp import IssuingCA

pytestmark = pytest.mark.integration


def test_a_dex_federation_config_checks_and_serves(tmp_path: Path) -> None:
    web, telemetry = free_port(), free_port()
    ca = tmp_path / "ca.pem"
    ca.write_bytes(IssuingCA.create("Example Corp CA").pem)
    text = DEX_CONFIG.format(web=web, telemetry=telemetry, db=tmp_path / "dex.db", ca=ca)
    path = tmp_path / "dex.yaml"
    path.write_text(text)
    checked = subprocess.run(
        [str(PORTCULLIS), "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    assert "5 connector(s)" in checked.stdout

    issuer = Issuer(tmp_path / "serve", yaml.safe_load(text), Secrets(), web, telemetry)
    issuer.workdir.mkdir()
    try:
        issuer.start()
        picker = httpx.get(
            issuer.url("/auth"),
            params={
                "client_id": "example-app",
                "redirect_uri": "http://127.0.0.1:5555/callback",
                "response_type": "code",
                "scope": "openid",
            },
        )
        assert picker.status_code == 200
        shown = re.findall(r'id="connector-([^"]+)"', picker.text)
        assert shown == ["ldap", "google", "myplatform", "saml", "myBasicAuth"]
    finally:
        finish_issuer(issuer)
