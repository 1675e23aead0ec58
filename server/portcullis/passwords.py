"""Password hashes: bcrypt (Dex compatible) and PBKDF2-HMAC-SHA256 (FIPS-approved).

PBKDF2 hashes use the widely understood modular format
``$pbkdf2-sha256$<iterations>$<salt>$<digest>`` with passlib's "adapted base64" (standard
alphabet, ``.`` instead of ``+``, no padding), so hashes move between tools.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import secrets

import bcrypt

BCRYPT_DEFAULT_COST = 10
PBKDF2_DEFAULT_ITERATIONS = 600_000  # OWASP 2023 guidance for PBKDF2-HMAC-SHA256
PBKDF2_MIN_ITERATIONS = 100_000
BCRYPT_MIN_COST = 10

_BCRYPT = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")
_PBKDF2 = re.compile(r"^\$pbkdf2-sha256\$(\d+)\$([./A-Za-z0-9]+)\$([./A-Za-z0-9]+)$")


class PasswordHashError(ValueError):
    """A stored hash is malformed or not allowed by the current policy."""


def _ab64_encode(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=").replace("+", ".")


def _ab64_decode(text: str) -> bytes:
    padded = text.replace(".", "+") + "=" * (-len(text) % 4)
    return base64.b64decode(padded)


def check_hash_format(hashed: str, *, fips_mode: bool = False) -> str | None:
    """Return a problem description, or None if the hash is usable under the policy."""
    bcrypt_match = _BCRYPT.match(hashed)
    if bcrypt_match:
        if fips_mode:
            return (
                "bcrypt hashes are refused in FIPS mode; re-hash the password with "
                "'portcullis hash-password --pbkdf2'"
            )
        if int(bcrypt_match.group(1)) < BCRYPT_MIN_COST:
            return f"bcrypt cost {bcrypt_match.group(1)} is below the minimum {BCRYPT_MIN_COST}"
        return None
    pbkdf2_match = _PBKDF2.match(hashed)
    if pbkdf2_match:
        if int(pbkdf2_match.group(1)) < PBKDF2_MIN_ITERATIONS:
            return f"PBKDF2 iteration count is below the minimum {PBKDF2_MIN_ITERATIONS}"
        try:
            salt = _ab64_decode(pbkdf2_match.group(2))
            digest = _ab64_decode(pbkdf2_match.group(3))
        except ValueError:
            return "malformed PBKDF2 hash"
        if len(salt) < 16 or len(digest) != 32:
            return "PBKDF2 hash needs a salt of at least 16 bytes and a 32-byte digest"
        return None
    return "not a bcrypt ($2a$/$2b$/$2y$) or PBKDF2 ($pbkdf2-sha256$) password hash"


def hash_password(password: str, *, scheme: str = "bcrypt", cost: int | None = None) -> str:
    if not password:
        raise ValueError("empty password")
    if scheme == "bcrypt":
        raw = password.encode()
        if len(raw) > 72:
            raise ValueError("bcrypt passwords are limited to 72 bytes; use --pbkdf2")
        rounds = cost or BCRYPT_DEFAULT_COST
        return bcrypt.hashpw(raw, bcrypt.gensalt(rounds=rounds)).decode()
    if scheme == "pbkdf2":
        iterations = cost or PBKDF2_DEFAULT_ITERATIONS
        salt = secrets.token_bytes(16)
        digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
        return f"$pbkdf2-sha256${iterations}${_ab64_encode(salt)}${_ab64_encode(digest)}"
    raise ValueError(f"unknown hash scheme {scheme!r} (use bcrypt or pbkdf2)")


def verify_password(password: str, hashed: str, *, fips_mode: bool = False) -> bool:
    """Constant-time check. Raises PasswordHashError for a hash the policy refuses."""
    problem = check_hash_format(hashed, fips_mode=fips_mode)
    if problem:
        raise PasswordHashError(problem)
    if hashed.startswith("$2"):
        raw = password.encode()
        if len(raw) > 72:
            return False
        return bcrypt.checkpw(raw, hashed.encode())
    match = _PBKDF2.match(hashed)
    assert match is not None
    iterations = int(match.group(1))
    salt = _ab64_decode(match.group(2))
    expected = _ab64_decode(match.group(3))
    actual = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return hmac.compare_digest(actual, expected)


@functools.cache
def dummy_hash(*, fips_mode: bool) -> str:
    """A valid hash of a random password, verified when the user does not exist so response
    time does not reveal which emails are registered. Computed lazily: start-up stays fast."""
    return hash_password(secrets.token_urlsafe(16), scheme="pbkdf2" if fips_mode else "bcrypt")
