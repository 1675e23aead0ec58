"""The release manifest (``release/manifest.yaml``): the one place that says which image and which
chart a release is, by digest.

Why one file: the chart's default image, the Flux manifests in ``deploy/flux/`` and the docs are all
generated from it, so they cannot drift apart (the failure mode of distributions whose docs pin a
different digest than their pin files).

Shape (other top-level sections, e.g. signatures written by later release steps, are kept
verbatim on load/dump; ``image`` and ``chart`` are strict)::

    development: false            # true only for the in-tree manifest before the first release
    image:
      repository: registry.example.com/portcullis/portcullis
      tag: 0.1.0
      digest: sha256:<64 hex>       # digest of the image index/manifest in the registry
    chart:
      repository: registry.example.com/portcullis/charts/portcullis   # OCI, no scheme
      version: 0.1.0
      digest: sha256:<64 hex>       # digest of the chart's OCI manifest (what Flux pins)
    plugin:                         # optional: the kubectl-portcullis binary
      repository: registry.example.com/portcullis/kubectl-portcullis
      version: 0.1.0
      digest: sha256:<64 hex>       # digest of its OCI artifact manifest
      downloadURL: https://...      # optional: where the files are served (krew, kubeconfig page)
      homepage: https://...         # optional: the krew manifest's homepage (default downloadURL)
      binaries:
      - {os: linux, arch: amd64, file: kubectl-portcullis-linux-amd64,
         sha256: <64 hex>, archiveSha256: <64 hex>}   # the executable, the krew .tar.gz

Importable API (used by ``distribute.chart``, ``distribute.flux`` and ``release``; the
``portcullis-release manifest show|set`` commands are in ``cli``)::

    load_manifest(path: Path = DEFAULT_MANIFEST) -> ReleaseManifest     # raises ManifestError
    dump_manifest(manifest: ReleaseManifest, path: Path = DEFAULT_MANIFEST) -> None
    manifest.with_image(digest=..., tag=...) / manifest.with_chart(digest=...)  -> new manifest
    manifest.image.reference  -> "repo:tag@sha256:..."
    manifest.chart.oci_url    -> "oci://repo"

The source repository a release is built from has one home too (:func:`source_repository`):
``SOURCE_REPOSITORY`` (CI knows best), else an optional ``source: {repository: <url>}`` section
of the manifest, else ``git remote get-url origin``. Without any, callers say so and leave it
out; nothing invents a URL (an image label or provenance pointing at someone else's repository
misleads whoever audits the release).

A development manifest may carry the all-zero placeholder digest; a release manifest may not
(``ReleaseManifest.require_release()`` says which field is still a placeholder).

A shared model at the bottom of the package, beside ``plan``: it imports nothing from
``portcullis_release`` but the repository root, so any stage may read the manifest.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from portcullis_release import REPO_ROOT

__all__ = [
    "DEFAULT_MANIFEST",
    "PLACEHOLDER_DIGEST",
    "ChartRef",
    "ImageRef",
    "ManifestError",
    "PluginBinary",
    "PluginRef",
    "ReleaseManifest",
    "dump_manifest",
    "load_manifest",
    "parse_manifest",
    "render_manifest",
    "source_repository",
]

DEFAULT_MANIFEST = REPO_ROOT / "release" / "manifest.yaml"
PLACEHOLDER_DIGEST = "sha256:" + "0" * 64

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
# A registry host (optional port) followed by at least one lowercase path component.
_REPOSITORY_RE = re.compile(
    r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?(/[a-z0-9]+([._-][a-z0-9]+)*)+$"
)
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# Semantic Versioning 2.0.0 (Helm requires it for chart versions).
_SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$"
)

_HEADER = """\
# Release manifest: which image and chart a Portcullis release is, by digest.
# Read by `make chart`, `portcullis-release flux` (deploy/flux/) and the release steps;
# written by the release pipeline. See scripts/portcullis_release/manifest.py.
"""


class ManifestError(ValueError):
    """The release manifest is missing, unreadable or invalid; the message names the field."""


def _check_digest(value: str) -> str:
    if not _DIGEST_RE.match(value):
        raise ValueError("must be 'sha256:' followed by 64 lowercase hex digits")
    return value


def _check_repository(value: str) -> str:
    if value.startswith(("oci://", "http://", "https://")):
        raise ValueError("must not have a scheme (write host/path, e.g. 'ghcr.io/org/portcullis')")
    if not _REPOSITORY_RE.match(value):
        raise ValueError("must be a lowercase registry/path reference such as 'ghcr.io/org/name'")
    return value


def _check_tag(value: str) -> str:
    if not _TAG_RE.match(value):
        raise ValueError("must be a valid OCI tag ([A-Za-z0-9_][A-Za-z0-9_.-]{0,127})")
    return value


def _check_semver(value: str) -> str:
    if not _SEMVER_RE.match(value):
        raise ValueError("must be a semantic version such as '1.2.3' (Helm requires SemVer 2)")
    return value


Digest = Annotated[str, AfterValidator(_check_digest)]
Repository = Annotated[str, AfterValidator(_check_repository)]
Tag = Annotated[str, AfterValidator(_check_tag)]
SemVer = Annotated[str, AfterValidator(_check_semver)]


class ImageRef(BaseModel):
    """The server image, as pushed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repository: Repository
    tag: Tag
    digest: Digest

    @property
    def reference(self) -> str:
        """``repository:tag@digest`` (the tag is informative, the digest decides)."""
        return f"{self.repository}:{self.tag}@{self.digest}"


class ChartRef(BaseModel):
    """The Helm chart, as pushed to an OCI registry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repository: Repository
    version: SemVer
    digest: Digest

    @property
    def oci_url(self) -> str:
        """The repository as Helm and Flux address it (``oci://host/path``)."""
        return f"oci://{self.repository}"

    @property
    def name(self) -> str:
        """The chart name (last path component; Helm derives it from Chart.yaml)."""
        return self.repository.rsplit("/", 1)[-1]


def _check_hex(value: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError("must be 64 lowercase hex digits (a sha256)")
    return value


def _check_https(value: str) -> str:
    if not value.startswith("https://"):
        raise ValueError("must be an https URL (binaries fetched over plain HTTP can be swapped)")
    return value.rstrip("/")


Sha256Hex = Annotated[str, AfterValidator(_check_hex)]
HttpsURL = Annotated[str, AfterValidator(_check_https)]


class PluginBinary(BaseModel):
    """One platform's ``kubectl-portcullis`` executable and its krew archive, by sha256."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    os: Annotated[str, Field(pattern=r"^(linux|darwin|windows)$")]
    arch: Annotated[str, Field(pattern=r"^(amd64|arm64)$")]
    file: Annotated[str, Field(pattern=r"^kubectl-portcullis-[a-z0-9-]+$")]
    sha256: Sha256Hex
    archive_sha256: Sha256Hex = Field(alias="archiveSha256")


class PluginRef(BaseModel):
    """The login binary as released: its OCI artifact and, per platform, the file's sha256."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    repository: Repository
    version: SemVer
    digest: Digest
    download_url: HttpsURL | None = Field(default=None, alias="downloadURL")
    homepage: HttpsURL | None = None
    binaries: list[PluginBinary] = Field(min_length=1)

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = self.model_dump(by_alias=True, exclude_none=True)
        return data


class ReleaseManifest(BaseModel):
    """The whole manifest. Unknown top-level sections belong to other release steps and are
    preserved; ``image`` and ``chart`` reject unknown keys so typos fail loudly."""

    model_config = ConfigDict(extra="allow", frozen=True)

    development: bool = Field(
        default=False,
        description="True for the in-tree manifest before the first release (placeholder digests).",
    )
    image: ImageRef
    chart: ChartRef
    plugin: PluginRef | None = None

    def with_image(self, **changes: str) -> ReleaseManifest:
        """A copy with some of ``repository``/``tag``/``digest`` of the image replaced."""
        return self._replace("image", changes)

    def with_chart(self, **changes: str) -> ReleaseManifest:
        """A copy with some of ``repository``/``version``/``digest`` of the chart replaced."""
        return self._replace("chart", changes)

    def _replace(self, section: str, changes: dict[str, str]) -> ReleaseManifest:
        data = self.to_data()
        data[section] = {**data[section], **changes}
        return parse_manifest(data, source=f"<{section} update>")

    def placeholders(self) -> list[str]:
        """Fields that still hold the placeholder digest (dotted paths)."""
        found = [
            f"{section}.digest"
            for section, ref in (("image", self.image), ("chart", self.chart))
            if ref.digest == PLACEHOLDER_DIGEST
        ]
        if self.plugin is not None:
            if self.plugin.digest == PLACEHOLDER_DIGEST:
                found.append("plugin.digest")
            found += [
                f"plugin.binaries[{i}].sha256"
                for i, b in enumerate(self.plugin.binaries)
                if b.sha256 == PLACEHOLDER_DIGEST.removeprefix("sha256:")
            ]
        return found

    def require_release(self) -> None:
        """Raise ``ManifestError`` unless this is a real release (no development flag, no
        placeholder digests): publishing or documenting a placeholder would mislead users."""
        problems = []
        if self.development:
            problems.append("development: must be false for a release")
        problems += [f"{field}: is the placeholder digest" for field in self.placeholders()]
        if problems:
            raise ManifestError("not a release manifest: " + "; ".join(problems))

    def to_data(self) -> dict[str, Any]:
        """Plain data in a stable key order (development, image, chart, then other sections)."""
        data: dict[str, Any] = {
            "development": self.development,
            "image": self.image.model_dump(),
            "chart": self.chart.model_dump(),
        }
        if self.plugin is not None:
            data["plugin"] = self.plugin.to_data()
        data.update(self.model_extra or {})
        return data


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for error in exc.errors():
        path = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"]
        if error["type"] == "missing":
            message = "is required"
        elif error["type"] == "extra_forbidden":
            message = "is not a known field"
        lines.append(f"  {path}: {message.removeprefix('Value error, ')}")
    return f"invalid release manifest {source}:\n" + "\n".join(lines)


def parse_manifest(data: object, *, source: str = "<data>") -> ReleaseManifest:
    """Validate already-parsed YAML data; errors name every offending field."""
    if not isinstance(data, dict):
        raise ManifestError(f"invalid release manifest {source}: the top level must be a mapping")
    try:
        return ReleaseManifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(_format_errors(exc, source)) from None


def load_manifest(path: Path = DEFAULT_MANIFEST) -> ReleaseManifest:
    """Read and validate a manifest file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"cannot read release manifest {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError(f"release manifest {path} is not valid YAML: {exc}") from None
    return parse_manifest(data, source=str(path))


def render_manifest(manifest: ReleaseManifest) -> str:
    """The file text for ``manifest`` (deterministic: same manifest, same bytes)."""
    body = yaml.safe_dump(manifest.to_data(), sort_keys=False, default_flow_style=False)
    return _HEADER + body


def dump_manifest(manifest: ReleaseManifest, path: Path = DEFAULT_MANIFEST) -> None:
    """Write ``manifest`` atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_manifest(manifest), encoding="utf-8")
    tmp.replace(path)


def _git_origin(repo: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "remote", "get-url", "origin"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def source_repository(repo: Path = REPO_ROOT) -> str | None:
    """The repository this tree is released from, or None when nothing says so.

    Order: ``SOURCE_REPOSITORY``; the manifest's ``source.repository``; the git remote
    ``origin``. A malformed ``source`` section is an error naming the field.
    """
    from_env = os.environ.get("SOURCE_REPOSITORY")
    if from_env:
        return from_env
    path = repo / "release" / "manifest.yaml"
    if path.is_file():
        section = (load_manifest(path).model_extra or {}).get("source")
        if section is not None:
            value = section.get("repository") if isinstance(section, dict) else None
            if not isinstance(value, str) or not value.startswith(("https://", "git@", "ssh://")):
                raise ManifestError(
                    f"invalid release manifest {path}:\n  source.repository: must be a "
                    "repository URL (https://..., ssh://... or git@...)"
                )
            return value
    return _git_origin(repo)
