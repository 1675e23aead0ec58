"""Proof Key for Code Exchange (RFC 7636)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
_CHALLENGE = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")


def valid_challenge(challenge: str) -> bool:
    return bool(_CHALLENGE.match(challenge))


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def verify(verifier: str, challenge: str, method: str) -> bool:
    """Constant-time check of a code_verifier against the stored challenge."""
    if not _VERIFIER.match(verifier):
        return False
    expected = s256(verifier) if method == "S256" else verifier
    return hmac.compare_digest(expected.encode(), challenge.encode())
