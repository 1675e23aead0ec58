"""Package the Helm chart from the release manifest, byte-reproducibly, and push it to a registry.

Why a staging copy: the chart's version/appVersion and its default image (repository, tag and
digest) must be the ones in ``release/manifest.yaml``, so a packaged chart always pulls the image
it was released with. We copy ``chart/portcullis`` to a temp dir, write those fields there, and
set every file's mtime to ``SOURCE_DATE_EPOCH`` (Helm stamps archive entries with the newest file
mtime; a fresh git clone would otherwise give a different archive). Same sources + same manifest
=> same bytes.

Importable API::

    package_chart(manifest=None, *, chart_dir=CHART_DIR, output_dir=DIST_DIR) -> PackagedChart
    stage_chart(manifest, chart_dir, staging_dir) -> Path        # the edited copy, for tests
    push_chart(archive, repository, *, auth_file, plain_http=False) -> PushedChart
    sha256_file(path) -> str                                      # "sha256:<hex>"

CLI: ``portcullis-release chart [--manifest M] [--output DIR]`` (what ``make chart`` runs), in
``portcullis_release.cli``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from portcullis_release import REPO_ROOT
from portcullis_release.manifest import PLACEHOLDER_DIGEST, ReleaseManifest, load_manifest

__all__ = [
    "CHART_DIR",
    "DIST_DIR",
    "ChartError",
    "PackagedChart",
    "PushedChart",
    "package_chart",
    "push_chart",
    "sha256_file",
    "stage_chart",
]

CHART_DIR = REPO_ROOT / "chart" / "portcullis"
DIST_DIR = REPO_ROOT / "dist" / "chart"
# Used when SOURCE_DATE_EPOCH is unset (2020-01-01T00:00:00Z): any fixed value keeps output stable.
_DEFAULT_EPOCH = 1577836800


class ChartError(RuntimeError):
    """Packaging or pushing the chart failed; the message says which step and why."""


@dataclass(frozen=True)
class PackagedChart:
    """A chart archive on disk."""

    path: Path
    version: str
    digest: str  # sha256 of the .tgz bytes (not the OCI manifest digest)


@dataclass(frozen=True)
class PushedChart:
    """A chart in an OCI registry."""

    reference: str  # host/path/name:version
    digest: str  # digest of the OCI manifest: what Flux's OCIRepository ref.digest pins
    media_type: str
    size: int


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def _source_date_epoch() -> int:
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return _DEFAULT_EPOCH
    if not raw.isdigit():
        raise ChartError(f"SOURCE_DATE_EPOCH must be a non-negative integer, got {raw!r}")
    return int(raw)


def _set_scalar(text: str, block: str | None, key: str, value: str, *, where: str) -> str:
    """Replace ``key: ...`` at top level (block=None) or directly under top-level ``block:``,
    keeping comments and layout, so the packaged files still read like the sources."""
    if block is None:
        pattern = re.compile(rf"^{re.escape(key)}:[^\n]*$", re.MULTILINE)
        replacement = f"{key}: {value}"
        new, count = pattern.subn(lambda _m: replacement, text, count=1)
    else:
        start = re.search(rf"^{re.escape(block)}:[ \t]*$", text, re.MULTILINE)
        if start is None:
            raise ChartError(f"{where}: no top-level '{block}:' block")
        end_match = re.search(r"^\S", text[start.end() + 1 :], re.MULTILINE)
        end = start.end() + 1 + end_match.start() if end_match else len(text)
        section = text[start.end() : end]
        pattern = re.compile(rf"^(  ){re.escape(key)}:[^\n]*$", re.MULTILINE)
        new_section, count = pattern.subn(lambda m: f"{m.group(1)}{key}: {value}", section, 1)
        new = text[: start.end()] + new_section + text[end:]
    if count != 1:
        path = f"{block}.{key}" if block else key
        raise ChartError(f"{where}: cannot find '{path}' to set it from the release manifest")
    return new


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ChartError(f"{path}: expected a mapping")
    return data


def stage_chart(manifest: ReleaseManifest, chart_dir: Path, staging_dir: Path) -> Path:
    """Copy the chart into ``staging_dir`` with version, appVersion and the default image taken
    from ``manifest``; returns the staged chart directory. The image digest is only baked in for
    real digests (a development manifest's placeholder would make every pod fail to pull)."""
    if not (chart_dir / "Chart.yaml").is_file():
        raise ChartError(f"{chart_dir} is not a chart (no Chart.yaml)")
    target = staging_dir / chart_dir.name
    shutil.copytree(chart_dir, target, ignore=shutil.ignore_patterns("__pycache__", "*.tgz"))

    chart_yaml = target / "Chart.yaml"
    text = chart_yaml.read_text(encoding="utf-8")
    text = _set_scalar(text, None, "version", manifest.chart.version, where="Chart.yaml")
    text = _set_scalar(text, None, "appVersion", _quoted(manifest.image.tag), where="Chart.yaml")
    chart_yaml.write_text(text, encoding="utf-8")

    values_yaml = target / "values.yaml"
    digest = "" if manifest.image.digest == PLACEHOLDER_DIGEST else manifest.image.digest
    text = values_yaml.read_text(encoding="utf-8")
    text = _set_scalar(text, "image", "repository", manifest.image.repository, where="values.yaml")
    text = _set_scalar(text, "image", "tag", _quoted(manifest.image.tag), where="values.yaml")
    text = _set_scalar(text, "image", "digest", _quoted(digest), where="values.yaml")
    values_yaml.write_text(text, encoding="utf-8")

    # Check the edits landed where we meant them, rather than trusting the regexes.
    meta, values = _load_yaml(chart_yaml), _load_yaml(values_yaml)
    expected = {
        "Chart.yaml version": (meta.get("version"), manifest.chart.version),
        "Chart.yaml appVersion": (meta.get("appVersion"), manifest.image.tag),
        "values.yaml image.repository": (
            values["image"].get("repository"),
            manifest.image.repository,
        ),
        "values.yaml image.tag": (values["image"].get("tag"), manifest.image.tag),
        "values.yaml image.digest": (values["image"].get("digest"), digest),
    }
    for field, (got, want) in expected.items():
        if got != want:
            raise ChartError(f"staging the chart: {field} is {got!r}, expected {want!r}")

    epoch = _source_date_epoch()
    for path in sorted(target.rglob("*"), reverse=True):
        os.utime(path, (epoch, epoch), follow_symlinks=False)
    os.utime(target, (epoch, epoch))
    return target


def package_chart(
    manifest: ReleaseManifest | None = None,
    *,
    chart_dir: Path = CHART_DIR,
    output_dir: Path = DIST_DIR,
) -> PackagedChart:
    """Write ``output_dir/<name>-<version>.tgz`` (default manifest: release/manifest.yaml)."""
    import helm_python  # imported lazily: loading the Helm library costs ~0.2 s

    manifest = manifest if manifest is not None else load_manifest()
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="portcullis-chart-") as tmp:
        staged = stage_chart(manifest, Path(chart_dir), Path(tmp))
        try:
            built = Path(helm_python.package(staged, destination=tmp))
        except helm_python.HelmError as exc:
            raise ChartError(f"helm package {chart_dir}: {exc}") from exc
        final = output_dir / built.name
        tmp_final = output_dir / (built.name + ".tmp")
        shutil.copyfile(built, tmp_final)
        tmp_final.replace(final)
    return PackagedChart(path=final, version=manifest.chart.version, digest=sha256_file(final))


def push_chart(
    archive: Path,
    repository: str,
    *,
    auth_file: Path,
    plain_http: bool = False,
) -> PushedChart:
    """Push ``archive`` so it lands at ``repository`` (host/path/<chart name>, no scheme) and
    return the registry's manifest digest. ``auth_file`` is a docker config JSON."""
    import helm_python

    meta = _archive_metadata(archive)
    name, version = str(meta["name"]), str(meta["version"])
    parent, _, leaf = repository.rpartition("/")
    if leaf != name or not parent:
        raise ChartError(
            f"chart repository {repository!r} must end with the chart name {name!r} "
            "(Helm pushes to <parent>/<chart name>)"
        )
    client = helm_python.RegistryClient(plain_http=plain_http, credentials_file=str(auth_file))
    try:
        client.push(archive, f"oci://{parent}", plain_http=plain_http)
        resolved = client.resolve(f"{repository}:{version}")
    except helm_python.HelmError as exc:
        raise ChartError(f"pushing {archive.name} to oci://{parent}: {exc}") from exc
    finally:
        client.close()
    return PushedChart(
        reference=f"{repository}:{version}",
        digest=str(resolved["digest"]),
        media_type=str(resolved["media_type"]),
        size=int(resolved["size"]),
    )


def _archive_metadata(archive: Path) -> dict[str, Any]:
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            parts = member.name.split("/")
            if len(parts) == 2 and parts[1] == "Chart.yaml":
                handle = tar.extractfile(member)
                if handle is None:
                    break
                data = yaml.safe_load(handle.read())
                if isinstance(data, dict):
                    return data
    raise ChartError(f"{archive} has no <chart>/Chart.yaml")
