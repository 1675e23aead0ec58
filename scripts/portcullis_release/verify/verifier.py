"""Prove a pulled artefact is the one we built, offline but for the registry
(``portcullis-release verify``).

Checks, in order, each failing with its own reason:
1. the reference resolves, and a pinned ``tag@digest`` still has the tag on that digest;
2. the manifest and every blob it references hash to their digests;
3. a cosign signature at ``sha256-<hex>.sig`` verifies with the key and names exactly this digest;
4. a provenance attestation (SLSA v1, DSSE) verifies, names this digest as a subject, and its
   builder and source match the policy;
5. an SBOM attestation (CycloneDX) verifies and describes this digest.
An image index (a multi-architecture release) is followed: the index itself must pass 1-4 (its
signature, a provenance naming it), and then every platform image it names must pass 3-5 under
its own digest (signature, provenance subject, its own SBOM), because the platform image is what
a node pulls and runs; an index whose images are unsigned or unattested does not verify.
All signed material is checked with the given public key only: no transparency log, no network
beyond the registry. What a signature or attestation looks like comes from
``attest.cosign_format``, never from the signing code: a verifier that shared the signer's code
could share its mistakes.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from portcullis_release import oci
from portcullis_release.attest import cosign_keys, dsse
from portcullis_release.attest.cosign_format import (
    DSSE_ENVELOPE_MEDIA_TYPE,
    SIGNATURE_ANNOTATION,
    SIMPLESIGNING_MEDIA_TYPE,
    SIMPLESIGNING_TYPE,
    att_tag,
    sig_tag,
)
from portcullis_release.distribute.registry import NotFoundError, RegistryClient
from portcullis_release.oci import Artifact, Reference
from portcullis_release.verify.policy import Policy

SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"
CYCLONEDX_BOM = "https://cyclonedx.org/bom"
OPENVEX = "https://openvex.dev/ns"  # cosign attest --type openvex
STATEMENT_TYPES = ("https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1")


class VerificationError(Exception):
    """The artefact is not what the policy accepts; ``str()`` is the precise reason."""


@dataclass
class Result:
    reference: Reference
    digest: str
    blobs_checked: int = 0
    notes: list[str] = field(default_factory=list)
    # For an image index: each platform image's own result (platform is ``linux/arm64/v8``...).
    platforms: list[Result] = field(default_factory=list)
    platform: str = ""


def _verify_raw(key: ec.EllipticCurvePublicKey, signature_b64: str, payload: bytes) -> bool:
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
    except (ValueError, InvalidSignature):
        return False
    return True


class Verifier:
    def __init__(self, client: RegistryClient, key: ec.EllipticCurvePublicKey, policy: Policy):
        self.client = client
        self.key = key
        self.fingerprint = cosign_keys.key_fingerprint(key)
        self.policy = policy

    # -- 1 and 2: content addressing ------------------------------------------------------

    def resolve(self, ref: Reference) -> tuple[str, Artifact]:
        repo = ref.repository
        lookup = ref.tag or ref.digest
        if lookup is None:
            raise VerificationError(f"{ref}: give a tag or a digest")
        try:
            manifest, media_type = self.client.get_manifest(repo, lookup)
        except NotFoundError:
            raise VerificationError(f"{ref}: no such manifest in the registry") from None
        digest = oci.sha256_digest(manifest)
        if ref.tag and ref.digest and digest != ref.digest:
            raise VerificationError(
                f"tag moved: {ref.name}:{ref.tag} now resolves to {digest}, not the pinned "
                f"{ref.digest}"
            )
        if not ref.tag and ref.digest and digest != ref.digest:
            raise VerificationError(
                f"manifest served for {ref.digest} hashes to {digest}: the registry content is "
                "altered"
            )
        return digest, Artifact(manifest, media_type or oci.OCI_MANIFEST)

    def check_blobs(self, repo: str, artifact: Artifact, where: str) -> int:
        """Fetch every blob and compare its hash; recurse into an index's manifests."""
        doc = artifact.manifest_json()
        count = 0
        if "manifests" in doc:
            for i, child in enumerate(doc["manifests"]):
                desc = oci.Descriptor.from_json(child, f"{where}.manifests[{i}]")
                data, media_type = self.client.get_manifest(repo, desc.digest)
                if oci.sha256_digest(data) != desc.digest:
                    raise VerificationError(f"{where}: manifest {desc.digest} is altered")
                count += self.check_blobs(repo, Artifact(data, media_type), desc.digest)
            return count
        for i, desc in enumerate(oci.manifest_blobs(doc, where)):
            what = (
                "config"
                if i == 0 and "config" in doc
                else f"layer {i - 1 if 'config' in doc else i}"
            )
            data = self._blob(repo, desc.digest, f"{where} {what}")
            actual = oci.sha256_digest(data)
            if actual != desc.digest:
                raise VerificationError(
                    f"{what} blob {desc.digest} of {repo} hashes to {actual}: the blob was altered"
                )
            if len(data) != desc.size:
                raise VerificationError(
                    f"{what} blob {desc.digest} has size {len(data)}, manifest says {desc.size}"
                )
            count += 1
        return count

    def _blob(self, repo: str, digest: str, what: str) -> bytes:
        try:
            return self.client.get_blob(repo, digest)
        except NotFoundError:
            raise VerificationError(f"{what}: blob {digest} is missing from {repo}") from None

    def _attachment(self, repo: str, tag: str) -> Artifact | None:
        try:
            manifest, media_type = self.client.get_manifest(repo, tag)
        except NotFoundError:
            return None
        art = Artifact(manifest, media_type or oci.OCI_MANIFEST)
        for desc in art.layers():
            art.blobs[desc.digest] = self._blob(repo, desc.digest, tag)
        return art

    # -- 3: signature ---------------------------------------------------------------------

    def signature_findings(self, repo: str, digest: str) -> tuple[bool, list[str], list[str]]:
        """(verified-for-this-digest, digests named by verified payloads, problems)."""
        tag = sig_tag(digest)
        art = self._attachment(repo, tag)
        if art is None:
            raise VerificationError(
                f"unsigned: no cosign signature for {digest} (tag {tag} does not exist)"
            )
        named: list[str] = []
        problems: list[str] = []
        for i, desc in enumerate(art.layers()):
            if desc.media_type != SIMPLESIGNING_MEDIA_TYPE:
                continue
            payload = art.blobs[desc.digest]
            actual = oci.sha256_digest(payload)
            if actual != desc.digest:
                problems.append(
                    f"signature layer {i}: payload blob hashes to {actual}, not "
                    f"{desc.digest} (payload altered in storage)"
                )
                continue
            sig = desc.annotations.get(SIGNATURE_ANNOTATION, "")
            if not _verify_raw(self.key, sig, payload):
                problems.append(f"signature layer {i}")
                continue
            try:
                claims = json.loads(payload)
                claimed = claims["critical"]["image"]["docker-manifest-digest"]
                kind = claims["critical"]["type"]
            except (ValueError, KeyError, TypeError):
                problems.append(f"signature layer {i}: signed payload is not simple-signing JSON")
                continue
            if kind != SIMPLESIGNING_TYPE:
                problems.append(f"signature layer {i}: signed payload type {kind!r} unexpected")
                continue
            if claimed == digest:
                return True, named, problems
            named.append(str(claimed))
        return False, named, problems

    # -- 4 and 5: attestations ------------------------------------------------------------

    def attestations(self, repo: str, digest: str) -> tuple[list[dict[str, Any]], int]:
        """(statements whose envelopes verify with the key, count of envelopes that do not)."""
        art = self._attachment(repo, att_tag(digest))
        if art is None:
            return [], 0
        good: list[dict[str, Any]] = []
        bad = 0
        for desc in art.layers():
            if desc.media_type != DSSE_ENVELOPE_MEDIA_TYPE:
                continue
            data = art.blobs[desc.digest]
            if oci.sha256_digest(data) != desc.digest:
                bad += 1
                continue
            try:
                envelope = dsse.Envelope.parse(data)
                if not envelope.verified_by(self.key):
                    bad += 1
                    continue
                statement = envelope.statement()
            except dsse.EnvelopeError:
                bad += 1
                continue
            if statement.get("_type") in STATEMENT_TYPES:
                good.append(statement)
        return good, bad

    @staticmethod
    def _subjects(statement: dict[str, Any]) -> list[str]:
        out = []
        for subject in statement.get("subject") or []:
            value = (
                (subject.get("digest") or {}).get("sha256") if isinstance(subject, dict) else None
            )
            if isinstance(value, str):
                out.append(f"sha256:{value}")
        return out

    def check_provenance(self, statements: list[dict[str, Any]], digest: str) -> str:
        provs = [s for s in statements if s.get("predicateType") == SLSA_PROVENANCE_V1]
        if not provs:
            raise VerificationError(
                f"no provenance: no SLSA v1 provenance attestation for "
                f"{digest} verifies with key {self.fingerprint}"
            )
        mine = [s for s in provs if digest in self._subjects(s)]
        if not mine:
            others = sorted({d for s in provs for d in self._subjects(s)})
            raise VerificationError(
                f"provenance is for another artefact: its subjects {others} do not include {digest}"
            )
        statement = mine[0]
        predicate = statement.get("predicate") or {}
        builder = ((predicate.get("runDetails") or {}).get("builder") or {}).get("id")
        if self.policy.builder_id is not None and builder != self.policy.builder_id:
            raise VerificationError(
                f"provenance builder mismatch: runDetails.builder.id is "
                f"{builder!r}, the policy requires {self.policy.builder_id!r}"
            )
        params = (predicate.get("buildDefinition") or {}).get("externalParameters") or {}
        source = (params.get("source") or {}).get("repository")
        if self.policy.source_repository is not None and source != self.policy.source_repository:
            raise VerificationError(
                f"provenance source mismatch: buildDefinition.externalParameters.source.repository "
                f"is {source!r}, the policy requires {self.policy.source_repository!r}"
            )
        return f"provenance: builder {builder}, source {source}"

    def check_sbom(self, statements: list[dict[str, Any]], digest: str) -> str:
        sboms = [s for s in statements if s.get("predicateType") == CYCLONEDX_BOM]
        if not sboms:
            raise VerificationError(
                f"missing SBOM: no CycloneDX SBOM attestation for {digest} "
                f"verifies with key {self.fingerprint}"
            )
        for statement in sboms:
            if digest not in self._subjects(statement):
                continue
            bom = statement.get("predicate") or {}
            component = (bom.get("metadata") or {}).get("component") or {}
            purl = urllib.parse.unquote(str(component.get("purl", "")))
            if f"@{digest}" not in purl:
                raise VerificationError(
                    f"SBOM does not describe this image: metadata.component "
                    f"purl {purl!r} does not name {digest}"
                )
            count = len(bom.get("components") or [])
            return f"SBOM: CycloneDX {bom.get('specVersion')}, {count} components"
        raise VerificationError(f"SBOM is for another artefact: no SBOM subject is {digest}")

    # -- all together ---------------------------------------------------------------------

    def verify(self, ref: Reference) -> Result:
        digest, artifact = self.resolve(ref)
        result = Result(ref, digest)
        result.blobs_checked = self.check_blobs(ref.repository, artifact, str(ref))
        entries = artifact.manifest_json().get("manifests")
        # The index holds no files: its SBOMs are its platform images' (checked below).
        self._check_signed(ref.repository, digest, result, sbom=entries is None)
        if entries is not None:
            if not isinstance(entries, list) or not entries:
                raise VerificationError(f"{ref}: the image index names no image")
            for i, entry in enumerate(entries):
                desc = oci.Descriptor.from_json(entry, f"{digest}.manifests[{i}]")
                child = Result(ref.with_tag(None).with_digest(desc.digest), desc.digest)
                child.platform = oci.platform_of(entry)
                try:
                    self._check_signed(ref.repository, desc.digest, child, sbom=True)
                except VerificationError as exc:
                    raise VerificationError(
                        f"platform image {child.platform} ({desc.digest}) of index {digest}: {exc}"
                    ) from None
                result.platforms.append(child)
            result.notes.append(
                "index: "
                + ", ".join(f"{c.platform} {c.digest}" for c in result.platforms)
                + " each verified"
            )
        return result

    def _check_signed(self, repo: str, digest: str, result: Result, *, sbom: bool) -> None:
        """Checks 3-5 (and VEX when the policy asks) for one digest, notes into ``result``."""
        signed, named, problems = self.signature_findings(repo, digest)
        statements, _bad = self.attestations(repo, digest)
        if not signed:
            raise VerificationError(self._signature_reason(digest, named, problems, statements))
        result.notes.append(f"signature: verified with key {self.fingerprint}")
        if self.policy.require_provenance:
            result.notes.append(self.check_provenance(statements, digest))
        if sbom and self.policy.require_sbom:
            result.notes.append(self.check_sbom(statements, digest))
        if self.policy.require_vex and result.platform == "":
            result.notes.append(self.check_vex(statements, digest))

    def check_vex(self, statements: list[dict[str, Any]], digest: str) -> str:
        """An OpenVEX attestation for this digest whose every statement names it as product."""
        vexes = [s for s in statements if s.get("predicateType") == OPENVEX]
        mine = [s for s in vexes if digest in self._subjects(s)]
        if not mine:
            raise VerificationError(
                f"missing VEX: no OpenVEX attestation for {digest} verifies with key "
                f"{self.fingerprint}"
            )
        doc = mine[0].get("predicate") or {}
        items = doc.get("statements") or []
        for i, item in enumerate(items):
            products = [str(p.get("@id", "")) for p in item.get("products") or []]
            if not any(f"@{digest}" in urllib.parse.unquote(p) for p in products):
                raise VerificationError(
                    f"VEX statements[{i}] ({(item.get('vulnerability') or {}).get('name')}) "
                    f"does not name {digest} as its product"
                )
        cleared = sum(item.get("status") == "not_affected" for item in items)
        return f"VEX: OpenVEX, {len(items)} statements ({cleared} not_affected)"

    def _signature_reason(
        self, digest: str, named: list[str], problems: list[str], statements: list[dict[str, Any]]
    ) -> str:
        altered = [p for p in problems if "altered" in p]
        if altered:
            return altered[0]
        if named:
            return (
                f"signature replayed from another image: the signed payload names "
                f"{named[0]}, not {digest}"
            )
        if statements:
            # The key is the right one (it verifies this artefact's attestations), so the
            # signature layer itself must have been changed.
            return (
                f"tampered signature payload: {problems[0] if problems else 'signature'} does "
                f"not verify although key {self.fingerprint} verifies this artefact's "
                "attestations"
            )
        return (
            f"wrong key: no signature for {digest} verifies with key {self.fingerprint} "
            "(signed by a different key, or not signed by this release's key)"
        )
