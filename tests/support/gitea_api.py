"""A stand-in for Gitea's OAuth2 provider and API v1.

Gitea cannot run here, so this reproduces what the gitea connector relies on, as Gitea documents
it (docs.gitea.com development/oauth2-provider and api/1.x swagger):

* ``GET /login/oauth/authorize``: the signed-in browser (an ``i_like_gitea`` session cookie) goes
  back to the registered redirect URI with ``code`` and ``state``;
* ``POST /login/oauth/access_token``: client authentication with HTTP Basic or in the form; code
  and refresh grants; access tokens valid 3600 s; refresh tokens rotate (a used one is dead);
  ``invalid_grant``/``invalid_client`` errors as JSON;
* ``GET /api/v1/user`` and ``GET /api/v1/user/teams`` with ``page``/``limit`` (at most 50) and
  ``Link`` (``next``, ``last``) plus ``X-Total-Count``; 401 ``{"message": ...}`` for unknown,
  expired or revoked tokens; a 429 with ``Retry-After`` (as a reverse proxy's rate limiter
  answers) and injected 5xx.
"""

from __future__ import annotations

import base64
import math
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import httpx
import pytest

from tests.support.standin_http import StandInHandler, server_url, serving

CLIENT_ID = "6d0b8f5e-4a2c-4f6e-9d3b-1c2a3b4c5d6e"
CLIENT_SECRET = "gto_4bc6y2xvqk3jr5lm7n8p9q0rstuvwxyz1234567890abcd"
CALLBACK = "http://127.0.0.1:5556/dex/callback"


@dataclass
class GiteaUser:
    id: int
    login: str
    full_name: str
    email: str


@dataclass
class GiteaTeam:
    id: int
    org: str
    name: str
    members: set[str] = field(default_factory=set)


@dataclass
class GiteaAPI:
    base_url: str = ""
    users: dict[str, GiteaUser] = field(default_factory=dict)
    teams: list[GiteaTeam] = field(default_factory=list)
    codes: dict[str, str] = field(default_factory=dict)
    access_tokens: dict[str, str] = field(default_factory=dict)
    refresh_tokens: dict[str, str] = field(default_factory=dict)
    throttle_retry_after: int | None = None
    fail_next: tuple[str, int] | None = None
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: int = 10

    def add_user(self, login: str, full_name: str = "") -> GiteaUser:
        with self.lock:
            self._ids += 1
            user = GiteaUser(self._ids, login, full_name, f"{login}@example.org")
            self.users[login] = user
            return user

    def add_team(self, org: str, name: str, *members: str) -> GiteaTeam:
        with self.lock:
            self._ids += 1
            team = GiteaTeam(self._ids, org, name, set(members))
            self.teams.append(team)
            return team

    def expire_access_tokens(self, login: str) -> None:
        with self.lock:
            for token, owner in list(self.access_tokens.items()):
                if owner == login:
                    del self.access_tokens[token]

    def revoke_grant(self, login: str) -> None:
        """The user revoked the application (Settings > Applications)."""
        with self.lock:
            for table in (self.access_tokens, self.refresh_tokens):
                for token, owner in list(table.items()):
                    if owner == login:
                        del table[token]

    def _issue(self, login: str) -> dict[str, Any]:
        access, refresh = "gta_" + secrets.token_hex(20), "gtr_" + secrets.token_hex(20)
        self.access_tokens[access] = login
        self.refresh_tokens[refresh] = login
        return {
            "access_token": access,
            "token_type": "bearer",
            "expires_in": 3600,
            "refresh_token": refresh,
        }


def _handler(api: GiteaAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(StandInHandler):
        json_content_type = "application/json;charset=utf-8"

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            if parts.path == "/login/oauth/authorize":
                if query.get("client_id") != CLIENT_ID or query.get("redirect_uri") != CALLBACK:
                    self._send(400, {"message": "Unregistered Redirect URI"})
                    return
                login = self.headers.get("Cookie", "").partition("i_like_gitea=")[2].split(";")[0]
                with api.lock:
                    if login not in api.users:
                        self._send(303, None, {"Location": f"{api.base_url}/user/login"})
                        return
                    code = secrets.token_urlsafe(32)
                    api.codes[code] = login
                target = f"{CALLBACK}?{urlencode({'code': code, 'state': query.get('state', '')})}"
                self._send(303, None, {"Location": target})
                return
            if parts.path.startswith("/api/v1/"):
                with api.lock:
                    api.requests.append(parts.path)
                    status, body, headers = self._api(parts.path[7:], query)
                self._send(status, body, headers)
                return
            self._send(404, {"message": "Not Found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            if urlsplit(self.path).path != "/login/oauth/access_token":
                self._send(404, {"message": "Not Found"})
                return
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
            authorization = self.headers.get("Authorization", "")
            if authorization.startswith("Basic "):
                user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
                client_id, secret = unquote(user), unquote(password)
            if client_id != CLIENT_ID or secret != CLIENT_SECRET:
                body = {
                    "error": "unauthorized_client",
                    "error_description": "invalid client secret",
                }
                self._send(400, body)
                return
            with api.lock:
                if form.get("grant_type") == "authorization_code":
                    login = api.codes.pop(form.get("code", ""), None)
                    if form.get("redirect_uri") != CALLBACK:
                        login = None
                else:
                    login = api.refresh_tokens.pop(form.get("refresh_token", ""), None)
                answer = api._issue(login) if login else None
            if answer is None:
                body = {
                    "error": "invalid_grant",
                    "error_description": "token was already used or is expired",
                }
                self._send(400, body)
                return
            self._send(200, answer)

        def _api(self, path: str, query: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
            swagger = f"{api.base_url}/api/swagger"
            if api.fail_next is not None and path.startswith(api.fail_next[0]):
                status = api.fail_next[1]
                api.fail_next = None
                return status, {"message": "Internal Server Error", "url": swagger}, {}
            if api.throttle_retry_after is not None:
                wait = api.throttle_retry_after
                api.throttle_retry_after = None
                return 429, {"message": "Too Many Requests"}, {"Retry-After": str(wait)}
            authorization = self.headers.get("Authorization", "")
            scheme, _, token = authorization.partition(" ")
            login = api.access_tokens.get(token) if scheme.lower() in ("bearer", "token") else None
            if login is None:
                body = {"message": "invalid username, password or token", "url": swagger}
                return 401, body, {}
            user = api.users[login]
            if path == "/user":
                body = {
                    "id": user.id,
                    "login": user.login,
                    "login_name": "",
                    "full_name": user.full_name,
                    "email": user.email,
                    "avatar_url": f"{api.base_url}/avatars/{user.id}",
                    "language": "en-US",
                    "is_admin": False,
                    "active": True,
                    "prohibit_login": False,
                    "username": user.login,
                }
                return 200, body, {}
            if path == "/user/teams":
                try:
                    limit = min(50, max(1, int(query.get("limit", "30"))))
                    page = max(1, int(query.get("page", "1")))
                except ValueError:
                    return 422, {"message": "invalid page"}, {}
                items = [t for t in api.teams if user.login in t.members]
                last = max(1, math.ceil(len(items) / limit))

                def link(number: int) -> str:
                    return f"{api.base_url}/api/v1/user/teams?limit={limit}&page={number}"

                links = []
                if page < last:
                    links += [f'<{link(page + 1)}>; rel="next"', f'<{link(last)}>; rel="last"']
                if page > 1:
                    links += [f'<{link(1)}>; rel="first"', f'<{link(page - 1)}>; rel="prev"']
                headers = {"X-Total-Count": str(len(items))}
                if links:
                    headers["Link"] = ",".join(links)
                body = [
                    {
                        "id": t.id,
                        "name": t.name,
                        "description": "",
                        "organization": {"id": 1, "username": t.org, "full_name": t.org.title()},
                        "includes_all_repositories": False,
                        "permission": "read",
                        "units": ["repo.code"],
                        "can_create_org_repo": False,
                    }
                    for t in items[(page - 1) * limit : page * limit]
                ]
                return 200, body, headers
            return 404, {"message": "Not Found", "url": swagger}, {}

    return Handler


@pytest.fixture(scope="session")
def gitea_api() -> Iterator[GiteaAPI]:
    api = GiteaAPI()
    with serving(_handler(api), "gitea-standin") as server:
        api.base_url = server_url(server)
        yield api


def gitea_browser(url: str, login: str) -> dict[str, str]:
    """The callback parameters a browser signed in to Gitea as ``login`` brings back."""
    response = httpx.get(url, headers={"Cookie": f"i_like_gitea={login}"}, follow_redirects=False)
    assert response.status_code == 303, response.text
    location = response.headers["Location"]
    assert location.startswith(CALLBACK), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
