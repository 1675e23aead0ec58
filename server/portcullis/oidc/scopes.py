"""Scope parsing and policy (Dex's scope set plus cross-client audiences)."""

from __future__ import annotations

from dataclasses import dataclass

from portcullis.connectors.base import Scopes

OPENID = "openid"
EMAIL = "email"
PROFILE = "profile"
GROUPS = "groups"
OFFLINE_ACCESS = "offline_access"
FEDERATED_ID = "federated:id"
AUDIENCE_PREFIX = "audience:server:client_id:"

STANDARD_SCOPES = (OPENID, EMAIL, GROUPS, PROFILE, OFFLINE_ACCESS, FEDERATED_ID)


@dataclass(frozen=True)
class ScopeRequest:
    scopes: tuple[str, ...]
    audiences: tuple[str, ...]  # client ids from audience:server:client_id:X

    def has(self, scope: str) -> bool:
        return scope in self.scopes


class ScopeError(ValueError):
    pass


def parse_scopes(raw: str) -> tuple[str, ...]:
    seen: list[str] = []
    for scope in raw.split(" "):
        if scope and scope not in seen:
            seen.append(scope)
    return tuple(seen)


def check_scopes(scopes: tuple[str, ...], *, require_openid: bool = True) -> ScopeRequest:
    """Validate scope names; raise ScopeError naming the first unknown one."""
    if require_openid and OPENID not in scopes:
        raise ScopeError("the openid scope is required")
    audiences: list[str] = []
    for scope in scopes:
        if scope in STANDARD_SCOPES:
            continue
        if scope.startswith(AUDIENCE_PREFIX) and len(scope) > len(AUDIENCE_PREFIX):
            audiences.append(scope[len(AUDIENCE_PREFIX) :])
            continue
        raise ScopeError(f"unknown scope {scope!r}")
    return ScopeRequest(scopes=scopes, audiences=tuple(audiences))


def connector_scopes(granted: tuple[str, ...]) -> Scopes:
    """What a connector needs to know of the granted scopes (whether to fetch groups, whether
    the login must allow an upstream refresh): the same answer for a browser login, the
    password grant and a refresh."""
    return Scopes(offline_access=OFFLINE_ACCESS in granted, groups=GROUPS in granted)
