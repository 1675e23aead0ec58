"""What a release is: the image and chart artefacts and the repositories and tags they go to.

``ReleasePlan`` is the single place that decides repository names and tags from the artefacts,
so the SBOM, provenance, signing, publishing and release steps can never disagree about which
digest they are talking about. It sits at the bottom of the pipeline: every stage (``build``,
``attest``, ``distribute``, ``verify``) may import it, and it imports only the OCI content model
(``portcullis_release.oci``), never a stage.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import tarfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from portcullis_release import __version__, oci
from portcullis_release.oci import Artifact, Reference

__all__ = [
    "CHART_REPOSITORY",
    "IMAGE_REPOSITORY",
    "ReleasePlan",
    "app_version",
    "chart_created",
]

IMAGE_REPOSITORY = "portcullis"
CHART_REPOSITORY = "charts/portcullis"


def app_version() -> str:
    """The server's version (the installed ``portcullis`` distribution, else this package's)."""
    try:
        return metadata.version("portcullis")
    except metadata.PackageNotFoundError:
        return __version__


def chart_created(tgz: bytes) -> str:
    """The chart's creation time, taken from the newest entry in its archive (a reproducible
    chart has fixed mtimes), so the chart manifest digest depends on the chart alone."""
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        newest = max((m.mtime for m in tar.getmembers()), default=0)
    return dt.datetime.fromtimestamp(newest, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ReleasePlan:
    """The artefacts of one release and where they go.

    A multi-architecture release (``dist/image-multiarch``) has ``platforms``: each platform
    image by architecture, and ``image`` is then the image index naming them. The index is what
    the version tag and every pinned copy (manifest, Flux, chart values) name; each platform image
    is a role of its own (``image-<arch>``), pushed by digest only, signed and attested under its
    own digest, because a runtime pulls (and an admission policy checks) the platform image the
    index resolves to, not the index.
    """

    registry: str
    image: Artifact
    image_tag: str
    chart: Artifact | None = None
    chart_tgz: bytes = b""
    chart_version: str = ""
    platforms: dict[str, Artifact] = field(default_factory=dict)

    @classmethod
    def load(cls, image_dir: Path, chart_tgz: Path | None, registry: str) -> ReleasePlan:
        platforms: dict[str, Artifact] = {}
        if oci.layout_is_index(image_dir):
            image, platforms = oci.read_index_layout(image_dir)
        else:
            image = oci.read_layout(image_dir)
        tag = app_version()
        index = json.loads((image_dir / "index.json").read_text())
        names = [m.get("annotations", {}).get(oci.REF_NAME) for m in index.get("manifests", [])]
        if names and names[0] and ":" not in names[0] and "/" not in names[0]:
            tag = names[0]
        plan = cls(registry.rstrip("/"), image, tag, platforms=platforms)
        if chart_tgz is not None:
            data = chart_tgz.read_bytes()
            plan.chart_tgz = data
            plan.chart = oci.chart_artifact(data, chart_created(data))
            plan.chart_version = str(oci.chart_metadata(data)["version"])
        return plan

    def _ref(self, repository: str) -> Reference:
        return Reference.parse(f"{self.registry}/{repository}")

    @property
    def image_ref(self) -> Reference:
        return self._ref(IMAGE_REPOSITORY)

    @property
    def chart_ref(self) -> Reference:
        return self._ref(CHART_REPOSITORY)

    @property
    def chart_tag(self) -> str:
        return self.chart_version.replace("+", "_")

    def ref_for(self, role: str) -> Reference:
        return self.chart_ref if role == "chart" else self.image_ref

    @staticmethod
    def platform_role(architecture: str) -> str:
        """The role of one platform image of a multi-architecture release."""
        return f"image-{architecture}"

    def platform_roles(self) -> list[str]:
        return [self.platform_role(arch) for arch in self.platforms]

    def artifact_for(self, role: str) -> Artifact:
        if role == "image":
            return self.image
        if role == "chart":
            if self.chart is None:
                raise ValueError("this release has no chart")
            return self.chart
        for arch, image in self.platforms.items():
            if role == self.platform_role(arch):
                return image
        raise ValueError(f"this release has no artefact for role {role!r}")

    def roles(self) -> list[str]:
        """Every artefact the release signs and pushes, in push order: the platform images
        before the index that names them (a registry refuses an index whose images are
        missing)."""
        roles = [*self.platform_roles(), "image"]
        return [*roles, "chart"] if self.chart is not None else roles

    def top_roles(self) -> list[str]:
        """The artefacts a user names by tag (the platform images are reached through the
        index)."""
        return ["image", "chart"] if self.chart is not None else ["image"]

    def targets(self) -> dict[str, tuple[str, str]]:
        """role -> (docker reference, manifest digest), what signatures name."""
        return {
            role: (self.ref_for(role).name, self.artifact_for(role).digest) for role in self.roles()
        }

    def tag_for(self, role: str) -> str:
        """The tag a role is published under; empty for a platform image (by digest only)."""
        if role == "image":
            return self.image_tag
        return self.chart_tag if role == "chart" else ""
