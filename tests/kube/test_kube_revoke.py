"""`portcullis revoke` against the storage of a running `portcullis serve`: after --user,
--group or --client the TokenReview webhook refuses the subject's still-valid tokens and the
refresh grant fails, while everyone else is unaffected and a new sign-in works; after --all no
token signed before verifies against the served /keys."""

from __future__ import annotations

import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from portcullis.cli import main

from tests.support.admin import jwt_claims
from tests.support.issuer import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    DEV_EMAIL,
    DEV_PASSWORD,
    Issuer,
    StartIssuer,
    free_port,
)
from tests.support.kube import ServingCert

APP = ("example-app", "example-app-secret-0123456789")
OTHER = ("other-app", "other-app-secret-0123456789")


def _patch(port: int, cert: ServingCert) -> dict[str, Any]:
    return {
        "kubernetes": {
            "tokenReview": {
                "enabled": True,
                "addr": f"127.0.0.1:{port}",
                "tlsCert": str(cert.cert),
                "tlsKey": str(cert.key),
                "audiences": [APP[0], OTHER[0]],
            }
        },
        "staticClients": [
            {
                "id": client,
                "name": client,
                "secret": secret,
                "redirectURIs": ["http://127.0.0.1:5555/callback"],
                "grantTypes": ["authorization_code", "refresh_token", "password"],
            }
            for client, secret in (APP, OTHER)
        ],
    }


class Cluster:
    """The issuer and its webhook, as kube-apiserver and kubectl use them."""

    def __init__(self, issuer: Issuer, port: int, cert: ServingCert) -> None:
        self.issuer = issuer
        self.url = f"https://127.0.0.1:{port}/tokenreview"
        self.http = httpx.Client(
            verify=ssl.create_default_context(cafile=str(cert.ca)), timeout=10.0
        )

    def authenticated(self, token: str) -> bool:
        self.issuer.remember(token)
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        }
        response = self.http.post(self.url, json=body)
        assert response.status_code == 200, response.text
        return bool(response.json()["status"]["authenticated"])

    def sign_in(
        self, email: str = DEV_EMAIL, password: str = DEV_PASSWORD, auth: tuple[str, str] = APP
    ) -> dict[str, Any]:
        response = self.issuer.token(
            {
                "grant_type": "password",
                "username": email,
                "password": password,
                "scope": "openid email groups offline_access",
            },
            auth=auth,
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def refresh(self, tokens: dict[str, Any], auth: tuple[str, str] = APP) -> httpx.Response:
        return self.issuer.token(
            {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}, auth=auth
        )

    def revoke(self, *args: str) -> int:
        return main(["revoke", str(self.issuer.config_path), *args])


@pytest.fixture
def cluster(start_issuer: StartIssuer, serving_cert: ServingCert) -> Cluster:
    port = free_port()
    return Cluster(start_issuer(_patch(port, serving_cert)), port, serving_cert)


def _next_second() -> None:
    # Tokens carry whole-second iat and a token of the revocation's second is refused too.
    time.sleep(1.1 - time.time() % 1)


def test_revoke_user_refuses_its_valid_tokens_and_ends_its_refresh_tokens(
    cluster: Cluster,
) -> None:
    dev, admin = cluster.sign_in(), cluster.sign_in(ADMIN_EMAIL, ADMIN_PASSWORD)
    assert cluster.authenticated(dev["id_token"])
    sub = jwt_claims(dev["id_token"])["sub"]
    assert cluster.revoke("--user", sub) == 0
    assert not cluster.authenticated(dev["id_token"])  # not expired: refused all the same
    refreshed = cluster.refresh(dev)
    assert refreshed.status_code == 400
    assert refreshed.json()["error"] == "invalid_grant"
    userinfo = httpx.get(
        cluster.issuer.url("/userinfo"),
        headers={"Authorization": f"Bearer {dev['access_token']}"},
    )
    assert userinfo.status_code == 401
    # Nobody else is touched, and the user may sign in again.
    assert cluster.authenticated(admin["id_token"])
    assert cluster.refresh(admin).status_code == 200
    _next_second()
    again = cluster.sign_in()
    assert cluster.authenticated(again["id_token"])
    assert cluster.refresh(again).status_code == 200


def test_revoke_group_and_client(cluster: Cluster) -> None:
    dev, admin = cluster.sign_in(), cluster.sign_in(ADMIN_EMAIL, ADMIN_PASSWORD)
    other = cluster.sign_in(ADMIN_EMAIL, ADMIN_PASSWORD, auth=OTHER)
    assert cluster.revoke("--group", "developers") == 0
    assert not cluster.authenticated(dev["id_token"])
    assert cluster.refresh(dev).status_code == 400
    assert cluster.authenticated(admin["id_token"])
    assert cluster.authenticated(other["id_token"])
    assert cluster.revoke("--client", OTHER[0]) == 0
    assert not cluster.authenticated(other["id_token"])
    assert cluster.refresh(other, auth=OTHER).status_code == 400
    assert cluster.authenticated(admin["id_token"])
    assert cluster.refresh(admin).status_code == 200


def test_revoke_all_leaves_no_key_for_earlier_tokens(cluster: Cluster) -> None:
    before = cluster.sign_in(ADMIN_EMAIL, ADMIN_PASSWORD)
    old = KeySet.import_key_set(cluster.issuer.jwks())
    jwt.decode(before["id_token"], old)  # verifies today
    assert cluster.revoke("--all") == 0
    deadline = time.monotonic() + 30
    while True:
        served = cluster.issuer.jwks()
        try:
            jwt.decode(before["id_token"], KeySet.import_key_set(served))
        except (JoseError, ValueError):
            break  # what kube-apiserver sees at its next JWKS refresh
        assert time.monotonic() < deadline, f"/keys still verifies the old token: {served}"
        time.sleep(0.5)
    assert len(served["keys"]) == 1
    assert not cluster.authenticated(before["id_token"])
    after = cluster.sign_in(ADMIN_EMAIL, ADMIN_PASSWORD)
    jwt.decode(after["id_token"], KeySet.import_key_set(served))
    assert cluster.authenticated(after["id_token"])


def test_revoke_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "issuer": "http://127.0.0.1:5556/dex",
                "storage": {"type": "sqlite3", "config": {"file": str(tmp_path / "db")}},
                "web": {"http": "127.0.0.1:5556"},
                "enablePasswordDB": True,
            }
        )
    )
    assert main(["revoke", str(config), "--user", "not-a-subject"]) == 2
    assert "--user 'not-a-subject': not a subject this issuer issued" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["revoke", str(config), "--user", "x", "--all"])
    capsys.readouterr()
    document = yaml.safe_load(config.read_text())
    document["storage"] = {"type": "memory"}
    config.write_text(yaml.safe_dump(document))
    assert main(["revoke", str(config), "--all"]) == 2
    assert "storage is memory" in capsys.readouterr().err
