"""Dex's refresh-token wire format, so tokens Dex handed out keep working after an import.

Dex gives clients ``base64url(protobuf RefreshToken{refresh_id = 1, token = 2})`` (unpadded,
``server/internal/codec.go``): two proto3 string fields. Its storage keeps the refresh id and the
token in clear; ``portcullis import-dex`` stores the id as our family id and only the SHA-256
digest of the token, exactly like one of our own secrets. So a Dex token is "family id + secret"
in another envelope, and this module only has to open the envelope.

The decoder is written by hand rather than with a protobuf library: the message is two
length-delimited fields, the input comes from the network, and a tiny bounded parser that rejects
everything else (unknown fields, groups, overlong varints, trailing bytes) has a smaller attack
surface than a general one. Dex's ids and tokens are short ASCII strings; anything longer than
``MAX_TOKEN_LENGTH`` is refused before decoding.
"""

from __future__ import annotations

import base64
import binascii

#: Longest accepted encoded token. Dex's are ~70 characters (a 26-character id and a
#: 26-character token); the bound keeps a hostile value from costing anything.
MAX_TOKEN_LENGTH = 512

_FIELD_REFRESH_ID = 1
_FIELD_TOKEN = 2
_WIRE_LENGTH_DELIMITED = 2
_BASE64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """Decode a protobuf varint at pos; (value, next position). At most 5 bytes: every value
    this message can carry (a tag, a length under MAX_TOKEN_LENGTH) fits in 32 bits."""
    value = 0
    for shift in range(0, 35, 7):
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise ValueError("varint too long")


def decode_dex_refresh_token(value: str) -> tuple[str, str] | None:
    """(refresh id, token) of a Dex refresh token, or None when value is not one.

    proto3 omits empty strings, so a message with a missing field decodes to an empty string
    there; both must be present and non-empty for a token Dex could have issued.
    """
    if not value or len(value) > MAX_TOKEN_LENGTH or not set(value) <= _BASE64URL:
        return None
    try:
        data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None
    fields: dict[int, str] = {}
    pos = 0
    try:
        while pos < len(data):
            tag, pos = _varint(data, pos)
            number, wire_type = tag >> 3, tag & 0x07
            if wire_type != _WIRE_LENGTH_DELIMITED or number not in (
                _FIELD_REFRESH_ID,
                _FIELD_TOKEN,
            ):
                return None
            length, pos = _varint(data, pos)
            end = pos + length
            if end > len(data) or number in fields:
                return None
            fields[number] = data[pos:end].decode("utf-8")
            pos = end
    except (ValueError, UnicodeDecodeError):
        return None
    refresh_id = fields.get(_FIELD_REFRESH_ID, "")
    token = fields.get(_FIELD_TOKEN, "")
    if not refresh_id or not token:
        return None
    return refresh_id, token


def encode_dex_refresh_token(refresh_id: str, token: str) -> str:
    """What Dex hands a client for (refresh_id, token): the inverse of the decoder. Used by
    the import tests and by operators checking a token by hand; never issued by Portcullis."""

    def field(number: int, text: str) -> bytes:
        raw = text.encode()
        length = len(raw)
        encoded_length = bytearray()
        while True:
            byte = length & 0x7F
            length >>= 7
            encoded_length.append(byte | (0x80 if length else 0))
            if not length:
                break
        return bytes([number << 3 | _WIRE_LENGTH_DELIMITED]) + bytes(encoded_length) + raw

    message = field(_FIELD_REFRESH_ID, refresh_id) + field(_FIELD_TOKEN, token)
    return base64.urlsafe_b64encode(message).rstrip(b"=").decode()
