"""The signed attachments staged between `sign` and `publish`: an OCI layout under
``<release dir>/attachments`` holding each .sig/.att manifest, tagged and labelled with the
artefact it belongs to ("image", "chart", or "plugin" for the kubectl-portcullis binary).

Why a layout on disk: signing (which needs the key) and publishing (which needs the registry
credentials) can then run as separate steps, even on separate machines. Imports only the OCI
model and cosign's format.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from portcullis_release import oci
from portcullis_release.attest.cosign_format import Layer, attachment_artifact, layers_of
from portcullis_release.oci import Artifact, Descriptor

__all__ = ["TARGET_REPOSITORY", "Attachment", "read_attachments", "write_attachments"]

# Our own annotation on the staging index: which artefact's repository a manifest goes to.
TARGET_REPOSITORY = "dev.portcullis.release.repository"


@dataclass
class Attachment:
    """A .sig or .att manifest destined for ``repository`` (relative: "image", "chart",
    "plugin")."""

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
    """The attachments staged under ``root``, each checked to name its role and tag."""
    out = []
    for desc, art in oci.read_layout_all(root):
        role = desc.annotations.get(TARGET_REPOSITORY)
        tag = desc.annotations.get(oci.REF_NAME)
        # image-<arch>: a platform image of a multi-architecture release (ReleasePlan).
        known = role in ("image", "chart", "plugin") or (role or "").startswith("image-")
        if role is None or not known or not tag:
            raise oci.OciError(f"{root}: manifest {desc.digest} lacks its role or tag annotation")
        out.append(Attachment(role, tag, layers_of(art)))
    return out
