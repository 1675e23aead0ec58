"""The real kubectl (1.32) running the frozen kubectl-portcullis as its exec credential plugin
against an HTTPS API-server stand-in that verifies the ID token like kube-apiserver's OIDC
authenticator: first login through the issuer's forms (the browser flow, and separately the
device flow with the code typed into the issuer's /device page), the cached token reused by the
next kubectl, and a refreshed token after expiry."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol
from urllib.parse import urljoin

import pytest
import yaml
from kubectl_portcullis.jwt import decode_claims

from tests.support.apiserver_standin import ApiServerStandIn
from tests.support.issuer import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    Browser,
    Issuer,
    StartIssuer,
    form_action,
    free_port,
    hidden_fields,
)
from tests.support.kube import ServingCert, make_serving_cert
from tests.support.plugin import Plugin, PluginProcess, complete_login, token_requests

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KUBECTL = Path("/usr/lib/google-cloud-sdk/bin/kubectl.1.32")
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
#: What the plugin prints to stderr for the device flow (kubectl passes its stderr through).
DEVICE_PROMPT = re.compile(r"visit (http\S+) and enter the code: (\S+)")


@pytest.fixture(scope="module")
def serving_cert(tmp_path_factory: pytest.TempPathFactory) -> ServingCert:
    return make_serving_cert(tmp_path_factory.mktemp("apiserver-tls"))


class Kubectl:
    """kubectl with its own HOME and KUBECONFIG whose user runs the plugin binary."""

    def __init__(
        self,
        home: Path,
        binary: Path,
        issuer: Issuer,
        apiserver: ApiServerStandIn,
        extra_args: Sequence[str] = (),
    ):
        assert KUBECTL.exists(), f"{KUBECTL} is missing (the machine image provides kubectl)"
        self.home = home
        self.kubeconfig = home / ".kube" / "config"
        self.kubeconfig.parent.mkdir(parents=True)
        args = [
            "get-token",
            f"--issuer={issuer.issuer}",
            "--client-id=kubectl",
            f"--listen-address=127.0.0.1:{free_port()}",
            "--skip-open-browser",
            "--authentication-timeout-sec=30",
            *extra_args,
        ]
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "standin",
                    "cluster": {
                        "server": apiserver.url,
                        "certificate-authority": str(apiserver.cert.ca),
                    },
                }
            ],
            "users": [
                {
                    "name": "oidc",
                    "user": {
                        "exec": {
                            "apiVersion": "client.authentication.k8s.io/v1",
                            "command": str(binary),
                            "args": args,
                            "interactiveMode": "IfAvailable",
                        }
                    },
                }
            ],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "oidc"}}],
            "current-context": "standin",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.plugin = Plugin(home, command=[str(KUBECTL)])

    def whoami(self) -> PluginProcess:
        return self.plugin.start(
            ["auth", "whoami", "-o", "json"], env={"KUBECONFIG": str(self.kubeconfig)}
        )


class KubectlFor(Protocol):
    def __call__(
        self, issuer: Issuer, extra_args: Sequence[str] = ()
    ) -> tuple[Kubectl, ApiServerStandIn]: ...


@pytest.fixture
def kubectl_for(
    frozen_plugin: dict[str, Path], serving_cert: ServingCert, tmp_path: Path
) -> Iterator[KubectlFor]:
    standins: list[ApiServerStandIn] = []

    def make(issuer: Issuer, extra_args: Sequence[str] = ()) -> tuple[Kubectl, ApiServerStandIn]:
        standin = ApiServerStandIn(serving_cert, issuer.issuer, "kubectl")
        standins.append(standin)
        home = tmp_path / f"home{len(standins)}"
        home.mkdir()
        return Kubectl(home, frozen_plugin["binary"], issuer, standin, extra_args), standin

    yield make
    for standin in standins:
        standin.close()


def _user(stdout: str) -> dict[str, object]:
    review = json.loads(stdout)
    assert review["kind"] == "SelfSubjectReview"
    info: dict[str, object] = review["status"]["userInfo"]
    return info


def test_kubectl_logs_in_through_the_plugin_and_reuses_the_cached_token(
    kubectl_for: KubectlFor, issuer: Issuer
) -> None:
    kubectl, standin = kubectl_for(issuer)

    running = kubectl.whoami()
    assert complete_login(issuer, running.login_url()).status_code == 200
    code, stdout, stderr = running.finish()

    assert code == 0, stderr
    assert _user(stdout) == {
        "username": f"oidc:{ADMIN_EMAIL}",
        "groups": ["oidc:admins", "system:authenticated"],
    }
    assert standin.rejected == []
    first = standin.seen[-1].token
    issuer.remember(first)
    assert first not in stderr

    tokens_before = token_requests(issuer)
    code, stdout, stderr = kubectl.whoami().finish()
    assert code == 0, stderr
    assert "http" not in stderr  # no login URL: the cache answered
    assert standin.seen[-1].token == first
    assert token_requests(issuer) == tokens_before


@pytest.fixture(scope="module")
def device_issuer(module_issuers: StartIssuer) -> Issuer:
    grants = ["authorization_code", "refresh_token", "password", "client_credentials"]
    return module_issuers(
        {"oauth2": {"skipApprovalScreen": False, "grantTypes": [*grants, DEVICE_GRANT]}}
    )


def _enter_device_code(issuer: Issuer, verification_uri: str, user_code: str) -> str:
    """The person on another device: the issuer's /device page and form, the login and
    approval pages; returns what the last page says."""
    with Browser(issuer) as browser:
        page = browser.get(verification_uri)
        assert page.status_code == 200, page.text[:1000]
        fields = hidden_fields(page.text)
        issuer.remember(*fields.values())
        entered = browser.http.post(
            form_action(page.text, verification_uri), data={**fields, "user_code": user_code}
        )
        assert entered.status_code == 303, entered.text[:1000]
        steps = browser.login(urljoin(str(entered.url), entered.headers["location"]))
        assert steps.final is not None
        done = browser.get(urljoin(str(steps.final.url), steps.final.headers["location"]))
        assert done.status_code == 200, done.text[:1000]
        return done.text


def test_kubectl_logs_in_through_the_device_flow_and_reuses_the_cached_token(
    kubectl_for: KubectlFor, device_issuer: Issuer
) -> None:
    kubectl, standin = kubectl_for(device_issuer, ["--grant-type=device"])

    running = kubectl.whoami()
    # kubectl runs the plugin without a terminal and passes its stderr through: the prompt
    # reaches whoever runs kubectl, as on a headless machine over SSH.
    prompt = running.wait_for_line(DEVICE_PROMPT)
    verification_uri, user_code = prompt.group(1), prompt.group(2)
    assert verification_uri == device_issuer.url("/device")
    assert "Device logged in" in _enter_device_code(device_issuer, verification_uri, user_code)
    code, stdout, stderr = running.finish()

    assert code == 0, stderr
    assert _user(stdout) == {
        "username": f"oidc:{ADMIN_EMAIL}",
        "groups": ["oidc:admins", "system:authenticated"],
    }
    assert standin.rejected == []
    first = standin.seen[-1].token
    device_issuer.remember(first)
    assert first not in stderr
    assert decode_claims(first)["aud"] == "kubectl"

    tokens_before = token_requests(device_issuer)
    code, stdout, stderr = kubectl.whoami().finish()
    assert code == 0, stderr
    assert "enter the code" not in stderr  # no new device login: the cache answered
    assert standin.seen[-1].token == first
    assert token_requests(device_issuer) == tokens_before
    assert _user(stdout)["username"] == f"oidc:{ADMIN_EMAIL}"


def test_kubectl_gets_a_refreshed_token_after_expiry(
    kubectl_for: KubectlFor, short_issuer: Issuer
) -> None:
    kubectl, standin = kubectl_for(short_issuer)
    running = kubectl.whoami()
    assert complete_login(short_issuer, running.login_url()).status_code == 200
    code, _, stderr = running.finish()
    assert code == 0, stderr
    first = standin.seen[-1].token
    short_issuer.remember(first)
    time.sleep(max(0.0, decode_claims(first)["exp"] - time.time()) + 1.0)

    code, stdout, stderr = kubectl.whoami().finish()

    assert code == 0, stderr
    assert "http" not in stderr
    second = standin.seen[-1].token
    short_issuer.remember(second)
    assert second != first
    assert decode_claims(second)["exp"] > decode_claims(first)["exp"]
    assert _user(stdout)["username"] == f"oidc:{ADMIN_EMAIL}"
    assert standin.rejected == []


def _password_token(issuer: Issuer) -> str:
    """An ID token for `kubectl` minted without a browser: the confidential example-app, which
    `kubectl` does not trust, cannot mint for its audience, so the stand-in below is asked for
    example-app's audience instead (the password grant is for confidential clients only)."""
    response = issuer.token(
        {
            "grant_type": "password",
            "username": ADMIN_EMAIL,
            "password": ADMIN_PASSWORD,
            "scope": "openid email groups",
        },
        auth=issuer.app_auth(),
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["id_token"]
    return token


def test_stand_in_rejects_foreign_and_tampered_tokens(
    serving_cert: ServingCert, issuer: Issuer, short_issuer: Issuer
) -> None:
    # The tests above prove real verification only if the stand-in can say no.
    standin = ApiServerStandIn(serving_cert, issuer.issuer, "example-app")
    try:
        good = _password_token(issuer)
        assert standin.authenticate(f"Bearer {good}") is not None
        header, _, signature = good.split(".")
        claims = decode_claims(good)
        forged = (
            base64.urlsafe_b64encode(json.dumps({**claims, "email": "root@example.com"}).encode())
            .decode()
            .rstrip("=")
        )
        assert standin.authenticate(f"Bearer {header}.{forged}.{signature}") is None
        assert standin.authenticate(f"Bearer {_password_token(short_issuer)}") is None
        assert len(standin.rejected) == 2
    finally:
        standin.close()


def test_kubectl_finds_the_binary_as_the_portcullis_plugin(
    frozen_plugin: dict[str, Path], tmp_path: Path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl-portcullis").symlink_to(frozen_plugin["binary"])
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}

    listed = subprocess.run(
        [str(KUBECTL), "plugin", "list"], env=env, capture_output=True, text=True, check=False
    )
    assert str(bin_dir / "kubectl-portcullis") in listed.stdout, listed.stderr
    help_text = subprocess.run(
        [str(KUBECTL), "portcullis", "get-token", "--help"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--oidc-issuer-url" in help_text
    assert "--grant-type" in help_text
