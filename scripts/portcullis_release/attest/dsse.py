"""DSSE (Dead Simple Signing Envelope) signing and verification with ECDSA P-256.

The signature covers the pre-authentication encoding (PAE) of payload type and payload, never the
JSON of the envelope, so re-serialising an envelope cannot change what was signed. This is the
envelope cosign's attestations use (media type ``cosign_format.DSSE_ENVELOPE_MEDIA_TYPE``).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from portcullis_release.attest.cosign_format import IN_TOTO_PAYLOAD_TYPE


class EnvelopeError(Exception):
    """The envelope is malformed or its signature does not verify."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSEv1 pre-authentication encoding: lengths are byte counts in ASCII decimal."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def sign_envelope(
    key: ec.EllipticCurvePrivateKey, payload: bytes, payload_type: str = IN_TOTO_PAYLOAD_TYPE
) -> bytes:
    """A compact JSON DSSE envelope with one signature (empty keyid, as cosign writes)."""
    # RFC 6979 deterministic nonces: the same statement signed twice gives the same envelope, so
    # re-running a release re-publishes nothing.
    algorithm = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
    signature = key.sign(pae(payload_type, payload), algorithm)
    envelope = {
        "payloadType": payload_type,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": "", "sig": base64.b64encode(signature).decode()}],
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[bytes, ...]

    @classmethod
    def parse(cls, data: bytes) -> Envelope:
        try:
            doc = json.loads(data)
            payload = base64.b64decode(doc["payload"], validate=True)
            sigs = tuple(base64.b64decode(s["sig"], validate=True) for s in doc["signatures"])
            payload_type = str(doc["payloadType"])
        except (ValueError, KeyError, TypeError) as exc:
            raise EnvelopeError(f"malformed DSSE envelope ({type(exc).__name__}: {exc})") from None
        if not sigs:
            raise EnvelopeError("DSSE envelope has no signatures")
        return cls(payload_type, payload, sigs)

    def verified_by(self, key: ec.EllipticCurvePublicKey) -> bool:
        """True if any signature verifies with ``key`` over the PAE."""
        message = pae(self.payload_type, self.payload)
        for sig in self.signatures:
            try:
                key.verify(sig, message, ec.ECDSA(hashes.SHA256()))
            except InvalidSignature:
                continue
            return True
        return False

    def statement(self) -> dict[str, Any]:
        """The in-toto Statement this envelope carries (only meaningful once verified)."""
        if self.payload_type != IN_TOTO_PAYLOAD_TYPE:
            raise EnvelopeError(f"payloadType {self.payload_type!r} is not in-toto")
        try:
            doc = json.loads(self.payload)
        except ValueError as exc:
            raise EnvelopeError(f"in-toto payload is not JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise EnvelopeError("in-toto payload is not a JSON object")
        return doc
