"""A stand-in for LinkedIn's OAuth 2.0 endpoints and the v2 profile and email APIs.

LinkedIn cannot run here, so this reproduces what the linkedin connector relies on, as LinkedIn
documents it (learn.microsoft.com/linkedin: authorization-code flow, programmatic refresh
tokens, lite profile, primary contact API, error handling, rate limits):

* ``GET /oauth/v2/authorization``: the signed-in browser (an ``li_at`` cookie) goes back to the
  redirect URI with ``code`` and ``state``; a member who declines comes back with
  ``error=user_cancelled_authorize``;
* ``POST /oauth/v2/accessToken``: ``client_id`` and ``client_secret`` in the form (LinkedIn's
  documented style; HTTP Basic is not accepted); authorization codes are single-use and bound
  to the redirect URI; access tokens live 60 days (``expires_in`` 5184000); apps enabled for
  programmatic refresh also get ``refresh_token``/``refresh_token_expires_in``; errors are
  OAuth bodies (``invalid_request``/``invalid_client``/``invalid_grant``);
* ``GET /v2/me`` (lite profile: ``id``, ``localizedFirstName``, ``localizedLastName``,
  ``firstName``/``lastName`` as localized objects) and ``GET /v2/emailAddress?q=members&
  projection=(elements*(handle~))`` (``elements[].handle`` URN and ``handle~.emailAddress``),
  both needing a bearer token with the right scope; LinkedIn's error body
  (``{"serviceErrorCode", "message", "status"}``): 401 for revoked or expired tokens
  (65601/65602), 403 for a missing scope (100), 429 for the daily throttle (no
  ``Retry-After``: LinkedIn's limits reset at midnight UTC), injected 5xx.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from tests.support.standin_http import StandInHandler, server_url, serving

CLIENT_ID = "86q2xy0wlizhxp"
CLIENT_SECRET = "WPL_AP1.Xk2p9Qw3Rt7Yu1Io.4rFvBg=="
CALLBACK = "http://127.0.0.1:5556/dex/callback"
#: LinkedIn access tokens live 60 days.
ACCESS_TOKEN_LIFETIME_S = 5_184_000


@dataclass
class Member:
    id: str
    first_name: str
    last_name: str
    email: str


@dataclass
class _Grant:
    member: str
    scopes: tuple[str, ...]


@dataclass
class LinkedInAPI:
    base_url: str = ""
    members: dict[str, Member] = field(default_factory=dict)
    codes: dict[str, tuple[_Grant, str]] = field(default_factory=dict)
    access_tokens: dict[str, _Grant] = field(default_factory=dict)
    refresh_tokens: dict[str, _Grant] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)
    #: The app is enabled for programmatic refresh tokens (a LinkedIn partner setting).
    programmatic_refresh: bool = False
    #: ``expires_in`` of the access tokens issued (LinkedIn: 60 days).
    access_token_lifetime: int = ACCESS_TOKEN_LIFETIME_S
    throttle_next: bool = False
    fail_next: tuple[str, int] | None = None
    requests: list[str] = field(default_factory=list)
    token_forms: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_member(self, login: str, first: str = "Ada", last: str = "Lovelace") -> Member:
        with self.lock:
            member = Member(secrets.token_urlsafe(7)[:10], first, last, f"{login}@example.com")
            self.members[login] = member
            return member

    def revoke_app(self, login: str) -> None:
        """The member removed the app under Settings > Data privacy > Permitted services."""
        with self.lock:
            for table in (self.access_tokens, self.refresh_tokens):
                for token, grant in list(table.items()):
                    if grant.member == login:
                        self.revoked.add(token)
                        del table[token]

    def _issue(self, grant: _Grant) -> dict[str, Any]:
        access = "AQV" + secrets.token_urlsafe(120)
        self.access_tokens[access] = grant
        answer: dict[str, Any] = {
            "access_token": access,
            "expires_in": self.access_token_lifetime,
            "scope": ",".join(grant.scopes),
        }
        if self.programmatic_refresh:
            refresh = "AQX" + secrets.token_urlsafe(120)
            self.refresh_tokens[refresh] = grant
            answer["refresh_token"] = refresh
            answer["refresh_token_expires_in"] = 31_536_000
        return answer


def _service_error(status: int, code: int, message: str) -> dict[str, Any]:
    return {"serviceErrorCode": code, "message": message, "status": status}


def _handler(api: LinkedInAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(StandInHandler):
        json_content_type = "application/json"

        def _send(
            self,
            status: int,
            body: Any,
            headers: dict[str, str] | None = None,
            content_type: str | None = None,
        ) -> None:
            # LinkedIn names the serving fabric on every answer.
            super()._send(
                status, body, {"X-Li-Fabric": "prod-lva1", **(headers or {})}, content_type
            )

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            if parts.path == "/oauth/v2/authorization":
                self._authorize(query)
                return
            with api.lock:
                api.requests.append(f"{parts.path}?{parts.query}" if parts.query else parts.path)
                status, body, headers = self._api(parts.path, query)
            self._send(status, body, headers)

        def _authorize(self, query: dict[str, str]) -> None:
            if query.get("client_id") != CLIENT_ID or query.get("redirect_uri") != CALLBACK:
                self._send(
                    400,
                    {
                        "error": "invalid_request",
                        "error_description": "The redirect_uri does not match the registered value",
                    },
                )
                return
            state = query.get("state", "")
            cookie = self.headers.get("Cookie", "")
            login = cookie.partition("li_at=")[2].split(";")[0]
            with api.lock:
                if login not in api.members:
                    answer = {
                        "error": "user_cancelled_authorize",
                        "error_description": "The user cancelled the authorization",
                        "state": state,
                    }
                else:
                    code = "AQT" + secrets.token_urlsafe(60)
                    scopes = tuple(query.get("scope", "").split())
                    api.codes[code] = (_Grant(login, scopes), query["redirect_uri"])
                    answer = {"code": code, "state": state}
            self._send(302, None, {"Location": f"{CALLBACK}?{urlencode(answer)}"})

        def do_POST(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length", "0"))
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            if parts.path != "/oauth/v2/accessToken":
                self._send(404, _service_error(404, 0, f"No virtual resource found {parts.path}"))
                return
            with api.lock:
                api.token_forms.append({k: v for k, v in form.items() if k == "grant_type"})
            if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
                self._send(
                    401,
                    {
                        "error": "invalid_client",
                        "error_description": "Client authentication failed",
                    },
                )
                return
            with api.lock:
                if form.get("grant_type") == "authorization_code":
                    entry = api.codes.pop(form.get("code", ""), None)
                    grant = entry[0] if entry and entry[1] == form.get("redirect_uri") else None
                    error = (
                        "invalid_request",
                        "Unable to retrieve access token: appid/redirect uri/code verifier does "
                        "not match authorization code. Or authorization code expired.",
                    )
                elif form.get("grant_type") == "refresh_token":
                    grant = api.refresh_tokens.get(form.get("refresh_token", ""))
                    error = ("invalid_request", "The provided refresh token is invalid")
                else:
                    grant, error = None, ("unsupported_grant_type", "Unsupported grant type")
                if grant is None:
                    body = {"error": error[0], "error_description": error[1]}
                    self._send(400, body)
                    return
                answer = api._issue(grant)
                if form.get("grant_type") == "refresh_token":
                    # LinkedIn keeps the refresh token (its lifetime does not restart).
                    api.refresh_tokens.pop(answer.pop("refresh_token", ""), None)
                    answer["refresh_token"] = form["refresh_token"]
            self._send(200, answer)

        def _api(self, path: str, query: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
            if api.fail_next is not None and path.startswith(api.fail_next[0]):
                status = api.fail_next[1]
                api.fail_next = None
                return status, _service_error(status, 0, "Internal Server Error"), {}
            if api.throttle_next:
                api.throttle_next = False
                message = (
                    "Resource level throttle APPLICATION DAY limit for calls to this resource is "
                    "reached."
                )
                return 429, _service_error(429, 101, message), {}
            authorization = self.headers.get("Authorization", "")
            token = authorization[7:] if authorization.startswith("Bearer ") else ""
            grant = api.access_tokens.get(token)
            if grant is None:
                if token in api.revoked:
                    body = _service_error(
                        401, 65601, "The token used in the request has been revoked by the user"
                    )
                else:
                    body = _service_error(401, 65600, "Invalid access token")
                return 401, body, {}
            member = api.members[grant.member]
            if path == "/v2/me":
                if "r_liteprofile" not in grant.scopes:
                    return 403, _service_error(403, 100, "Not enough permissions"), {}
                locale = {"country": "US", "language": "en"}
                return (
                    200,
                    {
                        "id": member.id,
                        "localizedFirstName": member.first_name,
                        "localizedLastName": member.last_name,
                        "firstName": {
                            "localized": {"en_US": member.first_name},
                            "preferredLocale": locale,
                        },
                        "lastName": {
                            "localized": {"en_US": member.last_name},
                            "preferredLocale": locale,
                        },
                    },
                    {},
                )
            if path == "/v2/emailAddress":
                if "r_emailaddress" not in grant.scopes:
                    return 403, _service_error(403, 100, "Not enough permissions"), {}
                if query.get("q") != "members":
                    return 400, _service_error(400, 100, "Invalid query parameters"), {}
                handle = f"urn:li:emailAddress:{abs(hash(member.email)) % 10**10}"
                element: dict[str, Any] = {"handle": handle}
                if query.get("projection") == "(elements*(handle~))":
                    element["handle~"] = {"emailAddress": member.email}
                return 200, {"elements": [element]}, {}
            return 404, _service_error(404, 0, f"No virtual resource found {path}"), {}

    return Handler


@pytest.fixture(scope="session")
def linkedin_api() -> Iterator[LinkedInAPI]:
    api = LinkedInAPI()
    with serving(_handler(api), "linkedin-standin") as server:
        api.base_url = server_url(server)
        yield api


def linkedin_browser(url: str, login: str) -> dict[str, str]:
    """The callback parameters a browser signed in to LinkedIn as ``login`` brings back."""
    response = httpx.get(url, headers={"Cookie": f"li_at={login}"}, follow_redirects=False)
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert location.startswith(CALLBACK), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
