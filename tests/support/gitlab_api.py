"""A stand-in for GitLab's OAuth provider (Doorkeeper) and REST API v4.

GitLab cannot run here, so this reproduces what the gitlab connector relies on, as GitLab
documents it (doc/api/oauth2.md, rest/index.md, users.md, groups.md, members.md):

* ``GET /oauth/authorize``: the signed-in browser (a ``_gitlab_session`` cookie) goes back to
  the registered redirect URI with ``code`` and ``state``; an unknown scope comes back as
  ``error=invalid_scope``;
* ``POST /oauth/token``: client authentication with HTTP Basic or in the body; authorization
  code and refresh grants; refresh tokens rotate (a used one is revoked); 400 ``invalid_grant``
  and 401 ``invalid_client`` as Doorkeeper answers them; 64-hex-character tokens, ``expires_in``
  7200;
* ``GET /oauth/userinfo`` (``openid`` scope): ``groups`` (paths of the user's groups, through
  ancestors too) and the ``https://gitlab.org/claims/groups/{owner,maintainer,developer}``
  claims (groups where the user holds that role directly);
* ``/api/v4/user``, ``/api/v4/groups`` (visible groups: the user's and public ones, only the
  user's with ``all_available=false``; offset
  pagination with ``page``/``per_page`` (default 20, at most 100) and ``X-Page``,
  ``X-Per-Page``, ``X-Next-Page``, ``X-Prev-Page``, ``X-Total``, ``X-Total-Pages``, ``Link``),
  ``/api/v4/groups/:id/members/all/:user_id`` (inherited memberships, 404 when none);
  ``read_api`` required for groups (403 ``insufficient_scope``); 401 ``invalid_token`` for a
  revoked token; 429 ``Retry later`` with ``Retry-After`` and ``RateLimit-*``; injected 5xx.
"""

from __future__ import annotations

import base64
import math
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import httpx
import pytest

from tests.support.standin_http import StandInHandler, server_url, serving

CLIENT_ID = "4f8e1c2b9d0a7e6f5c3b2a1908f7e6d5c4b3a2918f7e6d5c4b3a291807f6e5d4"
CLIENT_SECRET = "gloas-3b2a1908f7e6d5c4b3a2918f7e6d5c4b3a291807f6e5d4c3b2a1908f7e6d5c4"
CALLBACK = "http://127.0.0.1:5556/dex/callback"
KNOWN_SCOPES = {"read_user", "openid", "read_api", "api", "profile", "email"}


@dataclass
class GitLabUser:
    id: int
    username: str
    name: str
    email: str


@dataclass
class GitLabGroup:
    id: int
    path: str
    full_path: str
    parent_id: int | None
    public: bool = False
    #: user id -> access level (direct memberships only; inheritance is computed)
    members: dict[int, int] = field(default_factory=dict)


@dataclass
class _Grant:
    user: str
    scopes: tuple[str, ...]


@dataclass
class GitLabAPI:
    base_url: str = ""
    users: dict[str, GitLabUser] = field(default_factory=dict)
    groups: dict[int, GitLabGroup] = field(default_factory=dict)
    codes: dict[str, tuple[_Grant, str]] = field(default_factory=dict)
    access_tokens: dict[str, _Grant] = field(default_factory=dict)
    refresh_tokens: dict[str, _Grant] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)
    #: Seconds of the next 429 answer from the API, once.
    throttle_retry_after: int | None = None
    #: (path prefix, status): the next API request under that prefix fails with it, once.
    fail_next: tuple[str, int] | None = None
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: int = 100

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    def add_user(self, username: str, name: str = "", email: str = "") -> GitLabUser:
        with self.lock:
            user = GitLabUser(self._next_id(), username, name, email or f"{username}@example.com")
            self.users[username] = user
            return user

    def add_group(
        self, path: str, parent: GitLabGroup | None = None, public: bool = False
    ) -> GitLabGroup:
        with self.lock:
            full_path = f"{parent.full_path}/{path}" if parent else path
            group = GitLabGroup(
                self._next_id(), path, full_path, parent.id if parent else None, public
            )
            self.groups[group.id] = group
            return group

    def set_member(self, group: GitLabGroup, username: str, level: int | None) -> None:
        with self.lock:
            user_id = self.users[username].id
            if level is None:
                group.members.pop(user_id, None)
            else:
                group.members[user_id] = level

    def revoke_all(self, username: str) -> None:
        """The user revoked the application (Settings > Applications)."""
        with self.lock:
            for table in (self.access_tokens, self.refresh_tokens):
                for token, grant in list(table.items()):
                    if grant.user == username:
                        self.revoked.add(token)
                        del table[token]

    def level(self, group: GitLabGroup, user_id: int) -> int | None:
        """Inherited membership: the highest level on the group or any ancestor."""
        best: int | None = None
        current: GitLabGroup | None = group
        while current is not None:
            level = current.members.get(user_id)
            if level is not None and (best is None or level > best):
                best = level
            current = self.groups.get(current.parent_id) if current.parent_id else None
        return best

    def _issue(self, grant: _Grant) -> dict[str, Any]:
        access, refresh = secrets.token_hex(32), secrets.token_hex(32)
        self.access_tokens[access] = grant
        self.refresh_tokens[refresh] = grant
        return {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": 7200,
            "refresh_token": refresh,
            "scope": " ".join(grant.scopes),
            "created_at": int(time.time()),
        }


def _handler(api: GitLabAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(StandInHandler):
        json_content_type = "application/json"

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            if parts.path == "/oauth/authorize":
                self._authorize(query)
                return
            if parts.path == "/oauth/userinfo":
                with api.lock:
                    api.requests.append(parts.path)
                    status, body, headers, content_type = self._userinfo()
                self._send(status, body, headers, content_type)
                return
            if parts.path.startswith("/api/v4/"):
                with api.lock:
                    api.requests.append(parts.path)
                    status, body, headers, content_type = self._api(parts.path[7:], query)
                self._send(status, body, headers, content_type)
                return
            self._send(404, {"message": "404 Not Found"})

        def _authorize(self, query: dict[str, str]) -> None:
            if query.get("client_id") != CLIENT_ID or query.get("redirect_uri") != CALLBACK:
                self._send(
                    200,
                    b"<p>The redirect URI included is not valid.</p>",
                    content_type="text/html; charset=utf-8",
                )
                return
            scopes = tuple(query.get("scope", "").split())
            state = query.get("state", "")
            if not set(scopes) <= KNOWN_SCOPES or query.get("response_type") != "code":
                error = {"error": "invalid_scope", "state": state}
                self._send(302, None, {"Location": f"{CALLBACK}?{urlencode(error)}"})
                return
            cookie = self.headers.get("Cookie", "")
            username = cookie.partition("_gitlab_session=")[2].split(";")[0]
            with api.lock:
                if username not in api.users:
                    self._send(302, None, {"Location": f"{api.base_url}/users/sign_in"})
                    return
                code = secrets.token_hex(32)
                api.codes[code] = (_Grant(username, scopes), query["redirect_uri"])
            target = f"{CALLBACK}?{urlencode({'code': code, 'state': state})}"
            self._send(302, None, {"Location": target})

        def do_POST(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length", "0"))
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            if parts.path != "/oauth/token":
                self._send(404, {"message": "404 Not Found"})
                return
            client_id, client_secret = form.get("client_id", ""), form.get("client_secret", "")
            authorization = self.headers.get("Authorization", "")
            if authorization.startswith("Basic "):
                decoded = base64.b64decode(authorization[6:]).decode()
                user, _, password = decoded.partition(":")
                client_id, client_secret = unquote(user), unquote(password)
            if client_id != CLIENT_ID or client_secret != CLIENT_SECRET:
                self._send(
                    401,
                    {
                        "error": "invalid_client",
                        "error_description": "Client authentication failed due to unknown "
                        "client, no client authentication included, or unsupported "
                        "authentication method.",
                    },
                )
                return
            with api.lock:
                answer = self._grant(form)
            self._send(200 if "access_token" in answer else 400, answer)

        def _grant(self, form: dict[str, str]) -> dict[str, Any]:
            invalid = {
                "error": "invalid_grant",
                "error_description": "The provided authorization grant is invalid, expired, "
                "revoked, does not match the redirection URI used in the authorization "
                "request, or was issued to another client.",
            }
            if form.get("grant_type") == "authorization_code":
                entry = api.codes.pop(form.get("code", ""), None)
                if entry is None or entry[1] != form.get("redirect_uri"):
                    return invalid
                return api._issue(entry[0])
            if form.get("grant_type") == "refresh_token":
                grant = api.refresh_tokens.pop(form.get("refresh_token", ""), None)
                if grant is None:
                    return invalid
                return api._issue(grant)
            return {"error": "unsupported_grant_type", "error_description": "..."}

        def _userinfo(self) -> tuple[int, Any, dict[str, str], str]:
            if api.fail_next is not None and api.fail_next[0] == "/oauth/userinfo":
                status = api.fail_next[1]
                api.fail_next = None
                return (
                    status,
                    {"message": f"{status} Internal Server Error"},
                    {},
                    "application/json",
                )
            authorization = self.headers.get("Authorization", "")
            grant = api.access_tokens.get(authorization.removeprefix("Bearer "))
            if grant is None or "openid" not in grant.scopes:
                headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
                body = {
                    "error": "invalid_token",
                    "error_description": "The access token is invalid",
                }
                return 401, body, headers, "application/json"
            user = api.users[grant.user]
            groups = sorted(g.full_path for g in api.groups.values() if api.level(g, user.id))

            def direct(level: int) -> list[str]:
                return sorted(
                    g.full_path for g in api.groups.values() if g.members.get(user.id) == level
                )

            body = {
                "sub": str(user.id),
                "sub_legacy": secrets.token_hex(32),
                "name": user.name,
                "nickname": user.username,
                "preferred_username": user.username,
                "email": user.email,
                "email_verified": True,
                "profile": f"{api.base_url}/{user.username}",
                "picture": f"{api.base_url}/uploads/{user.id}.png",
                "groups": groups,
                "https://gitlab.org/claims/groups/owner": direct(50),
                "https://gitlab.org/claims/groups/maintainer": direct(40),
                "https://gitlab.org/claims/groups/developer": direct(30),
            }
            return 200, body, {}, "application/json"

        def _api(self, path: str, query: dict[str, str]) -> tuple[int, Any, dict[str, str], str]:
            json_type = "application/json"
            if api.fail_next is not None and path.startswith(api.fail_next[0]):
                status = api.fail_next[1]
                api.fail_next = None
                return status, {"message": f"{status} Internal Server Error"}, {}, json_type
            if api.throttle_retry_after is not None:
                wait = api.throttle_retry_after
                api.throttle_retry_after = None
                headers = {
                    "Retry-After": str(wait),
                    "RateLimit-Name": "throttle_authenticated_api",
                    "RateLimit-Limit": "60",
                    "RateLimit-Observed": "61",
                    "RateLimit-Remaining": "0",
                    "RateLimit-Reset": str(int(time.time()) + wait),
                    "RateLimit-ResetTime": time.strftime(
                        "%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + wait)
                    ),
                }
                return 429, b"Retry later\n", headers, "text/plain"
            authorization = self.headers.get("Authorization", "")
            token = authorization[7:] if authorization.startswith("Bearer ") else ""
            grant = api.access_tokens.get(token)
            if grant is None:
                if token in api.revoked:
                    body = {
                        "error": "invalid_token",
                        "error_description": "Token was revoked. You have to re-authorize "
                        "from the user.",
                    }
                    return (
                        401,
                        body,
                        {"WWW-Authenticate": 'Bearer error="invalid_token"'},
                        json_type,
                    )
                return 401, {"message": "401 Unauthorized"}, {}, json_type
            user = api.users[grant.user]
            if path == "/user":
                body = {
                    "id": user.id,
                    "username": user.username,
                    "name": user.name,
                    "state": "active",
                    "locked": False,
                    "avatar_url": f"{api.base_url}/uploads/{user.id}.png",
                    "web_url": f"{api.base_url}/{user.username}",
                    "email": user.email,
                    "is_admin": False,
                }
                return 200, body, {}, json_type
            if (
                path.startswith("/groups")
                and "read_api" not in grant.scopes
                and "api" not in grant.scopes
            ):
                body = {
                    "error": "insufficient_scope",
                    "error_description": "The request requires higher privileges than provided "
                    "by the access token.",
                    "scope": "api read_api",
                }
                return 403, body, {}, json_type
            if path == "/groups":
                visible = [
                    g
                    for g in sorted(api.groups.values(), key=lambda g: g.full_path)
                    if api.level(g, user.id) is not None
                    or (g.public and query.get("all_available") != "false")
                ]
                return self._page(path, query, [self._group_json(g) for g in visible])
            segments = path.split("/")
            if (
                len(segments) == 6
                and segments[1] == "groups"
                and segments[3:5] == ["members", "all"]
            ):
                group = api.groups.get(int(segments[2])) if segments[2].isdigit() else None
                member = next((u for u in api.users.values() if str(u.id) == segments[5]), None)
                level = api.level(group, member.id) if group and member else None
                if group is None or member is None or level is None:
                    return 404, {"message": "404 Not found"}, {}, json_type
                body = {
                    "id": member.id,
                    "username": member.username,
                    "name": member.name,
                    "state": "active",
                    "access_level": level,
                    "created_at": "2024-01-01T00:00:00.000Z",
                    "expires_at": None,
                    "membership_state": "active",
                }
                return 200, body, {}, json_type
            return 404, {"message": "404 Not Found"}, {}, json_type

        def _group_json(self, group: GitLabGroup) -> dict[str, Any]:
            return {
                "id": group.id,
                "web_url": f"{api.base_url}/groups/{group.full_path}",
                "name": group.path.title(),
                "path": group.path,
                "description": "",
                "visibility": "public" if group.public else "private",
                "full_name": group.full_path.replace("/", " / "),
                "full_path": group.full_path,
                "parent_id": group.parent_id,
            }

        def _page(
            self, path: str, query: dict[str, str], items: list[dict[str, Any]]
        ) -> tuple[int, Any, dict[str, str], str]:
            try:
                per_page = min(100, max(1, int(query.get("per_page", "20"))))
                page = max(1, int(query.get("page", "1")))
            except ValueError:
                return 400, {"error": "page is invalid"}, {}, "application/json"
            total_pages = max(1, math.ceil(len(items) / per_page))
            headers = {
                "X-Page": str(page),
                "X-Per-Page": str(per_page),
                "X-Next-Page": str(page + 1) if page < total_pages else "",
                "X-Prev-Page": str(page - 1) if page > 1 else "",
                "X-Total": str(len(items)),
                "X-Total-Pages": str(total_pages),
            }

            def link(number: int) -> str:
                q = urlencode({"page": number, "per_page": per_page})
                return f"{api.base_url}/api/v4{path}?{q}"

            links = []
            if page < total_pages:
                links.append(f'<{link(page + 1)}>; rel="next"')
            if page > 1:
                links.append(f'<{link(page - 1)}>; rel="prev"')
            links += [f'<{link(1)}>; rel="first"', f'<{link(total_pages)}>; rel="last"']
            headers["Link"] = ", ".join(links)
            body = items[(page - 1) * per_page : page * per_page]
            return 200, body, headers, "application/json"

    return Handler


@pytest.fixture(scope="session")
def gitlab_api() -> Iterator[GitLabAPI]:
    api = GitLabAPI()
    with serving(_handler(api), "gitlab-standin") as server:
        api.base_url = server_url(server)
        yield api


def gitlab_browser(api: GitLabAPI, url: str, username: str) -> dict[str, str]:
    """The callback parameters a browser signed in to GitLab as ``username`` brings back."""
    response = httpx.get(
        url, headers={"Cookie": f"_gitlab_session={username}"}, follow_redirects=False
    )
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert location.startswith(CALLBACK), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
