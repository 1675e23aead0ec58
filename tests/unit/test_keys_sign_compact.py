"""KeyManager.sign writes what joserfc's ``jwt.encode`` writes, without its per-call overhead.

RS256 and PS256/ES256 differ only in whether the signature is deterministic: RS256 tokens must
be byte-for-byte joserfc's; for the others the header and payload segments must be, and the
signature must verify. After a rotation the header names the key that signs: the previous one
during the publish grace (KeyManager._adopt), the new one after it.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from joserfc import jwt
from joserfc.util import urlsafe_b64decode
from portcullis.clock import FrozenClock
from portcullis.keys.manager import KeyManager
from portcullis.storage.memory import MemoryStorage

CLAIMS = {
    "iss": "https://issuer.example/dex",
    "sub": "CgVhbGljZRIFbG9jYWw",
    "aud": ["app", "kube"],
    "iat": 1_800_000_000,
    "exp": 1_800_086_400,
    "name": "José Müller",
    "groups": ["ops/admins", "dev"],
    "email_verified": True,
    "federated_claims": {"connector_id": "local", "user_id": "alice"},
}


@pytest.mark.parametrize("algorithm", ["RS256", "PS256", "ES256", "ES384"])
def test_sign_is_joserfcs_encoding(algorithm: str) -> None:
    clock = FrozenClock(1_800_000_000.0)
    keys = KeyManager(
        MemoryStorage(),
        clock,
        algorithm=algorithm,
        rotation_period=3600,
        max_token_lifetime=86400,
    )
    keys.rotate_if_due()
    state = keys.cached()
    header = {"alg": algorithm, "kid": state.signing_kid, "typ": "JWT"}
    reference = jwt.encode(header, dict(CLAIMS), state.signing_key, algorithms=[algorithm])
    token = keys.sign(dict(CLAIMS))
    if algorithm == "RS256":
        assert token == reference
    assert token.rsplit(".", 1)[0] == reference.rsplit(".", 1)[0]
    decoded = jwt.decode(token, state.verification_set, algorithms=[algorithm])
    assert decoded.claims == CLAIMS
    assert decoded.header == {"typ": "JWT", **header}
    assert keys.verify(token) == CLAIMS

    keys.rotate_if_due(force=True)
    in_grace = keys.cached()
    assert in_grace.signing_kid == state.signing_kid  # still signing with the previous key
    token = keys.sign(dict(CLAIMS))
    assert (
        jwt.decode(token, in_grace.verification_set, algorithms=[algorithm]).header["kid"]
        == state.signing_kid
    )
    assert keys.verify(token) == CLAIMS

    clock.advance(60)
    rotated = keys.current()
    assert rotated.signing_kid != state.signing_kid
    token = keys.sign(dict(CLAIMS))
    assert (
        jwt.decode(token, rotated.verification_set, algorithms=[algorithm]).header["kid"]
        == rotated.signing_kid
    )
    assert keys.verify(token) == CLAIMS


@pytest.mark.parametrize(("algorithm", "size"), [("ES256", 32), ("ES384", 48)])
def test_ecdsa_signatures_are_fixed_size_r_and_s(algorithm: str, size: int) -> None:
    """RFC 7518 §3.4: r and s as octet strings of the curve's size, zero-padded. About one
    signature in 128 has an r or s with a leading zero byte; 2,000 tokens hit that case
    (p ~ 1 - 2e-7) and every one must still be exactly 2 * size bytes and verify."""
    keys = KeyManager(
        MemoryStorage(),
        FrozenClock(1_800_000_000.0),
        algorithm=algorithm,
        rotation_period=3600,
        max_token_lifetime=86400,
    )
    keys.rotate_if_due()
    state = keys.cached()
    public = state.signing_key.get_op_key("verify")
    assert isinstance(public, ec.EllipticCurvePublicKey)
    scheme = ec.ECDSA(hashes.SHA256() if algorithm == "ES256" else hashes.SHA384())
    short = 0
    for n in range(2000):
        token = keys.sign({**CLAIMS, "jti": str(n)})
        signing_input, _, signature_segment = token.rpartition(".")
        signature = urlsafe_b64decode(signature_segment.encode())
        assert len(signature) == 2 * size
        r, s = signature[:size], signature[size:]
        short += r[0] == 0 or s[0] == 0
        der = encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
        public.verify(der, signing_input.encode(), scheme)  # raises when it does not verify
    assert short > 0
