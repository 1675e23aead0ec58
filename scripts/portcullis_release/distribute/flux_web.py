"""Generate the Flux Web UI single sign-on examples (``deploy/flux/examples/``).

Why generated, like the rest of ``deploy/flux``: the Portcullis HelmRelease here is the one of
``deploy/flux/helmrelease.yaml`` (same chart source, same image pin) plus the ``flux-web``
client, so the two cannot drift; and a test validates every file against the Flux CRD schemas
and Kubernetes' own, which a hand-written example in a doc never is.

What is generated (docs/flux-web-ui.md walks through it):

- ``portcullis-helmrelease.yaml`` and ``portcullis-flux-web-values.yaml``: Portcullis with
  the static client ``flux-web`` (confidential; redirect ``https://flux.<domain>/oauth2/callback``,
  where the Flux Web UI receives the code) from a values ConfigMap. Its secret comes from
  Secret ``flux-web-client`` by ``valuesFrom`` with a ``targetPath``, never from Git.
- ``flux-operator-ocirepository.yaml`` and ``flux-operator-helmrelease.yaml``: the Flux
  Operator chart with ``web.config`` pointing at the issuer (OAuth2, provider OIDC), the
  client id and secret from the same Secret, and impersonation by the ``email`` and
  ``groups`` ID-token claims (the Web UI's defaults, spelled out).
- ``rbac.yaml``-style files: a read-only ClusterRole for Flux resources and two
  ClusterRoleBindings, one for a user (by email) and one for a group.
- ``kustomization.yaml`` listing them.

Importable API::

    render_flux_web(manifest, settings=FluxWebSettings(), *, allow_development=False)
    write_flux_web(manifest, out_dir=DEFAULT_OUT, ...) / diff_flux_web(manifest, out_dir, ...)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from portcullis_release.distribute import flux
from portcullis_release.manifest import ReleaseManifest
from portcullis_release.oci import HELM_CHART_LAYER

__all__ = [
    "DEFAULT_OUT",
    "FluxWebSettings",
    "diff_flux_web",
    "render_flux_web",
    "write_flux_web",
]

DEFAULT_OUT = flux.DEFAULT_OUT / flux.EXAMPLES_DIR

#: The ConfigMap holding the chart values that add the ``flux-web`` client.
VALUES_CONFIGMAP = "portcullis-flux-web-values"
#: The Flux Web UI's OIDC redirect path under its baseURL.
CALLBACK_PATH = "/oauth2/callback"
#: What the Flux Web UI asks for by default (Flux Operator docs, web-config-api.md).
WEB_UI_SCOPES = ("openid", "offline_access", "profile", "email", "groups")


@dataclass(frozen=True)
class FluxWebSettings:
    """Names in the generated examples (defaults match docs/flux-web-ui.md)."""

    domain: str = "example.com"
    client_id: str = "flux-web"
    client_secret_name: str = "flux-web-client"  # noqa: S105 - a Secret's name
    flux_namespace: str = "flux-system"
    flux_operator_chart: str = "oci://ghcr.io/controlplaneio-fluxcd/charts/flux-operator"
    flux_operator_semver: str = ">=0.30.0"
    user: str = "alice@example.com"
    group: str = "flux-admins"

    @property
    def issuer(self) -> str:
        return f"https://portcullis.{self.domain}/dex"

    @property
    def web_url(self) -> str:
        return f"https://flux.{self.domain}"

    @property
    def redirect_uri(self) -> str:
        return self.web_url + CALLBACK_PATH


def flux_web_client(settings: FluxWebSettings) -> dict[str, Any]:
    """The Portcullis static client the Web UI logs in with (its secret comes by valuesFrom)."""
    return {
        "id": settings.client_id,
        "name": "Flux Web UI",
        "redirectURIs": [settings.redirect_uri],
    }


def web_config(settings: FluxWebSettings) -> dict[str, Any]:
    """The Flux Operator chart's ``web.config`` (the Web UI Config API's ``spec``)."""
    return {
        "baseURL": settings.web_url,
        "authentication": {
            "type": "OAuth2",
            "oauth2": {
                "provider": "OIDC",
                "issuerURL": settings.issuer,
                "scopes": list(WEB_UI_SCOPES),
                "impersonation": {
                    "username": "has(claims.email) ? claims.email : ''",
                    "groups": "has(claims.groups) ? claims.groups : []",
                },
            },
        },
    }


def _portcullis_values(settings: FluxWebSettings) -> dict[str, Any]:
    """The chart values that add the client, as a ConfigMap (no secret in it)."""
    values = {"config": {"issuer": settings.issuer, "staticClients": [flux_web_client(settings)]}}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": VALUES_CONFIGMAP, "namespace": flux.FluxSettings().namespace},
        "data": {"values.yaml": flux.dump(values)},
    }


def _portcullis(manifest: ReleaseManifest, settings: FluxWebSettings) -> dict[str, Any]:
    release = flux.helm_release(manifest, flux.FluxSettings())
    # Order matters. Flux merges valuesFrom in order and spec.values last, and a list is
    # replaced, not merged: the client list therefore comes from valuesFrom (not spec.values,
    # which would replace the list *after* the secret was set into it), and the secret is set
    # into that list by the last entry's targetPath.
    release["spec"]["valuesFrom"] += [
        {"kind": "ConfigMap", "name": VALUES_CONFIGMAP, "valuesKey": "values.yaml"},
        {
            "kind": "Secret",
            "name": settings.client_secret_name,
            "valuesKey": "client-secret",
            "targetPath": "config.staticClients[0].secret",
        },
    ]
    return release


def _operator_source(settings: FluxWebSettings) -> dict[str, Any]:
    return {
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "OCIRepository",
        "metadata": {"name": "flux-operator", "namespace": settings.flux_namespace},
        "spec": {
            "interval": "30m",
            "url": settings.flux_operator_chart,
            "ref": {"semver": settings.flux_operator_semver},
            "layerSelector": {"mediaType": HELM_CHART_LAYER, "operation": "copy"},
        },
    }


def _operator_release(settings: FluxWebSettings) -> dict[str, Any]:
    target = "web.config.authentication.oauth2"
    return {
        "apiVersion": "helm.toolkit.fluxcd.io/v2",
        "kind": "HelmRelease",
        "metadata": {"name": "flux-operator", "namespace": settings.flux_namespace},
        "spec": {
            "interval": "30m",
            "releaseName": "flux-operator",
            "chartRef": {"kind": "OCIRepository", "name": "flux-operator"},
            "values": {"web": {"config": web_config(settings)}},
            "valuesFrom": [
                {
                    "kind": "Secret",
                    "name": settings.client_secret_name,
                    "valuesKey": "client-id",
                    "targetPath": f"{target}.clientID",
                },
                {
                    "kind": "Secret",
                    "name": settings.client_secret_name,
                    "valuesKey": "client-secret",
                    "targetPath": f"{target}.clientSecret",
                },
            ],
        },
    }


def _cluster_role() -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "flux-web-viewer"},
        "rules": [
            {
                "apiGroups": [
                    "source.toolkit.fluxcd.io",
                    "kustomize.toolkit.fluxcd.io",
                    "helm.toolkit.fluxcd.io",
                    "notification.toolkit.fluxcd.io",
                    "image.toolkit.fluxcd.io",
                    "fluxcd.controlplane.io",
                ],
                "resources": ["*"],
                "verbs": ["get", "list", "watch"],
            }
        ],
    }


def _binding(name: str, kind: str, subject: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "subjects": [{"kind": kind, "name": subject, "apiGroup": "rbac.authorization.k8s.io"}],
        "roleRef": {
            "kind": "ClusterRole",
            "name": "flux-web-viewer",
            "apiGroup": "rbac.authorization.k8s.io",
        },
    }


def render_flux_web(
    manifest: ReleaseManifest,
    settings: FluxWebSettings | None = None,
    *,
    allow_development: bool = False,
) -> dict[str, str]:
    """File name -> text for ``deploy/flux/examples/``."""
    settings = settings or FluxWebSettings()
    if not allow_development:
        manifest.require_release()
    header = flux.header(manifest)
    docs = {
        "portcullis-flux-web-values.yaml": _portcullis_values(settings),
        "portcullis-helmrelease.yaml": _portcullis(manifest, settings),
        "flux-operator-ocirepository.yaml": _operator_source(settings),
        "flux-operator-helmrelease.yaml": _operator_release(settings),
        "clusterrole.yaml": _cluster_role(),
        "clusterrolebinding-user.yaml": _binding("flux-web-user", "User", settings.user),
        "clusterrolebinding-group.yaml": _binding("flux-web-group", "Group", settings.group),
    }
    files = {name: header + flux.dump(doc) for name, doc in docs.items()}
    files["kustomization.yaml"] = header + flux.dump(
        {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": list(docs),
        }
    )
    return files


def write_flux_web(
    manifest: ReleaseManifest,
    out_dir: Path = DEFAULT_OUT,
    settings: FluxWebSettings | None = None,
    *,
    allow_development: bool = False,
) -> list[Path]:
    files = render_flux_web(manifest, settings, allow_development=allow_development)
    return flux.write_files(files, out_dir)


def diff_flux_web(
    manifest: ReleaseManifest,
    out_dir: Path = DEFAULT_OUT,
    settings: FluxWebSettings | None = None,
    *,
    allow_development: bool = False,
) -> list[str]:
    files = render_flux_web(manifest, settings, allow_development=allow_development)
    return flux.diff_files(files, out_dir)
