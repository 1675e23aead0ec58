"""Signing keys: generation, rotation shared by every replica, the cached JWKS document.

Keys live in storage so every worker process and replica signs with the same key. Rotation is one
``Storage.update_keys`` transaction that re-checks whether it is still due, so two replicas racing
never both rotate (the loser aborts with RotationNotDueError). Retired public keys stay in /keys
until every token they signed has expired.

Parsed key objects and the serialized JWKS are cached per process and refreshed from storage at
most every ``refresh_interval`` seconds: the hot paths never parse PEM/JWK per request.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey
from joserfc.jws import JWSRegistry
from joserfc.util import json_b64encode, urlsafe_b64encode

from portcullis import fips
from portcullis.clock import Clock
from portcullis.storage.base import RotationNotDueError, Storage
from portcullis.storage.models import Keys, SigningKey, VerificationKey

SigningKeyObject = RSAKey | ECKey

# Public JWK members per key type (what /keys publishes).
_PUBLIC_MEMBERS = {"RSA": ("kty", "n", "e"), "EC": ("kty", "crv", "x", "y")}
_HASH_FOR_ALG = {"RS256": "sha256", "PS256": "sha256", "ES256": "sha256", "ES384": "sha384"}


def generate_signing_key(algorithm: str) -> dict[str, Any]:
    """A new private JWK for algorithm, with kid (RFC 7638 thumbprint), alg and use."""
    # In FIPS mode the key pair is generated inside the FIPS provider (cryptography's own key
    # generation runs outside it); otherwise by cryptography. Same PEM either way.
    pem = fips.generate_private_key_pem(algorithm)
    key: SigningKeyObject = (
        RSAKey.import_key(pem) if algorithm in ("RS256", "PS256") else ECKey.import_key(pem)
    )
    jwk = dict(key.as_dict(private=True))
    jwk["kid"] = key.thumbprint()
    jwk["alg"] = algorithm
    jwk["use"] = "sig"
    return jwk


def public_jwk(private: dict[str, Any]) -> dict[str, Any]:
    members = _PUBLIC_MEMBERS[private["kty"]]
    public = {m: private[m] for m in members}
    public.update(kid=private["kid"], alg=private["alg"], use="sig")
    return public


def hash_for_algorithm(algorithm: str) -> str:
    return _HASH_FOR_ALG[algorithm]


@dataclass(frozen=True)
class KeyState:
    """One immutable snapshot of the key set, ready for the hot paths."""

    signing_kid: str
    algorithm: str
    signing_key: SigningKeyObject
    verification_set: KeySet
    jwks_body: bytes
    jwks_etag: str
    next_rotation: float
    fingerprint: tuple[str, ...]
    # The JWS compact header segment for this key (the same bytes joserfc's jwt.encode
    # writes), encoded once instead of per token.
    header_segment: bytes = b""
    # The JWS signature of a signing input with signing_key (see _signer).
    signer: Callable[[bytes], bytes] | None = None


_EC_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "ES256": hashes.SHA256,
    "ES384": hashes.SHA384,
}


def _signer(algorithm: str, key: SigningKeyObject) -> Callable[[bytes], bytes]:
    """The JWS signature function for ``key``, its per-call set-up done once.

    RSA (RS256, PS256) signs through joserfc's own algorithm: its set-up is ~1% of an RSA
    signature. For ECDSA joserfc re-derives the cryptography key object, builds the signature
    scheme and re-encodes the integers through hex on every call, ~5 µs of a ~30 µs signature
    here; this does the same steps (RFC 7518 §3.4: cryptography's DER signature, its r and s as
    big-endian octets of the curve's size, concatenated) with the key object and the scheme
    built once. The signature itself is cryptography's (OpenSSL) in both cases."""
    if isinstance(key, ECKey) and algorithm in _EC_HASHES:
        private = key.get_op_key("sign")
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        scheme = ec.ECDSA(_EC_HASHES[algorithm]())
        size = (private.curve.key_size + 7) // 8

        def sign_ecdsa(signing_input: bytes) -> bytes:
            r, s = decode_dss_signature(private.sign(signing_input, scheme))
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")

        return sign_ecdsa
    jws = JWSRegistry.algorithms[algorithm]
    return lambda signing_input: jws.sign(signing_input, key)


def _header_segment(algorithm: str, kid: str) -> bytes:
    # joserfc.jwt.encode's header: {"typ": "JWT", **header}, with header alg, kid, typ.
    return json_b64encode({"typ": "JWT", "alg": algorithm, "kid": kid})


def _fingerprint(keys: Keys) -> tuple[str, ...]:
    signing = keys.signing_key.jwk["kid"] if keys.signing_key else ""
    return (signing, repr(keys.next_rotation), *(v.jwk["kid"] for v in keys.verification_keys))


class KeyManager:
    def __init__(
        self,
        storage: Storage,
        clock: Clock,
        *,
        algorithm: str,
        rotation_period: float,
        max_token_lifetime: float,
        refresh_interval: float = 5.0,
    ) -> None:
        self._storage = storage
        self._clock = clock
        self._algorithm = algorithm
        self._rotation_period = rotation_period
        self._max_token_lifetime = max_token_lifetime
        self._refresh_interval = refresh_interval
        self._lock = threading.Lock()
        self._state: KeyState | None = None
        self._loaded_at = 0.0
        # A new signing key is used only once every process and replica publishes it: they
        # each re-read the key set within ``refresh_interval``, so signing with it earlier lets
        # a relying party get a token whose kid the /keys it fetches (from a process that has
        # not re-read yet) does not list. Until then the previous key signs; it stays
        # published as a retired key. (kid of the pending key, when this process first saw it)
        self._publish_grace = 2 * refresh_interval
        self._pending: tuple[str, float] | None = None

    # -- rotation ----------------------------------------------------------------------------
    def rotate_if_due(self, *, force: bool = False, adopt_algorithm: bool = False) -> bool:
        """Rotate when the schedule says so (or force). Returns True if this call rotated.

        ``adopt_algorithm`` (used at start-up only) also rotates when the stored key uses
        another algorithm than configured, so a changed ``signer.config.algorithm`` applies at
        the next start; the periodic check leaves it alone, so replicas of two versions during
        a rolling update do not flip the key back and forth.
        """
        now = self._clock.now()

        def updater(keys: Keys) -> Keys:
            due = keys.signing_key is None or now >= keys.next_rotation
            if adopt_algorithm and keys.signing_key is not None:
                due = due or keys.signing_key.jwk.get("alg") != self._algorithm
            if not (due or force):
                raise RotationNotDueError("another replica rotated already")
            retired = list(keys.verification_keys)
            if keys.signing_key is not None:
                retired.append(
                    VerificationKey(
                        jwk=public_jwk(keys.signing_key.jwk),
                        # Tokens signed up to now stay valid for at most the longest lifetime.
                        expiry=now + self._max_token_lifetime,
                    )
                )
            return Keys(
                signing_key=SigningKey(jwk=generate_signing_key(self._algorithm)),
                verification_keys=tuple(k for k in retired if k.expiry > now),
                next_rotation=now + self._rotation_period,
            )

        try:
            self._storage.update_keys(updater)
        except RotationNotDueError:
            return False
        self.reload()
        return True

    def rotate_dropping_retired(self) -> None:
        """Revoke every outstanding token: a new signing key now and no verification key for
        anything signed before (``portcullis revoke --all``). Other replicas pick the new set
        up within ``refresh_interval``; a relying party when it next fetches ``/keys``."""
        now = self._clock.now()

        def updater(keys: Keys) -> Keys:
            return Keys(
                signing_key=SigningKey(jwk=generate_signing_key(self._algorithm)),
                verification_keys=(),
                next_rotation=now + self._rotation_period,
            )

        self._storage.update_keys(updater)
        self.reload()

    # -- cached state ------------------------------------------------------------------------
    def reload(self) -> KeyState:
        keys = self._storage.get_keys()
        if keys.signing_key is None:
            raise RuntimeError("no signing key in storage yet; rotate_if_due() first")
        state = self._adopt(self._build_state(keys))
        with self._lock:
            self._state = state
            self._loaded_at = self._clock.now()
        return state

    def _adopt(self, state: KeyState) -> KeyState:
        """``state``, but still signing with the previous key while the new one is younger
        (as seen here) than the publish grace and the previous one is still published."""
        previous = self._state
        if previous is None or previous.signing_kid == state.signing_kid:
            self._pending = None
            return state
        published = {key.kid for key in state.verification_set.keys}
        if previous.signing_kid not in published:
            self._pending = None
            return state
        now = self._clock.now()
        if self._pending is None or self._pending[0] != state.signing_kid:
            self._pending = (state.signing_kid, now)
        if now - self._pending[1] >= self._publish_grace:
            self._pending = None
            return state
        return replace(
            state,
            signing_kid=previous.signing_kid,
            algorithm=previous.algorithm,
            signing_key=previous.signing_key,
            header_segment=previous.header_segment,
            signer=previous.signer,
        )

    def cached(self) -> KeyState:
        """The last loaded state without touching storage (for the event loop: /keys). The
        background key loop keeps it fresh; falls back to a load before the first one."""
        return self._state if self._state is not None else self.current()

    def current(self) -> KeyState:
        """The cached state, re-read from storage when older than refresh_interval so a
        rotation by another replica shows up within seconds."""
        state = self._state
        if state is None or self._clock.now() - self._loaded_at >= self._refresh_interval:
            previous = state
            keys = self._storage.get_keys()
            unchanged = previous is not None and _fingerprint(keys) == previous.fingerprint
            if unchanged and self._pending is None:
                assert previous is not None
                with self._lock:
                    self._loaded_at = self._clock.now()
                return previous
            if keys.signing_key is None:
                if previous is not None:
                    return previous
                raise RuntimeError("no signing key in storage")
            state = self._adopt(self._build_state(keys))
            with self._lock:
                self._state = state
                self._loaded_at = self._clock.now()
        return state

    @staticmethod
    def _build_state(keys: Keys) -> KeyState:
        assert keys.signing_key is not None
        private = keys.signing_key.jwk
        algorithm = private["alg"]
        signing_key: SigningKeyObject = (
            RSAKey.import_key(private) if private["kty"] == "RSA" else ECKey.import_key(private)
        )
        public = [public_jwk(private)] + [v.jwk for v in keys.verification_keys]
        verification_set = KeySet.import_key_set({"keys": public})
        body = json.dumps({"keys": public}, indent=2, sort_keys=True).encode()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        return KeyState(
            signing_kid=private["kid"],
            algorithm=algorithm,
            signing_key=signing_key,
            verification_set=verification_set,
            jwks_body=body,
            jwks_etag=etag,
            next_rotation=keys.next_rotation,
            fingerprint=_fingerprint(keys),
            header_segment=_header_segment(algorithm, private["kid"]),
            signer=_signer(algorithm, signing_key),
        )

    # -- signing -----------------------------------------------------------------------------
    def sign(self, claims: dict[str, Any]) -> str:
        """Sign with the cached key (no storage access, so it may run on the event loop). A
        rotation by another replica reaches the cache within the key loop's refresh interval;
        until then the previous key signs, and it stays published for verification anyway.

        The token is what ``joserfc.jwt.encode`` writes for these claims (the same header
        bytes, the claims as compact UTF-8 JSON, the signature of ``KeyState.signer``),
        without its per-call registry look-ups, header checks and header encoding: on ES256
        those cost about as much as the signature itself. The header segment is encoded once
        per key (``KeyState.header_segment``)."""
        state = self.cached()
        signer = state.signer or _signer(state.algorithm, state.signing_key)
        signing_input = state.header_segment + b"." + urlsafe_b64encode(orjson.dumps(claims))
        signature = urlsafe_b64encode(signer(signing_input))
        return (signing_input + b"." + signature).decode("ascii")

    def verify(self, token: str) -> dict[str, Any]:
        """Signature check against every published key; claims are the caller's job."""
        state = self.current()
        decoded = jwt.decode(token, state.verification_set, algorithms=list(_HASH_FOR_ALG))
        return dict(decoded.claims)
