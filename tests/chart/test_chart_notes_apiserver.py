"""The chart's NOTES tell operators the same kube-apiserver flags `portcullis kube
apiserver-config` (and the kubeconfig page) generate for the chart's defaults, so following the
NOTES gives RBAC names that match the TokenReview webhook."""

from __future__ import annotations

import re
from typing import Any

import yaml
from portcullis.issuer import parse_config
from portcullis.kube.apiserver import apiserver_flags, settings_for

from tests.support.chart import load_values, render


def _notes(values: dict[str, Any]) -> str:
    rendered = render(values)
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


def _generated(issuer: str, client_id: str, algorithm: str) -> set[str]:
    document = {
        "issuer": issuer,
        "storage": {"type": "memory"},
        "web": {"http": "127.0.0.1:5556"},
        "enablePasswordDB": True,
        "signer": {"type": "local", "config": {"algorithm": algorithm}},
        "staticClients": [{"id": client_id, "name": "kubectl", "public": True}],
        "kubernetes": {
            "kubeconfigPage": {
                "enabled": True,
                "clientID": client_id,
                "clusters": [{"name": "c", "server": "https://k8s.example.com"}],
            }
        },
    }
    settings = settings_for(parse_config(yaml.safe_dump(document), environ={}), "c")
    return {f for f in apiserver_flags(settings) if not f.startswith("--oidc-ca-file=")}


def test_notes_flags_equal_the_generator() -> None:
    for algorithm in ("RS256", "ES256"):
        values = load_values("https-selfsigned")
        values["config"]["signer"] = {"type": "local", "config": {"algorithm": algorithm}}
        values["kubeconfigPage"] = {**values.get("kubeconfigPage", {}), "clientID": "kubectl"}
        notes = _notes(values)
        shown = set(re.findall(r"--oidc-[a-z-]+=\S+", notes))
        shown = {f for f in shown if not f.startswith("--oidc-ca-file=")}
        assert shown == _generated(values["config"]["issuer"], "kubectl", algorithm), notes
        assert "portcullis kube apiserver-config /etc/portcullis/config/config.yaml" in notes
