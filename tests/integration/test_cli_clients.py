"""`portcullis clients list|delete`: the stored clients (here one registered through RFC 7591)
seen and removed from the command line, with the server running on the same storage."""

from __future__ import annotations

import json
import subprocess

import httpx

from tests.support.issuer import PORTCULLIS, StartIssuer

LOOPBACK = "http://127.0.0.1:33420/callback"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PORTCULLIS), "clients", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_clients_list_and_delete_a_registered_client(start_issuer: StartIssuer) -> None:
    issuer = start_issuer({"registration": {"enabled": True}})
    r = httpx.post(issuer.url("/register"), json={"redirect_uris": [LOOPBACK]})
    assert r.status_code == 201, r.text
    client_id = r.json()["client_id"]
    token = r.json()["registration_access_token"]
    issuer.remember(token)
    config = str(issuer.config_path)

    listed = _cli("list", "--json", config)
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["id"] == client_id
    assert row["registered"] is True
    assert row["public"] is True
    assert token not in listed.stdout  # only its hash is stored, and not printed

    deleted = _cli("delete", config, client_id)
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(_cli("list", "--json", config).stdout) == []
    again = _cli("delete", config, client_id)
    assert again.returncode == 2
    assert client_id in again.stderr
    r = httpx.get(
        issuer.url("/auth"),
        params={"client_id": client_id, "redirect_uri": LOOPBACK, "response_type": "code"},
    )
    assert r.status_code == 400
