"""What the kubeconfig page shows, as plain data: kubectl commands per shell and an exec-plugin
kubeconfig for each configured cluster. No HTTP here.

Two ways to use the issuer from kubectl are offered, because both are in use:
- commands that store the tokens just issued in kubectl's built-in ``oidc`` auth provider
  (kubectl refreshes them with the refresh token; nothing else to install), and
- a kubeconfig whose user runs the kubelogin exec plugin (``kubectl oidc-login get-token``),
  which signs in through the browser by itself and keeps tokens out of the kubeconfig.
Every value is quoted for the shell it is pasted into, so a cluster name or URL can never
become a command.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

import yaml

from portcullis.config.model import KubeCluster

EXEC_API_VERSION = "client.authentication.k8s.io/v1"


def powershell_quote(value: str) -> str:
    """A PowerShell single-quoted literal: nothing inside is expanded; ' is doubled."""
    return (
        "'"
        + value.replace("'", "''")
        .replace("\u2018", "\u2018\u2018")
        .replace("\u2019", "\u2019\u2019")
        + "'"
    )


@dataclass(frozen=True)
class Credentials:
    issuer: str
    client_id: str
    id_token: str
    refresh_token: str
    username: str  # the kubeconfig user name (a label, not the Kubernetes username)


@dataclass(frozen=True)
class ClusterSetup:
    name: str
    server: str
    posix: str  # bash/zsh (Linux, macOS)
    powershell: str  # Windows
    exec_kubeconfig: str  # YAML


def _commands(cluster: KubeCluster, creds: Credentials) -> list[list[str]]:
    context = f"{creds.username}@{cluster.name}"
    commands = [["kubectl", "config", "set-cluster", cluster.name, f"--server={cluster.server}"]]
    if cluster.certificate_authority_data:
        commands.append(
            [
                "kubectl",
                "config",
                "set",
                f"clusters.{cluster.name}.certificate-authority-data",
                cluster.certificate_authority_data,
            ]
        )
    provider_args = [
        f"idp-issuer-url={creds.issuer}",
        f"client-id={creds.client_id}",
        f"id-token={creds.id_token}",
    ]
    if creds.refresh_token:
        provider_args.append(f"refresh-token={creds.refresh_token}")
    commands.append(
        [
            "kubectl",
            "config",
            "set-credentials",
            creds.username,
            "--auth-provider=oidc",
            *(f"--auth-provider-arg={arg}" for arg in provider_args),
        ]
    )
    commands.append(
        [
            "kubectl",
            "config",
            "set-context",
            context,
            f"--cluster={cluster.name}",
            f"--user={creds.username}",
        ]
    )
    commands.append(["kubectl", "config", "use-context", context])
    return commands


def exec_kubeconfig(cluster: KubeCluster, issuer: str, client_id: str, user: str) -> str:
    """A complete kubeconfig for one cluster whose user runs the kubelogin exec plugin."""
    cluster_entry: dict[str, Any] = {"server": cluster.server}
    if cluster.certificate_authority_data:
        cluster_entry["certificate-authority-data"] = cluster.certificate_authority_data
    context = f"{user}@{cluster.name}"
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster.name, "cluster": cluster_entry}],
        "users": [
            {
                "name": user,
                "user": {
                    "exec": {
                        "apiVersion": EXEC_API_VERSION,
                        "command": "kubectl",
                        "args": [
                            "oidc-login",
                            "get-token",
                            f"--oidc-issuer-url={issuer}",
                            f"--oidc-client-id={client_id}",
                            "--oidc-extra-scope=email",
                            "--oidc-extra-scope=groups",
                            "--oidc-extra-scope=offline_access",
                        ],
                        "interactiveMode": "IfAvailable",
                        "provideClusterInfo": False,
                    }
                },
            }
        ],
        "contexts": [{"name": context, "context": {"cluster": cluster.name, "user": user}}],
        "current-context": context,
    }
    return yaml.safe_dump(document, sort_keys=False)


def cluster_setups(clusters: list[KubeCluster], creds: Credentials) -> list[ClusterSetup]:
    setups = []
    for cluster in clusters:
        commands = _commands(cluster, creds)
        setups.append(
            ClusterSetup(
                name=cluster.name,
                server=cluster.server,
                posix="\n".join(shlex.join(c) for c in commands),
                powershell="\n".join(
                    " ".join(c[:3] + [powershell_quote(a) for a in c[3:]]) for c in commands
                ),
                exec_kubeconfig=exec_kubeconfig(
                    cluster, creds.issuer, creds.client_id, creds.username
                ),
            )
        )
    return setups
