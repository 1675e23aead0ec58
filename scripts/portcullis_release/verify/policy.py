"""The verification policy: what a published artefact's provenance must say to be accepted.

The file format is ``portcullis.dev/v1`` ``VerificationPolicy`` (documented in
``provenance/policy.md``); ``portcullis-release verify --policy`` reads it, and ``--builder-id`` /
``--source-repo`` override its fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

__all__ = ["Policy"]


@dataclass
class Policy:
    """What the provenance must say. ``None`` means "do not check" (only where allowed)."""

    builder_id: str | None = None
    source_repository: str | None = None
    require_provenance: bool = True
    require_sbom: bool = True
    require_vex: bool = False  # the image must carry an OpenVEX attestation naming its digest

    @classmethod
    def from_file(cls, path: Path) -> Policy:
        doc = yaml.safe_load(path.read_text())
        if (
            not isinstance(doc, dict)
            or doc.get("apiVersion") != "portcullis.dev/v1"
            or doc.get("kind") != "VerificationPolicy"
        ):
            raise ValueError(f"{path}: not a portcullis.dev/v1 VerificationPolicy")
        spec = doc.get("spec") or {}
        unknown = set(spec) - {
            "builderId",
            "sourceRepository",
            "requireProvenance",
            "requireSbom",
            "requireVex",
        }
        if unknown:
            raise ValueError(f"{path}: unknown field spec.{sorted(unknown)[0]}")
        return cls(
            spec.get("builderId"),
            spec.get("sourceRepository"),
            bool(spec.get("requireProvenance", True)),
            bool(spec.get("requireSbom", True)),
            bool(spec.get("requireVex", False)),
        )
