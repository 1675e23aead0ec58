"""Verify the ``kubectl-portcullis`` artifact: everything the image gets, plus the binary itself.

:class:`verifier.Verifier` already proves the artifact's manifest and blobs by digest, its cosign
signature, its provenance (builder, source) and that an SBOM describes the artifact digest. A
binary is downloaded and run on its own, so more is required of it here:

1. the manifest is the plugin's (``artifactType``) with exactly one binary layer, whose digest
   is the executable's sha256;
2. a verified provenance statement names that sha256 as a subject (so the statement speaks for
   the file a user runs, not only for a manifest that points at it);
3. the verified SBOM's ``metadata.component`` carries that sha256 and lists the plugin package,
   the interpreter and PyInstaller's bootloader;
4. given a downloaded file, it hashes to that sha256 (a swapped or altered binary fails here).

An artifact of another type verifies as before; asking to check a file against it is an error.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from portcullis_release import oci
from portcullis_release.build.plugin_artifact import BINARY_MEDIA_TYPE, PLUGIN_ARTIFACT_TYPE
from portcullis_release.oci import Reference
from portcullis_release.verify.verifier import (
    CYCLONEDX_BOM,
    SLSA_PROVENANCE_V1,
    Result,
    VerificationError,
    Verifier,
)

__all__ = ["verify_artifact", "verify_plugin_binary"]

# What the binary's SBOM must account for, by bom-ref (attest.plugin writes them).
REQUIRED_COMPONENTS = ("plugin:package", "python:interpreter", "pypi:pyinstaller")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _subjects(statement: dict[str, Any]) -> set[str]:
    return {
        str((s.get("digest") or {}).get("sha256"))
        for s in statement.get("subject") or []
        if isinstance(s, dict)
    }


def verify_plugin_binary(
    verifier: Verifier, ref: Reference, result: Result, file: Path | None = None
) -> str:
    """Checks 1-4 of the module docstring for an artifact ``verifier`` already verified; the
    binary's sha256 (hex)."""
    _digest, artifact = verifier.resolve(ref.with_digest(result.digest))
    doc = artifact.manifest_json()
    if doc.get("artifactType") != PLUGIN_ARTIFACT_TYPE:
        raise VerificationError(
            f"{ref.name}@{result.digest}: artifactType {doc.get('artifactType')!r} is not "
            f"{PLUGIN_ARTIFACT_TYPE!r} (not a kubectl-portcullis artifact)"
        )
    layers = artifact.layers()
    binaries = [d for d in layers if d.media_type == BINARY_MEDIA_TYPE]
    if len(layers) != 1 or len(binaries) != 1:
        raise VerificationError(
            f"{ref.name}@{result.digest}: expected exactly one {BINARY_MEDIA_TYPE} layer, found "
            f"{len(layers)} layer(s)"
        )
    binary = oci.digest_hex(binaries[0].digest)
    statements, _bad = verifier.attestations(ref.repository, result.digest)
    provenances = [s for s in statements if s.get("predicateType") == SLSA_PROVENANCE_V1]
    if verifier.policy.require_provenance and not any(binary in _subjects(s) for s in provenances):
        raise VerificationError(
            f"provenance does not name the binary: no verified SLSA provenance has subject "
            f"sha256:{binary} (the executable layer of {result.digest})"
        )
    if verifier.policy.require_sbom:
        boms = [
            s.get("predicate") or {}
            for s in statements
            if s.get("predicateType") == CYCLONEDX_BOM
            and oci.digest_hex(result.digest) in _subjects(s)
        ]
        hashes = {
            str(h.get("content"))
            for bom in boms
            for h in ((bom.get("metadata") or {}).get("component") or {}).get("hashes") or []
        }
        if binary not in hashes:
            raise VerificationError(
                f"SBOM does not describe the binary: metadata.component has no sha256 {binary}"
            )
        refs = {str(c.get("bom-ref")) for bom in boms for c in bom.get("components") or []}
        missing = [r for r in REQUIRED_COMPONENTS if r not in refs]
        if missing:
            raise VerificationError(f"SBOM of the binary lacks component(s) {', '.join(missing)}")
    if file is not None:
        actual = _file_sha256(file)
        if actual != binary:
            raise VerificationError(
                f"tampered binary: {file} has sha256 {actual}, the signed artifact's binary is "
                f"{binary}"
            )
        result.notes.append(f"file {file.name}: sha256 matches the signed binary")
    result.notes.append(f"binary: sha256 {binary} named by the provenance and the SBOM")
    return binary


def verify_artifact(verifier: Verifier, ref: Reference, file: Path | None = None) -> Result:
    """``portcullis-release verify``: the common checks, then the binary's when the artifact is
    the plugin's. ``file`` (a downloaded binary) is only meaningful for the plugin."""
    result = verifier.verify(ref)
    _digest, artifact = verifier.resolve(ref.with_digest(result.digest))
    if artifact.manifest_json().get("artifactType") == PLUGIN_ARTIFACT_TYPE:
        verify_plugin_binary(verifier, ref, result, file)
    elif file is not None:
        raise VerificationError(
            f"{ref.name}@{result.digest} is not a kubectl-portcullis artifact: there is no "
            f"binary to compare {file} with"
        )
    return result
