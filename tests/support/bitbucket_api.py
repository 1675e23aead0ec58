"""A stand-in for Bitbucket Cloud's OAuth 2.0 endpoints and REST API 2.0.

Bitbucket cannot run here, so this reproduces what the bitbucket-cloud connector relies on, as
Atlassian documents it (developer.atlassian.com/cloud/bitbucket: OAuth 2.0, pagination, user,
workspaces, rate limits):

* ``GET /site/oauth2/authorize``: the signed-in browser (a ``cloud.session.token`` cookie) goes
  back to the consumer's callback with ``code`` and ``state``;
* ``POST /site/oauth2/access_token``: consumer key and secret with HTTP Basic; code and refresh
  grants; access tokens valid 7200 s; ``invalid_grant``/``invalid_client`` (400) as JSON;
* ``/2.0/user``, ``/2.0/user/emails``, ``/2.0/user/workspaces``,
  ``/2.0/user/workspaces/{slug}/permission``; paged bodies (``pagelen`` at most 100, ``page``,
  ``size``, ``next``, ``previous``, ``values``); Bitbucket's error body (``{"type": "error",
  "error": {"message": ...}}``) with 401 for expired or revoked tokens, 429 with
  ``Retry-After`` and injected 5xx.
"""

from __future__ import annotations

import base64
import secrets
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import httpx
import pytest

from tests.support.standin_http import StandInHandler, server_url, serving

CLIENT_ID = "Qx7bG2kR9sVwN4pLmT"
CLIENT_SECRET = "h3Kp9Wq2Xz7Vn4Bm8Rt6Yc1Ld5Fg0Js"
CALLBACK = "http://127.0.0.1:5556/dex/callback"


@dataclass
class BitbucketUser:
    uuid: str
    username: str
    #: (address, primary, confirmed)
    emails: list[tuple[str, bool, bool]]
    #: workspace slug -> permission (owner, collaborator, member)
    workspaces: dict[str, str] = field(default_factory=dict)


@dataclass
class BitbucketAPI:
    base_url: str = ""
    users: dict[str, BitbucketUser] = field(default_factory=dict)
    codes: dict[str, str] = field(default_factory=dict)
    access_tokens: dict[str, str] = field(default_factory=dict)
    refresh_tokens: dict[str, str] = field(default_factory=dict)
    throttle_retry_after: int | None = None
    fail_next: tuple[str, int] | None = None
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_user(
        self, username: str, emails: list[tuple[str, bool, bool]] | None = None
    ) -> BitbucketUser:
        with self.lock:
            user = BitbucketUser(
                "{" + str(uuid.uuid4()) + "}",
                username,
                emails if emails is not None else [(f"{username}@example.com", True, True)],
            )
            self.users[username] = user
            return user

    def expire_access_tokens(self, username: str) -> None:
        with self.lock:
            for token, owner in list(self.access_tokens.items()):
                if owner == username:
                    del self.access_tokens[token]

    def revoke_grant(self, username: str) -> None:
        """The user revoked the OAuth consumer's access."""
        with self.lock:
            for table in (self.access_tokens, self.refresh_tokens):
                for token, owner in list(table.items()):
                    if owner == username:
                        del table[token]

    def _issue(self, username: str, refresh: str | None = None) -> dict[str, Any]:
        access = secrets.token_urlsafe(96)
        self.access_tokens[access] = username
        if refresh is None:  # Bitbucket keeps the refresh token across refreshes
            refresh = secrets.token_urlsafe(24)
            self.refresh_tokens[refresh] = username
        return {
            "access_token": access,
            "scopes": "account email",
            "token_type": "bearer",
            "expires_in": 7200,
            "state": "authorization_code",
            "refresh_token": refresh,
        }


def _error(message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"message": message}}


def _handler(api: BitbucketAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(StandInHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            if parts.path == "/site/oauth2/authorize":
                if query.get("client_id") != CLIENT_ID:
                    self._send(
                        400, {"error": "invalid_request", "error_description": "Invalid client_id"}
                    )
                    return
                cookie = self.headers.get("Cookie", "")
                username = cookie.partition("cloud.session.token=")[2].split(";")[0]
                with api.lock:
                    if username not in api.users:
                        self._send(302, None, {"Location": "https://id.atlassian.com/login"})
                        return
                    code = secrets.token_urlsafe(18)
                    api.codes[code] = username
                target = f"{CALLBACK}?{urlencode({'code': code, 'state': query.get('state', '')})}"
                self._send(302, None, {"Location": target})
                return
            if parts.path.startswith("/2.0/"):
                with api.lock:
                    api.requests.append(parts.path)
                    status, body, headers = self._api(parts.path[4:], query)
                self._send(status, body, headers)
                return
            self._send(404, _error("Resource not found"))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            if urlsplit(self.path).path != "/site/oauth2/access_token":
                self._send(404, _error("Resource not found"))
                return
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
            authorization = self.headers.get("Authorization", "")
            if authorization.startswith("Basic "):
                user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
                client_id, secret = unquote(user), unquote(password)
            if client_id != CLIENT_ID or secret != CLIENT_SECRET:
                self._send(
                    400,
                    {
                        "error": "invalid_client",
                        "error_description": "Invalid OAuth client credentials",
                    },
                )
                return
            with api.lock:
                answer = None
                if form.get("grant_type") == "authorization_code":
                    username = api.codes.pop(form.get("code", ""), None)
                    answer = api._issue(username) if username else None
                elif form.get("grant_type") == "refresh_token":
                    token = form.get("refresh_token", "")
                    username = api.refresh_tokens.get(token)
                    answer = api._issue(username, refresh=token) if username else None
            if answer is None:
                body = {"error": "invalid_grant", "error_description": "Invalid refresh_token"}
                if form.get("grant_type") == "authorization_code":
                    body["error_description"] = "The specified code is not valid."
                self._send(400, body)
                return
            self._send(200, answer)

        def _api(self, path: str, query: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
            if api.fail_next is not None and path.startswith(api.fail_next[0]):
                status = api.fail_next[1]
                api.fail_next = None
                return status, _error("Something went wrong"), {}
            if api.throttle_retry_after is not None:
                wait = api.throttle_retry_after
                api.throttle_retry_after = None
                body = _error("Rate limit for this resource has been exceeded")
                return 429, body, {"Retry-After": str(wait), "X-RateLimit-Resource": "api"}
            authorization = self.headers.get("Authorization", "")
            token = authorization[7:] if authorization.startswith("Bearer ") else ""
            username = api.access_tokens.get(token)
            if username is None:
                message = (
                    "Access token expired. Use your refresh token to obtain a new access token."
                )
                return 401, _error(message), {}
            user = api.users[username]
            if path == "/user":
                body = {
                    "type": "user",
                    "uuid": user.uuid,
                    "username": user.username,
                    "display_name": user.username.title(),
                    "account_id": "5b10a2844c20165700ede21g",
                    "links": {"html": {"href": f"https://bitbucket.org/{user.username}/"}},
                }
                return 200, body, {}
            if path == "/user/emails":
                items = [
                    {"type": "email", "email": a, "is_primary": p, "is_confirmed": c}
                    for a, p, c in user.emails
                ]
                return self._page(path, query, items)
            if path == "/user/workspaces":
                items = [
                    {
                        "type": "workspace_access",
                        "administrator": permission == "owner",
                        "workspace": {
                            "type": "workspace_base",
                            "uuid": "{" + slug + "}",
                            "slug": slug,
                        },
                    }
                    for slug, permission in sorted(user.workspaces.items())
                ]
                return self._page(path, query, items)
            segments = path.split("/")
            if (
                len(segments) == 5
                and segments[1:3] == ["user", "workspaces"]
                and segments[4] == "permission"
            ):
                permission = user.workspaces.get(segments[3])
                if permission is None:
                    return 404, _error(f"No workspace with identifier '{segments[3]}'."), {}
                return 200, {"type": "workspace_membership", "permission": permission}, {}
            return 404, _error("Resource not found"), {}

        def _page(
            self, path: str, query: dict[str, str], items: list[dict[str, Any]]
        ) -> tuple[int, Any, dict[str, str]]:
            try:
                pagelen = min(100, max(1, int(query.get("pagelen", "10"))))
                page = max(1, int(query.get("page", "1")))
            except ValueError:
                return 400, _error("Invalid page"), {}
            body: dict[str, Any] = {
                "pagelen": pagelen,
                "size": len(items),
                "page": page,
                "values": items[(page - 1) * pagelen : page * pagelen],
            }
            if page * pagelen < len(items):
                body["next"] = (
                    f"{api.base_url}/2.0{path}?{urlencode({'pagelen': pagelen, 'page': page + 1})}"
                )
            if page > 1:
                body["previous"] = (
                    f"{api.base_url}/2.0{path}?{urlencode({'pagelen': pagelen, 'page': page - 1})}"
                )
            return 200, body, {}

    return Handler


@pytest.fixture(scope="session")
def bitbucket_api() -> Iterator[BitbucketAPI]:
    api = BitbucketAPI()
    with serving(_handler(api), "bitbucket-standin") as server:
        api.base_url = server_url(server)
        yield api


def bitbucket_browser(url: str, username: str) -> dict[str, str]:
    """The callback parameters a browser signed in to Bitbucket as ``username`` brings back."""
    response = httpx.get(
        url, headers={"Cookie": f"cloud.session.token={username}"}, follow_redirects=False
    )
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert location.startswith(CALLBACK), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
