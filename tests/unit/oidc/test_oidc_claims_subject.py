"""ID-token subjects in Dex's encoding, so RBAC bindings written for Dex keep matching."""

from __future__ import annotations

import base64
import hashlib

import pytest
from portcullis.oidc.claims import decode_subject, encode_subject, identity_claims, token_hash
from portcullis.storage.models import Identity

# A real Dex subject (GitHub connector): the protobuf {user_id: "2342749", conn_id: "github"}.
DEX_SUB = "CgcyMzQyNzQ5EgZnaXRodWI"


def _known_fields() -> tuple[str, str]:
    """Read user_id and conn_id out of DEX_SUB by hand: tag, one-byte length, bytes (twice)."""
    raw = base64.urlsafe_b64decode(DEX_SUB + "=" * (-len(DEX_SUB) % 4))
    assert raw[0] == 0x0A  # field 1, length-delimited
    user_len = raw[1]
    user_id = raw[2 : 2 + user_len].decode()
    rest = raw[2 + user_len :]
    assert rest[0] == 0x12  # field 2, length-delimited
    conn_id = rest[2 : 2 + rest[1]].decode()
    assert len(rest) == 2 + rest[1]
    return user_id, conn_id


def test_known_dex_subject_fields() -> None:
    assert _known_fields() == ("2342749", "github")


def test_encode_subject_reproduces_dexs_value() -> None:
    user_id, conn_id = _known_fields()
    assert encode_subject(user_id, conn_id) == DEX_SUB


def test_decode_subject_reads_dexs_value() -> None:
    assert decode_subject(DEX_SUB) == _known_fields()


@pytest.mark.parametrize(
    ("user_id", "conn_id"),
    [
        ("08a8684b-db88-4b73-90a9-3cd1661f5466", "local"),
        ("x" * 200, "ldap"),  # length needs a two-byte varint
        ("ünïcödé", "oidc"),
        ("", "mock"),  # proto3 omits empty fields
    ],
)
def test_subject_round_trip(user_id: str, conn_id: str) -> None:
    sub = encode_subject(user_id, conn_id)
    assert "=" not in sub
    assert decode_subject(sub) == (user_id, conn_id)


def test_long_user_id_uses_a_varint_length() -> None:
    raw = base64.urlsafe_b64decode(encode_subject("x" * 200, "c") + "==")
    assert raw[:3] == bytes([0x0A, 0xC8, 0x01])  # 200 = 0b1_1001000 -> 0xC8 0x01


def test_at_hash_is_the_left_half_of_the_digest() -> None:
    token = "eyJhbGciOiJSUzI1NiJ9.payload.signature"
    left = hashlib.sha256(token.encode()).digest()[:16]
    assert token_hash(token, "sha256") == base64.urlsafe_b64encode(left).rstrip(b"=").decode()
    left384 = hashlib.sha384(token.encode()).digest()[:24]
    assert token_hash(token, "sha384") == base64.urlsafe_b64encode(left384).decode()


def test_identity_claims_follow_the_scopes() -> None:
    identity = Identity(
        user_id="u1",
        username="Jane",
        preferred_username="jane",
        email="jane@example.com",
        email_verified=True,
        groups=("a", "b"),
    )
    assert identity_claims(identity, "local", ("openid",)) == {}
    full = identity_claims(
        identity, "local", ("openid", "email", "profile", "groups", "federated:id")
    )
    assert full == {
        "email": "jane@example.com",
        "email_verified": True,
        "name": "Jane",
        "preferred_username": "jane",
        "groups": ["a", "b"],
        "federated_claims": {"connector_id": "local", "user_id": "u1"},
    }
