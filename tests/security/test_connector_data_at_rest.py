"""Upstream tokens at rest (issue #15 item 6): after a whole login and a refresh through a real
connector (gitlab, against its stand-in: GitLab hands out rotating refresh tokens that the
connector keeps in the session's connector data) with the embedded sqlite3 storage, a dump of
the storage — the database file and its WAL read byte for byte, and an SQL dump of every row —
contains none of the upstream access or refresh tokens, while the refresh still works (so the
tokens are there, sealed) and no token reaches the log.

Anyone who can read the database file (a backup, a volume snapshot, a copied PVC) must not get
working GitLab/GitHub/Entra ID credentials of every user with a refreshable session.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import sqlite3
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from portcullis.clock import SystemClock
from portcullis.issuer import create_issuer, parse_config
from portcullis.storage.factory import open_storage

from tests.support.asgi_login import pkce_pair
from tests.support.gitlab_api import (  # noqa: F401
    CALLBACK,
    CLIENT_ID,
    CLIENT_SECRET,
    GitLabAPI,
    gitlab_api,
    gitlab_browser,
)

pytestmark = pytest.mark.anyio

APP_REDIRECT = "http://127.0.0.1:8000/callback"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _config(api: GitLabAPI, database: Path, sealing: str = "") -> str:
    return sealing + textwrap.dedent(
        f"""
        issuer: http://127.0.0.1:5556/dex
        storage:
          type: sqlite3
          config: {{file: {database}}}
        web: {{http: 127.0.0.1:5556}}
        oauth2: {{skipApprovalScreen: true}}
        staticClients:
          - id: kubectl
            public: true
            redirectURIs: ["{APP_REDIRECT}"]
        connectors:
          - type: gitlab
            id: gitlab
            name: GitLab
            config:
              baseURL: {api.base_url}
              clientID: {CLIENT_ID}
              clientSecret: {CLIENT_SECRET}
              redirectURI: {CALLBACK}
        """
    )


async def _client(config_text: str) -> AsyncIterator[httpx.AsyncClient]:
    config = parse_config(config_text)
    storage = open_storage(config)
    try:
        app = create_issuer(config, storage=storage, clock=SystemClock()).app
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:5556") as c:
            yield c
    finally:
        storage.close()


def dump(database: Path) -> bytes:
    """Everything a reader of the storage gets: the raw bytes of the database file and its
    write-ahead log, and an SQL dump of every row (blobs as hex, so decode them back)."""
    raw = b"".join(
        path.read_bytes()
        for path in (database, database.with_name(database.name + "-wal"))
        if path.exists()
    )
    with sqlite3.connect(database) as conn:
        rows = "\n".join(conn.iterdump())
        blobs = [
            bytes(value)
            for table in ("auth_requests", "auth_codes", "refresh_tokens", "device_requests")
            for (value,) in conn.execute(f"SELECT connector_data FROM {table}")  # noqa: S608
            if value is not None
        ]
    conn.close()
    return raw + rows.encode() + b"\n".join(blobs)


async def test_upstream_tokens_never_stored_in_clear(
    gitlab_api: GitLabAPI,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    database = tmp_path / "portcullis.db"
    user = f"user-{secrets.token_hex(4)}"
    gitlab_api.add_user(user)
    issued: set[str] = set()

    def remember() -> None:
        with gitlab_api.lock:
            issued.update(gitlab_api.access_tokens, gitlab_api.refresh_tokens)

    async for client in _client(_config(gitlab_api, database)):
        verifier, challenge = pkce_pair()
        params = {
            "client_id": "kubectl",
            "redirect_uri": APP_REDIRECT,
            "response_type": "code",
            "scope": "openid email profile offline_access",
            "state": secrets.token_urlsafe(8),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        response = await client.get("/dex/auth", params=params)
        while response.headers["location"].startswith(("/", str(client.base_url))):
            response = await client.get(response.headers["location"])
        callback = await asyncio.to_thread(
            gitlab_browser, gitlab_api, response.headers["location"], user
        )
        response = await client.get("/dex/callback", params=callback)
        assert response.status_code in (302, 303), response.text
        remember()
        location = response.headers["location"]
        while location.startswith("/"):
            location = (await client.get(location)).headers["location"]
        code = parse_qs(urlsplit(location).query)["code"][0]
        token_form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": APP_REDIRECT,
            "client_id": "kubectl",
            "code_verifier": verifier,
        }
        answer = await client.post("/dex/token", data=token_form)
        assert answer.status_code == 200, answer.text
        ours = answer.json()["refresh_token"]
        assert issued, "GitLab issued no tokens"
        leaked = [t for t in issued if t.encode() in dump(database)]
        assert not leaked, "an upstream token is in the storage dump after the login"

        refresh_form = {
            "grant_type": "refresh_token",
            "refresh_token": ours,
            "client_id": "kubectl",
        }
        answer = await client.post("/dex/token", data=refresh_form)
        # The upstream refresh ran with the stored (sealed) GitLab refresh token.
        assert answer.status_code == 200, answer.text
        remember()
        with gitlab_api.lock:
            current = set(gitlab_api.refresh_tokens) & issued
        assert current, "the refresh did not rotate the GitLab refresh token"
        snapshot = dump(database)
        leaked = [t for t in issued if t.encode() in snapshot]
        assert not leaked, "an upstream token is in the storage dump after the refresh"
    assert not any(token in caplog.text for token in issued)


async def _login(client: httpx.AsyncClient, api: GitLabAPI, user: str) -> str:
    """A whole login with offline_access through GitLab; returns our refresh token."""
    verifier, challenge = pkce_pair()
    params = {
        "client_id": "kubectl",
        "redirect_uri": APP_REDIRECT,
        "response_type": "code",
        "scope": "openid email offline_access",
        "state": secrets.token_urlsafe(8),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    response = await client.get("/dex/auth", params=params)
    while response.headers["location"].startswith(("/", str(client.base_url))):
        response = await client.get(response.headers["location"])
    callback = await asyncio.to_thread(gitlab_browser, api, response.headers["location"], user)
    location = (await client.get("/dex/callback", params=callback)).headers["location"]
    while location.startswith("/"):
        location = (await client.get(location)).headers["location"]
    code = parse_qs(urlsplit(location).query)["code"][0]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": APP_REDIRECT,
        "client_id": "kubectl",
        "code_verifier": verifier,
    }
    answer = await client.post("/dex/token", data=form)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["refresh_token"])


def _refresh_form(token: str) -> dict[str, str]:
    return {"grant_type": "refresh_token", "refresh_token": token, "client_id": "kubectl"}


async def test_a_session_sealed_with_an_unknown_key_is_refused_not_crashed(
    gitlab_api: GitLabAPI,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A replica or restart without the key that sealed a session (a rotation that dropped the
    old key, replicas with different keys): that session's refresh is invalid_grant with a log
    line naming the cause, never a 500 and never the token; adding the old key back to
    previousKeys makes it refresh again, and new writes use the current key."""
    caplog.set_level(logging.DEBUG)
    database = tmp_path / "portcullis.db"
    old, new = (base64.b64encode(secrets.token_bytes(32)).decode() for _ in range(2))
    user = f"user-{secrets.token_hex(4)}"
    gitlab_api.add_user(user)
    async for client in _client(_config(gitlab_api, database, f"storageSealing: {{key: {old}}}")):
        token = await _login(client, gitlab_api, user)
    with gitlab_api.lock:
        issued = set(gitlab_api.access_tokens) | set(gitlab_api.refresh_tokens)

    rotated_away = f"storageSealing: {{key: {new}}}"
    async for client in _client(_config(gitlab_api, database, rotated_away)):
        answer = await client.post("/dex/token", data=_refresh_form(token))
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_grant"
    assert "log in again" in answer.json()["error_description"]
    assert "which is not configured" in caplog.text
    assert "refresh refused for client kubectl (connector gitlab)" in caplog.text

    rotated = f"storageSealing: {{key: {new}, previousKeys: [{old}]}}"
    async for client in _client(_config(gitlab_api, database, rotated)):
        answer = await client.post("/dex/token", data=_refresh_form(token))
        assert answer.status_code == 200, answer.text
    with gitlab_api.lock:
        issued |= set(gitlab_api.access_tokens) | set(gitlab_api.refresh_tokens)
    assert not [t for t in issued if t.encode() in dump(database)]
    assert not any(t in caplog.text for t in issued)
    assert old not in caplog.text
    assert new not in caplog.text
