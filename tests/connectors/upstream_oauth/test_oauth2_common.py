"""The shared OAuth2 plumbing's limits, each against a real socket: size bound, timeouts."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from portcullis.connectors.base import ConnectorError
from portcullis.connectors.oauth2_common import (
    UpstreamHTTP,
    authorization_url,
    groups_from_claim,
    pkce_pair,
)

from tests.support.oidc_peer import OIDCPeer

pytestmark = pytest.mark.anyio


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A listening socket that never answers: connects succeed, reads hang."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


async def test_oversized_response_is_refused(oidc_peer: OIDCPeer) -> None:
    http = UpstreamHTTP(max_bytes=200)  # the discovery document is ~2 KB
    with pytest.raises(ConnectorError, match="discovery response is too large"):
        await http.get_json(
            f"{oidc_peer.issuer}/.well-known/openid-configuration", what="discovery"
        )
    document = await UpstreamHTTP().get_json(
        f"{oidc_peer.issuer}/.well-known/openid-configuration", what="discovery"
    )
    assert document["issuer"] == oidc_peer.issuer


async def test_silent_upstream_times_out(silent_port: int) -> None:
    http = UpstreamHTTP(read_timeout=0.5, connect_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(ConnectorError, match="did not answer in time"):
        await http.get_json(f"http://127.0.0.1:{silent_port}/x", what="userinfo")
    assert time.monotonic() - started < 3


async def test_refused_request_names_what_and_status(oidc_peer: OIDCPeer) -> None:
    with pytest.raises(ConnectorError, match=r"refused the probe request \(HTTP 400\)"):
        await UpstreamHTTP().get_json(f"{oidc_peer.issuer}/auth", what="probe")


def test_authorization_url_keeps_a_fixed_query_and_encodes_scopes() -> None:
    url = authorization_url(
        "https://p.example/auth?tenant=a%20b",
        client_id="c",
        redirect_uri="https://i.example/cb",
        scopes=["openid", "email"],
        state="s t",
    )
    assert url.startswith("https://p.example/auth?tenant=a%20b&client_id=c&")
    assert "scope=openid%20email" in url
    assert "state=s%20t" in url


def test_pkce_pair_is_s256_of_a_fresh_verifier() -> None:
    import base64
    import hashlib

    verifier, challenge = pkce_pair()
    assert 43 <= len(verifier) <= 128
    digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    assert challenge == digest.decode()
    assert pkce_pair()[0] != verifier


def test_groups_claim_shapes() -> None:
    assert groups_from_claim(["a", {"name": "b"}], "groups") == ["a", "b"]
    assert groups_from_claim("solo", "groups") == ["solo"]
    assert groups_from_claim(None, "groups") == []
    with pytest.raises(ConnectorError, match='malformed "groups"'):
        groups_from_claim([1], "groups")
