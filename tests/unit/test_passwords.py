"""Password hashes: bcrypt (Dex compatible) and PBKDF2-HMAC-SHA256 in passlib's format."""

from __future__ import annotations

import base64
import hashlib

import bcrypt
import pytest
from portcullis import passwords


def _ab64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=").replace("+", ".")


def test_bcrypt_round_trip_and_interoperability() -> None:
    hashed = passwords.hash_password("s3cret!", scheme="bcrypt", cost=10)
    assert hashed.startswith("$2b$10$")
    assert passwords.verify_password("s3cret!", hashed)
    assert not passwords.verify_password("s3cret?", hashed)
    # A hash made by the bcrypt library directly (as Dex / htpasswd would) verifies too.
    foreign = bcrypt.hashpw(b"other", bcrypt.gensalt(rounds=10)).decode()
    assert passwords.verify_password("other", foreign)
    # $2a$ and $2y$ prefixes are the same algorithm.
    assert passwords.verify_password("other", "$2y$" + foreign[4:])


def test_pbkdf2_hash_is_verifiable_by_an_independent_computation() -> None:
    hashed = passwords.hash_password("s3cret!", scheme="pbkdf2", cost=100_000)
    _, scheme, iterations, salt, digest = hashed.split("$")
    assert scheme == "pbkdf2-sha256"
    assert iterations == "100000"
    raw_salt = base64.b64decode(salt.replace(".", "+") + "=" * (-len(salt) % 4))
    expected = hashlib.pbkdf2_hmac("sha256", b"s3cret!", raw_salt, 100_000)
    assert digest == _ab64(expected)
    assert passwords.verify_password("s3cret!", hashed)
    assert not passwords.verify_password("s3cret", hashed)


def test_pbkdf2_hash_made_elsewhere_verifies() -> None:
    salt = bytes(range(16))
    digest = hashlib.pbkdf2_hmac("sha256", b"pw", salt, 120_000)
    hashed = f"$pbkdf2-sha256$120000${_ab64(salt)}${_ab64(digest)}"
    assert passwords.check_hash_format(hashed) is None
    assert passwords.verify_password("pw", hashed)


@pytest.mark.parametrize(
    ("hashed", "problem"),
    [
        ("plaintext", "not a bcrypt"),
        ("$2b$04$" + "a" * 53, "below the minimum"),
        ("$pbkdf2-sha256$1000$" + _ab64(bytes(16)) + "$" + _ab64(bytes(32)), "below the minimum"),
        ("$pbkdf2-sha256$200000$" + _ab64(bytes(8)) + "$" + _ab64(bytes(32)), "salt"),
        ("$pbkdf2-sha256$200000$" + _ab64(bytes(16)) + "$" + _ab64(bytes(20)), "digest"),
    ],
)
def test_check_hash_format_names_the_problem(hashed: str, problem: str) -> None:
    found = passwords.check_hash_format(hashed)
    assert found is not None
    assert problem in found


def test_fips_mode_refuses_bcrypt_and_accepts_pbkdf2() -> None:
    bcrypt_hash = passwords.hash_password("pw", scheme="bcrypt", cost=10)
    problem = passwords.check_hash_format(bcrypt_hash, fips_mode=True)
    assert problem is not None
    assert "FIPS" in problem
    with pytest.raises(passwords.PasswordHashError):
        passwords.verify_password("pw", bcrypt_hash, fips_mode=True)
    pbkdf2_hash = passwords.hash_password("pw", scheme="pbkdf2", cost=100_000)
    assert passwords.verify_password("pw", pbkdf2_hash, fips_mode=True)


def test_hash_password_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        passwords.hash_password("")
    with pytest.raises(ValueError, match="72 bytes"):
        passwords.hash_password("x" * 73, scheme="bcrypt")
    with pytest.raises(ValueError, match="unknown hash scheme"):
        passwords.hash_password("x", scheme="md5")


def test_overlong_password_never_matches_a_bcrypt_hash() -> None:
    # bcrypt ignores bytes after 72; accepting them would let a prefix log in.
    hashed = bcrypt.hashpw(b"y" * 72, bcrypt.gensalt(rounds=10)).decode()
    assert passwords.verify_password("y" * 72, hashed)
    assert not passwords.verify_password("y" * 72 + "extra", hashed)
