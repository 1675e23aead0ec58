"""A stand-in for an OpenShift cluster's API server and built-in OAuth server.

OpenShift cannot run here, so this reproduces what the openshift connector relies on, as
OpenShift documents it (Authentication and authorization: "Understanding the OAuth server",
``OAuthClient``, and the ``user.openshift.io/v1`` API):

* ``GET /.well-known/oauth-authorization-server`` on the API server: RFC 8414 metadata naming
  ``/oauth/authorize`` and ``/oauth/token`` (here on the same host; a real cluster serves them
  from ``oauth-openshift.apps...``);
* ``GET /oauth/authorize``: the signed-in browser (an ``ssn`` cookie) goes back to the
  ``OAuthClient``'s redirect URI with ``code`` and ``state``; a scope other than ``user:*``
  is refused like the server does (``invalid_scope`` on the redirect);
* ``POST /oauth/token``: client authentication with HTTP Basic or in the form; an access token
  ``sha256~...`` valid ``expires_in`` 86400 s and no refresh token; ``invalid_grant``/
  ``unauthorized_client`` JSON errors;
* ``GET /apis/user.openshift.io/v1/users/~`` with ``Authorization: Bearer``: the ``User``
  (``metadata.name``, ``metadata.uid``, ``fullName``, ``identities``, ``groups``); 401 with a
  ``Status`` object (``reason: Unauthorized``) for a missing, unknown or revoked token;
* a 429 with ``Retry-After`` (API priority and fairness answers so) and injected 5xx.
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

CLIENT_ID = "portcullis"
CLIENT_SECRET = "os-client-secret-7Hq2"
CALLBACK = "http://127.0.0.1:5556/dex/callback"


@dataclass
class OpenShiftUser:
    name: str
    uid: str
    full_name: str = ""
    groups: list[str] = field(default_factory=list)


@dataclass
class OpenShiftAPI:
    base_url: str = ""
    users: dict[str, OpenShiftUser] = field(default_factory=dict)
    codes: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    throttle_retry_after: int | None = None
    fail_next: tuple[str, int] | None = None
    requests: list[str] = field(default_factory=list)
    scopes_seen: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_user(self, name: str, *groups: str) -> OpenShiftUser:
        with self.lock:
            user = OpenShiftUser(name, str(uuid.uuid4()), name.title(), list(groups))
            self.users[name] = user
            return user

    def revoke_tokens(self, name: str) -> None:
        """``oc delete oauthaccesstokens`` for the user."""
        with self.lock:
            for token, owner in list(self.tokens.items()):
                if owner == name:
                    del self.tokens[token]


# The OAuth server's (osin's) error descriptions.
_UNAUTHORIZED_CLIENT = "The client is not authorized to request a token using this method."
_INVALID_GRANT = (
    "The provided authorization grant is invalid, expired, revoked, does not match the "
    "redirection URI used in the authorization request, or was issued to another client."
)


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _handler(api: OpenShiftAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(StandInHandler):
        json_content_type = "application/json"

        def _injected(self, path: str) -> bool:
            with api.lock:
                api.requests.append(path)
                if api.fail_next is not None and path.startswith(api.fail_next[0]):
                    status, api.fail_next = api.fail_next[1], None
                    self._send(status, _status(status, "InternalError", "Internal error"))
                    return True
                if api.throttle_retry_after is not None:
                    wait, api.throttle_retry_after = api.throttle_retry_after, None
                    body = _status(
                        429, "TooManyRequests", "Too many requests, please try again later."
                    )
                    self._send(429, body, {"Retry-After": str(wait)})
                    return True
            return False

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            if self._injected(parts.path):
                return
            if parts.path == "/.well-known/oauth-authorization-server":
                self._send(
                    200,
                    {
                        "issuer": api.base_url,
                        "authorization_endpoint": f"{api.base_url}/oauth/authorize",
                        "token_endpoint": f"{api.base_url}/oauth/token",
                        "scopes_supported": [
                            "user:check-access",
                            "user:full",
                            "user:info",
                            "user:list-projects",
                            "user:list-scoped-projects",
                        ],
                        "response_types_supported": ["code", "token"],
                        "grant_types_supported": ["authorization_code", "implicit"],
                        "code_challenge_methods_supported": ["plain", "S256"],
                    },
                )
                return
            if parts.path == "/oauth/authorize":
                if query.get("client_id") != CLIENT_ID or query.get("redirect_uri") != CALLBACK:
                    self._send(400, {"error": "invalid_request"})
                    return
                scope = query.get("scope", "")
                api.scopes_seen.append(scope)
                state = query.get("state", "")
                if not scope or not all(s.startswith("user:") for s in scope.split()):
                    target = f"{CALLBACK}?{urlencode({'error': 'invalid_scope', 'state': state})}"
                    self._send(302, None, {"Location": target})
                    return
                name = self.headers.get("Cookie", "").partition("ssn=")[2].split(";")[0]
                with api.lock:
                    if name not in api.users:
                        self._send(302, None, {"Location": f"{api.base_url}/login"})
                        return
                    code = secrets.token_urlsafe(32)
                    api.codes[code] = name
                target = f"{CALLBACK}?{urlencode({'code': code, 'state': state})}"
                self._send(302, None, {"Location": target})
                return
            if parts.path == "/apis/user.openshift.io/v1/users/~":
                scheme, _, token = self.headers.get("Authorization", "").partition(" ")
                with api.lock:
                    owner = api.tokens.get(token, "") if scheme == "Bearer" else ""
                    user = api.users.get(owner)
                if user is None:
                    self._send(401, _status(401, "Unauthorized", "Unauthorized"))
                    return
                body = {
                    "kind": "User",
                    "apiVersion": "user.openshift.io/v1",
                    "metadata": {
                        "name": user.name,
                        "uid": user.uid,
                        "resourceVersion": "4711",
                        "creationTimestamp": "2026-01-01T00:00:00Z",
                    },
                    "fullName": user.full_name,
                    "identities": [f"htpasswd_provider:{user.name}"],
                    "groups": list(user.groups),
                }
                self._send(200, body)
                return
            self._send(
                404, _status(404, "NotFound", "the server could not find the requested resource")
            )

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            path = urlsplit(self.path).path
            if self._injected(path):
                return
            if path != "/oauth/token":
                self._send(404, _status(404, "NotFound", "not found"))
                return
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
            authorization = self.headers.get("Authorization", "")
            if authorization.startswith("Basic "):
                user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
                client_id, secret = unquote(user), unquote(password)
            if client_id != CLIENT_ID or secret != CLIENT_SECRET:
                self._send(
                    401,
                    {
                        "error": "unauthorized_client",
                        "error_description": _UNAUTHORIZED_CLIENT,
                    },
                )
                return
            with api.lock:
                name = api.codes.pop(form.get("code", ""), None)
                if (
                    form.get("grant_type") != "authorization_code"
                    or form.get("redirect_uri") != CALLBACK
                ):
                    name = None
                if name is None:
                    self._send(
                        400,
                        {
                            "error": "invalid_grant",
                            "error_description": _INVALID_GRANT,
                        },
                    )
                    return
                token = "sha256~" + secrets.token_urlsafe(32)
                api.tokens[token] = name
            self._send(
                200,
                {
                    "access_token": token,
                    "token_type": "Bearer",
                    "expires_in": 86400,
                    "scope": "user:info",
                },
            )

    return Handler


@pytest.fixture(scope="session")
def openshift_api() -> Iterator[OpenShiftAPI]:
    api = OpenShiftAPI()
    with serving(_handler(api), "openshift-standin") as server:
        api.base_url = server_url(server)
        yield api


def openshift_browser(url: str, name: str) -> dict[str, str]:
    """The callback parameters a browser signed in to OpenShift as ``name`` brings back."""
    response = httpx.get(url, headers={"Cookie": f"ssn={name}"}, follow_redirects=False)
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert location.startswith(CALLBACK), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
