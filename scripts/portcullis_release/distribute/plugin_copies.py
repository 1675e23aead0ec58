"""The generated copies of the released ``kubectl-portcullis`` binary's sha256s.

Two places repeat what ``release/manifest.yaml``'s ``plugin`` section says, and both are rendered
from it here (``distribute.generated`` adds them to the tracked copies it writes and checks):

* ``server/portcullis/kube/plugin_release.py``: a Python module the kubeconfig page reads to show
  the sha256 beside each download link. A module rather than a data file because the server is
  frozen by PyInstaller, which follows imports and would have to be told about data files; it
  imports nothing, so it cannot break the server's layers.
* ``deploy/krew/portcullis.yaml``: the krew plugin manifest (the file a krew index carries), when
  the manifest says where the archives are served (``plugin.downloadURL``). Without a download
  URL the file must not exist: a krew manifest pointing at an invented URL would send users
  elsewhere.

The page and krew link to files, not to the registry: the files are the release assets next to
the artifact, the same bytes (the artifact's layer *is* the executable, ``build.plugin_artifact``).
"""

from __future__ import annotations

from pathlib import Path

from portcullis_release.build import login_binary
from portcullis_release.manifest import PLACEHOLDER_DIGEST, ReleaseManifest

__all__ = ["KREW_FILE", "SERVER_MODULE", "absent", "docs_lines", "render"]

SERVER_MODULE = Path("server/portcullis/kube/plugin_release.py")
KREW_FILE = Path("deploy/krew/portcullis.yaml")
_PLACEHOLDER = PLACEHOLDER_DIGEST.removeprefix("sha256:")


def _server_module(manifest: ReleaseManifest) -> str:
    plugin = manifest.plugin
    development = manifest.development or plugin is None or plugin.digest == PLACEHOLDER_DIGEST
    rows = [
        f'    ("{b.os}", "{b.arch}"): "{b.sha256}",\n'
        for b in sorted(plugin.binaries if plugin else [], key=lambda b: (b.os, b.arch))
        if b.sha256 != _PLACEHOLDER
    ]
    table = "{\n" + "".join(rows) + "}" if rows else "{}"
    return (
        '"""The released kubectl-portcullis binaries: what the kubeconfig page shows beside its\n'
        "download links.\n\n"
        "Generated from release/manifest.yaml by `portcullis-release generate` "
        "(scripts/portcullis_release/\n"
        "distribute/plugin_copies.py); do not edit. `generate --check` fails when it drifts.\n"
        '"""\n\n'
        "from __future__ import annotations\n\n"
        "#: True until a release pins real digests: the page then shows no sha256.\n"
        f"DEVELOPMENT = {development}\n"
        f'VERSION = "{plugin.version if plugin else ""}"\n'
        "#: (os, arch) -> sha256 of the executable the release published for that platform.\n"
        f"SHA256: dict[tuple[str, str], str] = {table}\n"
    )


def _krew(manifest: ReleaseManifest) -> str | None:
    plugin = manifest.plugin
    if plugin is None or plugin.download_url is None:
        return None
    platforms = [
        login_binary.KrewPlatform(
            b.os, b.arch, f"{plugin.download_url}/{b.file}.tar.gz", b.archive_sha256
        )
        for b in plugin.binaries
    ]
    header = "# Generated from release/manifest.yaml by portcullis-release; do not edit.\n"
    return header + login_binary.krew_manifest(
        plugin.version, platforms, plugin.homepage or plugin.download_url
    )


def render(manifest: ReleaseManifest) -> dict[Path, str]:
    """Repository-relative path -> text, for the copies this manifest generates."""
    files = {SERVER_MODULE: _server_module(manifest)}
    krew = _krew(manifest)
    if krew is not None:
        files[KREW_FILE] = krew
    return files


def absent(manifest: ReleaseManifest) -> list[Path]:
    """Copies this manifest says must not exist (a krew manifest without a download URL)."""
    return [] if _krew(manifest) is not None else [KREW_FILE]


def docs_lines(manifest: ReleaseManifest) -> str:
    """The docs block's lines for the binary (empty without a ``plugin`` section)."""
    plugin = manifest.plugin
    if plugin is None:
        return ""
    lines = [f"- kubectl-portcullis: `{plugin.repository}:{plugin.version}@{plugin.digest}`\n"]
    lines += [
        f"  - `{b.file}` ({b.os}/{b.arch}): sha256 `{b.sha256}`\n"
        for b in sorted(plugin.binaries, key=lambda b: (b.os, b.arch))
    ]
    return "".join(lines)
