"""The TypeScript MCP SDK against a real Portcullis (issue 16): its OAuth client discovers the
authorization server from the MCP server's protected-resource metadata and RFC 8414, registers
itself (RFC 7591), logs in with code + PKCE and an RFC 8707 ``resource`` (the login driven here
through the HTML pages), calls a tool on an MCP server that validates the token as the Flux MCP
Server does (JWKS, iss, aud = its URL), refreshes, and is refused once the session is revoked.
The peer is tests/node/mcp-peer.mjs (both sides from ``@modelcontextprotocol/sdk``)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.support.issuer import (
    ADMIN_EMAIL,
    REPO_ROOT,
    Browser,
    Issuer,
    StartIssuer,
    free_port,
)

NODE_DIR = REPO_ROOT / "tests" / "node"


class Peer:
    """The node process, one JSON event per stdout line; answers go to its stdin."""

    def __init__(self, issuer: Issuer, mcp_port: int, redirect_port: int) -> None:
        node = shutil.which("node")
        assert node, "node is required (Debian nodejs)"
        assert (NODE_DIR / "node_modules" / "@modelcontextprotocol" / "sdk").is_dir(), (
            "tests/node/node_modules is missing the MCP SDK: run `make chart-node-deps`"
        )
        self.proc = subprocess.Popen(
            [node, "mcp-peer.mjs", issuer.issuer, str(mcp_port), str(redirect_port)],
            cwd=NODE_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def event(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            assert self.proc.stderr is not None
            raise AssertionError(f"the MCP peer exited: {self.proc.stderr.read()[-4000:]}")
        event: dict[str, Any] = json.loads(line)
        assert event["event"] != "error", event["message"]
        return event

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def ports() -> tuple[int, int]:
    return free_port(), free_port()


@pytest.fixture
def issuer(start_issuer: StartIssuer, ports: tuple[int, int]) -> Issuer:
    mcp_port, _ = ports
    return start_issuer(
        {
            "registration": {
                "enabled": True,
                "allowedResources": [f"http://127.0.0.1:{mcp_port}/mcp"],
            }
        }
    )


@pytest.fixture
def peer(issuer: Issuer, ports: tuple[int, int]) -> Iterator[Peer]:
    running = Peer(issuer, *ports)
    try:
        yield running
    finally:
        running.stop()


def test_mcp_sdk_discovers_registers_logs_in_refreshes_and_is_refused_after_revocation(
    issuer: Issuer, peer: Peer, ports: tuple[int, int]
) -> None:
    mcp_port, redirect_port = ports
    resource = f"http://127.0.0.1:{mcp_port}/mcp"
    authorize = peer.event()
    assert authorize["event"] == "authorize"
    url = authorize["url"]
    params = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert url.startswith(issuer.url("/auth"))
    assert params["client_id"].startswith("dcr-")  # registered itself (RFC 7591)
    assert params["resource"] == resource  # RFC 8707
    assert params["code_challenge_method"] == "S256"
    with Browser(issuer) as browser:
        location = browser.authorize_code(url)
    answer = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert location.startswith(f"http://127.0.0.1:{redirect_port}/callback?")
    assert answer["iss"] == issuer.issuer  # RFC 9207
    peer.send(answer["code"])

    registered = peer.event()
    assert registered["client_id"] == params["client_id"]
    tool = peer.event()
    assert tool["event"] == "tool"
    assert tool["result"]["user"] == ADMIN_EMAIL
    assert tool["result"]["groups"] == ["admins"]
    assert tool["result"]["aud"] == resource  # the token is for this MCP server only
    tokens = tool["tokens"]
    issuer.remember(tokens["access_token"], tokens["refresh_token"])

    refreshed = peer.event()
    assert refreshed["event"] == "refreshed"
    assert refreshed["result"]["user"] == ADMIN_EMAIL
    assert refreshed["rotated"] is True
    refresh_token = refreshed["tokens"]["refresh_token"]
    issuer.remember(refreshed["tokens"]["access_token"], refresh_token)

    # Revoke the session (RFC 7009), as a user signing out of the MCP client would.
    r = httpx.post(
        issuer.url("/token/revoke"),
        data={"token": refresh_token, "client_id": params["client_id"]},
    )
    assert r.status_code == 200
    peer.send("revoked")
    # The refresh is refused; the SDK drops its tokens and asks for a new login (same client).
    again = peer.event()
    assert again["event"] == "authorize", again
    assert parse_qs(urlsplit(again["url"]).query)["client_id"] == [params["client_id"]]
    refused = peer.event()
    assert refused["event"] == "refused", refused
    assert refused["unauthorized"] is True, refused
    assert refused["reauthorize"] is True  # the SDK must log in again
    refusals = peer.event()["refusals"]
    # The resource server refused the bogus tokens, never a valid one.
    assert refusals
    assert all("not-a-valid-token" not in r for r in refusals)
