"""FIPS mode: activate the bundled OpenSSL FIPS provider and fail closed when it is not working.

Why a self-check and not just a flag: OpenSSL's "FIPS mode" queries
(``_hashlib.get_fips_mode()``, cryptography's ``is_fips_enabled()``) only report the
``fips=yes`` default property. They stay true with a missing or tampered ``fips.so`` while
every operation fails, and CPython silently falls back to its own built-in MD5/SHA/BLAKE2
code when OpenSSL refuses a digest. So before anything is served, :func:`enforce_or_exit`
proves that the provider file is mapped into this process and matches its pin, that
known-answer tests pass through *both* OpenSSL libraries in the process (the stdlib's
``libcrypto`` and the one linked into ``cryptography``), and that non-approved algorithms are
refused. Anything else prints one line to stderr and exits 78 (EX_CONFIG).

Copies of ``fips.so``: one loaded provider file cannot serve two OpenSSL libraries in one
process, so the bundle ships identical copies and :func:`configure_environment` points
``OPENSSL_MODULES`` at the first while the stdlib loads its configuration, at the second
before ``cryptography`` loads its own, and leaves it at a third for libraries that initialise
later (libpq's OpenSSL in the psycopg wheel, for TLS to PostgreSQL). The frozen image has no
third copy: its libpq uses the stdlib's OpenSSL (the rootfs's libssl3), already configured.

Where the provider bundle comes from: inside the frozen server it is the ``portcullis_fips``
directory next to the bundled libraries; elsewhere ``PORTCULLIS_FIPS_BUNDLE`` names it (the
image build leaves one in ``.cache/image/fips-bundle``).
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIPS_ENV = "PORTCULLIS_FIPS"
BUNDLE_ENV = "PORTCULLIS_FIPS_BUNDLE"
BUNDLE_DIRNAME = "portcullis_fips"
EXIT_FIPS_FAILURE = 78  # EX_CONFIG from sysexits.h

# Layout of the bundle (written by portcullis_release.build.fips_provider).
_CONFIG = "openssl.cnf"
_PROVIDER_JSON = "provider.json"
_MODULE_DIRS = ("modules/stdlib", "modules/cryptography")
# A third copy for OpenSSL libraries that initialise later, on first use: libpq's, inside the
# psycopg binary wheel, when it opens a TLS connection to PostgreSQL.
_LATE_MODULE_DIR = "modules/late"

SIGNING_ALGORITHMS_FIPS: frozenset[str] = frozenset({"RS256", "PS256", "ES256", "ES384"})
"""JWS algorithms allowed for ID-token signing in FIPS mode (FIPS 186-5 RSA and ECDSA)."""

PASSWORD_HASH_SCHEMES_FIPS: frozenset[str] = frozenset({"pbkdf2-sha256"})
"""Password hash schemes accepted in FIPS mode (PBKDF2-HMAC-SHA256, SP 800-132)."""

TLS_CIPHERS_FIPS = "ECDHE+AESGCM:DHE+AESGCM:!aNULL:!eNULL"
"""OpenSSL cipher string for TLS 1.2 in FIPS mode; TLS 1.3 suites come from the provider."""

# CPython's own digest implementations that hashlib falls back to when OpenSSL refuses one
# (names cover 3.11 and 3.12+). In FIPS mode they are made unimportable.
_BUILTIN_HASH_MODULES = ("_md5", "_sha1", "_sha256", "_sha512", "_sha2", "_sha3", "_blake2")

_TRUTHY = {"1", "true", "yes", "on"}


class FipsCheckError(RuntimeError):
    """One failed condition of the FIPS self-check; the message is the single line shown."""


@dataclass
class _State:
    configured: bool = False
    bundle: Path | None = None
    config_errors: list[str] = field(default_factory=list)
    checked: bool = False
    failure: str | None = None
    provider: dict[str, Any] = field(default_factory=dict)
    mapped_ok: bool = False


_state = _State()


def fips_requested() -> bool:
    """True when ``PORTCULLIS_FIPS`` is 1/true/yes/on (the image sets it to 1)."""
    return os.environ.get(FIPS_ENV, "").strip().lower() in _TRUTHY


def _is_frozen() -> bool:
    return bool(getattr(sys, "frozen", False)) and hasattr(sys, "_MEIPASS")


def bundle_dir() -> Path | None:
    """The provider bundle: inside the frozen app, else ``$PORTCULLIS_FIPS_BUNDLE``."""
    if _is_frozen():
        return Path(str(getattr(sys, "_MEIPASS"))) / BUNDLE_DIRNAME  # noqa: B009
    configured = os.environ.get(BUNDLE_ENV)
    return Path(configured) if configured else None


def _builtin_sha256_hex(path: Path) -> str | None:
    """sha256 of a file using CPython's built-in SHA-256, before any OpenSSL is loaded.

    Used to refuse a tampered provider before the dynamic loader maps it (a corrupted
    ``fips.so`` can crash ld.so instead of failing cleanly). Returns None when the built-in
    module is not available; the check after loading still runs.
    """
    import importlib

    for name in ("_sha2", "_sha256"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        digest = module.sha256(path.read_bytes())
        return str(digest.hexdigest())
    return None


def _block_builtin_hashes(already_loaded: list[str]) -> None:
    for name in already_loaded:
        _state.config_errors.append(
            f"built-in hash module {name} was imported before FIPS mode was configured"
        )
    for name in _BUILTIN_HASH_MODULES:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import name` fail


def _precheck_provider_files(bundle: Path) -> bool:
    """Refuse missing or tampered provider copies before OpenSSL ever loads them."""
    try:
        pin = _load_provider(bundle)["fips_so_sha256"]
        for sub in (*_MODULE_DIRS, _LATE_MODULE_DIR):
            path = bundle / sub / "fips.so"
            if sub == _LATE_MODULE_DIR and not path.parent.exists():
                # The image ships no late copy: libpq, its one late OpenSSL user, runs there on
                # the stdlib's OpenSSL (images/portcullis/portcullis.spec, _system_openssl).
                # Without it a library that loads its OpenSSL configuration later cannot load
                # the provider, and with config_diagnostics (openssl.cnf) its OpenSSL refuses
                # to initialise: closed, never non-FIPS. A directory that exists is checked.
                continue
            if not path.is_file():
                raise FipsCheckError(f"FIPS provider {path} is missing")
            actual = _builtin_sha256_hex(path)
            if actual is not None and actual != pin:
                raise FipsCheckError(
                    f"FIPS provider {path} has sha256 {actual}, expected pinned {pin}"
                )
    except (FipsCheckError, OSError) as exc:
        _state.config_errors.append(str(exc))
        return False
    return True


def configure_environment() -> None:
    """Point OpenSSL at the bundled FIPS provider and load it into the OpenSSL libraries.

    Does nothing unless FIPS mode is requested. Must run before anything imports
    ``_hashlib``, ``_ssl``, ``hashlib`` or ``cryptography``: the OpenSSL environment is read
    once, when each library loads its configuration. Problems are recorded, not raised, so
    :func:`enforce_or_exit` reports them as one line. Safe to call more than once.
    """
    if _state.configured or not fips_requested():
        return
    _state.configured = True
    openssl_users = ("_hashlib", "_ssl", "cryptography.hazmat.bindings._rust")
    late = [m for m in openssl_users if m in sys.modules]
    if late:
        _state.config_errors.append(
            "configure_environment() ran after OpenSSL was loaded by " + ", ".join(late)
        )
    preloaded = [m for m in _BUILTIN_HASH_MODULES if sys.modules.get(m) is not None]
    bundle = bundle_dir()
    if bundle is None:
        _block_builtin_hashes(preloaded)
        _state.config_errors.append(
            f"FIPS mode requested but no provider bundle: set {BUNDLE_ENV} outside the image"
        )
        return
    if not (bundle / _CONFIG).is_file():
        _block_builtin_hashes(preloaded)
        _state.config_errors.append(f"FIPS provider bundle incomplete: {bundle / _CONFIG} missing")
        return
    intact = _precheck_provider_files(bundle)
    _block_builtin_hashes(preloaded)
    if not intact:
        return
    _state.bundle = bundle
    os.environ["OPENSSL_CONF"] = str(bundle / _CONFIG)
    os.environ["OPENSSL_CONF_INCLUDE"] = str(bundle)
    os.environ["CRYPTOGRAPHY_OPENSSL_NO_LEGACY"] = "1"
    # First copy: the stdlib's libcrypto reads its configuration on the first fetch.
    os.environ["OPENSSL_MODULES"] = str(bundle / _MODULE_DIRS[0])
    try:
        import _hashlib
        import _ssl  # noqa: F401  # loads libssl now, with the FIPS configuration

        _hashlib.new("sha256", b"")
    except Exception as exc:  # any failure here is reported by the self-check
        _state.config_errors.append(f"stdlib OpenSSL did not load the FIPS provider: {exc}")
    # Second copy: cryptography's own OpenSSL.
    os.environ["OPENSSL_MODULES"] = str(bundle / _MODULE_DIRS[1])
    try:
        from cryptography.hazmat.primitives import hashes

        hashes.Hash(hashes.SHA256()).finalize()
    except Exception as exc:
        _state.config_errors.append(f"cryptography did not load the FIPS provider: {exc}")
    # Third copy: any OpenSSL library that loads its configuration from now on.
    os.environ["OPENSSL_MODULES"] = str(bundle / _LATE_MODULE_DIR)
    _import_hashlib_quietly()


def _import_hashlib_quietly() -> None:
    """Import hashlib without its import-time tracebacks for the digests FIPS removes.

    hashlib logs an exception for each always-available digest (md5, blake2) it cannot build;
    in FIPS mode that absence is the point, not an error worth a traceback at every start.
    """
    import logging

    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        import hashlib as _  # noqa: F401
    finally:
        logging.disable(previous)


# ---- signing keys generated inside the provider ------------------------------------------

_KEYGEN_SPECS: dict[str, tuple[str, int | str]] = {
    "RS256": ("RSA", 2048),
    "PS256": ("RSA", 2048),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
}


class ProviderKeygenError(RuntimeError):
    """The FIPS provider refused or failed to generate a key."""


def _stdlib_libcrypto() -> Any:
    """The libcrypto the stdlib's ``_hashlib`` uses (its FIPS provider is loaded and checked)."""
    import ctypes

    lib = ctypes.CDLL("libcrypto.so.3")  # already loaded by _hashlib: dlopen returns that one
    lib.EVP_PKEY_CTX_new_from_name.restype = ctypes.c_void_p
    lib.EVP_PKEY_CTX_new_from_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
    lib.EVP_PKEY_keygen_init.argtypes = [ctypes.c_void_p]
    lib.EVP_PKEY_CTX_set_rsa_keygen_bits.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.EVP_PKEY_CTX_set_group_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.EVP_PKEY_generate.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
    lib.i2d_PrivateKey.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.EVP_PKEY_free.argtypes = [ctypes.c_void_p]
    lib.EVP_PKEY_CTX_free.argtypes = [ctypes.c_void_p]
    return lib


def _provider_keygen_der(kind: str, parameter: int | str) -> bytes:
    """Generate a key pair with OpenSSL's EVP_PKEY API in the default library context.

    In FIPS mode that context only has the FIPS provider for algorithms, so the key generation
    (and its pairwise consistency test) runs inside ``fips.so`` — unlike ``cryptography``'s
    key generation, which uses legacy calls outside the provider. Returns traditional DER
    (PKCS#1 or SEC1), which ``cryptography`` and JOSE libraries load.
    """
    import ctypes

    lib = _stdlib_libcrypto()
    ctx = lib.EVP_PKEY_CTX_new_from_name(None, kind.encode(), None)
    if not ctx:
        raise ProviderKeygenError(f"no {kind} key generation available")
    pkey = ctypes.c_void_p()
    try:
        if lib.EVP_PKEY_keygen_init(ctx) != 1:
            raise ProviderKeygenError(f"{kind} key generation refused")
        if kind == "RSA":
            ok = lib.EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, int(parameter))
        else:
            ok = lib.EVP_PKEY_CTX_set_group_name(ctx, str(parameter).encode())
        if ok != 1 or lib.EVP_PKEY_generate(ctx, ctypes.byref(pkey)) != 1 or not pkey.value:
            raise ProviderKeygenError(f"{kind} {parameter} key generation refused")
        size = lib.i2d_PrivateKey(pkey, None)
        if size <= 0:
            raise ProviderKeygenError(f"{kind} key could not be encoded")
        buffer = ctypes.create_string_buffer(size)
        cursor = ctypes.c_char_p(ctypes.addressof(buffer))
        if lib.i2d_PrivateKey(pkey, ctypes.byref(cursor)) != size:
            raise ProviderKeygenError(f"{kind} key could not be encoded")
        return buffer.raw
    finally:
        if pkey.value:
            lib.EVP_PKEY_free(pkey)
        lib.EVP_PKEY_CTX_free(ctx)


def generate_private_key_pem(algorithm: str) -> bytes:
    """A new private key for JWS ``algorithm`` as unencrypted PKCS#8 PEM.

    In FIPS mode (self-check passed) the key is generated inside the FIPS provider; otherwise
    by ``cryptography``. RSA keys are 2048 bits; EC keys use P-256 (ES256) or P-384 (ES384).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if algorithm not in _KEYGEN_SPECS:
        raise ValueError(f"unsupported signing algorithm {algorithm!r}")
    kind, parameter = _KEYGEN_SPECS[algorithm]
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if fips_requested() and self_check() is None:
        loaded = serialization.load_der_private_key(_provider_keygen_der(kind, parameter), None)
        if not isinstance(loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ProviderKeygenError(f"provider returned an unexpected {kind} key")
        key = loaded
    elif kind == "RSA":
        key = rsa.generate_private_key(65537, int(parameter))
    else:
        key = ec.generate_private_key(ec.SECP256R1() if parameter == "P-256" else ec.SECP384R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# ---- the self-check ------------------------------------------------------------------------

# Known answers. Digests of "abc" (FIPS 180-4 examples); HMAC from RFC 4231-style inputs;
# AES-128-GCM is test case 3 of the GCM specification; PBKDF2 and the RSA PKCS#1 v1.5
# signature were computed once and are fixed here.
_KAT_SHA256_ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
_KAT_SHA384_ABC = (
    "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed"
    "8086072ba1e7cc2358baeca134c825a7"
)
_KAT_HMAC_MSG = b"The quick brown fox jumps over the lazy dog"
_KAT_HMAC_SHA256 = "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
_KAT_PBKDF2 = "e05fc7da822e527a7362c0a79473db93a04520c68fbc559735cde64db93b209b"
_KAT_GCM_KEY = "feffe9928665731c6d6a8f9467308308"
_KAT_GCM_IV = "cafebabefacedbaddecaf888"
_KAT_GCM_PT = (
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
    "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255"
)
_KAT_GCM_CT_TAG = (
    "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
    "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985"
    "4d5c2af327cd64a62cf35abd2ba6fab4"
)
_KAT_RSA_MSG = b"portcullis FIPS known-answer test"
_KAT_RSA_PUBLIC_DER = (
    "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAr91zScYRl5Kb0QvZKwPn9mC+us9b1hEHsQqhi+SMtYmQ"
    "mvPXeiWPOeCjbDnBRrbI2lLmOeIx30Lw0+SA14w37fL16LDDvpN85Mgcjstjkfkx2AEoF/FHe+5VJA5Y/rDG2Lya"
    "0akSIGjIApfpdbiEPZHNRU3ww2x+nIZDYIpKXjwlrjTEAgOfqsCz98DId8PjimZcfmTRNbUfV6dqJ8mHzCIlb7vj"
    "9JpQ+r8QUIUh9Iw7nQdV4Dat7X+EU6jcpr5dOFIufCHsi6waUYXmus/ROp8Ef+5wG8QiF9Clha7N8d8prPJ1MZev"
    "IWO3MzcdJCY/7nKZGX+LYAKZy+4YNzHxjQIDAQAB"
)
_KAT_RSA_SIG = (
    "DaWvBD6PSOom52yEpcG3LPgJ0i50DMKOTZq8d8X9qJD5/U8WW1lpkQmyufpR99nWQ7tfyWp0/EhVEW7xQxx9lw8j"
    "fgT4Tw9uiS0aiUQQA/Aha5wlJ8gAhC/wUxNiB+qN03Ek9l4j8i/Y4ux1MFRDzetmy9PNFlbTage1YAIoqiatTi8v"
    "80OqLErijdgWgEdmcyyVF9XIPFsBeEIIn2x5pSuUT1VpdIeD3vtvXoqPYhDXfZz52WjQw4Uszs1R5Bltkm5IeP8Z"
    "YrNBCw1hTO/NuXJ5yZ5ez+AI5NCkdKeF9l3auxyOLGL4TqzNgCm7gCgBTRGOib9CN3U4FLJrsYNIwA=="
)


def _load_provider(bundle: Path) -> dict[str, Any]:
    try:
        doc = json.loads((bundle / _PROVIDER_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FipsCheckError(f"cannot read {bundle / _PROVIDER_JSON}: {exc}") from exc
    pin = doc.get("fips_so_sha256") if isinstance(doc, dict) else None
    if not isinstance(pin, str) or len(pin) != 64:
        raise FipsCheckError(f"{bundle / _PROVIDER_JSON}: fips_so_sha256 missing or malformed")
    return dict(doc)


def _mapped_files() -> set[str]:
    try:
        maps = Path("/proc/self/maps").read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise FipsCheckError(f"cannot read /proc/self/maps: {exc}") from exc
    paths = set()
    for line in maps.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/"):
            paths.add(parts[5])
    return paths


def _check_provider_mapped(bundle: Path, pin: str) -> None:
    mapped = _mapped_files()
    for sub in _MODULE_DIRS:
        path = bundle / sub / "fips.so"
        real = os.path.realpath(path)
        if str(path) not in mapped and real not in mapped:
            raise FipsCheckError(f"FIPS provider {path} is not loaded into the process")
        try:
            actual = _sha256_hex(Path(real).read_bytes())
        except OSError as exc:
            raise FipsCheckError(f"cannot read FIPS provider {path}: {exc}") from exc
        if actual != pin:
            raise FipsCheckError(f"FIPS provider {path} has sha256 {actual}, expected pinned {pin}")


def _sha256_hex(data: bytes) -> str:
    import hashlib  # only after configure_environment(): never at module import

    return hashlib.sha256(data).hexdigest()


def _expect(name: str, actual: str, expected: str) -> None:
    if actual != expected:
        raise FipsCheckError(f"known-answer test {name} failed")


def _check_stdlib() -> None:
    import _hashlib
    import hashlib
    import ssl

    if _hashlib.get_fips_mode() != 1:
        raise FipsCheckError("stdlib OpenSSL is not in FIPS mode (default_properties fips=yes)")
    try:
        _expect("stdlib SHA-256", _hashlib.new("sha256", b"abc").hexdigest(), _KAT_SHA256_ABC)
        _expect("stdlib SHA-384", _hashlib.new("sha384", b"abc").hexdigest(), _KAT_SHA384_ABC)
        mac = _hashlib.hmac_digest(b"key", _KAT_HMAC_MSG, "sha256").hex()
        _expect("stdlib HMAC-SHA-256", mac, _KAT_HMAC_SHA256)
        dk = _hashlib.pbkdf2_hmac("sha256", b"password", b"salt-portcullis-kat", 1000).hex()
        _expect("stdlib PBKDF2-HMAC-SHA-256", dk, _KAT_PBKDF2)
    except ValueError as exc:
        raise FipsCheckError(f"stdlib OpenSSL refused an approved algorithm: {exc}") from exc
    # Each of these must raise: they prove the refusal, they are not uses.
    refused: dict[str, Callable[[], object]] = {
        "MD5 via _hashlib": lambda: _hashlib.new("md5", b""),
        "MD5 via hashlib (built-in fallback)": lambda: hashlib.new("md5", b""),  # noqa: S324
        "BLAKE2b via hashlib (built-in fallback)": lambda: hashlib.new("blake2b", b""),
        "scrypt via hashlib": lambda: hashlib.scrypt(b"p", salt=b"s" * 16, n=16, r=1, p=1),
    }
    for label, attempt in refused.items():
        try:
            attempt()
        except (ValueError, AttributeError, TypeError):
            continue
        raise FipsCheckError(f"non-approved {label} is available in FIPS mode")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if any("CHACHA20" in c["name"] for c in context.get_ciphers()):
        raise FipsCheckError("stdlib TLS offers ChaCha20 cipher suites in FIPS mode")


def _check_cryptography() -> None:
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.bindings._rust import openssl as rust_openssl
    from cryptography.hazmat.primitives import hashes, hmac, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, x25519
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
    from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    if not rust_openssl.is_fips_enabled():
        raise FipsCheckError("cryptography's OpenSSL is not in FIPS mode")
    try:
        digest = hashes.Hash(hashes.SHA256())
        digest.update(b"abc")
        _expect("cryptography SHA-256", digest.finalize().hex(), _KAT_SHA256_ABC)
        mac = hmac.HMAC(b"key", hashes.SHA256())
        mac.update(_KAT_HMAC_MSG)
        _expect("cryptography HMAC-SHA-256", mac.finalize().hex(), _KAT_HMAC_SHA256)
        kdf = PBKDF2HMAC(hashes.SHA256(), 32, b"salt-portcullis-kat", 1000)
        _expect("cryptography PBKDF2", kdf.derive(b"password").hex(), _KAT_PBKDF2)
        sealed = AESGCM(bytes.fromhex(_KAT_GCM_KEY)).encrypt(
            bytes.fromhex(_KAT_GCM_IV), bytes.fromhex(_KAT_GCM_PT), None
        )
        _expect("cryptography AES-128-GCM", sealed.hex(), _KAT_GCM_CT_TAG)
        public = serialization.load_der_public_key(base64.b64decode(_KAT_RSA_PUBLIC_DER))
        if not isinstance(public, rsa.RSAPublicKey):
            raise FipsCheckError("known-answer RSA key did not load as RSA")
        public.verify(
            base64.b64decode(_KAT_RSA_SIG), _KAT_RSA_MSG, padding.PKCS1v15(), hashes.SHA256()
        )
        # A P-256 key generated inside the provider (the path signing keys take), used by
        # cryptography for an ECDSA sign/verify round trip.
        key = serialization.load_der_private_key(_provider_keygen_der("EC", "P-256"), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise FipsCheckError("provider-generated P-256 key did not load as EC")
        signature = key.sign(b"portcullis", ec.ECDSA(hashes.SHA256()))
        key.public_key().verify(signature, b"portcullis", ec.ECDSA(hashes.SHA256()))
    except (UnsupportedAlgorithm, InvalidSignature, ValueError, ProviderKeygenError) as exc:
        raise FipsCheckError(
            f"cryptography refused or failed an approved algorithm: {type(exc).__name__} {exc}"
        ) from exc
    # Each of these must raise: they prove the refusal, they are not uses.
    refused: dict[str, Callable[[], object]] = {
        "MD5": lambda: hashes.Hash(hashes.MD5()).finalize(),  # noqa: S303
        "ChaCha20-Poly1305": lambda: ChaCha20Poly1305(b"k" * 32).encrypt(b"n" * 12, b"", None),
        "X25519": lambda: x25519.X25519PrivateKey.generate(),
        "scrypt": lambda: Scrypt(b"s" * 16, 32, 16, 1, 1).derive(b"p"),
        "RSA-1024 key generation in the provider": lambda: _provider_keygen_der("RSA", 1024),
        "RSA-1024 signing": lambda: rsa.generate_private_key(65537, 1024).sign(  # noqa: S505
            b"x", padding.PKCS1v15(), hashes.SHA256()
        ),
    }
    for label, attempt in refused.items():
        try:
            attempt()
        except Exception:  # noqa: S112  # refused, whichever exception the library chose
            continue
        raise FipsCheckError(f"non-approved {label} is available through cryptography")


def _run_checks() -> None:
    if _state.config_errors:
        raise FipsCheckError(_state.config_errors[0])
    bundle = _state.bundle
    if bundle is None:
        raise FipsCheckError("FIPS provider bundle was not configured")
    _state.provider = _load_provider(bundle)
    _check_provider_mapped(bundle, str(_state.provider["fips_so_sha256"]))
    _state.mapped_ok = True
    _check_stdlib()
    _check_cryptography()


def self_check() -> str | None:
    """Run the full check once (cached); return None when it passed, else the reason."""
    if not _state.checked:
        configure_environment()
        try:
            _run_checks()
        except FipsCheckError as exc:
            _state.failure = str(exc)
        except Exception as exc:  # an unexpected error is a failure too: fail closed
            _state.failure = f"unexpected {type(exc).__name__}: {exc}"
        _state.checked = True
    return _state.failure


def enforce_or_exit() -> None:
    """In FIPS mode, run the self-check and exit 78 with one line on stderr unless it passes.

    A no-op when FIPS mode is not requested; idempotent (the check runs once per process).
    """
    if not fips_requested():
        return
    failure = self_check()
    if failure is not None:
        sys.stderr.write(f"portcullis: FIPS self-check failed: {failure}\n")
        sys.stderr.flush()
        raise SystemExit(EXIT_FIPS_FAILURE)


def status() -> dict[str, object]:
    """FIPS state for ``/healthz`` and ``portcullis version`` (runs no new checks)."""
    requested = fips_requested()
    passed = requested and _state.checked and _state.failure is None
    provider = _state.provider
    if requested and not provider and _state.bundle is not None:
        try:
            provider = _load_provider(_state.bundle)
        except FipsCheckError:
            provider = {}
    return {
        "requested": requested,
        "enabled": passed,
        "self_check": (
            "not-run" if not _state.checked else ("passed" if _state.failure is None else "failed")
        ),
        "failure": _state.failure,
        "provider_version": provider.get("version"),
        "provider_source": (
            f"{provider['source_package']} {provider['source_version']} (Debian source)"
            if "source_package" in provider and "source_version" in provider
            else None
        ),
        "fips_so_sha256": provider.get("fips_so_sha256"),
        "fips_so_sha256_ok": _state.mapped_ok,
        "validated_module": False,
    }
