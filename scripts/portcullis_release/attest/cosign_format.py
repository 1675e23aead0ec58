"""cosign's wire format, in one place: what signing writes and verifying and publishing read.

cosign keeps these in ``pkg/types`` (media and payload types) and ``pkg/oci`` (tag rules,
annotations, the manifest of a signature or attestation); so does this module, and neither
``attest.sign`` nor ``verify`` owns them, so the two never import each other. Measured against
cosign 2.5 (see provenance/README.md):

* signature: manifest at tag ``sha256-<hex>.sig``; one layer per signature whose blob is the
  simple-signing payload and whose annotation ``dev.cosignproject.cosign/signature`` is the base64
  DER ECDSA P-256 signature over the payload bytes;
* attestation: manifest at tag ``sha256-<hex>.att``; one layer per DSSE envelope carrying an
  in-toto Statement, annotated with its ``predicateType``;
* keyless: each layer also carries the Fulcio certificate and the Rekor bundle as annotations.

Imports only the OCI content model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from portcullis_release import oci
from portcullis_release.oci import Artifact, Descriptor

__all__ = [
    "BUNDLE_ANNOTATION",
    "CERTIFICATE_ANNOTATION",
    "DSSE_ENVELOPE_MEDIA_TYPE",
    "IN_TOTO_PAYLOAD_TYPE",
    "PREDICATE_ANNOTATION",
    "SIGNATURE_ANNOTATION",
    "SIMPLESIGNING_MEDIA_TYPE",
    "SIMPLESIGNING_TYPE",
    "Layer",
    "att_tag",
    "attachment_artifact",
    "layers_of",
    "merge",
    "sig_tag",
    "simple_signing_payload",
]

# ---- media and payload types (cosign pkg/types) ----------------------------------------------

SIMPLESIGNING_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
DSSE_ENVELOPE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
SIMPLESIGNING_TYPE = "cosign container image signature"

# ---- layer annotations (cosign pkg/oci/static) -----------------------------------------------

SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
PREDICATE_ANNOTATION = "predicateType"
CERTIFICATE_ANNOTATION = "dev.sigstore.cosign/certificate"
BUNDLE_ANNOTATION = "dev.sigstore.cosign/bundle"


# ---- tag rules (cosign pkg/oci/remote) -------------------------------------------------------


def sig_tag(digest: str) -> str:
    """The tag holding the signatures of ``digest``."""
    return f"sha256-{oci.digest_hex(digest)}.sig"


def att_tag(digest: str) -> str:
    """The tag holding the attestations of ``digest``."""
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


# ---- the .sig/.att manifest --------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """One layer of a .sig/.att manifest: its blob and annotations."""

    media_type: str
    blob: bytes
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor.of(self.media_type, self.blob, self.annotations)


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
