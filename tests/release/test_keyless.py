"""Keyless signing through sigstore, offline: what can be checked without Fulcio and Rekor.

The signing service round trip needs the public Sigstore instance and a CI identity; here we check
that a missing identity is refused clearly, and that a sigstore bundle is turned into exactly the
annotations cosign reads (signature, Fulcio certificate, Rekor bundle).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from portcullis_release import cli
from portcullis_release.attest import cosign_format, sign
from sigstore.models import Bundle

from tests.release.conftest import SyntheticRelease


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _bundle_for(payload: bytes) -> Bundle:
    """A well-formed v0.3 sigstore bundle over ``payload`` (short-lived leaf certificate,
    hashedrekord log entry), shaped like what Fulcio and Rekor return."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    no_usage = dict.fromkeys(
        [
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ],
        False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sigstore.dev")]))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(minutes=10))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, **no_usage), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name("ci@example.test")]), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    sig = key.sign(payload, ec.ECDSA(hashes.SHA256()))
    body = json.dumps(
        {
            "apiVersion": "0.0.1",
            "kind": "hashedrekord",
            "spec": {
                "data": {
                    "hash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()}
                },
                "signature": {
                    "content": _b64(sig),
                    "publicKey": {"content": _b64(cert.public_bytes(serialization.Encoding.PEM))},
                },
            },
        }
    ).encode()
    doc = {
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {
            "certificate": {"rawBytes": _b64(cert.public_bytes(serialization.Encoding.DER))},
            "tlogEntries": [
                {
                    "logIndex": "7",
                    "logId": {"keyId": _b64(b"\x01" * 32)},
                    "kindVersion": {"kind": "hashedrekord", "version": "0.0.1"},
                    "integratedTime": "1700000000",
                    "inclusionPromise": {"signedEntryTimestamp": _b64(b"signed-entry-timestamp")},
                    "inclusionProof": {
                        "logIndex": "7",
                        "rootHash": _b64(b"\x02" * 32),
                        "treeSize": "8",
                        "hashes": [],
                        "checkpoint": {"envelope": "rekor - 1\n8\nroot\n\n"},
                    },
                    "canonicalizedBody": _b64(body),
                }
            ],
        },
        "messageSignature": {
            "messageDigest": {
                "algorithm": "SHA2_256",
                "digest": _b64(hashlib.sha256(payload).digest()),
            },
            "signature": _b64(sig),
        },
    }
    return Bundle.from_json(json.dumps(doc))


class FakeSigstoreSigner:
    """Stands in for sigstore's Signer (which would call Fulcio and Rekor)."""

    def sign_artifact(self, payload: bytes) -> Bundle:
        return _bundle_for(payload)


def test_keyless_signature_layer_carries_what_cosign_reads() -> None:
    digest = "sha256:" + "cd" * 32
    layer = sign.SigstoreSigner(FakeSigstoreSigner()).signature_layer("r.test/app", digest)
    assert layer.blob == cosign_format.simple_signing_payload("r.test/app", digest)
    cert = x509.load_pem_x509_certificate(
        layer.annotations[cosign_format.CERTIFICATE_ANNOTATION].encode()
    )
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(
        base64.b64decode(layer.annotations[cosign_format.SIGNATURE_ANNOTATION]),
        layer.blob,
        ec.ECDSA(hashes.SHA256()),
    )
    rekor = json.loads(layer.annotations[cosign_format.BUNDLE_ANNOTATION])
    assert base64.b64decode(rekor["SignedEntryTimestamp"]) == b"signed-entry-timestamp"
    assert rekor["Payload"]["logIndex"] == 7
    assert rekor["Payload"]["integratedTime"] == 1700000000
    assert rekor["Payload"]["logID"] == "01" * 32
    entry = json.loads(base64.b64decode(rekor["Payload"]["body"]))
    assert entry["spec"]["data"]["hash"]["value"] == hashlib.sha256(layer.blob).hexdigest()


def test_keyless_without_an_ambient_identity_is_refused(
    monkeypatch: pytest.MonkeyPatch,
    release_inputs: SyntheticRelease,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import sigstore.oidc

    monkeypatch.setattr(sigstore.oidc, "detect_credential", lambda *a, **k: None)
    with pytest.raises(sign.KeylessError, match="ambient OIDC identity"):
        sign.ambient_identity_token()
    code = cli.main(
        [
            "sign",
            "--keyless",
            "--image",
            str(release_inputs.image_dir),
            "--registry",
            "r.test/p",
            "--release-dir",
            str(tmp_path),
        ]
    )
    assert code == 2
    assert "--key / COSIGN_KEY" in capsys.readouterr().err
