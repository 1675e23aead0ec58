"""The chart lints strictly and renders manifests that every supported Kubernetes accepts."""

from __future__ import annotations

import helm_python
import pytest

from tests.support.chart import (
    CHART_DIR,
    KUBE_VERSIONS,
    VALUE_SETS,
    is_crd_kind,
    load_values,
    render_set,
    validate_builtin,
    validate_crds,
)

WARNING = 2  # Helm lint severities: 0 unknown, 1 info, 2 warning, 3 error


@pytest.mark.parametrize("kube_version", [KUBE_VERSIONS[0], KUBE_VERSIONS[-1]])
@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_strict_lint_reports_no_warnings(value_set: str, kube_version: str) -> None:
    report = helm_python.lint(
        CHART_DIR,
        load_values(value_set),
        strict=True,
        namespace="identity",
        kube_version=kube_version,
    )
    problems = [m for m in report["messages"] if m["severity"] >= WARNING]
    assert not report["errors"], report["errors"]
    assert not problems, problems


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_builtin_manifest_validates_strictly_on_each_kubernetes_version(
    value_set: str,
) -> None:
    _, docs = render_set(value_set)
    builtin = [d for d in docs if not is_crd_kind(d)]
    assert builtin, "nothing rendered"
    failures = []
    for kube_version in KUBE_VERSIONS:
        for doc in builtin:
            try:
                validate_builtin(doc, kube_version)
            except Exception as exc:  # collect all, report together
                label = f"{doc['kind']}/{doc['metadata']['name']}"
                failures.append(f"{kube_version} {label}: {exc}")
    assert not failures, "\n".join(failures)


def test_custom_resources_validate_against_their_crd_schemas() -> None:
    docs = [d for name in VALUE_SETS for d in render_set(name)[1] if is_crd_kind(d)]
    rendered_kinds = {d["kind"] for d in docs}
    assert {"Certificate", "ServiceMonitor"} <= rendered_kinds
    results = validate_crds(docs)
    bad = [r for r in results if r["errors"]]
    assert not bad, bad


def test_crd_validator_catches_a_broken_resource() -> None:
    """Guards the guard: the Node validator must reject a wrong CRD document."""
    _, docs = render_set("https-certmanager")
    cert = next(d for d in docs if d["kind"] == "Certificate")
    broken = {**cert, "spec": {**cert["spec"], "privateKey": {"algorithm": "DSA"}}}
    del broken["spec"]["secretName"]
    (result,) = validate_crds([broken])
    text = " ".join(result["errors"])
    assert "secretName" in text
    assert "algorithm" in text


def test_kubernetes_validate_rejects_unknown_fields() -> None:
    """Guards the guard: strict mode must flag a field Kubernetes does not know."""
    _, docs = render_set("defaults")
    service = next(d for d in docs if d["kind"] == "Service")
    broken = {**service, "spec": {**service["spec"], "portz": []}}
    with pytest.raises(Exception, match="portz"):
        validate_builtin(broken, KUBE_VERSIONS[0])
