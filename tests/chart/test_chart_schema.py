"""values.schema.json rejects bad values before anything renders, naming the offending field."""

from __future__ import annotations

from typing import Any

import helm_python
import pytest

from tests.support.chart import CHART_DIR, chart, render

POSTGRES = {"type": "postgres", "postgres": {"host": "db", "password": "x"}}

BAD_VALUES: list[tuple[str, dict[str, Any], str]] = [
    ("sqlite-many-replicas", {"replicaCount": 3}, "/replicaCount"),
    ("memory-many-replicas", {"replicaCount": 2, "storage": {"type": "memory"}}, "/replicaCount"),
    ("sqlite-autoscaling", {"autoscaling": {"enabled": True}}, "/autoscaling/enabled"),
    ("unknown-top-level-key", {"replicas": 2}, "'replicas'"),
    ("config-typo", {"config": {"isuer": "https://x"}}, "'isuer'"),
    ("config-storage", {"config": {"storage": {"type": "memory"}}}, "/config/storage"),
    ("bad-issuer", {"config": {"issuer": "ftp://login.example.com"}}, "/config/issuer"),
    ("bad-digest", {"image": {"digest": "sha256:abc"}}, "/image/digest"),
    ("unknown-storage", {"storage": {"type": "mysql"}}, "/storage/type"),
    ("postgres-no-host", {"storage": {"type": "postgres"}}, "/storage/postgres/host"),
    (
        "postgres-no-password",
        {"storage": {"type": "postgres", "postgres": {"host": "db"}}},
        "/storage/postgres/existingSecret/name",
    ),
    ("webhook-without-https", {"tokenReviewWebhook": {"enabled": True}}, "/https/enabled"),
    (
        "existing-tls-unnamed",
        {"https": {"enabled": True, "tls": {"mode": "existingSecret"}}},
        "/https/tls/secretName",
    ),
    (
        "cert-manager-no-issuer",
        {"https": {"enabled": True, "tls": {"mode": "certManager"}}},
        "/https/tls/certManager/issuerRef/name",
    ),
    ("existing-config-unnamed", {"configSecret": {"create": False}}, "/configSecret/name"),
    (
        "existing-config-with-inline-config",
        {
            "configSecret": {"create": False, "name": "cfg"},
            "config": {"issuer": "https://x", "logger": {"level": "info"}},
        },
        "'logger'",
    ),
    (
        "kubeconfig-page-no-clusters",
        {"kubeconfigPage": {"enabled": True}},
        "/kubeconfigPage/clusters",
    ),
    ("service-type", {"service": {"type": "ExternalName"}}, "/service/type"),
    (
        "ingress-relative-path",
        {"ingress": {"hosts": [{"host": "a", "paths": [{"path": "x", "pathType": "Prefix"}]}]}},
        "/ingress/hosts/0/paths/0/path",
    ),
    (
        "pdb-bad-percentage",
        {"podDisruptionBudget": {"minAvailable": "half"}},
        "/podDisruptionBudget/minAvailable",
    ),
    (
        "probe-success-threshold",
        {"livenessProbe": {"successThreshold": 2}},
        "/livenessProbe/successThreshold",
    ),
    ("pull-secret-shape", {"imagePullSecrets": ["regcred"]}, "/imagePullSecrets/0"),
]


@pytest.mark.parametrize(
    ("values", "pointer"), [(v, p) for _, v, p in BAD_VALUES], ids=[i for i, _, _ in BAD_VALUES]
)
def test_schema_rejects_bad_values_naming_the_field(values: dict[str, Any], pointer: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as excinfo:
        render(values)
    assert pointer in str(excinfo.value)


def test_schema_errors_also_fail_lint() -> None:
    report = helm_python.lint(CHART_DIR, {"replicaCount": 3}, strict=True)
    assert report["errors"]
    assert "/replicaCount" in str(report)


@pytest.mark.parametrize(
    "values",
    [
        {"replicaCount": 3, "storage": POSTGRES},
        {"replicaCount": 0},
        {"storage": POSTGRES, "autoscaling": {"enabled": True}},
        {"configSecret": {"create": False, "name": "cfg"}, "config": {"issuer": "https://a.b"}},
    ],
    ids=[
        "postgres-three-replicas",
        "sqlite-scaled-to-zero",
        "postgres-autoscaling",
        "existing-config",
    ],
)
def test_schema_accepts_the_allowed_combinations(values: dict[str, Any]) -> None:
    chart().validate_schema(values)
    assert render(values)


def test_autoscaling_bounds_are_checked_when_rendering() -> None:
    values = {
        "storage": POSTGRES,
        "autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2},
    }
    with pytest.raises(helm_python.HelmRenderError, match=r"autoscaling\.minReplicas"):
        render(values)
