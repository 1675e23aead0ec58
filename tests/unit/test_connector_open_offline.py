"""Opening the federated connectors does no network I/O: ``check-config`` opens them (to report
what only opening finds) on machines that cannot reach the upstreams, and ``serve`` must start
while an upstream is down. Every socket is refused during the open here."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from portcullis.config.load import parse_config
from portcullis.issuer import check_connectors, connector_models

from tests.support.federation import DEX_CONFIG
from tests.support.saml_idp import IssuingCA


def test_opening_ldap_oidc_oauth_saml_and_authproxy_touches_no_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(IssuingCA.create("Offline CA").pem)
    text = DEX_CONFIG.format(web=5556, telemetry=5558, db=tmp_path / "x.db", ca=ca)
    config = parse_config(text, environ={}, connector_models=connector_models())
    attempts: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(repr(args))
        raise OSError("network I/O while opening connectors")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    check_connectors(config, fips_mode=False)
    assert attempts == []
    assert [c.type for c in config.connectors] == ["ldap", "oidc", "oauth", "saml", "authproxy"]
