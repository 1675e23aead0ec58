"""The chart's kubeconfigPage.clusters take the per-cluster keys the server has (its own client,
another issuer with its CA and scopes): the schema accepts them, names a bad one, and the
rendered config carries them to the server, which loads it."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml
from portcullis.issuer import parse_config

from tests.support.chart import config_of, documents, load_values, render
from tests.support.oidc_peer import make_tls_files


def _values(cluster: dict[str, Any]) -> dict[str, Any]:
    values = copy.deepcopy(load_values("webhook"))
    values["kubeconfigPage"]["clusters"].append(
        {"name": "legacy", "server": "https://api.legacy.example.com:6443", **cluster}
    )
    return values


def test_a_cluster_of_another_issuer_reaches_the_server_config(tmp_path: Path) -> None:
    ca = base64.b64encode(make_tls_files(tmp_path).ca_cert.read_bytes()).decode()
    cluster = {
        "issuer": "https://dex.example.com",
        "clientID": "legacy-cluster",
        "clientSecret": "legacy-secret-0123456789",
        "issuerCertificateAuthorityData": ca,
        "scopes": ["openid", "email", "groups"],
    }
    config = config_of(documents(render(_values(cluster))))
    (rendered,) = [
        c for c in config["kubernetes"]["kubeconfigPage"]["clusters"] if c["name"] == "legacy"
    ]
    assert rendered == {
        "name": "legacy",
        "server": "https://api.legacy.example.com:6443",
        **cluster,
    }
    loaded = parse_config(yaml.safe_dump(config), environ={})
    (legacy,) = [c for c in loaded.raw.kubernetes.kubeconfig_page.clusters if c.name == "legacy"]
    assert legacy.issuer == "https://dex.example.com"
    assert legacy.client_secret == "legacy-secret-0123456789"


def test_the_schema_names_a_bad_cluster_issuer() -> None:
    with pytest.raises(helm_python.HelmValuesError) as excinfo:
        render(_values({"issuer": "ftp://dex.example.com", "clientID": "x"}))
    assert "/kubeconfigPage/clusters/1/issuer" in str(excinfo.value)
