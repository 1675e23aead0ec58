"""Signing keys: cosign's encrypted key file, and plain PEM keys.

cosign's ``ENCRYPTED SIGSTORE PRIVATE KEY`` is a PEM block whose body is JSON:
``{"kdf": {"name": "scrypt", "params": {"N","r","p"}, "salt"}, "cipher": {"name":
"nacl/secretbox", "nonce"}, "ciphertext"}`` (byte fields base64), the plaintext being the PKCS#8 DER
private key. Reading and writing it here means keys from ``cosign generate-key-pair`` work with our
tools and ours work with cosign. scrypt and XSalsa20-Poly1305 are not FIPS-approved, so in FIPS
mode that format is refused and a PEM PKCS#8 key is required instead.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.secret
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

ENCRYPTED_LABELS = ("ENCRYPTED SIGSTORE PRIVATE KEY", "ENCRYPTED COSIGN PRIVATE KEY")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 65536, 8, 1
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z ]+)-----\s*(.*?)\s*-----END \1-----", re.S)


class KeyFileError(Exception):
    """A key cannot be loaded or written; the message says which file and why."""


def fips_mode_enabled() -> bool:
    """True when the kernel or OpenSSL runs in FIPS mode (then scrypt/NaCl are off limits)."""
    try:
        if Path("/proc/sys/crypto/fips_enabled").read_text().strip() == "1":
            return True
    except OSError:
        pass
    from cryptography.hazmat.backends.openssl import backend

    return bool(getattr(backend, "_fips_enabled", False))


def _refuse_in_fips(action: str) -> None:
    if fips_mode_enabled():
        raise KeyFileError(
            f"cannot {action} a cosign encrypted key in FIPS mode: its scrypt KDF and NaCl "
            "secretbox cipher are not FIPS-approved; use a PEM PKCS#8 key (COSIGN_KEY=key.pem)"
        )


def _kdf(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    # N*r*128 bytes of memory; allow it explicitly (hashlib's default cap is 32 MiB).
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=32, maxmem=256 * 1024 * 1024)


def _b64(where: str, value: Any) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError:
        raise KeyFileError(f"{where} is not base64") from None


def decrypt_cosign_key(pem_body: bytes, password: bytes, where: str) -> ec.EllipticCurvePrivateKey:
    _refuse_in_fips("read")
    try:
        doc = json.loads(pem_body)
        kdf, cipher = doc["kdf"], doc["cipher"]
        params = kdf["params"]
    except (ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(f"{where}: malformed cosign key document ({exc})") from None
    if kdf.get("name") != "scrypt":
        raise KeyFileError(f"{where}: kdf.name {kdf.get('name')!r} is not scrypt")
    if cipher.get("name") != "nacl/secretbox":
        raise KeyFileError(f"{where}: cipher.name {cipher.get('name')!r} is not nacl/secretbox")
    key = _kdf(
        password,
        _b64(f"{where}: kdf.salt", kdf.get("salt")),
        int(params["N"]),
        int(params["r"]),
        int(params["p"]),
    )
    box = nacl.secret.SecretBox(key)
    try:
        der = box.decrypt(
            _b64(f"{where}: ciphertext", doc.get("ciphertext")),
            _b64(f"{where}: cipher.nonce", cipher.get("nonce")),
        )
    except nacl.exceptions.CryptoError:
        raise KeyFileError(f"{where}: wrong password (decryption failed)") from None
    private = serialization.load_der_private_key(der, password=None)
    if not isinstance(private, ec.EllipticCurvePrivateKey):
        raise KeyFileError(f"{where}: key is not an ECDSA key")
    return private


def encrypt_cosign_key(private: ec.EllipticCurvePrivateKey, password: bytes) -> bytes:
    """Serialise ``private`` in cosign's encrypted PEM format."""
    _refuse_in_fips("write")
    der = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    salt, nonce = secrets.token_bytes(32), secrets.token_bytes(24)
    box = nacl.secret.SecretBox(_kdf(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P))
    ciphertext = box.encrypt(der, nonce).ciphertext
    doc = {
        "kdf": {
            "name": "scrypt",
            "params": {"N": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P},
            "salt": base64.b64encode(salt).decode(),
        },
        "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
        "ciphertext": base64.b64encode(ciphertext).decode(),
    }
    body = base64.b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode()
    lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    label = ENCRYPTED_LABELS[0]
    return f"-----BEGIN {label}-----\n{lines}\n-----END {label}-----\n".encode()


def load_private_key(path: Path, password: bytes | None) -> ec.EllipticCurvePrivateKey:
    """Load a cosign encrypted key or a PEM (PKCS#8/SEC1, optionally encrypted) ECDSA P-256 key."""
    data = Path(path).read_bytes()
    match = _PEM_BLOCK.search(data.decode("ascii", "replace"))
    if match is None:
        raise KeyFileError(f"{path}: not a PEM file")
    label = match.group(1)
    if label in ENCRYPTED_LABELS:
        body = base64.b64decode("".join(match.group(2).split()))
        key = decrypt_cosign_key(body, password or b"", str(path))
    else:
        try:
            loaded = serialization.load_pem_private_key(data, password=password or None)
        except TypeError:
            raise KeyFileError(f"{path}: the key is encrypted; set COSIGN_PASSWORD") from None
        except ValueError as exc:
            raise KeyFileError(f"{path}: cannot load PEM private key ({exc})") from None
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise KeyFileError(f"{path}: key is not an ECDSA key")
        key = loaded
    if not isinstance(key.curve, ec.SECP256R1):
        raise KeyFileError(f"{path}: key curve {key.curve.name} is not P-256")
    return key


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except ValueError as exc:
        raise KeyFileError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise KeyFileError(f"{path}: public key is not ECDSA P-256")
    return key


def public_pem(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_fingerprint(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> str:
    """SHA-256 of the DER public key, short and stable, for messages naming a key."""
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    der = pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return "SHA256:" + digest.finalize().hex()[:16]


def generate_key_pair(directory: Path, password: bytes, *, pem: bool = False) -> tuple[Path, Path]:
    """Write ``cosign.key`` (cosign encrypted format, or PEM PKCS#8 if ``pem``) and
    ``cosign.pub``."""
    directory.mkdir(parents=True, exist_ok=True)
    private = ec.generate_private_key(ec.SECP256R1())
    if pem:
        enc: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password)
            if password
            else serialization.NoEncryption()
        )
        data = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc
        )
    else:
        data = encrypt_cosign_key(private, password)
    key_path, pub_path = directory / "cosign.key", directory / "cosign.pub"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    pub_path.write_bytes(public_pem(private))
    return key_path, pub_path


def password_from_env() -> bytes | None:
    """COSIGN_PASSWORD as cosign reads it (unset means no password)."""
    value = os.environ.get("COSIGN_PASSWORD")
    return value.encode() if value is not None else None


def load_signing_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The release signing key at ``path``, with the password in COSIGN_PASSWORD (as cosign)."""
    return load_private_key(path, password_from_env())
