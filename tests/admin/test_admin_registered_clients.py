"""Dynamically registered clients (RFC 7591) are storage clients: the admin gRPC API lists them
and deletes them, and a deleted one can no longer log in (issue 16)."""

from __future__ import annotations

import httpx
from portcullis.admin import api_pb2 as pb

from tests.support.admin import stub
from tests.support.issuer import StartIssuer, free_port

LOOPBACK = "http://127.0.0.1:33419/callback"


def test_registered_client_is_listed_and_deleted_through_the_admin_api(
    start_issuer: StartIssuer,
) -> None:
    issuer = start_issuer(
        {
            "grpc": {"addr": f"127.0.0.1:{free_port()}"},
            "registration": {"enabled": True},
        }
    )
    api = stub(issuer.config["grpc"]["addr"])
    r = httpx.post(
        issuer.url("/register"),
        json={"redirect_uris": [LOOPBACK], "client_name": "An MCP client"},
    )
    assert r.status_code == 201, r.text
    client_id = r.json()["client_id"]
    issuer.remember(r.json()["registration_access_token"])
    listed = {c.id: c for c in api.ListClients(pb.ListClientReq()).clients}
    assert client_id in listed
    assert listed[client_id].public
    assert list(listed[client_id].redirect_uris) == [LOOPBACK]
    assert listed[client_id].name == "An MCP client"

    assert not api.DeleteClient(pb.DeleteClientReq(id=client_id)).not_found
    assert client_id not in {c.id for c in api.ListClients(pb.ListClientReq()).clients}
    r = httpx.get(
        issuer.url("/auth"),
        params={"client_id": client_id, "redirect_uri": LOOPBACK, "response_type": "code"},
    )
    assert r.status_code == 400  # unknown client: an error page, no redirect
