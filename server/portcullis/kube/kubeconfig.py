"""What the kubeconfig page shows, as plain data: kubectl commands per shell and an exec-plugin
kubeconfig for each configured cluster. No HTTP here.

Three ways to use the issuer from kubectl are offered, the first recommended:
- a kubeconfig whose user runs our own exec plugin (``kubectl portcullis get-token``), which
  signs in through the browser (or the device flow) by itself and keeps tokens out of the
  kubeconfig;
- the same with the kubelogin exec plugin (``kubectl oidc-login get-token``), for machines that
  already have it;
- commands that store the tokens just issued in kubectl's legacy ``oidc`` auth provider
  (deprecated by Kubernetes, but nothing to install). Those tokens were issued to the page's
  client, so this is offered only for clusters that use that client.
Each cluster may name its own client (``clientID``/``clientSecret``), and its own issuer
(``issuer``: the page then renders that cluster from a login at that issuer, with its tokens,
client and CA in ``Credentials``); the issuer's CA, when
configured, is embedded in each form (``--certificate-authority-data``,
``idp-certificate-authority-data``) so a private CA needs no file on the user's machine.
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
    issuer_ca_data: str = ""  # base64 PEM of the issuer's CA, "" for the system roots
    # The client's secret for kubectl's refreshes, for a cluster's confidential client at
    # another issuer (this issuer's page client is public: nothing to hand out).
    client_secret: str = ""


@dataclass(frozen=True)
class ClusterSetup:
    name: str
    server: str
    client_id: str
    plugin_kubeconfig: str  # YAML, kubectl-portcullis exec plugin
    exec_kubeconfig: str  # YAML, kubelogin exec plugin
    posix: str  # bash/zsh (Linux, macOS); "" when the cluster uses another client
    powershell: str  # Windows; "" likewise


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
    if creds.client_secret:
        provider_args.append(f"client-secret={creds.client_secret}")
    if creds.issuer_ca_data:
        provider_args.append(f"idp-certificate-authority-data={creds.issuer_ca_data}")
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


def _kubeconfig(cluster: KubeCluster, user: str, exec_entry: dict[str, Any]) -> str:
    cluster_entry: dict[str, Any] = {"server": cluster.server}
    if cluster.certificate_authority_data:
        cluster_entry["certificate-authority-data"] = cluster.certificate_authority_data
    context = f"{user}@{cluster.name}"
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster.name, "cluster": cluster_entry}],
        "users": [{"name": user, "user": {"exec": exec_entry}}],
        "contexts": [{"name": context, "context": {"cluster": cluster.name, "user": user}}],
        "current-context": context,
    }
    return yaml.safe_dump(document, sort_keys=False)


def _exec(args: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": EXEC_API_VERSION,
        "command": "kubectl",
        "args": args,
        "interactiveMode": "IfAvailable",
        "provideClusterInfo": False,
    }


def plugin_kubeconfig(
    cluster: KubeCluster, issuer: str, client_id: str, user: str, issuer_ca_data: str = ""
) -> str:
    """A complete kubeconfig for one cluster whose user runs ``kubectl portcullis get-token``."""
    args = ["portcullis", "get-token", f"--issuer={issuer}", f"--client-id={client_id}"]
    if cluster.client_secret:
        args.append(f"--client-secret={cluster.client_secret}")
    if issuer_ca_data:
        args.append(f"--certificate-authority-data={issuer_ca_data}")
    return _kubeconfig(cluster, user, _exec(args))


def exec_kubeconfig(
    cluster: KubeCluster, issuer: str, client_id: str, user: str, issuer_ca_data: str = ""
) -> str:
    """A complete kubeconfig for one cluster whose user runs the kubelogin exec plugin."""
    args = [
        "oidc-login",
        "get-token",
        f"--oidc-issuer-url={issuer}",
        f"--oidc-client-id={client_id}",
    ]
    if cluster.client_secret:
        args.append(f"--oidc-client-secret={cluster.client_secret}")
    args += [
        "--oidc-extra-scope=email",
        "--oidc-extra-scope=groups",
        "--oidc-extra-scope=offline_access",
    ]
    if issuer_ca_data:
        args.append(f"--certificate-authority-data={issuer_ca_data}")
    return _kubeconfig(cluster, user, _exec(args))


def cluster_setups(clusters: list[KubeCluster], creds: Credentials) -> list[ClusterSetup]:
    setups = []
    for cluster in clusters:
        client_id = cluster.client_id or creds.client_id
        # The page's tokens were issued to its own client: a cluster expecting another
        # audience would refuse them, so the legacy commands are offered only where they work.
        commands = _commands(cluster, creds) if client_id == creds.client_id else []
        ca = creds.issuer_ca_data
        setups.append(
            ClusterSetup(
                name=cluster.name,
                server=cluster.server,
                client_id=client_id,
                plugin_kubeconfig=plugin_kubeconfig(
                    cluster, creds.issuer, client_id, creds.username, ca
                ),
                exec_kubeconfig=exec_kubeconfig(
                    cluster, creds.issuer, client_id, creds.username, ca
                ),
                posix="\n".join(shlex.join(c) for c in commands),
                powershell="\n".join(
                    " ".join(c[:3] + [powershell_quote(a) for a in c[3:]]) for c in commands
                ),
            )
        )
    return setups
