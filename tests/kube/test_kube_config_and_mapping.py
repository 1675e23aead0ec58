"""The `kubernetes:` config section (validation messages name the YAML path) and the pure
pieces of a review: claim mapping and review-audience semantics."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from portcullis.config.load import ConfigError
from portcullis.config.model import TokenReviewSection
from portcullis.issuer import parse_config
from portcullis.kube.tokenreview import ReviewRequest, TokenReviewer, parse_review
from portcullis.kube.usermap import ClaimMapping, UnmappableTokenError

BASE: dict[str, Any] = {
    "issuer": "https://issuer.example.com/dex",
    "storage": {"type": "memory"},
    "web": {"http": "127.0.0.1:5556"},
    "enablePasswordDB": True,
    "staticClients": [{"id": "kubernetes", "name": "K8s", "public": True}],
}


def _problems(kubernetes: dict[str, Any]) -> list[str]:
    text = yaml.safe_dump({**BASE, "kubernetes": kubernetes})
    with pytest.raises(ConfigError) as info:
        parse_config(text, environ={})
    return info.value.problems


def _review(**values: Any) -> TokenReviewSection:
    return TokenReviewSection.model_validate(
        {"enabled": True, "addr": "127.0.0.1:5559", "audiences": ["kubernetes"], **values}
    )


def test_webhook_on_a_public_address_requires_tls() -> None:
    problems = _problems(
        {"tokenReview": {"enabled": True, "addr": "0.0.0.0:5559", "audiences": ["k"]}}
    )
    assert len(problems) == 1
    assert problems[0].startswith("kubernetes.tokenReview: tlsCert and tlsKey are required")


def test_webhook_needs_an_address_and_an_audience() -> None:
    assert _problems({"tokenReview": {"enabled": True, "audiences": ["k"]}}) == [
        "kubernetes.tokenReview: addr is required when enabled"
    ]
    (problem,) = _problems({"tokenReview": {"enabled": True, "addr": "127.0.0.1:1"}})
    assert problem.startswith("kubernetes.tokenReview: audiences: at least one is required")


def test_unknown_kubernetes_keys_and_bad_paths_are_named() -> None:
    problems = _problems({"tokenReview": {"enabled": False, "path": "tokenreview", "bogus": 1}})
    assert "kubernetes.tokenReview.bogus: unknown key (not a Dex or Portcullis setting)" in problems
    assert any(
        p.startswith("kubernetes.tokenReview.path: must be an absolute URL path") for p in problems
    )


def test_kubeconfig_cluster_ca_must_be_base64_pem() -> None:
    problems = _problems(
        {
            "kubeconfigPage": {
                "clusters": [
                    {"name": "a", "server": "https://a:6443", "certificateAuthorityData": "%%"}
                ]
            }
        }
    )
    assert problems == [
        "kubernetes.kubeconfigPage.clusters[0].certificateAuthorityData: must be base64 of a PEM "
        "certificate (as in a kubeconfig)"
    ]


def test_loopback_webhook_without_tls_is_accepted() -> None:
    text = yaml.safe_dump(
        {
            **BASE,
            "kubernetes": {
                "tokenReview": {
                    "enabled": True,
                    "addr": "127.0.0.1:5559",
                    "audiences": ["kubernetes"],
                }
            },
        }
    )
    config = parse_config(text, environ={})
    assert config.raw.kubernetes.token_review.username_prefix == "oidc:"


CLAIMS = {
    "iss": "https://issuer.example.com/dex",
    "sub": "CgNkZXYSBWxvY2Fs",
    "aud": "kubernetes",
    "email": "dev@example.com",
    "email_verified": True,
    "groups": ["developers", "ops", "developers"],
    "jti": "j1",
}


def test_unverified_email_maps_to_the_subject_instead() -> None:
    mapping = ClaimMapping.from_config(_review())
    assert mapping.user(CLAIMS).username == "oidc:dev@example.com"
    unverified = {**CLAIMS, "email_verified": False}
    assert mapping.user(unverified).username == "oidc:CgNkZXYSBWxvY2Fs"
    assert mapping.user(CLAIMS).groups == ("oidc:developers", "oidc:ops")


def test_custom_claims_and_bad_groups() -> None:
    mapping = ClaimMapping.from_config(
        _review(usernameClaim="name", usernamePrefix="sso#", groupsClaim="roles", groupsPrefix="")
    )
    user = mapping.user({**CLAIMS, "name": "Dev", "roles": "admin"})
    assert (user.username, user.groups) == ("sso#Dev", ("admin",))
    with pytest.raises(UnmappableTokenError, match="'name'"):
        mapping.user(CLAIMS)
    with pytest.raises(UnmappableTokenError, match="'roles'"):
        mapping.user({**CLAIMS, "name": "Dev", "roles": [1]})


def _status(section: TokenReviewSection, audiences: tuple[str, ...]) -> dict[str, Any]:
    reviewer = TokenReviewer(lambda token: dict(CLAIMS) if token == "good" else None, section)
    answer = reviewer.review(ReviewRequest("authentication.k8s.io/v1", "good", audiences))
    status: dict[str, Any] = answer["status"]
    return status


def test_review_audiences_strict_and_implicit() -> None:
    implicit = _review()
    assert _status(implicit, ("https://kubernetes.default.svc",))["authenticated"] is True
    assert "audiences" not in _status(implicit, ("https://kubernetes.default.svc",))
    assert _status(implicit, ("kubernetes", "x"))["audiences"] == ["kubernetes"]
    strict = _review(strictReviewAudiences=True)
    assert _status(strict, ("https://kubernetes.default.svc",)) == {
        "authenticated": False,
        "error": "the token is not issued for this cluster",
    }
    assert _status(strict, ())["authenticated"] is True


def test_parse_review_rejects_wrong_shapes() -> None:
    ok = parse_review(
        {
            "apiVersion": "authentication.k8s.io/v1beta1",
            "kind": "TokenReview",
            "spec": {"token": "t"},
        }
    )
    assert ok == ReviewRequest("authentication.k8s.io/v1beta1", "t", ())
    with pytest.raises(ValueError, match=r"spec\.audiences"):
        parse_review(
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"audiences": "x"},
            }
        )


def test_webhook_tls_versions_must_be_ordered() -> None:
    (problem,) = _problems(
        {
            "tokenReview": {
                "enabled": True,
                "addr": "127.0.0.1:5559",
                "audiences": ["k"],
                "tlsMinVersion": "1.3",
                "tlsMaxVersion": "1.2",
            }
        }
    )
    assert problem == "kubernetes.tokenReview: tlsMinVersion is greater than tlsMaxVersion"
