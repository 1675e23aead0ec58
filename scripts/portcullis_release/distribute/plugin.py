"""Publish the ``kubectl-portcullis`` artifact and its signed attachments (``attest.plugin``).

The same publisher as the image and chart (:func:`distribute.publish.publish`): blobs and
manifests by digest first, then the ``.sig``/``.att`` tags, the version tag last, and nothing
sent twice. Only the target differs: ``<REGISTRY>/kubectl-portcullis:<plugin version>``.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from portcullis_release.attest.attachments import read_attachments
from portcullis_release.build.plugin_artifact import PluginBuild
from portcullis_release.distribute.publish import PublishReport, publish
from portcullis_release.distribute.registry import client_for

__all__ = ["publish_plugin"]

# The staged attachments, as attest.plugin writes them (distribute never imports signing code).
ATTACHMENTS = Path("plugin") / "attachments"


def publish_plugin(
    build: PluginBuild,
    registry: str,
    release_dir: Path,
    auth_file: Path | None,
    plain_http: bool | None = None,
    console: Console | None = None,
) -> PublishReport:
    """Push the binary's artifact to ``<registry>/kubectl-portcullis`` with its attachments."""
    console = console or Console(stderr=True)
    ref = build.reference(registry)
    staged = release_dir / ATTACHMENTS
    attachments = read_attachments(staged) if staged.is_dir() else []
    with (
        client_for(ref, auth_file, plain_http=plain_http) as client,
        console.status("publishing kubectl-portcullis") as status,
    ):
        client.check_access()
        return publish(
            client,
            {"plugin": (ref, build.artifact(), build.tag())},
            attachments,
            lambda msg: status.update(f"publishing {msg}"),
        )
