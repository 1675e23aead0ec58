"""Two real `portcullis serve` processes sharing one PostgreSQL database, as the Helm chart's HA
mode runs them behind one Service: whichever replica a request lands on, the outcome is the same.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.issuer import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    Issuer,
    IssuerExitError,
    Secrets,
    base_config,
    finish_issuer,
    free_port,
)
from tests.support.postgres import PostgresCluster

pytestmark = pytest.mark.integration


def _replica(workdir: Path, issuer_url: str, creds: Secrets, storage: dict[str, Any]) -> Issuer:
    workdir.mkdir(parents=True)
    web_port, telemetry_port = free_port(), free_port()
    config = base_config(issuer_url, web_port, telemetry_port, workdir / "unused.db", creds)
    config["issuer"] = issuer_url
    config["storage"] = {"type": "postgres", "config": storage}
    return Issuer(workdir, config, creds, web_port, telemetry_port)


@pytest.fixture(scope="module")
def replicas(
    postgres_cluster: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Issuer]]:
    """Two replicas started together on a new, empty database (so they also race to migrate it
    and to create the first signing key), both ready (storage and signing key checked). Same
    issuer URL and client secrets, as a chart's Deployment gives them."""
    tmp_path = tmp_path_factory.mktemp("replicas")
    database = postgres_cluster.create_database(template=None)
    storage = postgres_cluster.config(database)
    creds = Secrets()
    issuer_url = f"http://127.0.0.1:{free_port()}/dex"  # the load balancer's address
    pair = [_replica(tmp_path / f"replica{i}", issuer_url, creds, storage) for i in range(2)]
    for replica in pair:
        replica.remember(postgres_cluster.password)
    errors: list[BaseException] = []

    def start(replica: Issuer) -> None:
        try:
            replica.start(timeout=60)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(r,)) for r in pair]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    try:
        assert not errors, errors
        yield pair
    finally:
        for replica in pair:
            finish_issuer(replica)
        postgres_cluster.drop_database(database)


def _at(replica: Issuer, path: str) -> str:
    """The replica's own address for an issuer path (as a load balancer would route)."""
    return f"{replica.origin}/dex{path}"


def _token(replica: Issuer, data: dict[str, str]) -> httpx.Response:
    replica.remember_exchange(data, None)
    response = httpx.post(_at(replica, "/token"), data=data, auth=replica.app_auth())
    replica.remember_exchange({}, response)
    return response


def _kid(jwt: str) -> str:
    header = jwt.split(".")[0]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))
    )
    return str(decoded["kid"])


def test_replicas_share_signing_keys_and_refresh_tokens(replicas: list[Issuer]) -> None:
    a, b = replicas
    jwks_a = httpx.get(_at(a, "/keys")).json()
    jwks_b = httpx.get(_at(b, "/keys")).json()
    assert jwks_a == jwks_b
    assert len(jwks_a["keys"]) >= 1

    login = _token(
        a,
        {
            "grant_type": "password",
            "username": ADMIN_EMAIL,
            "password": ADMIN_PASSWORD,
            "scope": "openid email offline_access",
        },
    )
    assert login.status_code == 200, login.text
    minted_by_a = login.json()

    # A refresh token minted by replica A is redeemed at replica B ...
    refreshed = _token(
        b, {"grant_type": "refresh_token", "refresh_token": minted_by_a["refresh_token"]}
    )
    assert refreshed.status_code == 200, refreshed.text
    minted_by_b = refreshed.json()
    assert minted_by_b["refresh_token"] != minted_by_a["refresh_token"]
    # ... B signs with the shared key, which A publishes ...
    assert _kid(minted_by_b["id_token"]) in {k["kid"] for k in jwks_a["keys"]}
    # ... and B's rotated token works back at A.
    again = _token(
        a, {"grant_type": "refresh_token", "refresh_token": minted_by_b["refresh_token"]}
    )
    assert again.status_code == 200, again.text


def test_revocation_at_one_replica_holds_at_the_other(replicas: list[Issuer]) -> None:
    a, b = replicas
    login = _token(
        b,
        {
            "grant_type": "password",
            "username": ADMIN_EMAIL,
            "password": ADMIN_PASSWORD,
            "scope": "openid offline_access",
        },
    )
    assert login.status_code == 200, login.text
    refresh_token = login.json()["refresh_token"]
    a.remember(refresh_token)
    revoked = httpx.post(
        _at(a, "/token/revoke"),
        data={"token": refresh_token, "token_type_hint": "refresh_token"},
        auth=a.app_auth(),
    )
    assert revoked.status_code == 200, revoked.text
    refused = _token(b, {"grant_type": "refresh_token", "refresh_token": refresh_token})
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_grant"


def test_serve_with_a_wrong_database_password_fails_clearly(
    postgres_database: dict[str, Any], tmp_path: Path
) -> None:
    wrong = "wrong-" + Secrets().app
    replica = _replica(
        tmp_path / "replica",
        "http://127.0.0.1:5556/dex",
        Secrets(),
        {**postgres_database, "password": wrong},
    )
    with pytest.raises(IssuerExitError) as caught:
        replica.start(timeout=30)
    logs = replica.logs()
    assert replica.proc is not None
    assert replica.proc.returncode != 0
    assert "storage.config.password" in logs
    assert "password authentication failed" in logs
    assert wrong not in logs
    assert wrong not in str(caught.value)
