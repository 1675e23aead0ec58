"""cosign-compatible signatures and attestations, and the `sign` subcommand.

Formats (measured against cosign 2.5, see provenance/README.md):
* signature: manifest at tag ``sha256-<hex>.sig``; one layer per signature whose blob is the
  simple-signing payload and whose annotation ``dev.cosignproject.cosign/signature`` is the base64
  DER ECDSA P-256 signature over the payload bytes;
* attestation: manifest at tag ``sha256-<hex>.att``; one layer per DSSE envelope carrying an
  in-toto Statement, annotated with its ``predicateType``.
Signatures use deterministic ECDSA nonces, so signing the same digest twice yields the same layer
and publishing twice changes nothing.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from portcullis_release import cosign_keys, dsse, oci
from portcullis_release.oci import Artifact, Descriptor
from portcullis_release.release import ReleasePlan, statements

SIMPLESIGNING_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
PREDICATE_ANNOTATION = "predicateType"
SIMPLESIGNING_TYPE = "cosign container image signature"
TARGET_REPOSITORY = "dev.portcullis.release.repository"


def sig_tag(digest: str) -> str:
    return f"sha256-{oci.digest_hex(digest)}.sig"


def att_tag(digest: str) -> str:
    return f"sha256-{oci.digest_hex(digest)}.att"


def simple_signing_payload(docker_reference: str, digest: str) -> bytes:
    """The payload cosign signs, byte for byte (compact JSON, cosign's field order)."""
    oci.digest_hex(digest)
    doc = {
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": digest},
            "type": SIMPLESIGNING_TYPE,
        },
        "optional": None,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def _sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    return key.sign(data, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))


@dataclass(frozen=True)
class Layer:
    """One layer of a .sig/.att manifest: its blob and annotations."""

    media_type: str
    blob: bytes
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor.of(self.media_type, self.blob, self.annotations)


def signature_layer(key: ec.EllipticCurvePrivateKey, docker_reference: str, digest: str) -> Layer:
    payload = simple_signing_payload(docker_reference, digest)
    sig = base64.b64encode(_sign(key, payload)).decode()
    return Layer(SIMPLESIGNING_MEDIA_TYPE, payload, {SIGNATURE_ANNOTATION: sig})


def attestation_layer(key: ec.EllipticCurvePrivateKey, statement: dict[str, Any]) -> Layer:
    """A DSSE-wrapped in-toto statement, annotated as cosign does for `cosign attest`."""
    payload = json.dumps(statement, separators=(",", ":"), sort_keys=True).encode()
    envelope = dsse.sign_envelope(key, payload)
    return Layer(
        dsse.ENVELOPE_MEDIA_TYPE,
        envelope,
        {SIGNATURE_ANNOTATION: "", PREDICATE_ANNOTATION: str(statement["predicateType"])},
    )


def _cosign_json(obj: Any) -> bytes:
    # cosign (go-containerregistry) writes struct fields in declaration order, compact.
    return json.dumps(obj, separators=(",", ":")).encode()


def attachment_artifact(layers: Iterable[Layer]) -> Artifact:
    """The manifest cosign stores at a .sig/.att tag for ``layers`` (config as cosign writes)."""
    layers = list(layers)
    config = _cosign_json(
        {
            "architecture": "",
            "created": "0001-01-01T00:00:00Z",
            "history": [{"created": "0001-01-01T00:00:00Z"} for _ in layers],
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": [layer.descriptor.digest for layer in layers]},
            "config": {},
        }
    )
    config_desc: dict[str, Any] = {
        "mediaType": oci.OCI_CONFIG,
        "size": len(config),
        "digest": oci.sha256_digest(config),
    }
    layer_descs = []
    for layer in layers:
        desc: dict[str, Any] = {
            "mediaType": layer.media_type,
            "size": len(layer.blob),
            "digest": oci.sha256_digest(layer.blob),
        }
        if layer.annotations:
            desc["annotations"] = layer.annotations
        layer_descs.append(desc)
    manifest = _cosign_json(
        {
            "schemaVersion": 2,
            "mediaType": oci.OCI_MANIFEST,
            "config": config_desc,
            "layers": layer_descs,
        }
    )
    blobs: dict[str, bytes] = {oci.sha256_digest(config): config}
    blobs.update({oci.sha256_digest(layer.blob): layer.blob for layer in layers})
    return Artifact(manifest, oci.OCI_MANIFEST, blobs)


def layers_of(artifact: Artifact) -> list[Layer]:
    """Recover the layers of a .sig/.att artifact (to merge new ones into it)."""
    out = []
    for desc in artifact.layers():
        out.append(Layer(desc.media_type, artifact.blobs[desc.digest], dict(desc.annotations)))
    return out


def merge(existing: list[Layer], new: Iterable[Layer]) -> list[Layer]:
    """``existing`` plus those of ``new`` not already present (same blob and annotations)."""
    seen = {
        (layer.descriptor.digest, json.dumps(layer.annotations, sort_keys=True))
        for layer in existing
    }
    out = list(existing)
    for layer in new:
        ident = (layer.descriptor.digest, json.dumps(layer.annotations, sort_keys=True))
        if ident not in seen:
            seen.add(ident)
            out.append(layer)
    return out


# ---- staging: the signed attachments written by `sign`, pushed by `publish` -------------------


@dataclass
class Attachment:
    """A .sig or .att manifest destined for ``repository`` (relative: "image" or "chart")."""

    role: str
    tag: str
    layers: list[Layer]

    @property
    def artifact(self) -> Artifact:
        return attachment_artifact(self.layers)


def write_attachments(root: Path, attachments: list[Attachment]) -> None:
    """Stage attachments as one OCI layout, each manifest tagged and labelled with its role."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    entries = []
    for att in attachments:
        art = att.artifact
        for digest, data in {**art.blobs, art.digest: art.manifest}.items():
            (blobs / oci.digest_hex(digest)).write_bytes(data)
        entries.append(
            Descriptor(
                art.media_type,
                art.digest,
                len(art.manifest),
                {oci.REF_NAME: att.tag, TARGET_REPOSITORY: att.role},
            ).to_json()
        )
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": entries}
    (root / "index.json").write_bytes(oci.canonical_json(index))


def read_attachments(root: Path) -> list[Attachment]:
    out = []
    for desc, art in oci.read_layout_all(root):
        role = desc.annotations.get(TARGET_REPOSITORY)
        tag = desc.annotations.get(oci.REF_NAME)
        if role not in ("image", "chart") or not tag:
            raise oci.OciError(f"{root}: manifest {desc.digest} lacks its role or tag annotation")
        out.append(Attachment(role, tag, layers_of(art)))
    return out


# ---- the subcommand -------------------------------------------------------------------------


def load_signing_key(path: Path) -> ec.EllipticCurvePrivateKey:
    return cosign_keys.load_private_key(path, cosign_keys.password_from_env())


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

CERTIFICATE_ANNOTATION = "dev.sigstore.cosign/certificate"
BUNDLE_ANNOTATION = "dev.sigstore.cosign/bundle"


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
        return Layer(dsse.ENVELOPE_MEDIA_TYPE, envelope, annotations)


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


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "sign",
        help="sign the image and chart and attest provenance/SBOM (cosign format)",
        description="Write cosign-format .sig and .att manifests for the image and chart into a "
        "staging OCI layout that `publish` pushes. Key: COSIGN_KEY (cosign encrypted or PEM), "
        "password COSIGN_PASSWORD.",
    )
    parser.add_argument("--image", type=Path, default=Path("dist/image"), help="OCI image layout")
    parser.add_argument("--chart", type=Path, help="packaged chart .tgz (dist/chart/...)")
    parser.add_argument(
        "--registry", required=True, help="registry prefix, e.g. 127.0.0.1:5000/portcullis"
    )
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--key", type=Path, help="private key file (cosign format or PEM)")
    how.add_argument(
        "--keyless",
        action="store_true",
        help="sign through Sigstore (Fulcio + Rekor) with the CI's ambient OIDC identity",
    )
    parser.add_argument(
        "--sigstore-staging", action="store_true", help="use Sigstore's staging instance"
    )
    parser.add_argument(
        "--release-dir",
        type=Path,
        default=Path("dist/release"),
        help="where sbom/provenance were written and attachments go",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    plan = ReleasePlan.load(args.image, args.chart, args.registry)
    todo = statements(args.release_dir, plan)
    if args.keyless:
        try:
            with keyless_signer(args.sigstore_staging) as signer:
                attachments = build_attachments(signer, plan.targets(), todo)
        except KeylessError as exc:
            print(f"sign: {exc}", file=sys.stderr)
            return 2
    else:
        attachments = build_attachments(load_signing_key(args.key), plan.targets(), todo)
    write_attachments(args.release_dir / "attachments", attachments)
    for att in attachments:
        print(f"signed {att.role}: {att.tag} ({len(att.layers)} layer(s))")
    return 0
