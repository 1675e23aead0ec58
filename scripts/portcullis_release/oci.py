"""The OCI content model every release stage shares: digests, descriptors, artifacts, image
references, OCI image layouts, and the Helm chart as an OCI artifact.

Everything here works on bytes already in memory: an *artifact* is one manifest plus the blobs it
references, which is exactly the unit a registry accepts (blobs first, then the manifest). This
module is the bottom of the package: it imports nothing else from ``portcullis_release``, so the
plan, the image build, signing, publishing and verification can all stand on it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART_LAYER = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)
REF_NAME = "org.opencontainers.image.ref.name"


class OciError(Exception):
    """An OCI document or layout is malformed; the message names the offending part."""


def sha256_digest(data: bytes) -> str:
    """The content address of ``data`` in the ``sha256:<hex>`` form registries use."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_hex(digest: str) -> str:
    """The hex part of a ``sha256:<hex>`` digest, refusing any other algorithm or shape."""
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise OciError(f"not a sha256 digest: {digest!r}")
    return hexpart


def canonical_json(obj: Any) -> bytes:
    """Compact JSON with a stable key order, so a manifest we build always has the same digest."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor (media type, digest, size, optional annotations)."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(
        cls, media_type: str, data: bytes, annotations: Mapping[str, str] | None = None
    ) -> Descriptor:
        return cls(media_type, sha256_digest(data), len(data), dict(annotations or {}))

    @classmethod
    def from_json(cls, obj: Any, where: str) -> Descriptor:
        if not isinstance(obj, dict):
            raise OciError(f"{where}: descriptor is not an object")
        try:
            media_type, digest, size = obj["mediaType"], obj["digest"], obj["size"]
        except KeyError as exc:
            raise OciError(f"{where}: descriptor lacks {exc.args[0]!r}") from None
        if not isinstance(size, int) or not isinstance(digest, str):
            raise OciError(f"{where}: descriptor has a bad digest or size")
        digest_hex(digest)
        annotations = obj.get("annotations") or {}
        return cls(str(media_type), digest, size, dict(annotations))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass
class Artifact:
    """One manifest and every blob it references, ready to push or to check."""

    manifest: bytes
    media_type: str
    blobs: dict[str, bytes] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    def manifest_json(self) -> dict[str, Any]:
        return parse_manifest(self.manifest, self.digest)

    def layers(self) -> list[Descriptor]:
        return manifest_blobs(self.manifest_json(), self.digest)[1:]

    def descriptors(self) -> list[Descriptor]:
        """Config then layers, the order a registry must receive them before the manifest."""
        return manifest_blobs(self.manifest_json(), self.digest)


def parse_manifest(data: bytes, where: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise OciError(f"{where}: manifest is not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise OciError(f"{where}: manifest is not a JSON object")
    return obj


def manifest_blobs(manifest: Mapping[str, Any], where: str) -> list[Descriptor]:
    """Descriptors of the config and layers of an image manifest (not of an index)."""
    if "manifests" in manifest:
        raise OciError(f"{where}: is an index, not an image manifest")
    out = []
    if "config" in manifest:
        out.append(Descriptor.from_json(manifest["config"], f"{where}.config"))
    for i, layer in enumerate(manifest.get("layers") or []):
        out.append(Descriptor.from_json(layer, f"{where}.layers[{i}]"))
    return out


def image_manifest(
    config: Descriptor,
    layers: list[Descriptor],
    annotations: Mapping[str, str] | None = None,
    artifact_type: str | None = None,
) -> bytes:
    """Serialise an OCI image manifest deterministically."""
    obj: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.to_json(),
        "layers": [layer.to_json() for layer in layers],
    }
    if artifact_type:
        obj["artifactType"] = artifact_type
    if annotations:
        obj["annotations"] = dict(annotations)
    return canonical_json(obj)


# ---- image references -------------------------------------------------------------------------

_REF = re.compile(
    r"^(?P<name>[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


@dataclass(frozen=True)
class Reference:
    """``host[:port]/repository[:tag][@sha256:...]``; a host is always required (no Docker Hub
    defaulting: a release names its registry explicitly)."""

    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        host, sep, rest = text.partition("/")
        if not sep or not rest or not ("." in host or ":" in host or host == "localhost"):
            raise ValueError(f"reference {text!r} must start with a registry host (host[:port]/)")
        match = _REF.match(rest)
        if not match:
            raise ValueError(f"reference {text!r} has an invalid repository, tag or digest")
        return cls(host, match["name"], match["tag"], match["digest"])

    @property
    def name(self) -> str:
        """``host/repository``, what cosign puts in ``docker-reference``."""
        return f"{self.host}/{self.repository}"

    def with_tag(self, tag: str | None) -> Reference:
        return Reference(self.host, self.repository, tag, None)

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.host, self.repository, None, digest)

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


# ---- OCI image layout (what `make image` writes) -------------------------------------------


def _read_blob(root: Path, digest: str) -> bytes:
    path = root / "blobs" / "sha256" / digest_hex(digest)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise OciError(f"{root}: blob {digest} is missing from the layout") from None
    if sha256_digest(data) != digest:
        raise OciError(f"{root}: blob {digest} does not hash to its digest")
    return data


def read_layout(root: Path, ref_name: str | None = None) -> Artifact:
    """Load the single image manifest of an OCI image layout (or the one tagged ``ref_name``).

    Why strict: a layout with several untagged manifests is ambiguous, and guessing which one is
    "the image" would sign the wrong thing.
    """
    index_path = root / "index.json"
    if not index_path.is_file():
        raise OciError(f"{root}: not an OCI image layout (no index.json)")
    index = parse_manifest(index_path.read_bytes(), f"{index_path}")
    entries = [
        Descriptor.from_json(m, f"index.json.manifests[{i}]")
        for i, m in enumerate(index.get("manifests") or [])
    ]
    if ref_name is not None:
        entries = [e for e in entries if e.annotations.get(REF_NAME) == ref_name]
    if len(entries) != 1:
        raise OciError(f"{index_path}: expected exactly one manifest, found {len(entries)}")
    entry = entries[0]
    manifest = _read_blob(root, entry.digest)
    if entry.media_type not in (OCI_MANIFEST, DOCKER_MANIFEST):
        raise OciError(f"{index_path}: manifest media type {entry.media_type} is not an image")
    art = Artifact(manifest, entry.media_type)
    for desc in art.descriptors():
        art.blobs[desc.digest] = _read_blob(root, desc.digest)
    return art


def platform_of(entry: Mapping[str, Any]) -> str:
    """``os/architecture[/variant]`` of an index entry (what ``docker pull --platform`` names),
    or ``unknown`` when the entry says nothing."""
    platform = entry.get("platform") or {}
    parts = [platform.get("os"), platform.get("architecture"), platform.get("variant")]
    named = [str(p) for p in parts if p]
    return "/".join(named) if len(named) >= 2 else "unknown"


def read_index_layout(
    root: Path, ref_name: str | None = None
) -> tuple[Artifact, dict[str, Artifact]]:
    """The image index an OCI layout tags (``ref_name``, or its only entry) and its platform
    images by architecture, every blob read and checked against its digest.

    The index artifact carries no blobs: a registry receives each platform image (blobs, then
    manifest by digest) before the index that names them, so they travel as separate artifacts.
    """
    index_path = root / "index.json"
    if not index_path.is_file():
        raise OciError(f"{root}: not an OCI image layout (no index.json)")
    index = parse_manifest(index_path.read_bytes(), f"{index_path}")
    entries = [
        Descriptor.from_json(m, f"index.json.manifests[{i}]")
        for i, m in enumerate(index.get("manifests") or [])
    ]
    if ref_name is not None:
        entries = [e for e in entries if e.annotations.get(REF_NAME) == ref_name]
    if len(entries) != 1 or entries[0].media_type != OCI_INDEX:
        raise OciError(
            f"{index_path}: expected exactly one image index, found {len(entries)} entries"
        )
    art = Artifact(_read_blob(root, entries[0].digest), OCI_INDEX)
    images: dict[str, Artifact] = {}
    for i, child in enumerate(art.manifest_json().get("manifests") or []):
        where = f"{entries[0].digest}.manifests[{i}]"
        desc = Descriptor.from_json(child, where)
        architecture = (child.get("platform") or {}).get("architecture")
        if not isinstance(architecture, str) or not architecture or architecture in images:
            raise OciError(f"{where}: platform.architecture is missing or repeated")
        if desc.media_type not in (OCI_MANIFEST, DOCKER_MANIFEST):
            raise OciError(f"{where}: media type {desc.media_type} is not an image manifest")
        image = Artifact(_read_blob(root, desc.digest), desc.media_type)
        for blob in image.descriptors():
            image.blobs[blob.digest] = _read_blob(root, blob.digest)
        images[architecture] = image
    if not images:
        raise OciError(f"{entries[0].digest}: the image index names no image")
    return art, images


def layout_is_index(root: Path) -> bool:
    """Whether an OCI layout's (single) entry is an image index rather than one image."""
    index_path = root / "index.json"
    if not index_path.is_file():
        return False
    entries = parse_manifest(index_path.read_bytes(), f"{index_path}").get("manifests") or []
    return (
        len(entries) == 1
        and isinstance(entries[0], dict)
        and entries[0].get("mediaType") == OCI_INDEX
    )


def read_layout_all(root: Path) -> list[tuple[Descriptor, Artifact]]:
    """Every image manifest of a layout with its index entry (annotations carry ref names)."""
    index_path = root / "index.json"
    if not index_path.is_file():
        raise OciError(f"{root}: not an OCI image layout (no index.json)")
    index = parse_manifest(index_path.read_bytes(), f"{index_path}")
    out = []
    for i, entry in enumerate(index.get("manifests") or []):
        desc = Descriptor.from_json(entry, f"index.json.manifests[{i}]")
        art = Artifact(_read_blob(root, desc.digest), desc.media_type)
        for blob in art.descriptors():
            art.blobs[blob.digest] = _read_blob(root, blob.digest)
        out.append((desc, art))
    return out


def write_layout(root: Path, artifact: Artifact, ref_name: str | None = None) -> None:
    """Write an artifact as an OCI image layout (used by tests and the staging area)."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    for digest, data in {**artifact.blobs, artifact.digest: artifact.manifest}.items():
        (blobs / digest_hex(digest)).write_bytes(data)
    desc = Descriptor(
        artifact.media_type,
        artifact.digest,
        len(artifact.manifest),
        {REF_NAME: ref_name} if ref_name else {},
    )
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [desc.to_json()]}
    (root / "index.json").write_bytes(canonical_json(index))


def layer_members(layer: bytes, media_type: str) -> Iterator[tarfile.TarInfo]:
    """The tar entries of an image layer (gzip or plain), for SBOM file accounting."""
    raw = gzip.decompress(layer) if media_type.endswith("gzip") else layer
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        yield from tar.getmembers()


# ---- Helm chart as an OCI artifact ------------------------------------------------------------


def chart_metadata(tgz: bytes) -> dict[str, Any]:
    """Chart.yaml of a packaged chart, as a dict."""
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        for member in tar.getmembers():
            parts = member.name.split("/")
            if len(parts) == 2 and parts[1] == "Chart.yaml" and member.isfile():
                handle = tar.extractfile(member)
                if handle is None:
                    break
                meta = yaml.safe_load(handle.read())
                if not isinstance(meta, dict) or "name" not in meta or "version" not in meta:
                    raise OciError("Chart.yaml lacks name or version")
                return meta
    raise OciError("chart archive has no <name>/Chart.yaml")


def chart_artifact(tgz: bytes, created: str) -> Artifact:
    """The chart packaged the way `helm push` stores it: Chart.yaml as JSON config, the tgz as
    the single layer. ``created`` is fixed (SOURCE_DATE_EPOCH) so the digest is reproducible."""
    meta = chart_metadata(tgz)
    config = canonical_json(meta)
    config_desc = Descriptor.of(HELM_CONFIG, config)
    layer_desc = Descriptor.of(HELM_CHART_LAYER, tgz)
    annotations = {
        "org.opencontainers.image.title": str(meta["name"]),
        "org.opencontainers.image.version": str(meta["version"]),
        "org.opencontainers.image.created": created,
    }
    if meta.get("description"):
        annotations["org.opencontainers.image.description"] = str(meta["description"])
    manifest = image_manifest(config_desc, [layer_desc], annotations)
    return Artifact(manifest, OCI_MANIFEST, {config_desc.digest: config, layer_desc.digest: tgz})
