"""Signing: cosign-compatible signature and attestation layers, with a key or keyless.

What the layers look like is cosign's wire format (``attest.cosign_format``); this module only
makes them, with a key (``KeySigner``) or through Sigstore (``SigstoreSigner``: Fulcio certificate
and Rekor entry for the CI's ambient identity). Verifying lives in ``portcullis_release.verify``
and never imports this module, nor this module it: both stand on the format module.

Signatures use deterministic ECDSA nonces, so signing the same digest twice yields the same layer
and publishing twice changes nothing.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from portcullis_release.attest import dsse
from portcullis_release.attest.attachments import Attachment
from portcullis_release.attest.cosign_format import (
    BUNDLE_ANNOTATION,
    CERTIFICATE_ANNOTATION,
    DSSE_ENVELOPE_MEDIA_TYPE,
    PREDICATE_ANNOTATION,
    SIGNATURE_ANNOTATION,
    SIMPLESIGNING_MEDIA_TYPE,
    Layer,
    att_tag,
    sig_tag,
    simple_signing_payload,
)


def _sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    return key.sign(data, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))


def signature_layer(key: ec.EllipticCurvePrivateKey, docker_reference: str, digest: str) -> Layer:
    payload = simple_signing_payload(docker_reference, digest)
    sig = base64.b64encode(_sign(key, payload)).decode()
    return Layer(SIMPLESIGNING_MEDIA_TYPE, payload, {SIGNATURE_ANNOTATION: sig})


def attestation_layer(key: ec.EllipticCurvePrivateKey, statement: dict[str, Any]) -> Layer:
    """A DSSE-wrapped in-toto statement, annotated as cosign does for `cosign attest`."""
    payload = json.dumps(statement, separators=(",", ":"), sort_keys=True).encode()
    envelope = dsse.sign_envelope(key, payload)
    return Layer(
        DSSE_ENVELOPE_MEDIA_TYPE,
        envelope,
        {SIGNATURE_ANNOTATION: "", PREDICATE_ANNOTATION: str(statement["predicateType"])},
    )


class Signer(Protocol):
    """Makes signature and attestation layers (with a key, or keyless through sigstore)."""

    def signature_layer(self, docker_reference: str, digest: str) -> Layer: ...

    def attestation_layer(self, statement: dict[str, Any]) -> Layer: ...


@dataclass
class KeySigner:
    key: ec.EllipticCurvePrivateKey

    def signature_layer(self, docker_reference: str, digest: str) -> Layer:
        return signature_layer(self.key, docker_reference, digest)

    def attestation_layer(self, statement: dict[str, Any]) -> Layer:
        return attestation_layer(self.key, statement)


def build_attachments(
    signer: Signer | ec.EllipticCurvePrivateKey,
    targets: dict[str, tuple[str, str]],
    statements: dict[str, list[dict[str, Any]]],
) -> list[Attachment]:
    """Signatures for each target (role -> (docker reference, digest)) and attestations of the
    statements per role (each statement must name that target's digest as a subject)."""
    if isinstance(signer, ec.EllipticCurvePrivateKey):
        signer = KeySigner(signer)
    out = []
    for role, (reference, digest) in targets.items():
        out.append(Attachment(role, sig_tag(digest), [signer.signature_layer(reference, digest)]))
        atts = [signer.attestation_layer(st) for st in statements.get(role, [])]
        if atts:
            out.append(Attachment(role, att_tag(digest), atts))
    return out


# ---- keyless signing (sigstore: Fulcio certificate + Rekor entry) ----------------------------
# sigstore is imported only on this path: loading it costs ~0.2 s (measured) that key-signed
# releases and every other subcommand need not pay.


class KeylessError(Exception):
    """Keyless signing is impossible here (no ambient identity, or sigstore failed)."""


def ambient_identity_token() -> str:
    """The CI's ambient OIDC token (GitHub Actions, GitLab, Buildkite, GCP...), as sigstore finds
    it. Keyless signing never prompts: without an ambient identity it refuses."""
    from sigstore.oidc import IdentityError, detect_credential

    try:
        token = detect_credential()
    except IdentityError as exc:
        raise KeylessError(f"ambient OIDC credential detection failed: {exc}") from None
    if not token:
        raise KeylessError(
            "keyless signing needs an ambient OIDC identity (e.g. GitHub Actions with "
            "`permissions: id-token: write`, or SIGSTORE_ID_TOKEN); none was found: sign with "
            "--key / COSIGN_KEY instead"
        )
    return token


def cosign_annotations(bundle: Any) -> dict[str, str]:
    """cosign's per-layer keyless annotations from a sigstore ``Bundle``: the Fulcio signing
    certificate (PEM) and the Rekor inclusion promise in cosign's "bundle" JSON shape, which is
    what `cosign verify --certificate-identity ...` and Flux keyless verification read."""
    cert = bundle.signing_certificate.public_bytes(serialization.Encoding.PEM).decode()
    # sigstore exposes no public accessor for the raw log-entry fields cosign needs.
    entry = bundle.log_entry._inner
    rekor = {
        "SignedEntryTimestamp": base64.b64encode(
            entry.inclusion_promise.signed_entry_timestamp
        ).decode(),
        "Payload": {
            "body": base64.b64encode(entry.canonicalized_body).decode(),
            "integratedTime": int(entry.integrated_time),
            "logIndex": int(entry.log_index),
            "logID": bytes(entry.log_id.key_id).hex(),
        },
    }
    return {
        CERTIFICATE_ANNOTATION: cert,
        BUNDLE_ANNOTATION: json.dumps(rekor, separators=(",", ":")),
    }


@dataclass
class SigstoreSigner:
    """Signs through a sigstore ``Signer`` (``SigningContext.signer(identity)``)."""

    signer: Any

    def signature_layer(self, docker_reference: str, digest: str) -> Layer:
        payload = simple_signing_payload(docker_reference, digest)
        bundle = self.signer.sign_artifact(payload)
        annotations = {SIGNATURE_ANNOTATION: base64.b64encode(bundle.signature).decode()}
        annotations.update(cosign_annotations(bundle))
        return Layer(SIMPLESIGNING_MEDIA_TYPE, payload, annotations)

    def attestation_layer(self, statement: dict[str, Any]) -> Layer:
        from sigstore import dsse as sigstore_dsse

        payload = json.dumps(statement, separators=(",", ":"), sort_keys=True).encode()
        bundle = self.signer.sign_dsse(sigstore_dsse.Statement(payload))
        env = bundle._inner.dsse_envelope
        envelope = json.dumps(
            {
                "payloadType": env.payload_type,
                "payload": base64.b64encode(env.payload).decode(),
                "signatures": [
                    {"keyid": "", "sig": base64.b64encode(sig.sig).decode()}
                    for sig in env.signatures
                ],
            },
            separators=(",", ":"),
        ).encode()
        annotations = {
            SIGNATURE_ANNOTATION: "",
            PREDICATE_ANNOTATION: str(statement["predicateType"]),
        }
        annotations.update(cosign_annotations(bundle))
        return Layer(DSSE_ENVELOPE_MEDIA_TYPE, envelope, annotations)


@contextlib.contextmanager
def keyless_signer(staging: bool = False) -> Iterator[SigstoreSigner]:
    """A sigstore signer for the ambient identity (public-good Sigstore, or its staging)."""
    from sigstore.models import ClientTrustConfig
    from sigstore.oidc import IdentityToken
    from sigstore.sign import SigningContext

    token = IdentityToken(ambient_identity_token())
    config = ClientTrustConfig.staging() if staging else ClientTrustConfig.production()
    context = SigningContext.from_trust_config(config)
    with context.signer(token) as signer:
        yield SigstoreSigner(signer)
