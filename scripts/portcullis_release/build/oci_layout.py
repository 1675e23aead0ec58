"""Reproducible OCI image pieces: layers from directory trees, image config, unpacking.

Building on the shared descriptors and layout writer in ``portcullis_release.oci``, this module
adds what an *image* build needs and what makes it byte-reproducible:

* layer tars list entries in sorted order, with one fixed mtime (SOURCE_DATE_EPOCH), numeric
  owners (0 unless the caller names a path that must belong to someone else) and no owner
  names, so the same tree always gives the same bytes whatever the build machine's users;
* gzip streams carry mtime 0 and no file name (the bytes still depend on zlib's version, so
  build with the same one);
* the image config is canonical JSON with ``created`` taken from SOURCE_DATE_EPOCH.

The same helpers unpack a layout into a runtime bundle for tests and measurements.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from portcullis_release.oci import (
    OCI_CONFIG,
    OCI_MANIFEST,
    Artifact,
    Descriptor,
    canonical_json,
    image_manifest,
)

OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


class LayerError(ValueError):
    """A tree cannot be turned into a layer (the message names the path)."""


@dataclass(frozen=True)
class Layer:
    """One image layer: its uncompressed tar (for the diff_id) and compressed blob."""

    tar: bytes
    blob: bytes
    history: str

    @property
    def diff_id(self) -> str:
        return "sha256:" + hashlib.sha256(self.tar).hexdigest()

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor.of(OCI_LAYER_GZIP, self.blob)


def deterministic_gzip(data: bytes, level: int = 9) -> bytes:
    """gzip without a timestamp or file name in the header."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=level) as gz:
        gz.write(data)
    return buf.getvalue()


def _walk_sorted(root: Path) -> list[str]:
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        for name in [*dirnames, *sorted(filenames)]:
            out.append(name if rel_dir == "." else f"{rel_dir}/{name}")
    # os.walk does not descend into symlinked directories, and lists them in dirnames: fine.
    return sorted(out)


def tar_tree(
    root: Path,
    *,
    mtime: int,
    prefix: str = "",
    owners: Mapping[str, tuple[int, int]] | None = None,
) -> bytes:
    """Tar ``root``'s contents under ``prefix`` (e.g. ``opt/app``) reproducibly.

    ``owners`` maps archive paths (``home/nonroot``) to (uid, gid); everything else is 0:0.
    Parent directories of ``prefix`` are added as 0755 root-owned directories.
    """
    owners = dict(owners or {})
    prefix = prefix.strip("/")
    buf = io.BytesIO()
    seen_inodes: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add_dir(name: str, mode: int) -> None:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = mode
            _own(info, owners, mtime)
            tar.addfile(info)

        if prefix:
            parts = prefix.split("/")
            for i in range(1, len(parts) + 1):
                add_dir("/".join(parts[:i]), 0o755)
        for rel in _walk_sorted(root):
            path = root / rel
            name = f"{prefix}/{rel}" if prefix else rel
            st = path.lstat()
            info = tarfile.TarInfo(name)
            info.mode = stat.S_IMODE(st.st_mode)
            _own(info, owners, mtime)
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(path)
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen_inodes:
                    info.type = tarfile.LNKTYPE
                    info.linkname = seen_inodes[key]
                    tar.addfile(info)
                    continue
                seen_inodes[key] = name
                info.size = st.st_size
                with path.open("rb") as fh:
                    tar.addfile(info, fh)
            else:
                raise LayerError(f"{path}: only files, directories and symlinks go in a layer")
    return buf.getvalue()


def _own(info: tarfile.TarInfo, owners: Mapping[str, tuple[int, int]], mtime: int) -> None:
    info.uid, info.gid = owners.get(info.name, (0, 0))
    info.uname = info.gname = ""
    info.mtime = mtime


def make_layer(tar: bytes, history: str) -> Layer:
    return Layer(tar=tar, blob=deterministic_gzip(tar), history=history)


def rfc3339(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ImageSettings:
    """What goes into the image config's ``config`` object."""

    user: str
    entrypoint: Sequence[str]
    cmd: Sequence[str]
    env: Mapping[str, str]
    exposed_ports: Sequence[int]
    workdir: str
    labels: Mapping[str, str]
    stop_signal: str = "SIGTERM"


def image_config(
    settings: ImageSettings, layers: Sequence[Layer], created: int, architecture: str
) -> bytes:
    """The OCI image config, canonical JSON."""
    when = rfc3339(created)
    config: dict[str, Any] = {
        "architecture": architecture,
        "os": "linux",
        "created": when,
        "config": {
            "User": settings.user,
            "Entrypoint": list(settings.entrypoint),
            "Cmd": list(settings.cmd),
            "Env": [f"{k}={v}" for k, v in sorted(settings.env.items())],
            "ExposedPorts": {f"{p}/tcp": {} for p in sorted(settings.exposed_ports)},
            "WorkingDir": settings.workdir,
            "Labels": dict(sorted(settings.labels.items())),
            "StopSignal": settings.stop_signal,
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": when, "created_by": layer.history} for layer in layers],
    }
    return canonical_json(config)


def image_artifact(
    config: bytes, layers: Sequence[Layer], annotations: Mapping[str, str]
) -> Artifact:
    """Manifest + config + layers as one in-memory artifact (write it with oci.write_layout)."""
    config_desc = Descriptor.of(OCI_CONFIG, config)
    manifest = image_manifest(config_desc, [layer.descriptor for layer in layers], annotations)
    blobs = {config_desc.digest: config}
    for layer in layers:
        blobs[layer.descriptor.digest] = layer.blob
    return Artifact(manifest, OCI_MANIFEST, blobs)


def unpack_layers(layer_blobs: Iterable[tuple[str, bytes]], dest: Path) -> None:
    """Apply image layers (media type, bytes) in order onto ``dest``, keeping owners and modes.

    Only for layouts this project built (the tar filter trusts the content); whiteouts are
    honoured so a later layer can delete a path.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for media_type, data in layer_blobs:
        raw = gzip.decompress(data) if media_type.endswith("+gzip") else data
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            members = []
            for member in tar.getmembers():
                base = os.path.basename(member.name)
                if base.startswith(".wh."):
                    target = dest / os.path.dirname(member.name) / base[4:]
                    if target.is_dir() and not target.is_symlink():
                        shutil.rmtree(target)
                    elif target.exists() or target.is_symlink():
                        target.unlink()
                    continue
                members.append(member)
            # Our own layers only: owners, modes and links are kept exactly as built.
            tar.extractall(  # noqa: S202
                dest, members=members, numeric_owner=True, filter="fully_trusted"
            )


def artifact_layers(artifact: Artifact) -> list[tuple[str, bytes]]:
    """(media type, blob) of each layer of an image artifact, in order."""
    return [(d.media_type, artifact.blobs[d.digest]) for d in artifact.layers()]
