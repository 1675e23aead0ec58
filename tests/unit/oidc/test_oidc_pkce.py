"""PKCE (RFC 7636) against the RFC's own test vector."""

from __future__ import annotations

import pytest
from portcullis.oidc import pkce

# RFC 7636 appendix B.
RFC_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
RFC_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_s256_matches_the_rfc_vector() -> None:
    assert pkce.s256(RFC_VERIFIER) == RFC_CHALLENGE


def test_verify_s256_and_plain() -> None:
    assert pkce.verify(RFC_VERIFIER, RFC_CHALLENGE, "S256")
    assert not pkce.verify(RFC_VERIFIER, RFC_CHALLENGE, "plain")
    assert pkce.verify(RFC_VERIFIER, RFC_VERIFIER, "plain")
    assert not pkce.verify(RFC_VERIFIER[:-1] + "A", RFC_CHALLENGE, "S256")


@pytest.mark.parametrize(
    "verifier",
    ["a" * 42, "a" * 129, "a" * 42 + " ", "ä" * 43, "a" * 42 + "+", "a" * 42 + "/"],
)
def test_verify_rejects_malformed_verifiers(verifier: str) -> None:
    # Even when the challenge was computed from exactly that string.
    assert not pkce.verify(verifier, verifier, "plain")


@pytest.mark.parametrize(
    ("challenge", "ok"),
    [
        (RFC_CHALLENGE, True),
        ("a" * 43, True),
        ("a" * 128, True),
        ("a" * 42, False),
        ("a=" * 30, False),
    ],
)
def test_valid_challenge(challenge: str, ok: bool) -> None:
    assert pkce.valid_challenge(challenge) is ok
