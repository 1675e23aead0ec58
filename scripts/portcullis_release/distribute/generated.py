"""Every copy of a version, tag or digest, generated from ``release/manifest.yaml``.

The manifest is the one place that says what a release is; anything else that repeats it is
rendered from it here, and ``check`` reports each copy that differs (a test runs it, so drift
fails the suite, the failure mode of distributions whose docs pin another digest than their pin
files). The copies:

* tracked files: the chart's ``Chart.yaml`` ``version``/``appVersion``, ``deploy/flux/*``
  (:mod:`distribute.flux`), the generated block of ``docs/verify.md`` between
  ``<!-- generated:release -->`` and ``<!-- /generated:release -->``, and the login binary's
  sha256s for the kubeconfig page and krew (:mod:`distribute.plugin_copies`);
* the published index, in the layout of the seeds' hardened distribution:
  ``addons/portcullis/charts/<chart version>/portcullis.yaml`` (a Flux OCIRepository patch:
  url, ref.tag, ref.digest) and ``addons/portcullis/images/<app version>/distroless-fips.yaml``
  (a kustomize ``images`` list: name, newTag, digest). It is written with each release under
  the release directory (``dist/release/index/``), never into the tree.

Tracked files change only for a real release; a development manifest still renders (with its
placeholder digests said to be placeholders) so the in-tree copies can be checked too.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from portcullis_release import REPO_ROOT
from portcullis_release.distribute import flux, plugin_copies
from portcullis_release.manifest import ReleaseManifest

__all__ = ["check", "render_index", "render_tracked", "write_index", "write_tracked"]

CHART_YAML = Path("chart/portcullis/Chart.yaml")
FLUX_DIR = Path("deploy/flux")
DOCS_PAGE = Path("docs/verify.md")
BLOCK_START = "<!-- generated:release -->"
BLOCK_END = "<!-- /generated:release -->"
_BLOCK_RE = re.compile(re.escape(BLOCK_START) + r".*?" + re.escape(BLOCK_END), re.S)
INDEX_ROOT = Path("addons/portcullis")


def _chart_yaml(manifest: ReleaseManifest, current: str) -> str:
    """``Chart.yaml`` with version and appVersion from the manifest (the rest kept verbatim)."""
    text = re.sub(
        r"^version: .*$", f"version: {manifest.chart.version}", current, count=1, flags=re.M
    )
    return re.sub(
        r"^appVersion: .*$", f'appVersion: "{manifest.image.tag}"', text, count=1, flags=re.M
    )


def _docs_block(manifest: ReleaseManifest) -> str:
    if manifest.development:
        status = (
            "No release has been published from this tree yet: `release/manifest.yaml` is a "
            "development manifest, and the digests below are placeholders until `make release` "
            "with a real `REGISTRY` and `COSIGN_KEY` writes them."
        )
    else:
        status = "The current release, as pinned by `release/manifest.yaml`:"
    return (
        f"{BLOCK_START}\n"
        "<!-- Generated from release/manifest.yaml by `portcullis-release generate`; "
        "do not edit. -->\n"
        f"{status}\n\n"
        f"- image: `{manifest.image.reference}`\n"
        f"- chart: `{manifest.chart.oci_url}` version `{manifest.chart.version}`, "
        f"digest `{manifest.chart.digest}`\n"
        f"{plugin_copies.docs_lines(manifest)}"
        f"{BLOCK_END}"
    )


def render_tracked(manifest: ReleaseManifest, repo: Path = REPO_ROOT) -> dict[Path, str]:
    """Repository-relative path -> the text the manifest generates for it."""
    files: dict[Path, str] = {
        CHART_YAML: _chart_yaml(manifest, (repo / CHART_YAML).read_text(encoding="utf-8")),
    }
    for name, text in flux.render_flux(manifest, allow_development=True).items():
        files[FLUX_DIR / name] = text
    page = (repo / DOCS_PAGE).read_text(encoding="utf-8")
    if not _BLOCK_RE.search(page):
        raise ValueError(f"{DOCS_PAGE}: no {BLOCK_START} ... {BLOCK_END} block to generate")
    files[DOCS_PAGE] = _BLOCK_RE.sub(lambda _m: _docs_block(manifest), page, count=1)
    files.update(plugin_copies.render(manifest))
    return files


def render_index(manifest: ReleaseManifest) -> dict[Path, str]:
    """The published index (paths relative to the index root) in the seeds' layout."""
    header = "# Generated from release/manifest.yaml by portcullis-release; do not edit.\n"
    patch = {
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "OCIRepository",
        "metadata": {"name": manifest.chart.name},
        "spec": {
            "url": manifest.chart.oci_url,
            "ref": {"tag": manifest.chart.version, "digest": manifest.chart.digest},
        },
    }
    images = {
        "images": [
            {
                "name": manifest.image.repository,
                "newTag": manifest.image.tag,
                "digest": manifest.image.digest,
            }
        ]
    }
    dump = yaml.safe_dump
    return {
        INDEX_ROOT / "charts" / manifest.chart.version / "portcullis.yaml": header
        + dump(patch, sort_keys=False),
        INDEX_ROOT / "images" / manifest.image.tag / "distroless-fips.yaml": header
        + dump(images, sort_keys=False),
    }


def _write(root: Path, files: dict[Path, str]) -> list[Path]:
    written = []
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        written.append(path)
    return written


def write_tracked(
    manifest: ReleaseManifest, repo: Path = REPO_ROOT, *, flux_files: bool = True
) -> list[Path]:
    """Rewrite every tracked copy (a real release only: the caller decides); without
    ``flux_files`` the Flux files are left to the caller (who may write them elsewhere)."""
    files = render_tracked(manifest, repo)
    if not flux_files:
        files = {rel: text for rel, text in files.items() if rel.parent != FLUX_DIR}
    for rel in plugin_copies.absent(manifest):
        (repo / rel).unlink(missing_ok=True)
    return _write(repo, files)


def write_index(manifest: ReleaseManifest, out_dir: Path) -> list[Path]:
    """Write the published index under ``out_dir``."""
    return _write(out_dir, render_index(manifest))


def check(
    manifest: ReleaseManifest, repo: Path = REPO_ROOT, index_dir: Path | None = None
) -> list[str]:
    """Every copy that differs from the manifest's rendering, as ``path: why``."""
    problems = []
    expected = [(repo, rel, text) for rel, text in render_tracked(manifest, repo).items()]
    if index_dir is not None:
        expected += [(index_dir, rel, text) for rel, text in render_index(manifest).items()]
    problems += [
        f"{repo / rel}: exists, but release/manifest.yaml generates none (no plugin.downloadURL)"
        for rel in plugin_copies.absent(manifest)
        if (repo / rel).exists()
    ]
    for root, rel, text in expected:
        path = root / rel
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{path}: differs from release/manifest.yaml's rendering")
    return problems
