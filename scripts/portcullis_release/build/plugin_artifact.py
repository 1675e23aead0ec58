"""The frozen ``kubectl-portcullis`` binary as an OCI artifact, beside the image and the chart.

Shape (OCI image-spec 1.1 "guidelines for artifact usage", what ``oras push --artifact-type``
writes): an image manifest whose ``artifactType`` says what it is, whose ``config`` is the
*empty descriptor* (``application/vnd.oci.empty.v1+json``, the two bytes ``{}``) because a
binary has no configuration, and whose single layer is the executable itself, byte for byte:

* ``artifactType: application/vnd.portcullis.kubectl-plugin.v1`` (our vendor tree, as Flux's
  ``application/vnd.cncf.flux.*`` and Helm's ``application/vnd.cncf.helm.*`` name theirs);
* the layer ``application/octet-stream`` (an executable is an opaque byte stream, not a tar;
  ORAS uses the same for files pushed with that type), annotated
  ``org.opencontainers.image.title: kubectl-portcullis-<os>-<arch>`` so ``oras pull`` writes it
  back under its name.

Because the layer is the raw file, its digest *is* the binary's sha256: what the krew manifest,
the kubeconfig page, the SBOM and the provenance name is the very blob a registry serves. The
manifest is deterministic (canonical JSON, ``created`` from SOURCE_DATE_EPOCH), so the same
binary always gives the same artifact digest, and signing it twice changes nothing.

It stands beside ``plan.ReleasePlan`` (which keeps the image and the chart) rather than in it: a
release may be cut without the plugin (``--login-dir`` unset), and the plan stays the image's.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from portcullis_release import REPO_ROOT, manifest, oci
from portcullis_release.build import login_binary, login_contents
from portcullis_release.oci import Artifact, Descriptor, Reference

__all__ = [
    "BINARY_MEDIA_TYPE",
    "EMPTY_CONFIG",
    "EMPTY_MEDIA_TYPE",
    "PLATFORM_ANNOTATION",
    "PLUGIN_ARTIFACT_TYPE",
    "PLUGIN_REPOSITORY",
    "TITLE",
    "PluginBuild",
    "PluginError",
    "load_or_build",
    "plugin_artifact",
]

PLUGIN_ARTIFACT_TYPE = "application/vnd.portcullis.kubectl-plugin.v1"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG = b"{}"
BINARY_MEDIA_TYPE = "application/octet-stream"
TITLE = "org.opencontainers.image.title"
PLATFORM_ANNOTATION = "dev.portcullis.plugin.platform"  # "linux/amd64", as krew selects by it
PLUGIN_REPOSITORY = "kubectl-portcullis"


class PluginError(ValueError):
    """The login binary's build output is missing or inconsistent; the message names the file."""


def plugin_artifact(
    binary: bytes, file_name: str, version: str, platform: str, created: str
) -> Artifact:
    """The OCI artifact for one platform's binary (see the module docstring)."""
    config = Descriptor.of(EMPTY_MEDIA_TYPE, EMPTY_CONFIG)
    layer = Descriptor.of(BINARY_MEDIA_TYPE, binary, {TITLE: file_name})
    annotations = {
        TITLE: "kubectl-portcullis",
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.created": created,
        PLATFORM_ANNOTATION: platform,
    }
    manifest = oci.image_manifest(config, [layer], annotations, PLUGIN_ARTIFACT_TYPE)
    return Artifact(manifest, oci.OCI_MANIFEST, {config.digest: EMPTY_CONFIG, layer.digest: binary})


@dataclass(frozen=True)
class PluginBuild:
    """One ``make login-binary`` output directory, read back and checked."""

    binary: Path
    archive: Path
    contents: dict[str, Any]

    @classmethod
    def load(cls, login_dir: Path) -> PluginBuild:
        """The build in ``login_dir``; its contents record must describe the binary there."""
        found = sorted(login_dir.glob("kubectl-portcullis-*.contents.json"))
        if len(found) != 1:
            raise PluginError(
                f"{login_dir}: expected one kubectl-portcullis-<os>-<arch>.contents.json, found "
                f"{len(found)} (run `make login-binary`)"
            )
        contents = json.loads(found[0].read_text())
        if contents.get("format") != login_contents.CONTENTS_FORMAT:
            raise PluginError(f"{found[0]}: format {contents.get('format')!r} is not understood")
        binary = login_dir / str(contents["binary"]["name"])
        archive = binary.with_name(binary.name + ".tar.gz")
        for path in (binary, archive):
            if not path.is_file():
                raise PluginError(f"{path}: missing (run `make login-binary`)")
        actual = oci.digest_hex(oci.sha256_digest(binary.read_bytes()))
        if actual != contents["binary"]["sha256"]:
            raise PluginError(
                f"{binary}: sha256 {actual} is not the {contents['binary']['sha256']} its "
                f"contents record was read from (rebuild with `make login-binary`)"
            )
        return cls(binary, archive, contents)

    @property
    def version(self) -> str:
        return str(self.contents["version"])

    @property
    def platform(self) -> str:
        return f"{self.contents['os']}/{self.contents['arch']}"

    @property
    def sha256(self) -> str:
        """Hex sha256 of the executable (also its layer digest)."""
        return str(self.contents["binary"]["sha256"])

    @property
    def archive_sha256(self) -> str:
        """Hex sha256 of the krew archive."""
        return oci.digest_hex(oci.sha256_digest(self.archive.read_bytes()))

    @property
    def created(self) -> str:
        epoch = int(self.contents.get("sourceDateEpoch") or 0)
        return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def artifact(self) -> Artifact:
        return plugin_artifact(
            self.binary.read_bytes(), self.binary.name, self.version, self.platform, self.created
        )

    @staticmethod
    def reference(registry: str) -> Reference:
        """Where the artifact goes: ``<REGISTRY>/kubectl-portcullis`` beside the image."""
        return Reference.parse(f"{registry.rstrip('/')}/{PLUGIN_REPOSITORY}")

    def tag(self) -> str:
        return self.version.replace("+", "_")

    def manifest_section(self, registry: str) -> dict[str, Any]:
        """The release manifest's ``plugin`` section for this build published under
        ``registry``. The download URL is PLUGIN_DOWNLOAD_URL, else the source repository's
        release assets (``<repo>/releases/download/v<version>``), else left out (nothing
        invents a URL); the homepage is the source repository when it is an https one."""
        source = manifest.source_repository(REPO_ROOT)
        base = source.removesuffix(".git") if source and source.startswith("https://") else None
        download = os.environ.get("PLUGIN_DOWNLOAD_URL") or (
            f"{base}/releases/download/v{self.version}" if base else None
        )
        section: dict[str, Any] = {
            "repository": self.reference(registry).name,
            "version": self.version,
            "digest": self.artifact().digest,
            "binaries": [
                {
                    "os": self.contents["os"],
                    "arch": self.contents["arch"],
                    "file": self.binary.name,
                    "sha256": self.sha256,
                    "archiveSha256": self.archive_sha256,
                }
            ],
        }
        if download:
            section["downloadURL"] = download
        if base:
            section["homepage"] = base
        return section


def load_or_build(login_dir: Path, cache: Path, existing: bool, log: list[str]) -> PluginBuild:
    """The release's login binary: frozen into ``login_dir`` now, exactly as `make login-binary`
    does (its own freeze venv under ``cache``, SOURCE_DATE_EPOCH), or with ``existing`` the
    build already there; read back and checked either way."""
    if not existing:
        login_binary.build(
            REPO_ROOT,
            login_dir,
            cache.resolve(),
            int(os.environ.get("SOURCE_DATE_EPOCH", "0") or 0),
            log=log,
        )
    return PluginBuild.load(login_dir)
