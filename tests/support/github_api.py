"""A stand-in for GitHub Enterprise Server's OAuth web flow and REST API (v3), over TLS.

GitHub cannot run here, so this reproduces what the github connector relies on, as GitHub
documents it (docs.github.com/rest, /apps/oauth-apps/building-oauth-apps/authorizing-oauth-apps):

* ``GET /login/oauth/authorize``: the signed-in browser (a ``user_session`` cookie) is sent back
  to the registered callback with ``code`` and ``state``; a mismatched redirect_uri is refused;
* ``POST /login/oauth/access_token``: form-encoded client_id/client_secret/code/redirect_uri;
  JSON when asked with ``Accept: application/json``, form-encoded otherwise; a refused code or
  client is HTTP 200 with ``error``/``error_description`` (GitHub's documented quirk); single-use
  codes; ``gho_`` tokens of 36 characters after the prefix;
* the API under ``/api/v3``: ``/user``, ``/user/emails``, ``/user/orgs``, ``/user/teams``,
  ``/orgs/{org}/members/{user}`` (204 / 404, 302 without ``read:org``); ``Authorization: Bearer``
  or ``token``; 401 ``Bad credentials`` for unknown or revoked tokens; ``per_page`` (default 30,
  at most 100) and ``page`` with a ``Link`` header carrying ``next``/``last``/``first``/``prev``;
  ``X-RateLimit-*`` on every answer; the primary limit (403, ``X-RateLimit-Remaining: 0``), the
  secondary limit (403 with ``Retry-After``) and injected 5xx answers.
"""

from __future__ import annotations

import math
import secrets
import ssl
import string
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from tests.support.oidc_peer import make_tls_files
from tests.support.standin_http import StandInHandler

CLIENT_ID = "Iv1.8a61f9b3a7aba766"
CLIENT_SECRET = "1f2e3d4c5b6a79880716a5b4c3d2e1f0a9b8c7d6"
CALLBACK = "http://127.0.0.1:5556/dex/callback"
DOCS = "https://docs.github.com/rest"
RATE_LIMIT = 5000


@dataclass
class GitHubUser:
    id: int
    login: str
    name: str | None = None
    public_email: str | None = None
    #: (address, verified, primary)
    emails: list[tuple[str, bool, bool]] = field(default_factory=list)


@dataclass
class GitHubTeam:
    org: str
    name: str
    slug: str
    members: set[str] = field(default_factory=set)


@dataclass
class _Token:
    login: str
    scopes: tuple[str, ...]


@dataclass
class GitHubAPI:
    """The stand-in's state and controls (thread-safe: the server runs in another thread)."""

    base_url: str = ""
    host_name: str = ""
    ca_file: Path = Path()
    users: dict[str, GitHubUser] = field(default_factory=dict)
    orgs: dict[str, set[str]] = field(default_factory=dict)
    org_ids: dict[str, int] = field(default_factory=dict)
    teams: list[GitHubTeam] = field(default_factory=list)
    tokens: dict[str, _Token] = field(default_factory=dict)
    codes: dict[str, tuple[str, tuple[str, ...], str]] = field(default_factory=dict)
    #: Requests left before the primary rate limit answers 403 (None: unlimited).
    remaining: int | None = None
    #: Seconds of the next secondary-limit answer (403 + Retry-After), once.
    secondary_retry_after: int | None = None
    #: (path prefix, status): the next API request under that prefix fails with it, once.
    fail_next: tuple[str, int] | None = None
    requests: list[tuple[str, str]] = field(default_factory=list)
    #: GitHub App mode: user access tokens (``ghu_``) expire after this many seconds and come
    #: with a rotating refresh token (``ghr_``); None: OAuth app tokens that never expire.
    app_token_lifetime: int | None = None
    refresh_tokens: dict[str, _Token] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: int = 1000

    def add_user(self, login: str, **fields: Any) -> GitHubUser:
        with self.lock:
            self._ids += 1
            user = GitHubUser(id=self._ids, login=login, **fields)
            self.users[login] = user
            return user

    def add_member(self, org: str, login: str) -> None:
        with self.lock:
            if org not in self.orgs:
                self._ids += 1
                self.org_ids[org] = self._ids
            self.orgs.setdefault(org, set()).add(login)

    def remove_member(self, org: str, login: str) -> None:
        """GitHub removes a user from the org's teams when they leave the org."""
        with self.lock:
            self.orgs.get(org, set()).discard(login)
            for team in self.teams:
                if team.org == org:
                    team.members.discard(login)

    def add_team(self, org: str, name: str, slug: str, *members: str) -> GitHubTeam:
        with self.lock:
            team = GitHubTeam(org, name, slug, set(members))
            self.teams.append(team)
            return team

    def revoke(self, token: str) -> None:
        with self.lock:
            self.tokens.pop(token, None)

    def tokens_of(self, login: str) -> list[str]:
        with self.lock:
            return [t for t, v in self.tokens.items() if v.login == login]

    def issue_token(self, login: str, scopes: tuple[str, ...]) -> str:
        alphabet = string.ascii_letters + string.digits
        prefix = "gho_" if self.app_token_lifetime is None else "ghu_"
        token = prefix + "".join(secrets.choice(alphabet) for _ in range(36))
        self.tokens[token] = _Token(login, scopes)
        return token

    def token_answer(self, login: str, scopes: tuple[str, ...]) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "access_token": self.issue_token(login, scopes),
            "token_type": "bearer",
            "scope": ",".join(scopes),
        }
        if self.app_token_lifetime is not None:
            alphabet = string.ascii_letters + string.digits
            refresh = "ghr_" + "".join(secrets.choice(alphabet) for _ in range(76))
            self.refresh_tokens[refresh] = _Token(login, scopes)
            answer.update(
                expires_in=self.app_token_lifetime,
                refresh_token=refresh,
                refresh_token_expires_in=15897600,
                scope="",
            )
        return answer

    def expire(self, token: str) -> None:
        """The access token reached its expiry (GitHub then answers 401)."""
        with self.lock:
            self.tokens.pop(token, None)


def _team_json(api: GitHubAPI, team: GitHubTeam, index: int) -> dict[str, Any]:
    org_url = f"{api.base_url}/api/v3/orgs/{team.org}"
    return {
        "id": 7000 + index,
        "node_id": f"T_kwDO{index:06d}",
        "url": f"{api.base_url}/api/v3/teams/{7000 + index}",
        "html_url": f"{api.base_url}/orgs/{team.org}/teams/{team.slug}",
        "name": team.name,
        "slug": team.slug,
        "description": "",
        "privacy": "closed",
        "notification_setting": "notifications_enabled",
        "permission": "pull",
        "members_url": f"{api.base_url}/api/v3/teams/{7000 + index}/members{{/member}}",
        "repositories_url": f"{api.base_url}/api/v3/teams/{7000 + index}/repos",
        "parent": None,
        "members_count": len(team.members),
        "repos_count": 0,
        "organization": {
            "login": team.org,
            "id": api.org_ids.get(team.org, 0),
            "node_id": "O_kgDO",
            "url": org_url,
            "description": None,
        },
    }


def _handler(api: GitHubAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(StandInHandler):
        # -- OAuth web flow -----------------------------------------------------------------

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path == "/login/oauth/authorize":
                self._authorize(parse_qs(parts.query))
            elif parts.path.startswith("/api/v3/"):
                self._api(parts.path[len("/api/v3") :], parse_qs(parts.query))
            else:
                self._send(404, {"message": "Not Found", "documentation_url": DOCS})

        def _authorize(self, query: dict[str, list[str]]) -> None:
            def one(name: str) -> str:
                return query.get(name, [""])[0]

            if one("client_id") != CLIENT_ID:
                self._send(404, b"Not Found", content_type="text/html")
                return
            redirect = one("redirect_uri") or CALLBACK
            if redirect != CALLBACK:
                target = f"{CALLBACK}?" + urlencode(
                    {
                        "error": "redirect_uri_mismatch",
                        "error_description": "The redirect_uri MUST match the registered "
                        "callback URL for this application.",
                        "state": one("state"),
                    }
                )
                self._send(302, None, {"Location": target})
                return
            cookie = self.headers.get("Cookie", "")
            login = cookie.partition("user_session=")[2].split(";")[0]
            with api.lock:
                known = login in api.users
                if known:
                    code = secrets.token_hex(10)
                    scopes = tuple(s for s in one("scope").replace(",", " ").split() if s)
                    api.codes[code] = (login, scopes, redirect)
            if not known:
                self._send(302, None, {"Location": f"{api.base_url}/login"})
                return
            target = f"{redirect}?" + urlencode({"code": code, "state": one("state")})
            self._send(302, None, {"Location": target})

        def do_POST(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length", "0"))
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            if parts.path != "/login/oauth/access_token":
                self._send(404, {"message": "Not Found", "documentation_url": DOCS})
                return
            with api.lock:
                answer = self._exchange(form)
            if "application/json" in self.headers.get("Accept", ""):
                self._send(200, answer)
            else:
                self._send(
                    200,
                    urlencode(answer).encode(),
                    content_type="application/x-www-form-urlencoded; charset=utf-8",
                )

        def _exchange(self, form: dict[str, str]) -> dict[str, Any]:
            if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
                return {
                    "error": "incorrect_client_credentials",
                    "error_description": "The client_id and/or client_secret passed are incorrect.",
                    "error_uri": f"{DOCS}/oauth#incorrect-client-credentials",
                }
            if form.get("grant_type") == "refresh_token":
                entry = api.refresh_tokens.pop(form.get("refresh_token", ""), None)
                if entry is None:
                    return {
                        "error": "bad_refresh_token",
                        "error_description": "The refresh token passed is incorrect or expired.",
                        "error_uri": f"{DOCS}/apps/oauth#bad-refresh-token",
                    }
                return api.token_answer(entry.login, entry.scopes)
            grant = api.codes.pop(form.get("code", ""), None)
            if grant is None:
                return {
                    "error": "bad_verification_code",
                    "error_description": "The code passed is incorrect or expired.",
                    "error_uri": f"{DOCS}/oauth#bad-verification-code",
                }
            login, scopes, redirect = grant
            if form.get("redirect_uri", redirect) != redirect:
                return {
                    "error": "redirect_uri_mismatch",
                    "error_description": "The redirect_uri MUST match the registered "
                    "callback URL for this application.",
                }
            return api.token_answer(login, scopes)

        # -- REST API -----------------------------------------------------------------------

        def _api(self, path: str, query: dict[str, list[str]]) -> None:
            with api.lock:
                api.requests.append(("GET", path))
                status, body, headers = self._route(path, query)
            self._send(status, body, headers)

        def _limit_headers(self, remaining: int) -> dict[str, str]:
            reset = int(time.time()) + 3600
            return {
                "X-RateLimit-Limit": str(RATE_LIMIT),
                "X-RateLimit-Remaining": str(remaining),
                "X-RateLimit-Used": str(RATE_LIMIT - remaining),
                "X-RateLimit-Reset": str(reset),
                "X-RateLimit-Resource": "core",
                "X-GitHub-Media-Type": "github.v3; format=json",
            }

        def _route(self, path: str, query: dict[str, list[str]]) -> tuple[int, Any, dict[str, str]]:
            if not self.headers.get("User-Agent"):
                return 403, {"message": "Request forbidden by administrative rules."}, {}
            if api.fail_next is not None and path.startswith(api.fail_next[0]):
                status = api.fail_next[1]
                api.fail_next = None
                return status, {"message": "Server Error"}, {}
            authorization = self.headers.get("Authorization", "")
            scheme, _, token = authorization.partition(" ")
            grant = api.tokens.get(token) if scheme.lower() in ("bearer", "token") else None
            if grant is None:
                headers = self._limit_headers(59)
                return 401, {"message": "Bad credentials", "documentation_url": DOCS}, headers
            if api.secondary_retry_after is not None:
                wait = api.secondary_retry_after
                api.secondary_retry_after = None
                body = {
                    "message": "You have exceeded a secondary rate limit. Please wait a few "
                    "minutes before you try again.",
                    "documentation_url": f"{DOCS}/overview/rate-limits-for-the-rest-api",
                }
                return 403, body, {"Retry-After": str(wait)}
            if api.remaining is not None:
                if api.remaining <= 0:
                    body = {
                        "message": f"API rate limit exceeded for user ID "
                        f"{api.users[grant.login].id}.",
                        "documentation_url": f"{DOCS}/overview/rate-limits-for-the-rest-api",
                    }
                    return 403, body, self._limit_headers(0)
                api.remaining -= 1
            headers = self._limit_headers(api.remaining if api.remaining is not None else 4999)
            headers["X-OAuth-Scopes"] = ", ".join(grant.scopes)
            user = api.users[grant.login]
            if path == "/user":
                return 200, self._user_json(user), headers
            if path == "/user/emails":
                items = [
                    {"email": a, "verified": v, "primary": p, "visibility": "private"}
                    for a, v, p in user.emails
                ]
                return self._page(path, query, items, headers)
            if path in ("/user/orgs", "/user/teams") and "read:org" not in grant.scopes:
                headers["X-Accepted-OAuth-Scopes"] = "read:org"
                body = {"message": "Resource not accessible by integration"}
                return 403, body, headers
            if path == "/user/orgs":
                items = [
                    {"login": org, "id": api.org_ids[org], "url": f"/orgs/{org}"}
                    for org in sorted(api.orgs)
                    if user.login in api.orgs[org]
                ]
                return self._page(path, query, items, headers)
            if path == "/user/teams":
                items = [
                    _team_json(api, team, index)
                    for index, team in enumerate(api.teams)
                    if user.login in team.members
                ]
                return self._page(path, query, items, headers)
            segments = path.split("/")
            if len(segments) == 5 and segments[1] == "orgs" and segments[3] == "members":
                org, member = segments[2], segments[4]
                if org not in api.orgs:
                    return 404, {"message": "Not Found", "documentation_url": DOCS}, headers
                if "read:org" not in grant.scopes:
                    headers["Location"] = (
                        f"{api.base_url}/api/v3/orgs/{org}/public_members/{member}"
                    )
                    return 302, None, headers
                if member in api.orgs[org]:
                    return 204, None, headers
                return 404, {"message": "Not Found", "documentation_url": DOCS}, headers
            return 404, {"message": "Not Found", "documentation_url": DOCS}, headers

        def _user_json(self, user: GitHubUser) -> dict[str, Any]:
            return {
                "login": user.login,
                "id": user.id,
                "node_id": f"U_kgDO{user.id:08d}",
                "avatar_url": f"{api.base_url}/avatars/u/{user.id}",
                "url": f"{api.base_url}/api/v3/users/{user.login}",
                "html_url": f"{api.base_url}/{user.login}",
                "type": "User",
                "site_admin": False,
                "name": user.name,
                "company": None,
                "email": user.public_email,
                "bio": None,
                "public_repos": 0,
                "created_at": "2020-01-01T00:00:00Z",
                "updated_at": "2024-01-01T00:00:00Z",
            }

        def _page(
            self,
            path: str,
            query: dict[str, list[str]],
            items: list[dict[str, Any]],
            headers: dict[str, str],
        ) -> tuple[int, Any, dict[str, str]]:
            try:
                per_page = min(100, max(1, int(query.get("per_page", ["30"])[0])))
                page = max(1, int(query.get("page", ["1"])[0]))
            except ValueError:
                return 422, {"message": "Validation Failed"}, headers
            last = max(1, math.ceil(len(items) / per_page))

            def link(number: int) -> str:
                return f"{api.base_url}/api/v3{path}?per_page={per_page}&page={number}"

            links = []
            if page < last:
                links += [f'<{link(page + 1)}>; rel="next"', f'<{link(last)}>; rel="last"']
            if page > 1:
                links += [f'<{link(page - 1)}>; rel="prev"', f'<{link(1)}>; rel="first"']
            if links:
                headers["Link"] = ", ".join(links)
            return 200, items[(page - 1) * per_page : page * per_page], headers

    return Handler


@dataclass
class RunningGitHub:
    api: GitHubAPI
    server: ThreadingHTTPServer
    thread: threading.Thread


def start_github(workdir: Path) -> RunningGitHub:
    tls = make_tls_files(workdir / "tls")
    api = GitHubAPI(ca_file=tls.ca_cert)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert, tls.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    port = server.server_address[1]
    api.host_name = f"127.0.0.1:{port}"
    api.base_url = f"https://{api.host_name}"
    thread = threading.Thread(target=server.serve_forever, name="github-standin", daemon=True)
    thread.start()
    return RunningGitHub(api, server, thread)


@pytest.fixture(scope="session")
def github_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitHubAPI]:
    running = start_github(tmp_path_factory.mktemp("github"))
    try:
        yield running.api
    finally:
        running.server.shutdown()
        running.server.server_close()
        running.thread.join(timeout=5)


def browser_authorize(api: GitHubAPI, url: str, login: str) -> dict[str, str]:
    """What a browser signed in to GitHub as ``login`` brings back to the callback: the
    query parameters of the authorize endpoint's redirect."""
    context = ssl.create_default_context(cafile=str(api.ca_file))
    response = httpx.get(
        url, headers={"Cookie": f"user_session={login}"}, verify=context, follow_redirects=False
    )
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert location.startswith(CALLBACK), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
