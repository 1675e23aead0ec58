"""The ExecCredential kubectl reads from an exec credential plugin's stdout.

kubectl passes ``KUBERNETES_EXEC_INFO`` (a JSON ExecCredential with the kubeconfig's
``apiVersion`` and ``spec.interactive``); the answer must use the same apiVersion. Both
``client.authentication.k8s.io/v1`` and ``v1beta1`` carry the same status fields; v1alpha1 was
removed in Kubernetes 1.24 and is refused with a clear message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubectl_portcullis.errors import PluginError

V1 = "client.authentication.k8s.io/v1"
V1BETA1 = "client.authentication.k8s.io/v1beta1"
SUPPORTED = (V1, V1BETA1)


@dataclass(frozen=True)
class ExecInfo:
    api_version: str
    interactive: bool


def exec_info(raw: str | None, *, stdin_is_tty: bool) -> ExecInfo:
    """What kubectl told us in ``KUBERNETES_EXEC_INFO`` (v1 and a TTY check when run by hand)."""
    if not raw:
        return ExecInfo(V1, stdin_is_tty)
    try:
        document: Any = json.loads(raw)
    except ValueError:
        raise PluginError("KUBERNETES_EXEC_INFO is not JSON") from None
    if not isinstance(document, dict):
        raise PluginError("KUBERNETES_EXEC_INFO is not a JSON object")
    version = document.get("apiVersion") or V1
    if version not in SUPPORTED:
        raise PluginError(
            f"KUBERNETES_EXEC_INFO asks for apiVersion {version!r}; "
            f"set the kubeconfig's exec apiVersion to {V1} or {V1BETA1}"
        )
    spec = document.get("spec")
    interactive = spec.get("interactive") if isinstance(spec, dict) else None
    return ExecInfo(version, bool(interactive) if interactive is not None else stdin_is_tty)


def rfc3339(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def exec_credential(api_version: str, token: str, expires_at: int) -> dict[str, Any]:
    """The document printed on stdout: kubectl sends ``status.token`` as a bearer token and
    runs the plugin again after ``expirationTimestamp``."""
    return {
        "kind": "ExecCredential",
        "apiVersion": api_version,
        "spec": {},
        "status": {"token": token, "expirationTimestamp": rfc3339(expires_at)},
    }
