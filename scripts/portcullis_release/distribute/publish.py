"""Push a release to an OCI registry: by digest, idempotently, tagging only at the end.

Order matters for "nothing half-published is left tagged": every blob and every manifest
(image, chart, .sig, .att) is uploaded by digest first; tags are moved only once all uploads
succeeded, attachment tags before release tags, so a consumer can never see a release tag whose
signature is not there yet. Anything already present (HEAD says so) is not sent again, so a re-run
pushes nothing.

A multi-architecture release pushes each platform image (blobs, then its manifest by digest)
before the image index that names them, and tags only the index: the platform images are
reached through it, as a runtime does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from portcullis_release import oci
from portcullis_release.attest.attachments import Attachment, read_attachments
from portcullis_release.attest.cosign_format import Layer, attachment_artifact, layers_of, merge
from portcullis_release.distribute.registry import (
    NotFoundError,
    RegistryClient,
    RegistryError,
    client_for,
)
from portcullis_release.oci import Artifact, Reference
from portcullis_release.plan import ReleasePlan

Progress = Callable[[str], None]


@dataclass
class PublishReport:
    blobs_pushed: int = 0
    blobs_present: int = 0
    manifests_pushed: int = 0
    manifests_present: int = 0
    tags_moved: list[str] = field(default_factory=list)
    tags_unchanged: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.blobs_pushed or self.manifests_pushed or self.tags_moved)

    def summary(self) -> str:
        return (
            f"blobs pushed {self.blobs_pushed} (present {self.blobs_present}), manifests pushed "
            f"{self.manifests_pushed} (present {self.manifests_present}), tags moved "
            f"{len(self.tags_moved)} (unchanged {self.tags_unchanged})"
        )


class Publisher:
    def __init__(self, client: RegistryClient, progress: Progress | None = None) -> None:
        self.client = client
        self.report = PublishReport()
        self._progress = progress or (lambda _msg: None)

    def upload(self, repository: str, artifact: Artifact) -> None:
        """Blobs first (the registry refuses a manifest with missing blobs), then the manifest,
        both addressed by digest. An index's images must already be there (pushed first)."""
        if artifact.media_type in (oci.OCI_INDEX, oci.DOCKER_LIST):
            self._check_index_images(repository, artifact)
        else:
            self._upload_blobs(repository, artifact)
        if self.client.manifest_digest(repository, artifact.digest) == artifact.digest:
            self.report.manifests_present += 1
            return
        self._progress(f"{repository}: manifest {artifact.digest[:19]}")
        self.client.put_manifest(
            repository, artifact.digest, artifact.manifest, artifact.media_type
        )
        self.report.manifests_pushed += 1

    def _check_index_images(self, repository: str, index: Artifact) -> None:
        for i, entry in enumerate(index.manifest_json().get("manifests") or []):
            desc = oci.Descriptor.from_json(entry, f"{index.digest}.manifests[{i}]")
            if self.client.manifest_digest(repository, desc.digest) != desc.digest:
                raise RegistryError(
                    f"{repository}: index {index.digest} names {desc.digest} "
                    f"({oci.platform_of(entry)}), which is not in the registry: push the "
                    "platform images before their index"
                )

    def _upload_blobs(self, repository: str, artifact: Artifact) -> None:
        for desc in artifact.descriptors():
            if self.client.blob_exists(repository, desc.digest):
                self.report.blobs_present += 1
                continue
            self._progress(f"{repository}: blob {desc.digest[:19]} ({desc.size} bytes)")
            self.client.push_blob(repository, desc.digest, artifact.blobs[desc.digest])
            self.report.blobs_pushed += 1

    def tag(self, repository: str, tag: str, artifact: Artifact) -> None:
        if self.client.manifest_digest(repository, tag) == artifact.digest:
            self.report.tags_unchanged += 1
            return
        self.client.put_manifest(repository, tag, artifact.manifest, artifact.media_type)
        self.report.tags_moved.append(f"{repository}:{tag}")

    def remote_attachment(self, repository: str, tag: str) -> list[Layer]:
        """The layers already at a .sig/.att tag (empty if none), each blob checked."""
        try:
            manifest, media_type = self.client.get_manifest(repository, tag)
        except NotFoundError:
            return []
        art = Artifact(manifest, media_type or oci.OCI_MANIFEST)
        for desc in art.layers():
            data = self.client.get_blob(repository, desc.digest)
            if oci.sha256_digest(data) != desc.digest:
                raise RegistryError(f"{repository}:{tag}: blob {desc.digest} served altered")
            art.blobs[desc.digest] = data
        return layers_of(art)


def publish(
    client: RegistryClient,
    targets: dict[str, tuple[Reference, Artifact, str]],
    attachments: list[Attachment],
    progress: Progress | None = None,
) -> PublishReport:
    """Push ``targets`` (role -> (reference, artifact, tag), in push order; an empty tag is
    pushed by digest only) and their attachments."""
    pub = Publisher(client, progress)
    for ref, artifact, _tag in targets.values():
        pub.upload(ref.repository, artifact)
    staged: list[tuple[str, str, Artifact]] = []
    for att in attachments:
        if att.role not in targets:
            raise RegistryError(f"attachment {att.tag} is for {att.role}, which is not published")
        repository = targets[att.role][0].repository
        layers = merge(pub.remote_attachment(repository, att.tag), att.layers)
        artifact = attachment_artifact(layers)
        pub.upload(repository, artifact)
        staged.append((repository, att.tag, artifact))
    for repository, tag, artifact in staged:
        pub.tag(repository, tag, artifact)
    for ref, artifact, tag in targets.values():
        if tag:
            pub.tag(ref.repository, tag, artifact)
    return pub.report


def publish_plan(
    plan: ReleasePlan,
    release_dir: Path,
    auth_file: Path | None,
    plain_http: bool | None = None,
    console: Console | None = None,
) -> PublishReport:
    console = console or Console(stderr=True)
    attachments_dir = release_dir / "attachments"
    attachments = read_attachments(attachments_dir) if attachments_dir.is_dir() else []
    targets = {
        role: (plan.ref_for(role), plan.artifact_for(role), plan.tag_for(role))
        for role in plan.roles()
    }
    with (
        client_for(plan.image_ref, auth_file, plain_http=plain_http) as client,
        console.status("publishing") as status,
    ):
        client.check_access()
        return publish(client, targets, attachments, lambda msg: status.update(f"publishing {msg}"))
