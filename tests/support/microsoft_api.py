"""A stand-in for the Microsoft identity platform v2.0 endpoints and Microsoft Graph v1.0.

Microsoft cannot run here, so this reproduces what the microsoft connector relies on, as
Microsoft documents it (identity-platform/v2-oauth2-auth-code-flow, graph/api/user-get,
graph/api/user-list-transitivememberof, graph/paging, graph/errors, graph/throttling):

* ``GET /{tenant}/oauth2/v2.0/authorize``: the signed-in browser (an ``ESTSAUTH`` cookie) goes
  back to the redirect URI with ``code`` and ``state``; ``prompt`` and ``domain_hint`` recorded;
* ``POST /{tenant}/oauth2/v2.0/token``: client id and secret in the form; code and refresh
  grants; refresh tokens rotate; AADSTS-style ``invalid_grant`` (400) and ``invalid_client``
  (401) bodies with ``error_codes``, ``trace_id``, ``correlation_id``;
* Graph ``GET /v1.0/me`` with ``$select``; ``GET /v1.0/me/transitiveMemberOf/microsoft.graph.group``
  with ``$select`` and ``$top`` (default 100, at most 999) and server-driven paging through
  ``@odata.nextLink`` carrying a ``$skiptoken``; Graph error bodies (``{"error": {"code",
  "message", "innerError"}}``): 401 ``InvalidAuthenticationToken`` for revoked tokens, 429
  ``TooManyRequests`` with ``Retry-After``, injected 5xx.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from tests.support.standin_http import StandInHandler, server_url, serving

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "00001111-aaaa-2222-bbbb-3333cccc4444"
CLIENT_SECRET = "qWgdYAmab0YSkuL1qKv5bPX~Y2aTDvW5bp.uTcCP"
CALLBACK = "http://127.0.0.1:5556/dex/callback"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass
class EntraUser:
    id: str
    display_name: str
    upn: str
    #: group ids the user is a transitive member of
    groups: list[str] = field(default_factory=list)
    mail_nickname: str = ""
    on_premises_sam_account_name: str | None = None


@dataclass
class EntraGroup:
    id: str
    display_name: str
    security_enabled: bool


@dataclass
class _Grant:
    user: str
    scopes: tuple[str, ...]


def _access_token() -> str:
    """JWT-shaped, as Entra's access tokens are (opaque to the client)."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    header = part({"typ": "JWT", "alg": "RS256", "kid": "stand-in"})
    payload = part({"aud": "00000003-0000-0000-c000-000000000000", "jti": secrets.token_hex(8)})
    return f"{header}.{payload}.{secrets.token_urlsafe(32)}"


@dataclass
class MicrosoftAPI:
    base_url: str = ""
    users: dict[str, EntraUser] = field(default_factory=dict)
    groups: dict[str, EntraGroup] = field(default_factory=dict)
    codes: dict[str, tuple[_Grant, str]] = field(default_factory=dict)
    access_tokens: dict[str, _Grant] = field(default_factory=dict)
    refresh_tokens: dict[str, _Grant] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)
    authorize_queries: list[dict[str, str]] = field(default_factory=list)
    #: Client assertions (federated credentials) the app accepts instead of its secret.
    assertions: set[str] = field(default_factory=set)
    throttle_retry_after: int | None = None
    fail_next: tuple[str, int] | None = None
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_user(self, login: str, display_name: str = "") -> EntraUser:
        with self.lock:
            user = EntraUser(
                str(uuid.uuid4()),
                display_name or login,
                f"{login}@Contoso.com",
                mail_nickname=login,
            )
            self.users[login] = user
            return user

    def add_group(self, display_name: str, security_enabled: bool = True) -> EntraGroup:
        with self.lock:
            group = EntraGroup(str(uuid.uuid4()), display_name, security_enabled)
            self.groups[group.id] = group
            return group

    def revoke_sessions(self, login: str) -> None:
        """revokeSignInSessions: every refresh token and access token of the user dies."""
        with self.lock:
            for table in (self.access_tokens, self.refresh_tokens):
                for token, grant in list(table.items()):
                    if grant.user == login:
                        self.revoked.add(token)
                        del table[token]

    def _issue(self, grant: _Grant) -> dict[str, Any]:
        access = _access_token()
        self.access_tokens[access] = grant
        answer: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": " ".join(s for s in grant.scopes if s != "offline_access"),
            "expires_in": 3599,
            "ext_expires_in": 3599,
            "access_token": access,
        }
        if "offline_access" in grant.scopes:
            refresh = "0.A" + secrets.token_urlsafe(96)
            self.refresh_tokens[refresh] = grant
            answer["refresh_token"] = refresh
        return answer


def _aad_error(error: str, code: int, description: str) -> dict[str, Any]:
    return {
        "error": error,
        "error_description": f"AADSTS{code}: {description} Trace ID: {uuid.uuid4()} "
        f"Correlation ID: {uuid.uuid4()} Timestamp: 2026-01-01 00:00:00Z",
        "error_codes": [code],
        "timestamp": "2026-01-01 00:00:00Z",
        "trace_id": str(uuid.uuid4()),
        "correlation_id": str(uuid.uuid4()),
    }


def _graph_error(code: str, message: str) -> dict[str, Any]:
    return {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": "2026-01-01T00:00:00",
                "request-id": str(uuid.uuid4()),
                "client-request-id": str(uuid.uuid4()),
            },
        }
    }


def _handler(api: MicrosoftAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(StandInHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            segments = parts.path.split("/")
            if len(segments) == 5 and segments[2:] == ["oauth2", "v2.0", "authorize"]:
                self._authorize(segments[1], query)
            elif parts.path.startswith("/v1.0/"):
                with api.lock:
                    api.requests.append(parts.path)
                    status, body, headers = self._graph(parts.path, query)
                self._send(status, body, headers)
            else:
                self._send(404, _graph_error("BadRequest", "Resource not found for the segment."))

        def _authorize(self, tenant: str, query: dict[str, str]) -> None:
            with api.lock:
                api.authorize_queries.append(query)
            if query.get("client_id") != CLIENT_ID or query.get("redirect_uri") != CALLBACK:
                self._send(
                    400, _aad_error("invalid_request", 50011, "The redirect URI does not match.")
                )
                return
            if tenant not in (TENANT, "common", "organizations"):
                self._send(
                    400, _aad_error("invalid_tenant", 90002, f"Tenant '{tenant}' not found.")
                )
                return
            cookie = self.headers.get("Cookie", "")
            login = cookie.partition("ESTSAUTH=")[2].split(";")[0]
            state = query.get("state", "")
            with api.lock:
                if login not in api.users:
                    error = {"error": "login_required", "state": state}
                    self._send(302, None, {"Location": f"{CALLBACK}?{urlencode(error)}"})
                    return
                code = "0.A" + secrets.token_urlsafe(48)
                api.codes[code] = (_Grant(login, tuple(query.get("scope", "").split())), CALLBACK)
            self._send(
                302, None, {"Location": f"{CALLBACK}?{urlencode({'code': code, 'state': state})}"}
            )

        def do_POST(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length", "0"))
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            if not parts.path.endswith("/oauth2/v2.0/token"):
                self._send(404, _graph_error("BadRequest", "Unsupported segment."))
                return
            assertion_ok = (
                form.get("client_assertion_type") == ASSERTION_TYPE
                and form.get("client_assertion") in api.assertions
                and "client_secret" not in form
            )
            secret_ok = form.get("client_secret") == CLIENT_SECRET
            if form.get("client_id") != CLIENT_ID or not (secret_ok or assertion_ok):
                self._send(
                    401,
                    _aad_error(
                        "invalid_client",
                        7000215,
                        "Invalid client secret provided. Ensure the secret being sent in the "
                        "request is the client secret value, not the client secret ID.",
                    ),
                )
                return
            with api.lock:
                if form.get("grant_type") == "authorization_code":
                    entry = api.codes.pop(form.get("code", ""), None)
                    grant = entry[0] if entry and entry[1] == form.get("redirect_uri") else None
                    description = "The provided authorization code or refresh token has expired."
                    code = 70008
                else:
                    token = form.get("refresh_token", "")
                    grant = api.refresh_tokens.pop(token, None)
                    code = 50173
                    description = (
                        "The provided grant has expired due to it being revoked, a fresh auth "
                        "token is needed."
                    )
                if grant is None:
                    self._send(400, _aad_error("invalid_grant", code, description))
                    return
                answer = api._issue(grant)
            self._send(200, answer)

        def _graph(self, path: str, query: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
            request_id = {"request-id": str(uuid.uuid4())}
            if api.fail_next is not None and path.startswith(api.fail_next[0]):
                status = api.fail_next[1]
                api.fail_next = None
                body = _graph_error("serviceNotAvailable", "Service unavailable.")
                return status, body, {**request_id, "Retry-After": "10"}
            if api.throttle_retry_after is not None:
                wait = api.throttle_retry_after
                api.throttle_retry_after = None
                body = _graph_error("TooManyRequests", "Too many requests.")
                return 429, body, {**request_id, "Retry-After": str(wait)}
            authorization = self.headers.get("Authorization", "")
            token = authorization[7:] if authorization.startswith("Bearer ") else ""
            grant = api.access_tokens.get(token)
            if grant is None:
                message = (
                    "Lifetime validation failed, the token is expired."
                    if token in api.revoked
                    else "IDX14100: JWT is not well formed."
                )
                return 401, _graph_error("InvalidAuthenticationToken", message), request_id
            user = api.users[grant.user]
            if path == "/v1.0/me":
                properties = {
                    "id": user.id,
                    "displayName": user.display_name,
                    "userPrincipalName": user.upn,
                    "mailNickname": user.mail_nickname,
                    "onPremisesSamAccountName": user.on_premises_sam_account_name,
                }
                select = query.get("$select", "id,displayName,userPrincipalName").split(",")
                body = {
                    "@odata.context": f"{api.base_url}/v1.0/$metadata#users("
                    f"{','.join(select)})/$entity",
                    **{k: v for k, v in properties.items() if k in select},
                }
                return 200, body, request_id
            if path == "/v1.0/me/transitiveMemberOf/microsoft.graph.group":
                if "directory.read.all" not in {s.lower() for s in grant.scopes}:
                    body = _graph_error(
                        "Authorization_RequestDenied",
                        "Insufficient privileges to complete the operation.",
                    )
                    return 403, body, request_id
                top = min(999, max(1, int(query.get("$top", "100"))))
                start = int(query.get("$skiptoken", "0") or "0")
                members = [api.groups[g] for g in user.groups if g in api.groups]
                page = members[start : start + top]
                body = {
                    "@odata.context": f"{api.base_url}/v1.0/$metadata#groups(id,displayName,"
                    "securityEnabled)",
                    "value": [
                        {
                            "@odata.type": "#microsoft.graph.group",
                            "id": g.id,
                            "displayName": g.display_name,
                            "securityEnabled": g.security_enabled,
                        }
                        for g in page
                    ],
                }
                if start + top < len(members):
                    select = query.get("$select", "")
                    next_query = urlencode(
                        {"$select": select, "$top": top, "$skiptoken": str(start + top)}
                    )
                    body["@odata.nextLink"] = f"{api.base_url}{path}?{next_query}"
                return 200, body, request_id
            return 404, _graph_error("Request_ResourceNotFound", "Resource not found."), request_id

    return Handler


@pytest.fixture(scope="session")
def microsoft_api() -> Iterator[MicrosoftAPI]:
    api = MicrosoftAPI()
    with serving(_handler(api), "microsoft-standin") as server:
        api.base_url = server_url(server)
        yield api


def microsoft_browser(url: str, login: str) -> dict[str, str]:
    """The callback parameters a browser signed in to Microsoft as ``login`` brings back."""
    response = httpx.get(url, headers={"Cookie": f"ESTSAUTH={login}"}, follow_redirects=False)
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert location.startswith(CALLBACK), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
