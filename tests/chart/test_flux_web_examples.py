"""deploy/flux/examples/ (Flux Web UI single sign-on) is generated, validates against the Flux
CRD schemas and Kubernetes' own, and the values it hands the Portcullis chart produce a config
Portcullis accepts, with the flux-web client and its secret in it (issue 16)."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest
import yaml
from portcullis.issuer import parse_config
from portcullis_release.distribute.flux_web import (
    CALLBACK_PATH,
    DEFAULT_OUT,
    VALUES_CONFIGMAP,
    WEB_UI_SCOPES,
    FluxWebSettings,
    diff_flux_web,
    render_flux_web,
)
from portcullis_release.manifest import load_manifest, parse_manifest

from tests.support.chart import (
    FULLNAME,
    KUBE_VERSIONS,
    chart,
    documents,
    find,
    render,
    validate_builtin,
    validate_crds,
)

RELEASE = parse_manifest(
    {
        "development": False,
        "image": {
            "repository": "registry.example.com/portcullis/portcullis",
            "tag": "2.3.4",
            "digest": "sha256:" + "3c" * 32,
        },
        "chart": {
            "repository": "registry.example.com/portcullis/charts/portcullis",
            "version": "2.3.4",
            "digest": "sha256:" + "4d" * 32,
        },
    }
)
CLIENT_SECRET = "flux-web-client-secret-0123456789abcdef"


def _docs() -> dict[str, dict[str, Any]]:
    files = render_flux_web(RELEASE)
    return {name: yaml.safe_load(text) for name, text in files.items()}


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Helm/Flux value merge: maps merge, everything else (lists included) is replaced."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set_path(values: dict[str, Any], path: str, value: str) -> None:
    """Flux's targetPath (Helm --set syntax) for the one shape used here: a.b[0].c."""
    node: Any = values
    parts = path.split(".")
    for part in parts[:-1]:
        if part.endswith("]"):
            name, index = part[:-1].split("[")
            node = node[name][int(index)]
        else:
            node = node.setdefault(part, {})
    node[parts[-1]] = value


def _portcullis_values(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What helm-controller hands the chart: valuesFrom in order, then spec.values."""
    release = docs["portcullis-helmrelease.yaml"]["spec"]
    configmap = docs["portcullis-flux-web-values.yaml"]
    values: dict[str, Any] = {}
    for source in release["valuesFrom"]:
        if source["kind"] == "ConfigMap":
            assert source["name"] == configmap["metadata"]["name"]
            values = _merge(values, yaml.safe_load(configmap["data"][source["valuesKey"]]))
        elif "targetPath" in source:
            assert source["valuesKey"] == "client-secret"
            _set_path(values, source["targetPath"], CLIENT_SECRET)
        else:  # the operator's own values Secret (portcullis-values): empty here
            assert source["name"] == "portcullis-values"
    return _merge(values, release["values"])


def test_committed_examples_are_exactly_what_the_manifest_generates() -> None:
    manifest = load_manifest()
    problems = diff_flux_web(manifest, DEFAULT_OUT, allow_development=manifest.development)
    assert not problems, f"regenerate: `portcullis-release flux --allow-development`: {problems}"


def test_flux_kinds_validate_against_the_flux_crd_schemas() -> None:
    docs = _docs()
    checked = [
        docs["portcullis-helmrelease.yaml"],
        docs["flux-operator-ocirepository.yaml"],
        docs["flux-operator-helmrelease.yaml"],
    ]
    results = validate_crds(checked)
    assert [r["kind"] for r in results] == ["HelmRelease", "OCIRepository", "HelmRelease"]
    assert all(not r["errors"] for r in results), results


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_core_kinds_validate(kube_version: str) -> None:
    docs = _docs()
    for name in (
        "portcullis-flux-web-values.yaml",
        "clusterrole.yaml",
        "clusterrolebinding-user.yaml",
        "clusterrolebinding-group.yaml",
    ):
        validate_builtin(docs[name], kube_version)


def test_kustomization_lists_every_example() -> None:
    files = render_flux_web(RELEASE)
    listed = yaml.safe_load(files["kustomization.yaml"])["resources"]
    assert set(listed) == set(files) - {"kustomization.yaml"}


def test_bindings_name_a_user_and_a_group_the_web_ui_impersonates() -> None:
    docs = _docs()
    settings = FluxWebSettings()
    user = docs["clusterrolebinding-user.yaml"]["subjects"]
    group = docs["clusterrolebinding-group.yaml"]["subjects"]
    assert user == [
        {"kind": "User", "name": settings.user, "apiGroup": "rbac.authorization.k8s.io"}
    ]
    assert group[0]["kind"] == "Group"
    assert group[0]["name"] == settings.group
    role = docs["clusterrole.yaml"]["metadata"]["name"]
    assert docs["clusterrolebinding-user.yaml"]["roleRef"]["name"] == role


def test_web_config_points_at_the_issuer_and_impersonates_email_and_groups() -> None:
    docs = _docs()
    settings = FluxWebSettings()
    operator = docs["flux-operator-helmrelease.yaml"]["spec"]
    oauth2 = operator["values"]["web"]["config"]["authentication"]["oauth2"]
    assert oauth2["provider"] == "OIDC"
    assert oauth2["issuerURL"] == settings.issuer
    assert oauth2["scopes"] == list(WEB_UI_SCOPES)
    assert "claims.email" in oauth2["impersonation"]["username"]
    assert "claims.groups" in oauth2["impersonation"]["groups"]
    assert operator["values"]["web"]["config"]["baseURL"] + CALLBACK_PATH == settings.redirect_uri
    targets = {v["targetPath"]: v["valuesKey"] for v in operator["valuesFrom"]}
    assert targets == {
        "web.config.authentication.oauth2.clientID": "client-id",
        "web.config.authentication.oauth2.clientSecret": "client-secret",
    }
    # No secret is in Git: neither release carries one in spec.values.
    assert "clientSecret" not in oauth2
    assert CLIENT_SECRET not in yaml.safe_dump(docs)


def test_portcullis_values_keep_the_secret_after_flux_merges_them() -> None:
    """spec.values is merged last and replaces lists: had the client list been in spec.values,
    the secret set by targetPath would be gone. The merged values must still carry it, pass
    the chart's schema, and render a config Portcullis loads."""
    docs = _docs()
    assert docs["portcullis-flux-web-values.yaml"]["metadata"]["name"] == VALUES_CONFIGMAP
    values = _portcullis_values(docs)
    (client,) = values["config"]["staticClients"]
    settings = FluxWebSettings()
    assert client == {
        "id": settings.client_id,
        "name": "Flux Web UI",
        "redirectURIs": [settings.redirect_uri],
        "secret": CLIENT_SECRET,
    }
    chart().validate_schema(values)
    secret = find(documents(render(values)), "Secret", FULLNAME)
    config = parse_config(base64.b64decode(secret["data"]["config.yaml"]).decode())
    (spec,) = [c for c in config.clients if c.id == settings.client_id]
    assert spec.secret == CLIENT_SECRET
    assert spec.redirect_uris == (settings.redirect_uri,)
    assert not spec.public
