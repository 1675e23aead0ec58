"""The kubeconfig page for clusters that trust another issuer (``clusters[].issuer``), against a
real foreign OpenID provider: node-oidc-provider on loopback HTTPS with its own CA. The page is
that provider's relying party: the browser walks both sides' HTML forms, the page verifies the
ID token through the provider's discovery and JWKS (trusting the cluster's CA), and hands out
kubeconfigs and kubectl commands naming that issuer, client, secret and CA. Tampered answers,
a login started elsewhere and an untrusted certificate are refused."""

from __future__ import annotations

import base64
import contextlib
import html
import http.server
import json
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx
import pytest
import yaml
from joserfc import jwt
from joserfc.jwk import KeySet
from portcullis.config.load import ConfigError
from portcullis.issuer import parse_config
from portcullis.kube.apiserver import ApiserverConfigError, settings_for

from tests.support.apiserver_standin import ApiServerStandIn
from tests.support.issuer import DEV_EMAIL, DEV_PASSWORD, Browser, Issuer, StartIssuer
from tests.support.kube import ServingCert
from tests.support.oidc_peer import OIDCPeer, browser_login, make_tls_files, running_oidc_peer

SECRET = "prod-secret:with%odd chars-0123456789"
ALICE = {
    "name": "Alice Liddell",
    "preferred_username": "alice",
    "email": "alice@example.com",
    "email_verified": True,
    "groups": ["admins", "devs"],
}
KUBECTL = Path("/usr/lib/google-cloud-sdk/bin/kubectl.1.32")
OWN_CA = base64.b64encode(
    b"-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n"
).decode()


class Setup:
    def __init__(self, issuer: Issuer, peer: OIDCPeer, ca_data: str) -> None:
        self.issuer = issuer
        self.peer = peer
        self.ca_data = ca_data
        assert peer.ca_cert is not None
        self.verify = ssl.create_default_context(cafile=str(peer.ca_cert))

    def callback(self, cluster: str) -> str:
        return self.issuer.url(f"/kubeconfig/cluster/{cluster}/callback")


@pytest.fixture(scope="module")
def setup(module_issuers: StartIssuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp("foreign-issuer")
    tls = make_tls_files(workdir / "tls")
    ca_data = base64.b64encode(tls.ca_cert.read_bytes()).decode()
    # Not started yet: the peer must know the page's callback URLs, which need the port.
    issuer = module_issuers(run=False)

    def callback(cluster: str) -> str:
        return f"{issuer.issuer}/kubeconfig/cluster/{cluster}/callback"

    clients = [
        {
            "client_id": "cluster-prod",
            "client_secret": SECRET,
            "redirect_uris": [callback("prod")],
            "grant_types": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_method": "client_secret_basic",
        },
        {
            # A public client: PKCE is all that binds the code to the page.
            "client_id": "cluster-lab",
            "redirect_uris": [callback("lab")],
            "grant_types": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_method": "none",
        },
        {
            "client_id": "cluster-untrusted",
            "client_secret": SECRET,
            "redirect_uris": [callback("untrusted")],
            "grant_types": ["authorization_code"],
        },
    ]
    with (
        running_oidc_peer(workdir, clients=clients, accounts={"alice": ALICE}, tls=tls) as peer,
        _misbehaving_issuers() as (silent, huge),
    ):
        issuer.config = {
            **issuer.config,
            "kubernetes": {
                "kubeconfigPage": {
                    "enabled": True,
                    "clientID": "kubectl",
                    "issuerCertificateAuthorityData": OWN_CA,
                    "clusters": [
                        {"name": "home", "server": "https://home.example.com:6443"},
                        {
                            "name": "prod",
                            "server": "https://api.prod.example.com:6443",
                            "issuer": peer.issuer,
                            "clientID": "cluster-prod",
                            "clientSecret": SECRET,
                            "issuerCertificateAuthorityData": ca_data,
                        },
                        {
                            "name": "lab",
                            "server": "https://lab.example.com:6443",
                            "issuer": peer.issuer,
                            "clientID": "cluster-lab",
                            "issuerCertificateAuthorityData": ca_data,
                            "scopes": ["openid", "email", "groups"],
                        },
                        {
                            "name": "silent",
                            "server": "https://silent.example.com:6443",
                            "issuer": silent,
                            "clientID": "x",
                        },
                        {
                            "name": "huge",
                            "server": "https://huge.example.com:6443",
                            "issuer": huge,
                            "clientID": "x",
                        },
                        {
                            # No CA: the system roots do not know the peer's private CA.
                            "name": "untrusted",
                            "server": "https://untrusted.example.com:6443",
                            "issuer": peer.issuer,
                            "clientID": "cluster-untrusted",
                            "clientSecret": SECRET,
                        },
                    ],
                }
            },
        }
        issuer.remember(SECRET)
        issuer.start()
        yield Setup(issuer, peer, ca_data)


@contextlib.contextmanager
def _misbehaving_issuers() -> Iterator[tuple[str, str]]:
    """Two loopback "issuers": one accepts connections and never answers, one answers its
    discovery document with 2 MiB. The page must give up on both, in bounded time and memory."""
    silent = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def hold() -> None:
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(silent.accept()[0])
            except TimeoutError:
                continue

    class Huge(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return

        def do_GET(self) -> None:
            body = b'{"issuer": "' + b"x" * (2 << 20) + b'"}'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    huge = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Huge)
    threads = [
        threading.Thread(target=hold, daemon=True),
        threading.Thread(target=huge.serve_forever, daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        yield (
            f"http://127.0.0.1:{silent.getsockname()[1]}",
            f"http://127.0.0.1:{huge.server_address[1]}",
        )
    finally:
        stop.set()
        huge.shutdown()
        huge.server_close()
        for thread in threads:
            thread.join(5)
        for connection in held:
            connection.close()
        silent.close()


def _pre(page: str, attribute: str) -> str:
    block = re.search(rf"<pre[^>]*{attribute}[^>]*><code[^>]*>(.*?)</code></pre>", page, re.S)
    assert block, page[:3000]
    return html.unescape(block.group(1))


def _start(setup: Setup, browser: Browser, cluster: str) -> str:
    """The page's redirect to the foreign issuer (its authorization request URL)."""
    start = browser.get(setup.issuer.url(f"/kubeconfig/cluster/{cluster}"))
    assert start.status_code == 303, start.text[:2000]
    cookie = start.headers["set-cookie"]
    assert f"Path=/dex/kubeconfig/cluster/{cluster}" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    location = start.headers["location"]
    assert location.startswith(setup.peer.issuer + "/")
    return location


def _sign_in(setup: Setup, cluster: str) -> tuple[httpx.Response, Browser, dict[str, str]]:
    browser = Browser(setup.issuer)
    auth_url = _start(setup, browser, cluster)
    params = browser_login(auth_url, setup.callback(cluster), "alice", verify=setup.peer.ca_cert)
    setup.issuer.remember(params.get("code"))
    response = browser.get(f"{setup.callback(cluster)}?{urlencode(params)}")
    return response, browser, params


def _verified_by_peer(setup: Setup, token: str, client_id: str) -> dict[str, Any]:
    """Check an ID token as kube-apiserver would: the provider's JWKS, iss, aud."""
    discovery = httpx.get(
        setup.peer.issuer + "/.well-known/openid-configuration", verify=setup.verify
    ).json()
    keys = KeySet.import_key_set(httpx.get(discovery["jwks_uri"], verify=setup.verify).json())
    claims = dict(jwt.decode(token, keys).claims)
    assert claims["iss"] == setup.peer.issuer
    assert claims["aud"] == client_id
    return claims


def test_main_page_links_the_clusters_of_other_issuers(setup: Setup) -> None:
    with Browser(setup.issuer) as browser:
        steps = browser.login(
            setup.issuer.url("/kubeconfig"), email=DEV_EMAIL, password=DEV_PASSWORD
        )
        assert steps.final is not None
        response = browser.get(urljoin(str(steps.final.url), steps.final.headers["location"]))
        for value in browser.http.cookies.values():
            setup.issuer.remember(value)
    assert response.status_code == 200, response.text[:2000]
    page = response.text
    for token in re.findall(r"(?:id-token|refresh-token)=([A-Za-z0-9_.-]+)", page):
        setup.issuer.remember(token)
    # Only the cluster trusting this issuer gets kubeconfigs from this login.
    assert page.count('class="pc-cluster"') == 1
    assert 'data-cluster="home"' in page
    others = page[page.index('id="other-issuers"') :]
    for name in ("prod", "lab", "untrusted"):
        assert f'<a href="/dex/kubeconfig/cluster/{name}">{name}</a>' in others
    assert f"signs in at <code>{setup.peer.issuer}</code>" in others
    assert "cluster-prod" not in page  # nothing of the other issuer's clients before its login
    assert SECRET not in page


@pytest.mark.parametrize("cluster", ["prod", "lab"])
def test_login_at_the_clusters_issuer_gives_its_kubeconfig(setup: Setup, cluster: str) -> None:
    client_id = f"cluster-{cluster}"
    browser = Browser(setup.issuer)
    with browser:
        auth_url = _start(setup, browser, cluster)
        request = {k: v[0] for k, v in parse_qs(urlsplit(auth_url).query).items()}
        assert request["client_id"] == client_id
        assert request["redirect_uri"] == setup.callback(cluster)
        assert request["response_type"] == "code"
        assert request["code_challenge_method"] == "S256"
        assert len(request["code_challenge"]) == 43
        assert len(request["state"]) >= 32
        assert len(request["nonce"]) >= 32
        expected_scopes = (
            "openid profile email groups offline_access"
            if cluster == "prod"
            else "openid email groups"
        )
        assert request["scope"] == expected_scopes
        params = browser_login(
            auth_url, setup.callback(cluster), "alice", verify=setup.peer.ca_cert
        )
        assert params["state"] == request["state"]
        setup.issuer.remember(params["code"])
        response = browser.get(f"{setup.callback(cluster)}?{urlencode(params)}")
        assert response.status_code == 200, response.text[:3000]
        page = response.text
        assert response.headers["cache-control"].startswith("no-store")
        assert "default-src 'none'" in response.headers["content-security-policy"]
        # The one-time cookie is gone: the same answer cannot be replayed in this browser.
        replay = browser.get(f"{setup.callback(cluster)}?{urlencode(params)}")
        assert replay.status_code == 400
    # That login's identity: the foreign issuer's claims and groups.
    assert f'<code id="kube-issuer">{setup.peer.issuer}</code>' in page
    identity = page[page.index('id="kube-identity"') : page.index("</details>")]
    assert "alice@example.com" in identity
    assert '<code class="pc-group">admins</code>' in identity
    assert '<code class="pc-group">devs</code>' in identity
    assert page.count('class="pc-cluster"') == 1
    assert f'data-cluster="{cluster}"' in page
    assert 'id="other-issuers"' not in page

    plugin = yaml.safe_load(_pre(page, 'data-format="plugin-kubeconfig"'))
    args = plugin["users"][0]["user"]["exec"]["args"]
    secret_args = [f"--client-secret={SECRET}"] if cluster == "prod" else []
    assert args == [
        "portcullis",
        "get-token",
        f"--issuer={setup.peer.issuer}",
        f"--client-id={client_id}",
        *secret_args,
        f"--certificate-authority-data={setup.ca_data}",
    ]
    assert plugin["users"][0]["name"] == "alice@example.com"
    kubelogin = yaml.safe_load(_pre(page, 'data-format="kubeconfig"'))
    kubelogin_args = kubelogin["users"][0]["user"]["exec"]["args"]
    assert f"--oidc-issuer-url={setup.peer.issuer}" in kubelogin_args
    assert f"--oidc-client-id={client_id}" in kubelogin_args
    assert f"--certificate-authority-data={setup.ca_data}" in kubelogin_args
    assert OWN_CA not in page  # this issuer's CA belongs to its own clusters only

    # kubectl's legacy oidc provider with this login's tokens: the issuer's own tokens, for
    # this cluster's client, which kube-apiserver would verify through that issuer's JWKS.
    posix = _pre(page, 'data-shell="posix"')
    assert f"--auth-provider-arg=idp-issuer-url={setup.peer.issuer}" in posix
    assert f"--auth-provider-arg=client-id={client_id}" in posix
    assert f"--auth-provider-arg=idp-certificate-authority-data={setup.ca_data}" in posix
    assert ("client-secret=" in posix) == (cluster == "prod")
    id_token = re.search(r"id-token=([A-Za-z0-9_.-]+)", posix)
    assert id_token
    setup.issuer.remember(id_token.group(1))
    claims = _verified_by_peer(setup, id_token.group(1), client_id)
    assert claims["sub"] == "alice"
    assert claims["email"] == "alice@example.com"
    refresh = re.search(r"refresh-token=([A-Za-z0-9_.-]+)", posix)
    if cluster == "prod":  # offline_access asked for (the default scopes)
        assert refresh
        setup.issuer.remember(refresh.group(1))
    else:
        assert refresh is None

    flags = _pre(page, 'data-format="apiserver-flags"').splitlines()
    assert flags[:2] == [f"--oidc-issuer-url={setup.peer.issuer}", f"--oidc-client-id={client_id}"]
    assert "--oidc-signing-algs=RS256" in flags  # the alg of the token just verified
    assert any(f.startswith("--oidc-ca-file=") for f in flags)


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        # Re-signed by the provider's own key but with another nonce: an answer to some other
        # login (injected code) must not finish this one.
        ({"claims": {"nonce": "another-login"}}, "does not belong to this login"),
        ({"claims": {"aud": "cluster-lab"}}, "issued to another client"),
        ({"claims": {"iss": "https://evil.example.com"}}, "wrong issuer"),
        ({"claims": {"email": "root@example.com"}, "resign": False}, "invalid signature"),
        ({"claims": {}, "foreign_key": True}, "invalid signature"),
        ({"claims": {}, "foreign_key": True, "header": {"kid": "not-in-the-jwks"}}, "unknown key"),
        ({"claims": {}, "header": {"alg": "none"}}, "refused algorithm"),
    ],
)
def test_a_tampered_id_token_is_refused(
    setup: Setup, mutation: dict[str, Any], message: str
) -> None:
    browser = Browser(setup.issuer)
    with browser:
        auth_url = _start(setup, browser, "prod")
        params = browser_login(auth_url, setup.callback("prod"), "alice", verify=setup.peer.ca_cert)
        setup.issuer.remember(params["code"])
        setup.peer.mutate_next_token(**mutation)
        response = browser.get(f"{setup.callback('prod')}?{urlencode(params)}")
    assert response.status_code == 502, response.text[:2000]
    assert message in response.text
    assert "pc-cluster" not in response.text
    assert "id-token" not in response.text


def test_a_login_started_elsewhere_or_for_another_cluster_is_refused(setup: Setup) -> None:
    with Browser(setup.issuer) as browser:
        auth_url = _start(setup, browser, "lab")
        params = browser_login(auth_url, setup.callback("lab"), "alice", verify=setup.peer.ca_cert)
        setup.issuer.remember(params["code"])
        # The answer for lab delivered to prod's callback: prod's cookie is not sent there
        # (none was set), so the page refuses before any code is redeemed.
        crossed = browser.get(f"{setup.callback('prod')}?{urlencode(params)}")
        assert crossed.status_code == 400
        assert "not started in this browser" in crossed.text
        # A forged state in the right browser.
        forged = browser.get(
            f"{setup.callback('lab')}?{urlencode({**params, 'state': params['state'] + 'x'})}"
        )
        assert forged.status_code == 400
    with Browser(setup.issuer) as stranger:
        response = stranger.get(f"{setup.callback('lab')}?{urlencode(params)}")
        assert response.status_code == 400
        assert "not started in this browser" in response.text
        # A cookie with the right state but altered login state: refused as not started here
        # (a 400 for the browser's own mistake, not an upstream failure).
        altered = base64.urlsafe_b64encode(b"not json").decode().rstrip("=")
        stranger.http.cookies.set(
            "pc_kubeconfig_rp",
            f"{params['state']}.{altered}",
            domain="127.0.0.1",
            path="/dex/kubeconfig/cluster/lab",
        )
        response = stranger.get(f"{setup.callback('lab')}?{urlencode(params)}")
        assert response.status_code == 400, response.text[:1000]
        assert "not started in this browser" in response.text


def test_an_error_from_the_issuer_is_shown_without_its_description(setup: Setup) -> None:
    with Browser(setup.issuer) as browser:
        auth_url = _start(setup, browser, "prod")
        state = parse_qs(urlsplit(auth_url).query)["state"][0]
        query = urlencode(
            {"error": "access_denied", "error_description": "<b>x</b>", "state": state}
        )
        response = browser.get(f"{setup.callback('prod')}?{query}")
    assert response.status_code == 400
    assert "access_denied" in response.text
    assert "<b>x</b>" not in response.text


def test_an_issuer_that_never_answers_or_answers_too_much_is_given_up(setup: Setup) -> None:
    with Browser(setup.issuer) as browser:
        browser.http.timeout = httpx.Timeout(30.0)
        started = time.monotonic()
        silent = browser.get(setup.issuer.url("/kubeconfig/cluster/silent"))
        waited = time.monotonic() - started
        assert silent.status_code == 502
        assert "did not answer in time (discovery)" in silent.text
        assert 9.0 < waited < 20.0  # the 10 s read timeout, not the browser's patience
        huge = browser.get(setup.issuer.url("/kubeconfig/cluster/huge"))
        assert huge.status_code == 502
        assert "discovery response is too large" in huge.text


def test_an_issuer_whose_certificate_is_not_trusted_is_refused(setup: Setup) -> None:
    with Browser(setup.issuer) as browser:
        response = browser.get(setup.issuer.url("/kubeconfig/cluster/untrusted"))
        assert response.status_code == 502
        assert "TLS verification failed" in response.text
        assert (
            "set-cookie" not in response.headers
            or "pc_kubeconfig_rp=" not in response.headers["set-cookie"]
        )
        unknown = browser.get(setup.issuer.url("/kubeconfig/cluster/home"))
        assert unknown.status_code == 404
        assert browser.get(setup.issuer.url("/kubeconfig/cluster/nope/callback")).status_code == 404


def test_kubectl_runs_the_commands_and_refreshes_at_the_clusters_issuer(
    setup: Setup, serving_cert: ServingCert, tmp_path: Path
) -> None:
    """The legacy commands in the real kubectl: its oidc auth provider sends the foreign ID
    token, and refreshes it at the foreign issuer with the cluster's client secret and CA."""
    assert KUBECTL.exists(), f"{KUBECTL} is missing (the machine image provides kubectl)"
    with Browser(setup.issuer) as browser:
        auth_url = _start(setup, browser, "prod")
        params = browser_login(auth_url, setup.callback("prod"), "alice", verify=setup.peer.ca_cert)
        setup.issuer.remember(params["code"])
        # An ID token valid for a few seconds more: kubectl treats a token expiring within
        # 10 s as expired, so its first request refreshes at the cluster's issuer.
        setup.peer.mutate_next_token(claims={"exp": int(time.time()) + 8})
        response = browser.get(f"{setup.callback('prod')}?{urlencode(params)}")
    assert response.status_code == 200, response.text[:2000]
    posix = _pre(response.text, 'data-shell="posix"')
    first = re.search(r"id-token=([A-Za-z0-9_.-]+)", posix)
    assert first
    setup.issuer.remember(first.group(1))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "kubectl").symlink_to(KUBECTL)
    env = {
        "HOME": str(tmp_path),
        "KUBECONFIG": str(tmp_path / "kubeconfig"),
        "PATH": f"{tmp_path}/bin:/usr/bin:/bin",
    }

    def kubectl(*args: str) -> str:
        result = subprocess.run(
            [str(KUBECTL), *args], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    configured = subprocess.run(
        ["bash", "-euc", posix], env=env, capture_output=True, text=True, timeout=60
    )
    assert configured.returncode == 0, configured.stderr
    standin = ApiServerStandIn(
        serving_cert, setup.peer.issuer, "cluster-prod", issuer_ca=setup.peer.ca_cert
    )
    try:
        kubectl("config", "set-cluster", "prod", f"--server={standin.url}")
        kubectl("config", "set-cluster", "prod", f"--certificate-authority={serving_cert.ca}")
        review = json.loads(kubectl("auth", "whoami", "-o", "json"))
    finally:
        standin.close()
    assert review["status"]["userInfo"] == {
        "username": "oidc:alice@example.com",
        "groups": ["oidc:admins", "oidc:devs", "system:authenticated"],
    }
    assert standin.rejected == []
    refreshed = standin.seen[-1].token
    setup.issuer.remember(refreshed)
    assert refreshed != first.group(1)
    assert _verified_by_peer(setup, refreshed, "cluster-prod")["sub"] == "alice"
    stored = json.loads(kubectl("config", "view", "--raw", "-o", "json"))
    provider = stored["users"][0]["user"]["auth-provider"]["config"]
    assert provider["id-token"] == refreshed
    setup.issuer.remember(provider.get("refresh-token"))
    assert provider["client-secret"] == SECRET


# -- config ------------------------------------------------------------------------------------

BASE: dict[str, Any] = {
    "issuer": "https://issuer.example.com/dex",
    "storage": {"type": "memory"},
    "web": {"http": "127.0.0.1:5556"},
    "enablePasswordDB": True,
    "staticClients": [{"id": "kubernetes", "name": "K8s", "public": True}],
}


def _problems(cluster: dict[str, Any]) -> list[str]:
    page = {"enabled": True, "clusters": [{"name": "c", "server": "https://c:6443", **cluster}]}
    text = yaml.safe_dump({**BASE, "kubernetes": {"kubeconfigPage": page}})
    with pytest.raises(ConfigError) as info:
        parse_config(text, environ={})
    return info.value.problems


PATH = "kubernetes.kubeconfigPage.clusters[0]"


def test_foreign_issuer_config_errors_name_the_field(tmp_path: Path) -> None:
    real_ca = base64.b64encode(make_tls_files(tmp_path).ca_cert.read_bytes()).decode()
    assert _problems({"issuer": "https://dex.example.com"}) == [
        f"{PATH}: clientID: required with issuer (the client registered at that issuer; "
        "kubernetes.kubeconfigPage.clientID is a client of this issuer)"
    ]
    (problem,) = _problems({"issuer": "http://dex.example.com", "clientID": "k"})
    assert problem.startswith(f"{PATH}.issuer: must be an https URL")
    (problem,) = _problems({"issuer": "https://dex.example.com?x=1", "clientID": "k"})
    assert problem.startswith(f"{PATH}.issuer: must not have a query")
    (problem,) = _problems({"issuerCertificateAuthorityData": real_ca})
    assert problem.startswith(f"{PATH}: issuerCertificateAuthorityData: only with issuer")
    (problem,) = _problems({"scopes": ["openid"]})
    assert problem.startswith(f"{PATH}: scopes: only with issuer")
    (problem,) = _problems(
        {"issuer": "https://dex.example.com", "clientID": "k", "scopes": ["email"]}
    )
    assert problem.startswith(f"{PATH}.scopes: must include openid")
    # Base64 PEM armour around garbage: OpenSSL would refuse it at the first login.
    (problem,) = _problems(
        {
            "issuer": "https://dex.example.com",
            "clientID": "k",
            "issuerCertificateAuthorityData": OWN_CA,
        }
    )
    assert problem == (
        f"{PATH}.issuerCertificateAuthorityData: must be base64 of a PEM certificate "
        "(as in a kubeconfig)"
    )


def test_a_loopback_http_issuer_is_accepted_for_tests() -> None:
    page = {
        "enabled": True,
        "clusters": [
            {
                "name": "c",
                "server": "https://c:6443",
                "issuer": "http://127.0.0.1:5557/dex",
                "clientID": "k",
            }
        ],
    }
    config = parse_config(
        yaml.safe_dump({**BASE, "kubernetes": {"kubeconfigPage": page}}), environ={}
    )
    assert config.raw.kubernetes.kubeconfig_page.clusters[0].issuer == "http://127.0.0.1:5557/dex"


def test_apiserver_settings_name_the_clusters_own_issuer(tmp_path: Path) -> None:
    ca_pem = make_tls_files(tmp_path).ca_cert.read_text()
    clusters = [
        {
            "name": "legacy",
            "server": "https://legacy:6443",
            "issuer": "https://dex.example.com",
            "clientID": "legacy-cluster",
            "issuerCertificateAuthorityData": base64.b64encode(ca_pem.encode()).decode(),
        },
        {
            "name": "lab",
            "server": "https://lab:6443",
            "issuer": "http://127.0.0.1:5557/dex",
            "clientID": "lab",
        },
    ]
    page = {"enabled": True, "issuerCertificateAuthorityData": "", "clusters": clusters}
    config = parse_config(
        yaml.safe_dump({**BASE, "kubernetes": {"kubeconfigPage": page}}), environ={}
    )
    legacy = settings_for(config, "legacy")
    assert legacy.issuer == "https://dex.example.com"
    assert legacy.audiences == ("legacy-cluster",)
    assert legacy.certificate_authority == ca_pem
    assert legacy.signing_algorithm == "RS256"
    assert settings_for(config, "legacy", signing_algorithm="ES256").signing_algorithm == "ES256"
    with pytest.raises(ApiserverConfigError, match="clusters 'lab' issuer 'http://127"):
        settings_for(config, "lab")
