"""kubectl-portcullis against a real `portcullis serve`: the browser login (authorization code +
PKCE on a loopback port, completed through the issuer's HTML forms), the token cache, refresh,
concurrency, logout with revocation, the password grant and the ExecCredential shapes."""

from __future__ import annotations

import json
import re
import shlex
import stat
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import yaml
from kubectl_portcullis.jwt import decode_claims

from tests.support.issuer import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    ADMIN_USER_ID,
    Browser,
    Issuer,
    StartIssuer,
    free_port,
)
from tests.support.plugin import (
    Plugin,
    PluginProcess,
    all_requests,
    complete_login,
    exec_credential,
    token_requests,
)

pytestmark = pytest.mark.integration

KUBECTL = Path("/usr/lib/google-cloud-sdk/bin/kubectl.1.32")
V1 = "client.authentication.k8s.io/v1"
V1BETA1 = "client.authentication.k8s.io/v1beta1"


def _args(issuer: Issuer, *extra: str, port: int | None = None) -> list[str]:
    return [
        "get-token",
        f"--issuer={issuer.issuer}",
        "--client-id=kubectl",
        f"--listen-address=127.0.0.1:{port or free_port()}",
        "--skip-open-browser",
        "--authentication-timeout-sec=20",
        *extra,
    ]


def _browser_login(issuer: Issuer, running: PluginProcess) -> dict[str, object]:
    url = running.login_url()
    assert url.startswith(issuer.url("/auth?")), url
    landing = complete_login(issuer, url)
    assert landing.status_code == 200, landing.text
    assert "You can close this window" in landing.text
    code, stdout, stderr = running.finish()
    assert code == 0, stderr
    credential = exec_credential(stdout)
    token = credential["status"]["token"]
    issuer.remember(token)
    assert token not in stderr
    return credential


def _cached_refresh_token(plugin: Plugin) -> str:
    (entry,) = plugin.cache_dir.glob("*.json")
    document = json.loads(entry.read_text())
    token: str = document["refresh_token"]
    return token


def test_browser_login_prints_an_exec_credential_with_the_id_token(
    issuer: Issuer, plugin: Plugin
) -> None:
    running = plugin.start(_args(issuer))
    credential = _browser_login(issuer, running)

    assert credential["apiVersion"] == V1
    assert credential["kind"] == "ExecCredential"
    status = credential["status"]
    claims = decode_claims(status["token"])
    assert claims["iss"] == issuer.issuer
    assert claims["aud"] == "kubectl"
    assert claims["sub"]
    assert claims["email"] == ADMIN_EMAIL
    assert claims["groups"] == ["admins"]
    expected = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(claims["exp"]))
    assert status["expirationTimestamp"] == expected
    # PKCE was used: the URL the person opened carried an S256 challenge.
    assert "code_challenge_method=S256" in "\n".join(running.stderr_lines)


def test_cached_token_is_reused_without_any_request_to_the_issuer(
    issuer: Issuer, plugin: Plugin
) -> None:
    first = _browser_login(issuer, plugin.start(_args(issuer)))
    before = all_requests(issuer)

    code, stdout, stderr = plugin.run(_args(issuer))

    assert code == 0, stderr
    assert exec_credential(stdout)["status"]["token"] == first["status"]["token"]
    assert all_requests(issuer) == before
    assert stderr == ""


def test_cache_directory_is_private_and_files_are_owner_only(
    issuer: Issuer, plugin: Plugin
) -> None:
    _browser_login(issuer, plugin.start(_args(issuer)))

    assert stat.S_IMODE(plugin.cache_dir.stat().st_mode) == 0o700
    files = sorted(plugin.cache_dir.iterdir())
    assert [p.suffix for p in files] == [".json", ".lock"]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # The file name is a hash: it reveals neither the issuer nor the client.
    assert files[0].stem.isalnum()
    assert len(files[0].stem) == 64


def test_different_scopes_get_a_separate_cache_entry(issuer: Issuer, plugin: Plugin) -> None:
    _browser_login(issuer, plugin.start(_args(issuer)))
    running = plugin.start(_args(issuer, "--scope=email"))
    credential = _browser_login(issuer, running)

    assert "groups" not in decode_claims(credential["status"]["token"])
    assert len(list(plugin.cache_dir.glob("*.json"))) == 2


def test_expired_id_token_is_refreshed_without_a_browser(
    short_issuer: Issuer, plugin: Plugin
) -> None:
    first = _browser_login(short_issuer, plugin.start(_args(short_issuer)))
    first_refresh = _cached_refresh_token(plugin)
    exp = decode_claims(first["status"]["token"])["exp"]
    time.sleep(max(0.0, exp - time.time()) + 1.0)
    tokens_before = token_requests(short_issuer)

    code, stdout, stderr = plugin.run(_args(short_issuer))

    assert code == 0, stderr
    assert "http" not in stderr  # no login URL: the refresh token did it
    second = exec_credential(stdout)["status"]["token"]
    short_issuer.remember(second, _cached_refresh_token(plugin))
    assert second != first["status"]["token"]
    assert decode_claims(second)["exp"] > exp
    assert decode_claims(second)["sub"] == decode_claims(first["status"]["token"])["sub"]
    assert token_requests(short_issuer) == tokens_before + 1
    # The issuer rotates refresh tokens; the cache holds the new one.
    assert _cached_refresh_token(plugin) != first_refresh


def test_failed_refresh_falls_back_to_a_new_login(short_issuer: Issuer, plugin: Plugin) -> None:
    first = _browser_login(short_issuer, plugin.start(_args(short_issuer)))
    refresh_token = _cached_refresh_token(plugin)
    revoked = httpx.post(
        short_issuer.url("/token/revoke"), data={"token": refresh_token, "client_id": "kubectl"}
    )
    assert revoked.status_code == 200
    exp = decode_claims(first["status"]["token"])["exp"]
    time.sleep(max(0.0, exp - time.time()) + 1.0)

    running = plugin.start(_args(short_issuer))
    running.wait_for_line(re.compile("could not be refreshed \\(invalid_grant\\)"))
    second = _browser_login(short_issuer, running)

    assert second["status"]["token"] != first["status"]["token"]
    short_issuer.remember(_cached_refresh_token(plugin))


def test_concurrent_invocations_share_one_login(issuer: Issuer, plugin: Plugin) -> None:
    port = free_port()
    before = token_requests(issuer)
    first = plugin.start(_args(issuer, port=port))
    second = plugin.start(_args(issuer, port=port))
    deadline = time.monotonic() + 30
    while not any(line.startswith("http") for r in (first, second) for line in r.stderr_lines):
        assert time.monotonic() < deadline, (first.stderr_lines, second.stderr_lines)
        time.sleep(0.1)
    time.sleep(1.5)  # the other one is running too, waiting on the cache lock
    url_lines = [
        line
        for running in (first, second)
        for line in list(running.stderr_lines)
        if line.startswith("http")
    ]
    assert len(url_lines) == 1, (first.stderr_lines, second.stderr_lines)
    landing = complete_login(issuer, url_lines[0])
    assert landing.status_code == 200

    results = [running.finish() for running in (first, second)]

    assert [code for code, _, _ in results] == [0, 0], results
    tokens = {exec_credential(stdout)["status"]["token"] for _, stdout, _ in results}
    assert len(tokens) == 1
    issuer.remember(*tokens)
    assert token_requests(issuer) == before + 1
    printed = sum(line.startswith("http") for r in (first, second) for line in r.stderr_lines)
    assert printed == 1


def test_logout_revokes_the_refresh_token_at_the_issuer(issuer: Issuer, plugin: Plugin) -> None:
    _browser_login(issuer, plugin.start(_args(issuer)))
    refresh_token = _cached_refresh_token(plugin)
    issuer.remember(refresh_token)

    code, stdout, stderr = plugin.run(
        ["logout", f"--issuer={issuer.issuer}", "--client-id=kubectl"]
    )

    assert code == 0, stderr
    assert "refresh token revoked" in stderr
    assert stdout == ""
    assert list(plugin.cache_dir.glob("*.json")) == []
    refused = httpx.post(
        issuer.url("/token"),
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": "kubectl",
        },
    )
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_grant"


def test_logout_without_a_cached_login_says_so(issuer: Issuer, plugin: Plugin) -> None:
    code, _, stderr = plugin.run(["logout", f"--issuer={issuer.issuer}", "--client-id=kubectl"])
    assert code == 0
    assert "No cached login" in stderr


def test_v1beta1_is_answered_when_kubectl_asks_for_it(issuer: Issuer, plugin: Plugin) -> None:
    info = {"apiVersion": V1BETA1, "kind": "ExecCredential", "spec": {"interactive": False}}
    running = plugin.start(_args(issuer), env={"KUBERNETES_EXEC_INFO": json.dumps(info)})
    credential = _browser_login(issuer, running)
    assert credential["apiVersion"] == V1BETA1
    assert set(credential["status"]) == {"token", "expirationTimestamp"}


def test_v1alpha1_is_refused_with_a_clear_error(issuer: Issuer, plugin: Plugin) -> None:
    info = {"apiVersion": "client.authentication.k8s.io/v1alpha1", "kind": "ExecCredential"}
    code, stdout, stderr = plugin.run(_args(issuer), env={"KUBERNETES_EXEC_INFO": json.dumps(info)})
    assert code == 1
    assert stdout == ""
    assert "v1alpha1" in stderr
    assert "client.authentication.k8s.io/v1" in stderr


def test_kubelogin_flags_and_subcommand_work_unchanged(issuer: Issuer, plugin: Plugin) -> None:
    args = [
        "oidc-login",
        "get-token",
        f"--oidc-issuer-url={issuer.issuer}",
        "--oidc-client-id=kubectl",
        "--oidc-extra-scope=email,groups",
        "--oidc-extra-scope=profile",
        f"--listen-address=127.0.0.1:{free_port()}",
        "--oidc-pkce-method=S256",
        "--skip-open-browser",
        f"--token-cache-dir={plugin.home / 'oidc-cache'}",
        "-v1",
    ]
    credential = _browser_login(issuer, plugin.start(args))

    claims = decode_claims(credential["status"]["token"])
    assert claims["groups"] == ["admins"]
    assert len(list((plugin.home / "oidc-cache").glob("*.json"))) == 1
    assert not plugin.cache_dir.exists()


def test_kubelogin_flags_without_a_meaning_here_are_refused_by_name(
    issuer: Issuer, plugin: Plugin
) -> None:
    code, _, stderr = plugin.run(
        [*_args(issuer), "--token-cache-storage=keyring"],
    )
    assert code == 1
    assert "--token-cache-storage is not supported" in stderr


def _confidential(issuer: Issuer) -> list[str]:
    """The password grant is for confidential clients only (RFC 9700 §2.4): a CI job's client
    with its secret, never the public `kubectl` client."""
    client_id, secret = issuer.app_auth()
    issuer.remember(secret)
    return [f"--client-id={client_id}", f"--client-secret={secret}"]


def test_password_grant_where_the_issuer_allows_it(issuer: Issuer, plugin: Plugin) -> None:
    code, stdout, stderr = plugin.run(
        [
            *_args(issuer),
            *_confidential(issuer),
            f"--username={ADMIN_EMAIL}",
            f"--password={ADMIN_PASSWORD}",
        ]
    )
    assert code == 0, stderr
    token = exec_credential(stdout)["status"]["token"]
    issuer.remember(token)
    assert decode_claims(token)["email"] == ADMIN_EMAIL


def test_password_grant_is_refused_where_the_issuer_does_not_offer_it(
    module_issuers: StartIssuer, plugin: Plugin
) -> None:
    def without_password(config: dict[str, Any]) -> None:
        config["oauth2"]["grantTypes"] = ["authorization_code", "refresh_token"]
        config["staticClients"] = [
            {**c, "grantTypes": ["authorization_code", "refresh_token"]}
            for c in config["staticClients"]
            if c["id"] != "service-bot"
        ]

    no_password = module_issuers(None, without_password)
    code, stdout, stderr = plugin.run(
        [*_args(no_password), "--grant-type=password", "--username=a", "--password=b"]
    )
    assert code == 1
    assert stdout == ""
    assert "does not allow the password grant" in stderr


def test_device_grant_needs_a_device_endpoint_in_discovery(issuer: Issuer, plugin: Plugin) -> None:
    # The test config does not enable the device grant (tests/kubectl_plugin/
    # test_plugin_device_flow.py drives the device flow against node-oidc-provider).
    assert "device_authorization_endpoint" not in issuer.discovery()
    code, _, stderr = plugin.run([*_args(issuer), "--grant-type=device"])
    assert code == 1
    assert "no device_authorization_endpoint" in stderr


def test_wrong_password_in_the_password_grant_is_a_one_line_error(
    issuer: Issuer, plugin: Plugin
) -> None:
    code, stdout, stderr = plugin.run(
        [
            *_args(issuer),
            *_confidential(issuer),
            f"--username={ADMIN_EMAIL}",
            "--password=not-the-password",
        ]
    )
    assert code == 1
    assert stdout == ""
    assert stderr.startswith("kubectl-portcullis: error: ")
    assert "invalid_grant" in stderr


def test_password_grant_for_the_public_client_is_the_issuers_one_line_refusal(
    issuer: Issuer, plugin: Plugin
) -> None:
    code, stdout, stderr = plugin.run(
        [*_args(issuer), f"--username={ADMIN_EMAIL}", f"--password={ADMIN_PASSWORD}"]
    )
    assert code == 1
    assert stdout == ""
    assert stderr.startswith("kubectl-portcullis: error: ")
    assert "unauthorized_client" in stderr
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_unreachable_issuer_and_wrong_issuer_are_clear_errors(
    issuer: Issuer, plugin: Plugin
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/dex"
    code, _, stderr = plugin.run(_args_for(dead))
    assert code == 1
    assert "cannot reach http://127.0.0.1:" in stderr

    code, _, stderr = plugin.run(_args_for(issuer.issuer + "/"))
    assert code == 1
    assert "names issuer" in stderr
    assert "trailing slash" in stderr

    code, _, stderr = plugin.run(["get-token", "--client-id=kubectl"])
    assert code == 1
    assert "--issuer (or --oidc-issuer-url) is required" in stderr


def _args_for(issuer_url: str) -> list[str]:
    return [
        "get-token",
        f"--issuer={issuer_url}",
        "--client-id=kubectl",
        "--skip-open-browser",
        "--authentication-timeout-sec=5",
    ]


def test_login_denied_in_the_browser_is_reported(issuer: Issuer, plugin: Plugin) -> None:
    running = plugin.start(_args(issuer))
    url = running.login_url()
    with Browser(issuer) as browser:
        steps = browser.login(url, approve=False)
    assert steps.final is not None
    landing = httpx.get(steps.final.headers["location"], timeout=10)
    assert landing.status_code == 400
    code, stdout, stderr = running.finish()
    assert code == 1
    assert stdout == ""
    assert "access_denied" in stderr


def test_setup_checks_discovery_logs_in_and_prints_the_commands(
    issuer: Issuer, plugin: Plugin
) -> None:
    port = free_port()
    running = plugin.start(
        [
            "setup",
            f"--issuer={issuer.issuer}",
            "--client-id=kubectl",
            f"--listen-address=127.0.0.1:{port}",
            "--skip-open-browser",
        ]
    )
    url = running.login_url()
    assert complete_login(issuer, url).status_code == 200
    code, stdout, stderr = running.finish()

    assert code == 0, stderr
    assert f"{issuer.issuer}/.well-known/openid-configuration is valid" in stdout
    assert f'"sub": "{decode_claims(_cached_id_token(plugin))["sub"]}"' in stdout
    assert _cached_id_token(plugin) not in stdout
    issuer.remember(_cached_id_token(plugin))
    assert (
        "kubectl config set-credentials oidc "
        "--exec-api-version=client.authentication.k8s.io/v1 "
        "--exec-command=kubectl-portcullis --exec-arg=get-token "
        f"--exec-arg=--issuer={issuer.issuer} --exec-arg=--client-id=kubectl "
        f"--exec-arg=--listen-address=127.0.0.1:{port} --exec-interactive-mode=IfAvailable"
    ) in stdout
    assert (
        f"kubectl create clusterrolebinding view-oidc-admin-example.com --clusterrole=view "
        f"--user=oidc:{ADMIN_EMAIL}"
    ) in stdout
    assert (
        "kubectl create clusterrolebinding view-oidc-admins --clusterrole=view --group=oidc:admins"
    ) in stdout
    assert ADMIN_USER_ID not in stderr

    # The printed command is exact: the real kubectl accepts it and writes the exec user.
    (line,) = [x for x in stdout.splitlines() if x.startswith("kubectl config set-credentials")]
    kubeconfig = plugin.home / "kubeconfig"
    subprocess.run(
        [str(KUBECTL), *shlex.split(line)[1:]],
        env={"KUBECONFIG": str(kubeconfig), "HOME": str(plugin.home), "PATH": "/usr/bin:/bin"},
        check=True,
        capture_output=True,
    )
    (user,) = yaml.safe_load(kubeconfig.read_text())["users"]
    assert user["name"] == "oidc"
    assert user["user"]["exec"]["command"] == "kubectl-portcullis"
    assert user["user"]["exec"]["apiVersion"] == "client.authentication.k8s.io/v1"
    assert user["user"]["exec"]["interactiveMode"] == "IfAvailable"
    assert user["user"]["exec"]["args"] == [
        "get-token",
        f"--issuer={issuer.issuer}",
        "--client-id=kubectl",
        f"--listen-address=127.0.0.1:{port}",
    ]


def _cached_id_token(plugin: Plugin) -> str:
    (entry,) = plugin.cache_dir.glob("*.json")
    token: str = json.loads(Path(entry).read_text())["id_token"]
    return token


def test_browser_is_opened_without_spoiling_the_credential_on_stdout(
    issuer: Issuer, plugin: Plugin, tmp_path: Path
) -> None:
    # A "browser" that chatters on stdout, as real ones do, and hands the URL to the test.
    url_file = tmp_path / "opened-url"
    browser = tmp_path / "browser.sh"
    browser.write_text(
        f'#!/bin/sh\necho "Opening in existing browser session."\nprintf %s "$1" > {url_file}\n'
    )
    browser.chmod(0o755)
    args = [a for a in _args(issuer) if a != "--skip-open-browser"]
    running = plugin.start(args, env={"BROWSER": f"{browser} %s"})
    running.wait_for_line(re.compile("^Opened the browser"))
    deadline = time.monotonic() + 20
    while not url_file.exists():
        assert time.monotonic() < deadline, running.stderr_lines
        time.sleep(0.05)

    assert complete_login(issuer, url_file.read_text()).status_code == 200
    code, stdout, stderr = running.finish()

    assert code == 0, stderr
    issuer.remember(exec_credential(stdout)["status"]["token"])  # stdout is exactly the JSON


def test_verbose_mode_explains_decisions_without_printing_tokens(
    issuer: Issuer, plugin: Plugin
) -> None:
    credential = _browser_login(issuer, plugin.start([*_args(issuer), "-v", "1"]))
    code, _, stderr = plugin.run([*_args(issuer), "--v=2"])

    assert code == 0, stderr
    assert "cached ID token valid until" in stderr
    token = credential["status"]["token"]
    assert token not in stderr
    assert _cached_refresh_token(plugin) not in stderr


def test_concurrent_invocations_share_one_refresh(short_issuer: Issuer, plugin: Plugin) -> None:
    first = _browser_login(short_issuer, plugin.start(_args(short_issuer)))
    exp = decode_claims(first["status"]["token"])["exp"]
    time.sleep(max(0.0, exp - time.time()) + 1.0)
    before = token_requests(short_issuer)

    runs = [plugin.start(_args(short_issuer)) for _ in range(3)]
    results = [running.finish() for running in runs]

    assert [code for code, _, _ in results] == [0, 0, 0], results
    tokens = {exec_credential(stdout)["status"]["token"] for _, stdout, _ in results}
    assert len(tokens) == 1, "each process refreshed on its own"
    short_issuer.remember(*tokens, _cached_refresh_token(plugin))
    assert token_requests(short_issuer) == before + 1


def test_confidential_client_authenticates_with_its_secret(issuer: Issuer, plugin: Plugin) -> None:
    args = [
        "get-token",
        f"--issuer={issuer.issuer}",
        "--client-id=example-app",
        f"--client-secret={issuer.creds.app}",
        f"--username={ADMIN_EMAIL}",
        f"--password={ADMIN_PASSWORD}",
    ]
    code, stdout, stderr = plugin.run(args)
    assert code == 0, stderr
    token = exec_credential(stdout)["status"]["token"]
    issuer.remember(token, _cached_refresh_token(plugin))
    assert decode_claims(token)["aud"] == "example-app"
    assert issuer.creds.app not in stderr

    wrong = [a if not a.startswith("--client-secret=") else "--client-secret=wrong" for a in args]
    code, _, stderr = plugin.run([*wrong, "--scope=email"])
    assert code == 1
    assert "invalid_client" in stderr


def test_listener_ignores_foreign_state_and_refuses_another_issuer(
    issuer: Issuer, plugin: Plugin
) -> None:
    running = plugin.start(_args(issuer))
    url = running.login_url()
    with Browser(issuer) as browser:
        location = browser.authorize_code(url)
    parts = urlsplit(location)
    query = dict(parse_qsl(parts.query))
    listener = f"{parts.scheme}://{parts.netloc}/"

    # A forged callback (another state) and a stray request do not end the login...
    forged = httpx.get(listener, params={**query, "state": "forged"}, timeout=10)
    assert forged.status_code == 404
    assert httpx.get(listener + "favicon.ico", timeout=10).status_code == 404
    # ...but the real redirect, rewritten to name another issuer (an RFC 9207 mix-up), does.
    mixed_up = httpx.get(listener, params={**query, "iss": "https://evil.example"}, timeout=10)
    assert mixed_up.status_code == 200
    code, stdout, stderr = running.finish()

    assert code == 1
    assert stdout == ""
    assert "comes from issuer 'https://evil.example'" in stderr
