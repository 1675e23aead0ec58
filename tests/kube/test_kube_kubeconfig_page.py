"""The kubeconfig page of a real `portcullis serve`: a browser signs in through the normal login
pages and gets kubectl commands and an exec-plugin kubeconfig per cluster; the commands really
configure kubectl (the machine's kubectl 1.32), and the token they carry passes the webhook."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import ssl
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
import yaml
from portcullis.config.model import KubeCluster
from portcullis.kube.kubeconfig import powershell_quote

from tests.support.issuer import DEV_EMAIL, DEV_PASSWORD, Browser, Issuer, StartIssuer, free_port
from tests.support.kube import ServingCert

KUBECTL = Path("/usr/lib/google-cloud-sdk/bin/kubectl.1.32")
CA_DATA = base64.b64encode(
    b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
).decode()
CLUSTERS = [
    {
        "name": "production",
        "server": "https://api.prod.example.com:6443",
        "certificateAuthorityData": CA_DATA,
    },
    {"name": "lab", "server": "https://10.0.0.1:6443/o'neil"},
    # Its own (confidential) client: the page's tokens are not for it.
    {
        "name": "edge",
        "server": "https://edge.example.com:6443",
        "clientID": "example-app",
        "clientSecret": "edge-secret-0123456789",
    },
]
ISSUER_CA = base64.b64encode(
    b"-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n"
).decode()
DOWNLOADS = "https://downloads.example.com/portcullis"


@pytest.fixture(scope="module")
def kube_issuer(module_issuers: StartIssuer, serving_cert: ServingCert) -> tuple[Issuer, str]:
    port = free_port()
    issuer = module_issuers(
        {
            "kubernetes": {
                "kubeconfigPage": {
                    "enabled": True,
                    "clientID": "kubectl",
                    "clusters": CLUSTERS,
                    "issuerCertificateAuthorityData": ISSUER_CA,
                    "pluginDownloadURL": DOWNLOADS + "/",
                },
                "tokenReview": {
                    "enabled": True,
                    "addr": f"127.0.0.1:{port}",
                    "tlsCert": str(serving_cert.cert),
                    "tlsKey": str(serving_cert.key),
                    "audiences": ["kubectl"],
                },
            }
        }
    )
    return issuer, f"https://127.0.0.1:{port}/tokenreview"


def _pre(page: str, cluster: int, attribute: str) -> str:
    section = re.search(rf'<section[^>]*id="cluster-{cluster}".*?</section>', page, re.S)
    assert section, page[:3000]
    block = re.search(
        rf"<pre[^>]*{attribute}[^>]*><code[^>]*>(.*?)</code></pre>", section.group(0), re.S
    )
    assert block, section.group(0)
    return html.unescape(block.group(1))


def _sign_in(issuer: Issuer) -> tuple[httpx.Response, Browser]:
    browser = Browser(issuer)
    steps = browser.login(issuer.url("/kubeconfig"), email=DEV_EMAIL, password=DEV_PASSWORD)
    assert steps.final is not None
    callback = urljoin(str(steps.final.url), steps.final.headers["location"])
    assert callback.startswith(issuer.url("/kubeconfig/callback?"))
    response = browser.get(callback)
    for value in browser.http.cookies.values():
        issuer.remember(value)
    return response, browser


def _remember_tokens(issuer: Issuer, page: str) -> None:
    for token in re.findall(r"(?:id-token|refresh-token)=([A-Za-z0-9_.-]+)", page):
        issuer.remember(token)


def test_signed_in_user_gets_commands_for_every_cluster(kube_issuer: tuple[Issuer, str]) -> None:
    issuer, _ = kube_issuer
    response, browser = _sign_in(issuer)
    with browser:
        assert response.status_code == 200, response.text[:2000]
        page = response.text
        _remember_tokens(issuer, page)
        assert response.headers["cache-control"].startswith("no-store")
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp
        # The copy buttons' one inline script runs by its hash; no other script can.
        (script,) = re.findall(r"<script>(.*?)</script>", page, re.S)
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"script-src 'sha256-{digest}';" in csp
        assert "unsafe-inline" not in csp
        # Hidden without JavaScript (the blocks are plain text then); each names its block.
        buttons = re.findall(
            r'<button type="button" class="pc-copy" data-copy="([^"]+)" hidden>', page
        )
        assert len(buttons) == 5 * 2 + 3  # 3 clusters; the legacy commands for 2 of them
        for target in buttons:
            assert f'<code id="{target}">' in page
        assert response.headers["x-frame-options"] == "DENY"
        assert DEV_EMAIL in page
        posix = _pre(page, 1, 'data-shell="posix"')
        assert (
            "kubectl config set-cluster production --server=https://api.prod.example.com:6443"
            in posix
        )
        assert f"clusters.production.certificate-authority-data {CA_DATA}" in posix
        assert f"--auth-provider-arg=idp-issuer-url={issuer.issuer}" in posix
        assert "--auth-provider-arg=client-id=kubectl" in posix
        exec_config = yaml.safe_load(_pre(page, 1, 'data-format="kubeconfig"'))
        assert exec_config["clusters"][0]["cluster"]["certificate-authority-data"] == CA_DATA
        user = exec_config["users"][0]["user"]["exec"]
        assert user["apiVersion"] == "client.authentication.k8s.io/v1"
        assert f"--oidc-issuer-url={issuer.issuer}" in user["args"]
        assert "--oidc-client-id=kubectl" in user["args"]
        assert "token" not in json.dumps(exec_config).replace("get-token", "")
        # The API server settings these kubeconfigs rely on, from the apiserver-config generator:
        # the same issuer and audience as the kubeconfig, the webhook's claim mapping.
        flags = _pre(page, 1, 'data-format="apiserver-flags"').splitlines()
        assert flags[:2] == [f"--oidc-issuer-url={issuer.issuer}", "--oidc-client-id=kubectl"]
        assert "--oidc-username-prefix=oidc:" in flags
        assert "--oidc-groups-prefix=oidc:" in flags
        # The recommended form: our own plugin, with the issuer's CA embedded everywhere.
        plugin = yaml.safe_load(_pre(page, 1, 'data-format="plugin-kubeconfig"'))
        assert plugin["users"][0]["user"]["exec"]["command"] == "kubectl"
        assert plugin["users"][0]["user"]["exec"]["args"] == [
            "portcullis",
            "get-token",
            f"--issuer={issuer.issuer}",
            "--client-id=kubectl",
            f"--certificate-authority-data={ISSUER_CA}",
        ]
        assert plugin["clusters"][0]["cluster"]["certificate-authority-data"] == CA_DATA
        assert page.index('data-format="plugin-kubeconfig"') < page.index('data-shell="posix"')
        assert f"--certificate-authority-data={ISSUER_CA}" in user["args"]
        assert f"idp-certificate-authority-data={ISSUER_CA}" in posix
        # A cluster with its own client: kubeconfigs and flags name it, no legacy commands.
        edge = yaml.safe_load(_pre(page, 3, 'data-format="plugin-kubeconfig"'))
        edge_args = edge["users"][0]["user"]["exec"]["args"]
        assert "--client-id=example-app" in edge_args
        assert "--client-secret=edge-secret-0123456789" in edge_args
        edge_section = page[page.index('id="cluster-3"') :]
        assert 'data-shell="posix"' not in edge_section
        edge_flags = _pre(page, 3, 'data-format="apiserver-flags"').splitlines()
        assert edge_flags[1] == "--oidc-client-id=example-app"
        # The signed-in user's claims and groups, and where to get the plugin.
        identity = page[page.index('id="kube-identity"') : page.index("</details>")]
        assert DEV_EMAIL in identity
        assert '<code class="pc-group">developers</code>' in identity
        assert f'href="{DOWNLOADS}/kubectl-portcullis-linux-amd64"' in page
        assert f'href="{DOWNLOADS}/kubectl-portcullis-darwin-arm64"' in page
        # The second cluster's awkward URL is quoted for both shells.
        assert "'--server=https://10.0.0.1:6443/o'\"'\"'neil'" in _pre(
            page, 2, 'data-shell="posix"'
        )
        assert "'--server=https://10.0.0.1:6443/o''neil'" in _pre(
            page, 2, 'data-shell="powershell"'
        )
        # The one-time cookie is gone: the callback cannot be replayed in this browser.
        again = browser.get(str(response.url))
        assert again.status_code == 400


def test_callback_without_the_starting_browser_is_refused(kube_issuer: tuple[Issuer, str]) -> None:
    issuer, _ = kube_issuer
    with Browser(issuer) as browser:
        start = browser.get(issuer.url("/kubeconfig"))
        assert start.status_code == 303
        cookie = start.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=lax" in cookie
        assert "Path=/dex/kubeconfig" in cookie
        state = re.search(r"state=([^&]+)", start.headers["location"])
        assert state
        forged = browser.get(issuer.url(f"/kubeconfig/callback?code=x&state={state.group(1)}x"))
        assert forged.status_code == 400
    with Browser(issuer) as stranger:
        response = stranger.get(issuer.url(f"/kubeconfig/callback?code=x&state={state.group(1)}"))
        assert response.status_code == 400
        assert "not started in this browser" in response.text


def test_kubectl_accepts_the_commands_and_their_token_passes_the_webhook(
    kube_issuer: tuple[Issuer, str], serving_cert: ServingCert, tmp_path: Path
) -> None:
    if not KUBECTL.exists():
        # kubectl comes with the machine image, not from a package we can install; on CI its
        # absence is a failure, never a silent skip.
        if os.environ.get("CI"):
            pytest.fail(f"{KUBECTL} is missing on this CI machine")
        pytest.skip(f"{KUBECTL} is not on this machine (part of the machine image)")
    issuer, webhook_url = kube_issuer
    response, browser = _sign_in(issuer)
    browser.close()
    page = response.text
    _remember_tokens(issuer, page)
    kubeconfig = tmp_path / "kubeconfig"
    env = {
        "HOME": str(tmp_path),
        "KUBECONFIG": str(kubeconfig),
        "PATH": f"{tmp_path}/bin:/usr/bin:/bin",
    }
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "kubectl").symlink_to(KUBECTL)
    for index in (1, 2):
        script = _pre(page, index, 'data-shell="posix"')
        result = subprocess.run(
            ["bash", "-euc", script], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
    view = subprocess.run(
        [str(KUBECTL), "config", "view", "--raw", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert view.returncode == 0, view.stderr
    config: dict[str, Any] = json.loads(view.stdout)
    assert config["current-context"] == f"{DEV_EMAIL}@lab"
    clusters = {c["name"]: c["cluster"] for c in config["clusters"]}
    assert clusters["production"]["certificate-authority-data"] == CA_DATA
    assert clusters["lab"]["server"] == "https://10.0.0.1:6443/o'neil"
    provider = config["users"][0]["user"]["auth-provider"]
    assert provider["name"] == "oidc"
    assert provider["config"]["client-id"] == "kubectl"
    id_token = provider["config"]["id-token"]
    review = httpx.post(
        webhook_url,
        json={
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": id_token},
        },
        verify=ssl.create_default_context(cafile=str(serving_cert.ca)),
    )
    assert review.json()["status"]["user"]["username"] == f"oidc:{DEV_EMAIL}"
    # The exec-plugin kubeconfig is one kubectl reads as well.
    exec_file = tmp_path / "exec-kubeconfig"
    exec_file.write_text(_pre(page, 1, 'data-format="kubeconfig"'))
    exec_view = subprocess.run(
        [str(KUBECTL), "config", "view", "-o", "json", f"--kubeconfig={exec_file}"],
        env={**env, "KUBECONFIG": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert exec_view.returncode == 0, exec_view.stderr
    assert json.loads(exec_view.stdout)["users"][0]["user"]["exec"]["command"] == "kubectl"
    assert os.environ.get("KUBECONFIG") != str(kubeconfig)


def test_powershell_quoting_expands_nothing() -> None:
    assert powershell_quote("a'b$env:X`n") == "'a''b$env:X`n'"
    assert KubeCluster(name="x", server="https://x:1").certificate_authority_data == ""
