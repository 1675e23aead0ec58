"""A stand-in for OpenStack Keystone's identity API v3.

Keystone cannot run here, so this reproduces what the keystone connector relies on, as the
identity API reference (docs.openstack.org/api-ref/identity/v3) documents it:

* ``POST /v3/auth/tokens`` with the ``password`` method (user by ``name`` and ``domain.id``):
  201, the token in ``X-Subject-Token``, ``{"token": {"methods", "user": {"id", "name",
  "domain", "password_expires_at"}, "expires_at", "issued_at", "audit_ids"}}``; 401 with
  Keystone's error body ``{"error": {"code", "message", "title"}}`` for a wrong password or an
  unknown or disabled user; 400 for a malformed request;
* ``GET /v3/users/{user_id}`` and ``GET /v3/users/{user_id}/groups`` with ``X-Auth-Token``:
  a user may read their own record and groups, the admin (role ``admin``) anyone's, others get
  403; 404 for an unknown user; 401 for a missing, unknown or revoked token. Lists carry
  ``links`` (``self``, ``previous``, ``next``: null); with ``[DEFAULT] list_limit`` set,
  Keystone cuts a longer list and marks it ``"truncated": true``;
* a 429 with ``Retry-After`` (a rate-limiting proxy in front of Keystone) and injected 5xx.

Every request body is recorded only as its path, so tests can assert what was (not) sent.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from tests.support.standin_http import StandInHandler, server_url, serving

DOMAIN = "default"
ADMIN = "admin"
ADMIN_PASSWORD = "k3ystone-Admin-pw"


@dataclass
class KeystoneUser:
    id: str
    name: str
    password: str
    email: str = ""
    enabled: bool = True
    admin: bool = False
    domain: str = DOMAIN


@dataclass
class KeystoneAPI:
    base_url: str = ""
    users: dict[str, KeystoneUser] = field(default_factory=dict)
    groups: dict[str, set[str]] = field(default_factory=dict)  # group name -> user ids
    tokens: dict[str, str] = field(default_factory=dict)  # token -> user id
    list_limit: int | None = None
    throttle_retry_after: int | None = None
    fail_next: tuple[str, int] | None = None
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_user(
        self, name: str, password: str, *, email: str = "", admin: bool = False
    ) -> KeystoneUser:
        with self.lock:
            user = KeystoneUser(secrets.token_hex(16), name, password, email, admin=admin)
            self.users[user.id] = user
            return user

    def add_to_group(self, group: str, user: KeystoneUser) -> None:
        with self.lock:
            self.groups.setdefault(group, set()).add(user.id)

    def remove_from_group(self, group: str, user: KeystoneUser) -> None:
        with self.lock:
            self.groups.get(group, set()).discard(user.id)

    def delete_user(self, user: KeystoneUser) -> None:
        with self.lock:
            self.users.pop(user.id, None)
            for members in self.groups.values():
                members.discard(user.id)
            for token, owner in list(self.tokens.items()):
                if owner == user.id:
                    del self.tokens[token]

    def find(self, name: str, domain: str) -> KeystoneUser | None:
        for user in self.users.values():
            if user.name == name and user.domain == domain:
                return user
        return None


def _error(code: int, title: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "title": title, "message": message}}


_UNAUTHORIZED = _error(401, "Unauthorized", "The request you have made requires authentication.")


def _handler(api: KeystoneAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(StandInHandler):
        json_content_type = "application/json"

        def _send(
            self,
            status: int,
            body: Any,
            headers: dict[str, str] | None = None,
            content_type: str | None = None,
        ) -> None:
            # Keystone varies every answer on the token it was asked with.
            super()._send(status, body, {"Vary": "X-Auth-Token", **(headers or {})}, content_type)

        def _injected(self, path: str) -> bool:
            if api.fail_next is not None and path.startswith(api.fail_next[0]):
                status = api.fail_next[1]
                api.fail_next = None
                body = _error(status, "Internal Server Error", "An unexpected error occurred.")
                self._send(status, body)
                return True
            if api.throttle_retry_after is not None:
                wait = api.throttle_retry_after
                api.throttle_retry_after = None
                self._send(
                    429, _error(429, "Too Many Requests", "Rate limit"), {"Retry-After": str(wait)}
                )
                return True
            return False

        def do_POST(self) -> None:
            path = urlsplit(self.path).path.rstrip("/")
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length)
            with api.lock:
                api.requests.append(f"POST {path}")
                if self._injected(path):
                    return
            if path != "/v3/auth/tokens":
                self._send(404, _error(404, "Not Found", "The resource could not be found."))
                return
            try:
                user_spec = json.loads(raw)["auth"]["identity"]["password"]["user"]
                methods = json.loads(raw)["auth"]["identity"]["methods"]
                name, password = user_spec["name"], user_spec["password"]
                domain = user_spec["domain"]["id"]
            except (ValueError, KeyError, TypeError):
                message = "Expecting to find identity in auth. The server could not comply."
                self._send(400, _error(400, "Bad Request", message))
                return
            if methods != ["password"] or not isinstance(password, str) or not password:
                self._send(400, _error(400, "Bad Request", "Invalid input for field 'password'"))
                return
            with api.lock:
                user = api.find(name, domain)
                if user is None or not user.enabled or user.password != password:
                    self._send(401, _UNAUTHORIZED)
                    return
                token = "gAAAAA" + secrets.token_urlsafe(140)
                api.tokens[token] = user.id
            body = {
                "token": {
                    "methods": ["password"],
                    "user": {
                        "domain": {"id": user.domain, "name": user.domain.title()},
                        "id": user.id,
                        "name": user.name,
                        "password_expires_at": None,
                    },
                    "audit_ids": [secrets.token_urlsafe(16)],
                    "expires_at": "2099-01-01T00:00:00.000000Z",
                    "issued_at": "2026-01-01T00:00:00.000000Z",
                }
            }
            self._send(201, body, {"X-Subject-Token": token})

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            path = parts.path.rstrip("/")
            with api.lock:
                api.requests.append(f"GET {path}")
                if self._injected(path):
                    return
                status, body = self._get(path)
            self._send(status, body)

        def _get(self, path: str) -> tuple[int, Any]:
            pieces = path.split("/")
            if len(pieces) not in (4, 5) or pieces[:3] != ["", "v3", "users"]:
                return 404, _error(404, "Not Found", "The resource could not be found.")
            caller_id = api.tokens.get(self.headers.get("X-Auth-Token", ""))
            caller = api.users.get(caller_id or "")
            if caller is None:
                return 401, _UNAUTHORIZED
            user_id = unquote(pieces[3])
            wanted = "identity:get_user" if len(pieces) == 4 else "identity:list_groups_for_user"
            if not caller.admin and caller.id != user_id:
                message = f"You are not authorized to perform the requested action: {wanted}."
                return 403, _error(403, "Forbidden", message)
            user = api.users.get(user_id)
            if user is None:
                return 404, _error(404, "Not Found", f"Could not find user: {user_id}.")
            link = f"{api.base_url}/v3/users/{user.id}"
            if len(pieces) == 4:
                record: dict[str, Any] = {
                    "default_project_id": None,
                    "domain_id": user.domain,
                    "enabled": user.enabled,
                    "id": user.id,
                    "name": user.name,
                    "links": {"self": link},
                    "options": {},
                    "password_expires_at": None,
                }
                if user.email:
                    record["email"] = user.email
                return 200, {"user": record}
            if pieces[4] != "groups":
                return 404, _error(404, "Not Found", "The resource could not be found.")
            names = sorted(name for name, members in api.groups.items() if user.id in members)
            items = [
                {
                    "id": f"g-{name}",
                    "name": name,
                    "domain_id": user.domain,
                    "description": "",
                    "links": {"self": f"{api.base_url}/v3/groups/g-{name}"},
                }
                for name in names
            ]
            links: dict[str, Any] = {"self": f"{link}/groups", "previous": None, "next": None}
            if api.list_limit is not None and len(items) > api.list_limit:
                # Keystone's [DEFAULT] list_limit cuts the list and says so; no next link.
                return 200, {"groups": items[: api.list_limit], "links": links, "truncated": True}
            return 200, {"groups": items, "links": links}

    return Handler


@pytest.fixture(scope="session")
def keystone_api() -> Iterator[KeystoneAPI]:
    api = KeystoneAPI()
    with serving(_handler(api), "keystone-standin") as server:
        api.base_url = server_url(server)
        api.add_user(ADMIN, ADMIN_PASSWORD, admin=True)
        yield api
