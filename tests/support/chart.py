"""Helpers for the chart tests: render with the real Helm engine, split and validate manifests.

Validation uses two independent schema sources: kubernetes-validate (strict, the Kubernetes
OpenAPI schemas per minor version) for built-in kinds, and the @kubernetes-models CRD validators
(Node, tests/node) for Flux, cert-manager and Prometheus Operator kinds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "chart" / "portcullis"
VALUES_DIR = REPO_ROOT / "tests" / "chart" / "values"
NODE_DIR = REPO_ROOT / "tests" / "node"

RELEASE = "auth"
NAMESPACE = "identity"
FULLNAME = "auth-portcullis"

KUBE_VERSIONS = ("1.30.0", "1.31.0", "1.32.0", "1.33.0", "1.34.0")
VALUE_SETS = tuple(sorted(p.stem for p in VALUES_DIR.glob("*.yaml")))
CRD_GROUPS = ("cert-manager.io", "monitoring.coreos.com", "source.toolkit.fluxcd.io")


@cache
def chart() -> Any:
    """The chart loaded once per worker (loading parses every template)."""
    return helm_python.Chart.load(CHART_DIR)


def load_values(name: str) -> dict[str, Any]:
    data = yaml.safe_load((VALUES_DIR / f"{name}.yaml").read_text())
    return data or {}


def render(values: dict[str, Any] | None = None) -> dict[str, str]:
    """Template path -> rendered text, as `helm install` would render for a first install."""
    rendered: dict[str, str] = chart().render(
        values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True
    )
    return rendered


def documents(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every non-empty YAML document of the rendered templates (NOTES.txt excluded)."""
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return docs


@cache
def render_set(name: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
    rendered = render(load_values(name))
    return rendered, documents(rendered)


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def config_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The issuer config carried by the chart's config Secret."""
    import base64

    secret = find(docs, "Secret", FULLNAME)
    text = base64.b64decode(secret["data"]["config.yaml"]).decode()
    config: dict[str, Any] = yaml.safe_load(text)
    return config


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, pod spec) for every workload and bare Pod."""
    for doc in docs:
        label = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "Pod":
            yield label, doc["spec"]
        elif doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield label, doc["spec"]["template"]["spec"]


def is_crd_kind(doc: dict[str, Any]) -> bool:
    return str(doc["apiVersion"]).split("/")[0] in (*CRD_GROUPS, "helm.toolkit.fluxcd.io")


def validate_builtin(doc: dict[str, Any], kube_version: str) -> None:
    """Raise kubernetes_validate.ValidationError (strict: unknown fields rejected)."""
    kubernetes_validate.validate(doc, kube_version, strict=True)


def validate_crds(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run the Node CRD validators; returns one {kind, name, errors} per document."""
    node = shutil.which("node")
    assert node, "node is required (Debian nodejs); tests/node peers come from `make test`"
    assert (NODE_DIR / "node_modules" / "@kubernetes-models").is_dir(), (
        "tests/node/node_modules missing: run `make chart-node-deps` (part of `make test`)"
    )
    proc = subprocess.run(
        [node, str(NODE_DIR / "validate-crds.mjs")],
        input=json.dumps(docs),
        capture_output=True,
        text=True,
        cwd=NODE_DIR,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    results: list[dict[str, Any]] = json.loads(proc.stdout)
    return results
