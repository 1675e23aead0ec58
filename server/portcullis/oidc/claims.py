"""ID-token subjects and claims, encoded exactly as Dex does so RBAC bindings survive a move."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from portcullis.oidc.scopes import EMAIL, FEDERATED_ID, GROUPS, PROFILE
from portcullis.storage.models import Identity


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _proto_string(field: int, value: str) -> bytes:
    data = value.encode()
    if not data:
        return b""  # proto3 omits empty strings
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def encode_subject(user_id: str, connector_id: str) -> str:
    """Dex's ``sub``: unpadded base64url of the protobuf IDTokenSubject{user_id=1, conn_id=2}."""
    message = _proto_string(1, user_id) + _proto_string(2, connector_id)
    return base64.urlsafe_b64encode(message).rstrip(b"=").decode("ascii")


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def decode_subject(sub: str) -> tuple[str, str]:
    """Inverse of encode_subject (used by revocation tooling)."""
    data = base64.urlsafe_b64decode(sub + "=" * (-len(sub) % 4))
    fields = {1: "", 2: ""}
    pos = 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        if tag & 7 != 2:
            raise ValueError("unexpected wire type")
        length, pos = _read_varint(data, pos)
        fields[tag >> 3] = data[pos : pos + length].decode()
        pos += length
    return fields[1], fields[2]


def token_hash(value: str, hash_name: str) -> str:
    """at_hash / c_hash (OIDC Core §3.1.3.6): left half of the digest, base64url."""
    digest = hashlib.new(hash_name, value.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode("ascii")


def identity_claims(
    identity: Identity, connector_id: str, scopes: tuple[str, ...]
) -> dict[str, Any]:
    """The user claims the requested scopes allow."""
    claims: dict[str, Any] = {}
    if EMAIL in scopes and identity.email:
        claims["email"] = identity.email
        claims["email_verified"] = identity.email_verified
    if GROUPS in scopes:
        claims["groups"] = list(identity.groups)
    if PROFILE in scopes:
        claims["name"] = identity.username
        if identity.preferred_username:
            claims["preferred_username"] = identity.preferred_username
    if FEDERATED_ID in scopes:
        claims["federated_claims"] = {"connector_id": connector_id, "user_id": identity.user_id}
    return claims
