"""Dex's refresh-token envelope: base64url(protobuf RefreshToken{refresh_id = 1, token = 2})."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st
from portcullis.oidc.dex_refresh import (
    MAX_TOKEN_LENGTH,
    decode_dex_refresh_token,
    encode_dex_refresh_token,
)


def test_decodes_the_bytes_dex_writes() -> None:
    # proto.Marshal(&RefreshToken{RefreshId: "abc", Token: "xyz"}) = 0a 03 'abc' 12 03 'xyz',
    # then base64.RawURLEncoding (internal/codec.go).
    raw = b"\x0a\x03abc\x12\x03xyz"
    value = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    assert decode_dex_refresh_token(value) == ("abc", "xyz")
    assert encode_dex_refresh_token("abc", "xyz") == value


@given(st.text(min_size=1, max_size=150), st.text(min_size=1, max_size=150))
def test_round_trip(refresh_id: str, token: str) -> None:
    encoded = encode_dex_refresh_token(refresh_id, token)
    if len(encoded) <= MAX_TOKEN_LENGTH:
        assert decode_dex_refresh_token(encoded) == (refresh_id, token)


@pytest.mark.parametrize(
    "raw",
    [
        b"",  # empty message
        b"\x0a\x03abc",  # no token
        b"\x12\x03xyz",  # no refresh id
        b"\x0a\x03abc\x12\x05xyz",  # length past the end
        b"\x0a\x03abc\x12\x03xyz\x1a\x01q",  # unknown field 3
        b"\x08\x01\x12\x03xyz",  # field 1 as a varint
        b"\x0a\x03abc\x0a\x03abd\x12\x03xyz",  # repeated field
        b"\x0a\xff\xff\xff\xff\xff\x01a",  # overlong varint
        b"\x0a\x02\xff\xfe\x12\x01x",  # not UTF-8
    ],
)
def test_refuses_anything_else(raw: bytes) -> None:
    value = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    assert decode_dex_refresh_token(value) is None


@pytest.mark.parametrize(
    "value", ["pcr1.family.secret", "not base64!", "x" * (MAX_TOKEN_LENGTH + 1), "a"]
)
def test_other_strings_are_not_dex_tokens(value: str) -> None:
    assert decode_dex_refresh_token(value) is None
