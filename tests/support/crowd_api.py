"""A stand-in for Atlassian Crowd's user management REST API (``/crowd/rest/usermanagement/1``).

Crowd cannot run here, so this reproduces what the atlassian-crowd connector relies on, as
Atlassian documents it (Crowd REST Resources, "Crowd REST API" usermanagement/1):

* every call authenticates the *application* with HTTP Basic; a wrong name or password is a
  401 with the plain-text body ``Application failed to authenticate`` and a caller outside the
  application's remote addresses a 403 ``The server understood the request but refuses to
  authorize it.`` (Crowd's own texts, which Dex matches on);
* ``POST /session`` ``{"username", "password"}``: 201 ``{"token", "user": {"name"},
  "created-date", "expiry-date"}``; 400 ``{"reason": "INVALID_USER_AUTHENTICATION",
  "message"}`` for a wrong password or unknown user, ``INACTIVE_ACCOUNT`` for a deactivated
  one, ``EXPIRED_CREDENTIAL`` for an expired password, and ``INVALID_USER_AUTHENTICATION`` for
  a user not allowed to use the application (not in one of its groups);
  ``?validate-password=false`` skips only the password check;
* ``GET /user?username=``: 200 user (``key``, ``name``, ``active``, ``email``, ``first-name``,
  ``last-name``, ``display-name``), 404 ``{"reason": "USER_NOT_FOUND"}``;
* ``GET /user/group/nested?username=&start-index=&max-results=``: direct and inherited groups,
  ``{"expand": "group", "groups": [{"link", "name"}]}``, paged by ``start-index``; the stand-in
  caps ``max-results`` at ``page_cap`` (to exercise paging);
* a 429 with ``Retry-After`` (a rate-limiting proxy in front of Crowd) and injected 5xx.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.standin_http import StandInHandler, server_url, serving

APP_NAME = "portcullis"
APP_PASSWORD = "crowd-App-p4ss"
PREFIX = "/crowd/rest/usermanagement/1"


@dataclass
class CrowdUser:
    key: str
    name: str
    password: str
    email: str
    active: bool = True
    expired: bool = False


@dataclass
class CrowdAPI:
    base_url: str = ""  # the context URL (".../crowd"), as baseURL is configured
    users: dict[str, CrowdUser] = field(default_factory=dict)
    groups: dict[str, set[str]] = field(default_factory=dict)  # group -> direct member names
    parents: dict[str, str] = field(default_factory=dict)  # nested group -> parent group
    app_groups: set[str] = field(default_factory=set)  # empty: every user may authenticate
    page_cap: int = 1000
    throttle_retry_after: int | None = None
    fail_next: tuple[str, int] | None = None
    refuse_remote_address: bool = False
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_user(self, name: str, password: str, email: str = "") -> CrowdUser:
        with self.lock:
            user = CrowdUser(
                f"32769:{secrets.token_hex(8)}", name, password, email or f"{name}@example.org"
            )
            self.users[name] = user
            return user

    def add_to_group(self, group: str, name: str) -> None:
        with self.lock:
            self.groups.setdefault(group, set()).add(name)

    def remove_from_group(self, group: str, name: str) -> None:
        with self.lock:
            self.groups.get(group, set()).discard(name)

    def delete_user(self, name: str) -> None:
        with self.lock:
            self.users.pop(name, None)
            for members in self.groups.values():
                members.discard(name)

    def nested_groups(self, name: str) -> list[str]:
        found: list[str] = []
        for group in sorted(g for g, members in self.groups.items() if name in members):
            while group and group not in found:
                found.append(group)
                group = self.parents.get(group, "")
        return found


def _handler(api: CrowdAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(StandInHandler):
        json_content_type = "application/json"
        text_content_type = "text/plain;charset=UTF-8"

        def _gate(self, method: str) -> tuple[str, dict[str, str]] | None:
            """Path under the API and query, or None when an answer was already sent."""
            parts = urlsplit(self.path)
            if not parts.path.startswith(PREFIX):
                self._send(404, "Not Found")
                return None
            path = parts.path[len(PREFIX) :]
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            with api.lock:
                api.requests.append(f"{method} {path}")
                if api.fail_next is not None and path.startswith(api.fail_next[0]):
                    status, api.fail_next = api.fail_next[1], None
                    self._send(status, "<html><body>Internal Server Error</body></html>")
                    return None
                if api.throttle_retry_after is not None:
                    wait, api.throttle_retry_after = api.throttle_retry_after, None
                    self._send(429, "Too Many Requests", {"Retry-After": str(wait)})
                    return None
            if api.refuse_remote_address:
                self._send(403, "The server understood the request but refuses to authorize it.")
                return None
            scheme, _, encoded = self.headers.get("Authorization", "").partition(" ")
            try:
                app, _, password = base64.b64decode(encoded).decode().partition(":")
            except ValueError:
                app, password = "", ""
            if scheme != "Basic" or (app, password) != (APP_NAME, APP_PASSWORD):
                self._send(401, "Application failed to authenticate")
                return None
            return path, query

        def _user_json(self, user: CrowdUser) -> dict[str, Any]:
            first, _, last = user.name.partition(".")
            return {
                "expand": "attributes",
                "link": {
                    "href": f"{api.base_url}/rest/usermanagement/1/user?username={user.name}",
                    "rel": "self",
                },
                "name": user.name,
                "password": {"link": {"href": "", "rel": "edit"}},
                "key": user.key,
                "active": user.active,
                "first-name": first.title(),
                "last-name": last.title(),
                "display-name": f"{first.title()} {last.title()}".strip(),
                "email": user.email,
            }

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            gate = self._gate("POST")
            if gate is None:
                return
            path, query = gate
            if path != "/session":
                self._send(404, "Not Found")
                return
            try:
                request = json.loads(raw)
                name = request["username"]
            except (ValueError, KeyError, TypeError):
                self._send(400, {"reason": "ILLEGAL_ARGUMENT", "message": "Bad request"})
                return
            check_password = query.get("validate-password", "true") != "false"
            with api.lock:
                user = api.users.get(name)
                if user is None or (check_password and request.get("password") != user.password):
                    message = f"Account with name <{name}> failed to authenticate"
                    self._send(400, {"reason": "INVALID_USER_AUTHENTICATION", "message": message})
                    return
                if not user.active:
                    message = f"Account with name <{name}> is inactive"
                    self._send(400, {"reason": "INACTIVE_ACCOUNT", "message": message})
                    return
                if check_password and user.expired:
                    message = f"Credential for <{name}> has expired"
                    self._send(400, {"reason": "EXPIRED_CREDENTIAL", "message": message})
                    return
                if api.app_groups and not api.app_groups & set(api.nested_groups(name)):
                    message = f"User <{name}> does not have access to application <{APP_NAME}>"
                    self._send(400, {"reason": "INVALID_USER_AUTHENTICATION", "message": message})
                    return
            body = {
                "expand": "user",
                "token": secrets.token_urlsafe(18),
                "user": {"link": {"href": "", "rel": "self"}, "name": user.name},
                "link": {"href": "", "rel": "self"},
                "created-date": 1764460800000,
                "expiry-date": 1764462600000,
            }
            self._send(201, body)

        def do_GET(self) -> None:
            gate = self._gate("GET")
            if gate is None:
                return
            path, query = gate
            name = query.get("username", "")
            with api.lock:
                user = api.users.get(name)
                if user is None:
                    message = f"User <{name}> does not exist"
                    self._send(404, {"reason": "USER_NOT_FOUND", "message": message})
                    return
                if path == "/user":
                    self._send(200, self._user_json(user))
                    return
                if path != "/user/group/nested":
                    self._send(404, "Not Found")
                    return
                try:
                    start = int(query.get("start-index", "0"))
                    size = min(api.page_cap, int(query.get("max-results", "1000")))
                except ValueError:
                    self._send(400, {"reason": "ILLEGAL_ARGUMENT", "message": "bad paging"})
                    return
                names = api.nested_groups(name)[start : start + size]
            groups = [
                {
                    "link": {
                        "href": f"{api.base_url}/rest/usermanagement/1/group?groupname={group}",
                        "rel": "self",
                    },
                    "name": group,
                }
                for group in names
            ]
            self._send(200, {"expand": "group", "groups": groups})

    return Handler


@pytest.fixture(scope="session")
def crowd_api() -> Iterator[CrowdAPI]:
    api = CrowdAPI()
    with serving(_handler(api), "crowd-standin") as server:
        api.base_url = server_url(server) + "/crowd"
        yield api
