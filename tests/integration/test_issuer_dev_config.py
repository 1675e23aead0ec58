"""The acceptance path against the shipped `make run` config (examples/config-dev.yaml): only
the ports and the sqlite file are moved so the test is xdist-safe; clients, the demo user and its
bcrypt hash are used exactly as shipped."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from authlib.integrations.httpx_client import OAuth2Client  # type: ignore[import-untyped]

from tests.support.issuer import (
    ADMIN_EMAIL,
    REPO_ROOT,
    Browser,
    Issuer,
    Secrets,
    finish_issuer,
    free_port,
)
from tests.support.oidc_checks import authorization_url, dex_subject, new_verifier, verify_id_token

pytestmark = pytest.mark.integration

DEV_CONFIG = REPO_ROOT / "examples" / "config-dev.yaml"


@pytest.fixture(scope="module")
def dev_issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Issuer]:
    workdir = tmp_path_factory.mktemp("devconfig")
    config: dict[str, Any] = yaml.safe_load(DEV_CONFIG.read_text())
    web_port, telemetry_port = free_port(), free_port()
    config["issuer"] = f"http://127.0.0.1:{web_port}/dex"
    config["web"]["http"] = f"127.0.0.1:{web_port}"
    config["telemetry"]["http"] = f"127.0.0.1:{telemetry_port}"
    config["storage"]["config"]["file"] = str(workdir / "portcullis.db")
    app_secret = next(c["secret"] for c in config["staticClients"] if c["id"] == "example-app")
    issuer = Issuer(workdir, config, Secrets(app=app_secret), web_port, telemetry_port)
    try:
        yield issuer.start()
    finally:
        finish_issuer(issuer)


def _user(config: dict[str, Any]) -> dict[str, Any]:
    user: dict[str, Any] = next(p for p in config["staticPasswords"] if p["email"] == ADMIN_EMAIL)
    return user


def test_independent_client_completes_the_acceptance_flow(dev_issuer: Issuer) -> None:
    redirect_uri = next(
        c["redirectURIs"][0] for c in dev_issuer.config["staticClients"] if c["id"] == "example-app"
    )
    client = OAuth2Client(
        client_id="example-app",
        client_secret=dev_issuer.creds.app,
        scope="openid email profile groups offline_access",
        redirect_uri=redirect_uri,
        code_challenge_method="S256",
        timeout=15.0,
    )
    verifier, nonce = new_verifier(), secrets.token_urlsafe(8)
    with Browser(dev_issuer) as browser:
        redirect = browser.authorize_code(
            authorization_url(dev_issuer, client, verifier, nonce), password="password"
        )
    token = client.fetch_token(
        dev_issuer.url("/token"), authorization_response=redirect, code_verifier=verifier
    )
    dev_issuer.remember(token["access_token"], token["refresh_token"], token["id_token"])
    claims = verify_id_token(
        dev_issuer,
        token["id_token"],
        client_id="example-app",
        nonce=nonce,
        access_token=token["access_token"],
    )
    user = _user(dev_issuer.config)
    assert claims["sub"] == dex_subject(user["userID"], "local")
    assert claims["groups"] == user["groups"]
    info = client.get(dev_issuer.url("/userinfo"))
    assert info.status_code == 200
    assert info.json()["email"] == ADMIN_EMAIL
    refreshed = client.refresh_token(dev_issuer.url("/token"), refresh_token=token["refresh_token"])
    dev_issuer.remember(refreshed["refresh_token"], refreshed["access_token"])
    revoked = client.revoke_token(
        dev_issuer.url("/token/revoke"),
        token=refreshed["refresh_token"],
        token_type_hint="refresh_token",
    )
    assert revoked.status_code == 200
    dead = dev_issuer.token(
        {"grant_type": "refresh_token", "refresh_token": refreshed["refresh_token"]},
        auth=dev_issuer.app_auth(),
    )
    assert dead.json()["error"] == "invalid_grant"
    client.close()


def test_dev_config_discovery_and_kubectl_loopback(dev_issuer: Issuer) -> None:
    document = dev_issuer.discovery()
    assert document["issuer"] == dev_issuer.issuer
    assert httpx.get(document["jwks_uri"]).json()["keys"]
    # kubectl is public: PKCE is mandatory, loopback ports are flexible.
    with Browser(dev_issuer) as browser:
        response = browser.open_authorize(
            {
                "client_id": "kubectl",
                "redirect_uri": "http://127.0.0.1:39999/",
                "response_type": "code",
                "scope": "openid",
                "state": "s",
            }
        )
    assert response.status_code in (302, 303)
    assert response.headers["location"].startswith("http://127.0.0.1:39999/?")
    assert "error=invalid_request" in response.headers["location"]


def test_dev_config_names_the_documented_issuer() -> None:
    # make run's acceptance: curl http://127.0.0.1:5556/dex/.well-known/openid-configuration.
    shipped = yaml.safe_load(Path(DEV_CONFIG).read_text())
    assert shipped["issuer"] == "http://127.0.0.1:5556/dex"
    assert shipped["web"]["http"] == "127.0.0.1:5556"
    assert shipped["telemetry"]["http"] == "127.0.0.1:5558"
    assert shipped["storage"]["type"] == "sqlite3"


def test_the_demo_config_offers_the_device_flow_to_kubectl(dev_issuer: Issuer) -> None:
    """DESIGN.md's interface: discovery advertises the device endpoint, and the public client
    kubectl can start a device login at once."""
    document = dev_issuer.discovery()
    assert document["device_authorization_endpoint"] == dev_issuer.url("/device/code")
    started = httpx.post(
        document["device_authorization_endpoint"],
        data={"client_id": "kubectl", "scope": "openid groups"},
    )
    assert started.status_code == 200, started.text
    dev_issuer.remember(started.json()["device_code"])
    pending = dev_issuer.token(
        {
            "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
            "device_code": started.json()["device_code"],
            "client_id": "kubectl",
        }
    )
    assert pending.json()["error"] == "authorization_pending"
    assert httpx.get(started.json()["verification_uri_complete"]).status_code == 200
