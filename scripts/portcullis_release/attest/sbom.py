"""CycloneDX 1.6 SBOMs for the image and the chart (built with cyclonedx-python-lib).

The image SBOM names every input that ends up in the image: each Python distribution of the
locked runtime environment frozen into the binary, each Debian package unpacked into the rootfs
(with the sha256 of its ``.deb``), the OpenSSL FIPS provider (source version and fips.so hash) and
the application. Every file of the image is attributed to one component as an evidence
occurrence, so an auditor can ask "where does this file come from" and get an answer; files the
image recipe writes itself belong to the ``portcullis-image-recipe`` component.

A multi-architecture release has one image SBOM per platform image (``image-<arch>.cdx.json``),
each from that architecture's own package lock (``packages-<arch>.lock``, its own .debs and
their files): the arm64 image holds other packages than the amd64 one, so one SBOM for both
would name files that are not there. The index itself gets none (it holds no files).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import subprocess
import tarfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cyclonedx.model import (
    ExternalReference,
    ExternalReferenceType,
    HashAlgorithm,
    HashType,
    Property,
    XsUri,
)
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.component_evidence import ComponentEvidence, Occurrence
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL

from portcullis_release import oci
from portcullis_release.build.packages_lock import load_lock
from portcullis_release.oci import Artifact
from portcullis_release.plan import ReleasePlan, app_version

CYCLONEDX_PREDICATE = "https://cyclonedx.org/bom"
FIPS_FILES = ("fips.so", "fipsmodule.cnf", "openssl-fips.cnf")
RECIPE_COMPONENT = "portcullis-image-recipe"


class SbomError(Exception):
    """The SBOM cannot be produced or does not validate (the message says why)."""


def sbom_file(role: str) -> str:
    return f"{role}.cdx.json"


def sbom_statement(bom: dict[str, Any], name: str, digest: str) -> dict[str, Any]:
    """An in-toto statement carrying the SBOM, as `cosign attest --type cyclonedx` makes."""
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": name, "digest": {"sha256": oci.digest_hex(digest)}}],
        "predicateType": CYCLONEDX_PREDICATE,
        "predicate": bom,
    }


# ---- inputs -----------------------------------------------------------------------------------

_REQ_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")


@dataclass
class PythonDist:
    name: str
    version: str
    hashes: list[str] = field(default_factory=list)


def parse_requirements_lock(text: str) -> list[PythonDist]:
    """``name==version`` entries of a pip-tools lock with their ``--hash`` values."""
    dists: list[PythonDist] = []
    for line in text.splitlines():
        stripped = line.strip()
        match = _REQ_LINE.match(stripped)
        if match:
            dists.append(PythonDist(match[1].lower(), match[2]))
        elif dists and stripped.startswith("--hash="):
            dists[-1].hashes.extend(_HASH.findall(stripped))
    return dists


def image_files(artifact: Artifact) -> list[str]:
    """Absolute paths of the non-directory entries of the image's layers (last layer wins;
    whiteouts remove)."""
    present: dict[str, bool] = {}
    for desc in artifact.layers():
        for member in oci.layer_members(artifact.blobs[desc.digest], desc.media_type):
            path = "/" + member.name.lstrip("./").lstrip("/")
            base = path.rsplit("/", 1)[-1]
            if base.startswith(".wh."):
                present.pop(path.rsplit("/", 1)[0] + "/" + base[4:], None)
                continue
            if not member.isdir():
                present[path] = True
    return sorted(present)


def deb_file_list(deb: Path) -> set[str]:
    """Non-directory paths a .deb installs (from its data archive, via dpkg-deb)."""
    proc = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=False
    )
    if proc.returncode != 0:
        raise SbomError(f"{deb}: dpkg-deb failed: {proc.stderr.decode(errors='replace')[-200:]}")
    with tarfile.open(fileobj=io.BytesIO(proc.stdout), mode="r:") as tar:
        return {"/" + m.name.lstrip("./") for m in tar.getmembers() if not m.isdir()}


@dataclass
class ImageInputs:
    """Everything the image SBOM is made from."""

    runtime_lock: Path | None = None
    packages_lock: Path | None = None
    deb_dir: Path | None = None
    app_dir: str = "/opt/portcullis"


# ---- building ---------------------------------------------------------------------------------


def _sha256(value: str) -> HashType:
    return HashType(alg=HashAlgorithm.SHA_256, content=value)


def _oci_purl(name: str, digest: str, repository_url: str, tag: str | None) -> PackageURL:
    qualifiers = {"repository_url": repository_url}
    if tag:
        qualifiers["tag"] = tag
    return PackageURL(type="oci", name=name, version=digest, qualifiers=qualifiers)


def _timestamp() -> dt.datetime:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    return dt.datetime.fromtimestamp(int(epoch) if epoch else 0, dt.UTC)


def _with_occurrences(component: Component, paths: Iterable[str]) -> None:
    paths = sorted(paths)
    if paths:
        component.evidence = ComponentEvidence(occurrences=[Occurrence(location=p) for p in paths])


def image_bom(
    plan: ReleasePlan, inputs: ImageInputs, architecture: str | None = None
) -> dict[str, Any]:
    """The image SBOM as a JSON document (validated against the CycloneDX 1.6 schema): of the
    plan's image, or of its ``architecture`` platform image (which is reached through the index,
    so its purl names no tag)."""
    ref = plan.image_ref
    image_artifact = plan.image if architecture is None else plan.platforms[architecture]
    tag = plan.image_tag if architecture is None else None
    digest = image_artifact.digest
    files = image_files(image_artifact)
    owner: dict[str, str] = {}
    components: list[Component] = []

    app = Component(
        name="portcullis",
        version=app_version(),
        type=ComponentType.APPLICATION,
        bom_ref="app:portcullis",
        purl=PackageURL(type="generic", name="portcullis", version=app_version()),
        description="Portcullis OpenID Connect issuer (PyInstaller-frozen server)",
    )
    recipe = Component(
        name=RECIPE_COMPONENT,
        version=app_version(),
        type=ComponentType.FILE,
        bom_ref="file:image-recipe",
        description="Files written by the image recipe (images/portcullis/): users, config",
    )
    if inputs.runtime_lock is not None:
        for dist in parse_requirements_lock(inputs.runtime_lock.read_text()):
            refs = [
                ExternalReference(
                    type=ExternalReferenceType.DISTRIBUTION,
                    url=XsUri(f"https://pypi.org/project/{dist.name}/{dist.version}/"),
                    hashes=[_sha256(h) for h in dist.hashes],
                )
            ]
            components.append(
                Component(
                    name=dist.name,
                    version=dist.version,
                    type=ComponentType.LIBRARY,
                    bom_ref=f"pypi:{dist.name}",
                    external_references=refs,
                    purl=PackageURL(type="pypi", name=dist.name, version=dist.version),
                    properties=[Property(name="portcullis:frozen-into", value="/opt/portcullis")],
                )
            )
    if inputs.packages_lock is not None:
        lock = load_lock(inputs.packages_lock)
        if architecture is not None and lock.architecture != architecture:
            raise SbomError(
                f"{inputs.packages_lock}: architecture is {lock.architecture}, but it is used "
                f"for the {architecture} image's SBOM"
            )
        for deb in sorted(lock.debs, key=lambda d: d.name):
            comp = Component(
                name=deb.name,
                version=deb.version,
                type=ComponentType.LIBRARY,
                bom_ref=f"deb:{deb.name}",
                hashes=[_sha256(deb.sha256)],
                purl=PackageURL(
                    type="deb",
                    namespace="debian",
                    name=deb.name,
                    version=deb.version,
                    qualifiers={"arch": deb.architecture, "distro": f"debian-{lock.suite}"},
                ),
            )
            if inputs.deb_dir is not None:
                path = inputs.deb_dir / deb.filename
                if not path.is_file():
                    raise SbomError(f"{path}: .deb for {deb.name} not found (needed for its files)")
                # The package's files, plus the dpkg status record a distroless rootfs keeps.
                status = {
                    f"/var/lib/dpkg/status.d/{deb.name}",
                    f"/var/lib/dpkg/status.d/{deb.name}.md5sums",
                }
                owned = (deb_file_list(path) | status) - owner.keys()
                owned &= set(files)
                owner.update(dict.fromkeys(owned, deb.name))
                _with_occurrences(comp, owned)
            components.append(comp)
        fips = lock.fips_provider
        fips_comp = Component(
            name="openssl-fips-provider",
            version=fips.upstream_version,
            type=ComponentType.LIBRARY,
            bom_ref="openssl:fips-provider",
            hashes=[_sha256(fips.fips_so_sha256)],
            purl=PackageURL(
                type="deb",
                namespace="debian",
                name=fips.source_package,
                version=fips.source_version,
                qualifiers={"arch": "source"},
            ),
            description="OpenSSL FIPS provider built from the Debian source package",
            properties=[
                Property(name="portcullis:source-package", value=fips.source_package),
                Property(name="portcullis:source-version", value=fips.source_version),
            ],
        )
        fips_files = {f for f in files if f.rsplit("/", 1)[-1] in FIPS_FILES and f not in owner}
        owner.update(dict.fromkeys(fips_files, "fips"))
        _with_occurrences(fips_comp, fips_files)
        components.append(fips_comp)
    prefix = inputs.app_dir.rstrip("/") + "/"
    app_files = {f for f in files if f.startswith(prefix) and f not in owner}
    owner.update(dict.fromkeys(app_files, "app"))
    _with_occurrences(app, app_files)
    rest = {f for f in files if f not in owner}
    _with_occurrences(recipe, rest)
    components[:0] = [app, recipe]

    image = Component(
        name="portcullis",
        version=digest,
        type=ComponentType.CONTAINER,
        bom_ref="image",
        purl=_oci_purl("portcullis", digest, ref.name, tag),
        properties=[Property(name="portcullis:tag", value=tag)]
        if tag
        else [Property(name="portcullis:architecture", value=str(architecture))],
    )
    return _finish(image, components, digest)


def platform_lock(primary: Path, architecture: str) -> Path:
    """The package lock of ``architecture``: ``primary`` (packages.lock) for its own
    architecture, else ``packages-<arch>.lock`` beside it (the image recipe's naming)."""
    if load_lock(primary).architecture == architecture:
        return primary
    return primary.with_name(f"packages-{architecture}.lock")


def write_image_sboms(release_dir: Path, plan: ReleasePlan, inputs: ImageInputs) -> list[Path]:
    """The image SBOM, or for a multi-architecture plan one SBOM per platform image (each from
    its architecture's lock), under the roles the signing step attests them for."""
    if not plan.platforms:
        return [write(release_dir, "image", image_bom(plan, inputs))]
    out = []
    for architecture in plan.platforms:
        lock = inputs.packages_lock
        if lock is not None:
            lock = platform_lock(lock, architecture)
            if not lock.is_file():
                raise SbomError(f"{lock}: no package lock for the {architecture} image")
        mine = ImageInputs(inputs.runtime_lock, lock, inputs.deb_dir, inputs.app_dir)
        bom = image_bom(plan, mine, architecture)
        out.append(write(release_dir, plan.platform_role(architecture), bom))
    return out


def chart_bom(plan: ReleasePlan) -> dict[str, Any]:
    """The chart SBOM: the chart itself, its dependencies and the image its values pin."""
    if plan.chart is None:
        raise SbomError("no chart in this release")
    meta = oci.chart_metadata(plan.chart_tgz)
    digest = plan.chart.digest
    components = [
        Component(
            name=str(meta["name"]),
            version=str(meta["version"]),
            type=ComponentType.APPLICATION,
            bom_ref="chart:source",
            description=str(meta.get("description") or "") or None,
            hashes=[_sha256(oci.digest_hex(oci.sha256_digest(plan.chart_tgz)))],
            purl=PackageURL(type="generic", name=str(meta["name"]), version=str(meta["version"])),
            properties=[Property(name="portcullis:chart-archive", value="helm chart .tgz")],
        )
    ]
    for dep in meta.get("dependencies") or []:
        components.append(
            Component(
                name=str(dep.get("name")),
                version=str(dep.get("version")),
                type=ComponentType.APPLICATION,
                bom_ref=f"chart-dep:{dep.get('name')}",
            )
        )
    components.append(
        Component(
            name="portcullis",
            version=plan.image.digest,
            type=ComponentType.CONTAINER,
            bom_ref="image",
            purl=_oci_purl("portcullis", plan.image.digest, plan.image_ref.name, plan.image_tag),
            description="the image this release's chart deploys",
        )
    )
    chart = Component(
        name=str(meta["name"]),
        version=digest,
        type=ComponentType.APPLICATION,
        bom_ref="chart",
        purl=_oci_purl(str(meta["name"]), digest, plan.chart_ref.name, plan.chart_tag),
    )
    return _finish(chart, components, digest)


def _finish(subject: Component, components: list[Component], digest: str) -> dict[str, Any]:
    bom = Bom(
        components=components,
        serial_number=uuid.uuid5(uuid.NAMESPACE_URL, f"portcullis-sbom:{digest}"),
        metadata=BomMetaData(component=subject, timestamp=_timestamp()),
    )
    bom.register_dependency(subject, components)
    text = JsonV1Dot6(bom).output_as_string(indent=None)
    validate(text)
    doc: dict[str, Any] = json.loads(text)
    return doc


def validate(text: str) -> None:
    """Raise SbomError unless ``text`` is valid CycloneDX 1.6 JSON (strict schema)."""
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if error is not None:
        raise SbomError(f"SBOM does not validate against CycloneDX 1.6: {error}")


def write(release_dir: Path, role: str, bom: dict[str, Any]) -> Path:
    release_dir.mkdir(parents=True, exist_ok=True)
    path = release_dir / sbom_file(role)
    path.write_text(json.dumps(bom, indent=1, sort_keys=True) + "\n")
    return path
