"""Connector data sealed at rest: upstream access and refresh tokens never sit in clear in SQL.

An identity's ``connector_data`` holds what its connector needs to refresh the session upstream:
GitHub, GitLab, Entra ID, Google or OIDC refresh tokens. A dump of the database (a backup, a
volume snapshot, a copied PVC, a read-only SQL injection elsewhere) would otherwise hand out
working upstream credentials for every refreshable session. So the SQL row codec seals the
value on its way into a row and opens it on its way out (:meth:`Sealer.seal` /
:meth:`Sealer.open`); the memory backend keeps nothing at rest and needs none of this.

The envelope (version 1)::

    MAGIC (3) | version (1) | key id (4) | salt (16) | nonce (12) | AES-256-GCM ciphertext+tag

* AES-256-GCM from ``cryptography`` (FIPS-approved, through the FIPS provider in the image),
  under a key derived per value with HKDF-SHA256 from the storage key and a random salt: a
  single 96-bit random nonce per key would cap one key at 2**32 seals (NIST SP 800-38D), which a
  busy issuer reaches in months of refreshes; a fresh key per value removes that limit.
* The associated data binds the value to its table and row id (and to the header): a value
  copied into another row, or another table, does not open.
* The key id (a hash of the key, never the key) says which configured key sealed the value, so
  keys rotate: values are written with the current key; older keys still open what they sealed.
* Legacy values (rows written before sealing, or by a server without a key) are plain connector
  data, which is JSON text in every connector (and in Dex). The magic starts with 0xFF, a byte
  that never occurs in UTF-8, so the two never collide: a legacy value opens as itself, and is
  sealed the next time its row is written. No migration rewrites rows.
* A value that cannot be opened (its key is not configured, or it fails authentication) is
  logged with the reason and handed up *still sealed*: :func:`is_sealed` tells the refresh grant,
  which refuses that one session with ``invalid_grant`` instead of giving the connector garbage.
  Everything else about the session (listing, revocation, expiry) keeps working, and writing the
  record back stores the envelope unchanged rather than sealing it twice.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from portcullis.storage.base import StorageError

log = logging.getLogger("portcullis.storage")

MAGIC = b"\xffPS"
VERSION = 1
KEY_BYTES = 32
_KEY_ID_BYTES = 4
_SALT_BYTES = 16
_NONCE_BYTES = 12
_HEADER_BYTES = len(MAGIC) + 1 + _KEY_ID_BYTES + _SALT_BYTES + _NONCE_BYTES
_TAG_BYTES = 16
_HKDF_INFO = b"portcullis connector_data v1"
_KEY_ID_LABEL = b"portcullis storage sealing key id\x00"

#: What an operator runs to make a key (documented in docs/configuration.md).
KEY_COMMAND = "openssl rand -base64 32"


def key_id(key: bytes) -> bytes:
    """A short public name for a key: which key sealed a value, without revealing the key."""
    return hashlib.sha256(_KEY_ID_LABEL + key).digest()[:_KEY_ID_BYTES]


def decode_key(text: str, where: str) -> bytes:
    """32 random bytes from their base64 form; the error names ``where`` and never the value."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise StorageError(
            f"{where}: not a storage sealing key (want {KEY_BYTES} random bytes in base64, "
            f"e.g. from `{KEY_COMMAND}`)"
        )
    return key


def generate_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def is_sealed(stored: bytes) -> bool:
    """True for a sealed envelope: in an opened record, one this server could not open."""
    return stored.startswith(MAGIC)


def _aad(header: bytes, table: str, row_id: str) -> bytes:
    encoded_table, encoded_id = table.encode(), row_id.encode()
    return (
        header
        + struct.pack(">H", len(encoded_table))
        + encoded_table
        + struct.pack(">I", len(encoded_id))
        + encoded_id
    )


def _value_key(key: bytes, salt: bytes) -> AESGCM:
    derived = HKDF(algorithm=SHA256(), length=KEY_BYTES, salt=salt, info=_HKDF_INFO).derive(key)
    return AESGCM(derived)


@dataclass(frozen=True)
class SealingKey:
    """One storage sealing key and where it came from (for messages; never the key)."""

    material: bytes = field(repr=False)
    source: str
    #: key_id(material), computed once: it heads every value this key seals.
    id: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.material) != KEY_BYTES:
            raise ValueError(f"{self.source}: a storage sealing key is {KEY_BYTES} bytes")
        object.__setattr__(self, "id", key_id(self.material))


class Sealer:
    """Seals and opens connector data for the SQL row codec.

    ``current`` seals every write (None: values are written as they are, the PostgreSQL
    default without a configured key, warned about by the config check); ``current`` and every
    key in ``previous`` open what they sealed."""

    def __init__(self, current: SealingKey | None, previous: Sequence[SealingKey] = ()) -> None:
        self.current = current
        self._keys: dict[bytes, list[SealingKey]] = {}
        for key in (*([current] if current else []), *previous):
            known = self._keys.setdefault(key.id, [])
            if all(k.material != key.material for k in known):
                known.append(key)

    @property
    def sealing(self) -> bool:
        return self.current is not None

    def seal(self, table: str, row_id: str, data: bytes) -> bytes:
        """The value to store in ``table``'s row ``row_id`` for connector data ``data``.

        Empty data stays empty (nothing to hide, and a session without upstream data then
        never depends on a key); an envelope this server could not open is stored unchanged
        (sealing it again would bury it for good)."""
        if not data or is_sealed(data) or self.current is None:
            return data
        salt, nonce = os.urandom(_SALT_BYTES), os.urandom(_NONCE_BYTES)
        header = MAGIC + bytes([VERSION]) + self.current.id + salt + nonce
        sealed = _value_key(self.current.material, salt).encrypt(
            nonce, data, _aad(header, table, row_id)
        )
        return header + sealed

    def open(self, table: str, row_id: str, stored: bytes | None) -> bytes:
        """The connector data read from ``table``'s row ``row_id``.

        A legacy (unsealed) value is returned as it is. A sealed value that cannot be opened
        is logged with the reason (never the value) and returned still sealed: see the module
        docstring for why that fails only this session's refresh."""
        data = bytes(stored or b"")
        if not is_sealed(data):
            return data
        reason = self._open(table, row_id, data)
        if isinstance(reason, bytes):
            return reason
        log.warning("storage: connector data in %s cannot be opened: %s", table, reason)
        return data

    def _open(self, table: str, row_id: str, data: bytes) -> bytes | str:
        if len(data) < _HEADER_BYTES + _TAG_BYTES:
            return "the sealed value is truncated"
        version = data[len(MAGIC)]
        if version != VERSION:
            return f"unknown sealing format version {version} (written by a newer Portcullis?)"
        start = len(MAGIC) + 1
        kid = data[start : start + _KEY_ID_BYTES]
        salt_at = start + _KEY_ID_BYTES
        salt = data[salt_at : salt_at + _SALT_BYTES]
        nonce = data[salt_at + _SALT_BYTES : _HEADER_BYTES]
        header, sealed = data[:_HEADER_BYTES], data[_HEADER_BYTES:]
        candidates = self._keys.get(kid, [])
        if not candidates:
            return (
                f"it was sealed with storage sealing key {kid.hex()}, which is not configured "
                "(add it to storageSealing.previousKeys or previousKeyFiles)"
            )
        for key in candidates:
            try:
                return _value_key(key.material, salt).decrypt(
                    nonce, sealed, _aad(header, table, row_id)
                )
            except InvalidTag:
                continue
        return (
            f"it fails authentication with storage sealing key {kid.hex()}: it was altered or "
            "copied from another row"
        )


#: No key: writes stay as they are, legacy and empty values read back; sealed ones do not open.
UNSEALED = Sealer(None)


def read_key_file(path: str, where: str) -> bytes:
    try:
        with open(path, encoding="ascii") as file:
            text = file.read(4096)
    except FileNotFoundError:
        raise StorageError(f"{where}: key file {path!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) else "not base64 text"
        raise StorageError(f"{where}: cannot read key file {path!r}: {detail}") from None
    return decode_key(text, f"{where} ({path})")


def load_or_create_key_file(path: str) -> tuple[bytes, bool]:
    """The key in ``path``, created (0600, with a new random key) when absent; True when this
    call created it. Safe when several workers start at once: the key is written to a private
    temporary file and hard-linked into place, which fails if another process got there first
    (then its key is read), so no process ever reads a half-written key."""
    where = "storageSealing (the key file beside the sqlite3 database)"
    if os.path.exists(path):
        return read_key_file(path, where), False
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(8)}")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, base64.b64encode(generate_key()) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
            created = True
        except FileExistsError:
            created = False
        finally:
            os.unlink(temporary)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise StorageError(f"{where}: cannot create key file {path!r}: {exc.strerror}") from None
    return read_key_file(path, where), created
