"""The AuthenticationConfiguration's CEL is evaluated, not just schema-checked: for any claims,
kube-apiserver's JWT authenticator configured by `portcullis kube apiserver-config` and the
TokenReview webhook must agree — the same username and groups, or both refuse the token.

No kube-apiserver runs here; the expressions are evaluated by cel-python, an implementation of
the same CEL specification cel-go implements. kube-apiserver's semantics around them (from
staging/src/k8s.io/apiserver/plugin/pkg/authenticator/token/oidc/oidc.go): claim validation
rules run first on ``claims``; a ``claim``+``prefix`` mapping takes the claim (a string, or
for groups a string or a list of strings) and prepends the prefix; an ``expression`` mapping is
evaluated on ``claims``; user validation rules run on ``user`` last; any rule that is false or
fails to evaluate refuses the token.
"""

from __future__ import annotations

from typing import Any

import celpy
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from portcullis.issuer import parse_config
from portcullis.kube.apiserver import authentication_config, settings_for
from portcullis.kube.usermap import ClaimMapping, UnmappableTokenError

_ENV = celpy.Environment()


def _config(**review: Any) -> Any:
    document = {
        "issuer": "https://issuer.example.com/dex",
        "storage": {"type": "memory"},
        "web": {"http": "127.0.0.1:5556"},
        "enablePasswordDB": True,
        "staticClients": [{"id": "kubectl", "name": "K8s", "public": True}],
        "kubernetes": {
            "kubeconfigPage": {
                "enabled": True,
                "clientID": "kubectl",
                "clusters": [{"name": "prod", "server": "https://k8s.example.com:6443"}],
            },
            "tokenReview": {
                "enabled": True,
                "addr": "127.0.0.1:5559",
                "audiences": ["kubectl"],
                **review,
            },
        },
    }
    return parse_config(yaml.safe_dump(document), environ={})


def _evaluate(expression: str, **activation: Any) -> Any:
    program = _ENV.program(_ENV.compile(expression))
    result = program.evaluate({k: celpy.json_to_cel(v) for k, v in activation.items()})
    if isinstance(result, celpy.CELEvalError):
        raise result
    return result


def _true(result: Any) -> bool:
    """A rule passes only when it evaluates to the boolean true (a non-boolean is an error)."""
    return isinstance(result, celpy.celtypes.BoolType) and bool(result)


def _apiserver(jwt: dict[str, Any], claims: dict[str, Any]) -> tuple[str, list[str]] | None:
    """What kube-apiserver's JWT authenticator makes of ``claims``: (username, groups), or None
    when it refuses the token."""
    try:
        for rule in jwt["claimValidationRules"]:
            if not _true(_evaluate(rule["expression"], claims=claims)):
                return None
        mappings = jwt["claimMappings"]
        if "expression" in mappings["username"]:
            username = _evaluate(mappings["username"]["expression"], claims=claims)
            if not isinstance(username, str):
                return None
        else:
            value = claims.get(mappings["username"]["claim"])
            if not isinstance(value, str):
                return None
            username = mappings["username"]["prefix"] + value
        if not username:
            return None
        raw = claims.get(mappings["groups"]["claim"])
        if raw is None:
            raw = []
        elif isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not all(isinstance(g, str) for g in raw):
            return None
        groups = [mappings["groups"]["prefix"] + g for g in raw]
        user = {"username": str(username), "groups": groups, "uid": claims.get("sub", "")}
        for rule in jwt["userValidationRules"]:
            if not _true(_evaluate(rule["expression"], user=user)):
                return None
    except celpy.CELEvalError:
        return None
    return str(username), groups


def _webhook(mapping: ClaimMapping, claims: dict[str, Any]) -> tuple[str, list[str]] | None:
    try:
        user = mapping.user(claims)
    except UnmappableTokenError:
        return None
    return user.username, list(user.groups)


_NAMES = st.sampled_from(["alice", "bob@example.com", "system:admin", "system:masters", "dev"])
_CLAIMS = st.fixed_dictionaries(
    {"sub": st.sampled_from(["u-1", "system:node:x"])},
    optional={
        "email": st.sampled_from(["alice@example.com", "system:admin"]),
        "email_verified": st.sampled_from([True, False]),
        "preferred_username": _NAMES,
        "groups": st.one_of(_NAMES, st.lists(_NAMES, max_size=3, unique=True)),
    },
)


@pytest.mark.parametrize(
    "review",
    [
        {},  # the defaults: usernameClaim email, prefixes "oidc:"
        {"usernameClaim": "email", "usernamePrefix": "", "groupsPrefix": ""},
        {"usernameClaim": "preferred_username", "usernamePrefix": "", "groupsPrefix": "corp:"},
        {"usernameClaim": "sub", "usernamePrefix": "", "groupsPrefix": ""},
    ],
    ids=["defaults", "email-no-prefix", "preferred-username", "sub-no-prefix"],
)
@settings(max_examples=150, deadline=None)
@given(claims=_CLAIMS)
def test_the_apiserver_config_and_the_webhook_agree_on_every_token(
    review: dict[str, Any], claims: dict[str, Any]
) -> None:
    config = _config(**review)
    (jwt,) = authentication_config(settings_for(config, "prod"))["jwt"]
    mapping = ClaimMapping.from_config(config.raw.kubernetes.token_review)
    assert _webhook(mapping, claims) == _apiserver(jwt, claims), claims


def test_an_unverified_email_is_never_the_username() -> None:
    config = _config()
    (jwt,) = authentication_config(settings_for(config, "prod"))["jwt"]
    claims = {"sub": "u-1", "email": "ceo@example.com", "email_verified": False}
    assert _apiserver(jwt, claims) == ("oidc:u-1", [])
    assert _apiserver(jwt, {**claims, "email_verified": True}) == ("oidc:ceo@example.com", [])


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "system:admin"},
        {"sub": "u-1", "groups": ["dev", "system:masters"]},
        {"sub": "u-1", "groups": "system:masters"},
    ],
)
def test_the_webhook_never_names_a_system_user_or_group(claims: dict[str, Any]) -> None:
    """With empty prefixes, a token naming ``system:masters`` (an LDAP or SAML group anyone
    could be put in, or a subject an upstream lets users pick) must not become cluster-admin
    through the webhook: it is refused, as the AuthenticationConfiguration's user validation
    rules refuse it at the API server."""
    mapping = ClaimMapping.from_config(
        _config(usernameClaim="sub", usernamePrefix="", groupsPrefix="").raw.kubernetes.token_review
    )
    with pytest.raises(UnmappableTokenError, match="system:"):
        mapping.user(claims)
