"""Scope parsing and validation (oidc/scopes.py)."""

from __future__ import annotations

import pytest
from portcullis.oidc.scopes import ScopeError, check_scopes, parse_scopes


def test_parse_scopes_drops_duplicates_and_empty_parts_keeping_order() -> None:
    assert parse_scopes("openid  email openid groups ") == ("openid", "email", "groups")
    assert parse_scopes("") == ()


def test_check_scopes_collects_cross_client_audiences() -> None:
    request = check_scopes(
        ("openid", "email", "audience:server:client_id:peer", "audience:server:client_id:b")
    )
    assert request.audiences == ("peer", "b")
    assert request.has("email")
    assert not request.has("groups")


def test_every_standard_scope_is_accepted() -> None:
    scopes = ("openid", "email", "profile", "groups", "offline_access", "federated:id")
    assert check_scopes(scopes).scopes == scopes


@pytest.mark.parametrize(
    "scopes",
    [("openid", "admin"), ("openid", "audience:server:client_id:"), ("openid", "Email")],
)
def test_unknown_scopes_are_named(scopes: tuple[str, ...]) -> None:
    with pytest.raises(ScopeError, match="unknown scope"):
        check_scopes(scopes)


def test_openid_is_required_unless_waived() -> None:
    with pytest.raises(ScopeError, match="openid"):
        check_scopes(("email",))
    assert check_scopes(("email",), require_openid=False).scopes == ("email",)
