"""One manifest, no drift: every copy of a version, tag or digest is generated from
release/manifest.yaml, and the check fails when any copy differs."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from portcullis_release import REPO_ROOT
from portcullis_release.cli import main
from portcullis_release.distribute import generated, plugin_copies
from portcullis_release.manifest import load_manifest, parse_manifest

RELEASE = {
    "development": False,
    "image": {
        "repository": "registry.example.com/portcullis/portcullis",
        "tag": "1.4.2",
        "digest": "sha256:" + "a" * 64,
    },
    "chart": {
        "repository": "registry.example.com/portcullis/charts/portcullis",
        "version": "1.4.2",
        "digest": "sha256:" + "b" * 64,
    },
}


def _tree_copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for rel in (generated.CHART_YAML, generated.DOCS_PAGE, plugin_copies.SERVER_MODULE):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / rel, root / rel)
    shutil.copytree(REPO_ROOT / generated.FLUX_DIR, root / generated.FLUX_DIR)
    return root


def test_committed_copies_are_what_the_manifest_generates() -> None:
    assert generated.check(load_manifest()) == []
    assert main(["generate", "--check"]) == 0


def test_every_drifted_copy_is_reported(tmp_path: Path) -> None:
    root = _tree_copy(tmp_path)
    manifest = load_manifest()
    assert generated.check(manifest, root) == []
    chart_yaml = root / generated.CHART_YAML
    chart_yaml.write_text(chart_yaml.read_text().replace('appVersion: "0.1.0"', 'appVersion: "9"'))
    docs = root / generated.DOCS_PAGE
    docs.write_text(docs.read_text().replace("sha256:000000", "sha256:111111", 1))
    helmrelease = root / generated.FLUX_DIR / "helmrelease.yaml"
    helmrelease.write_text(helmrelease.read_text() + "# edited\n")
    module = root / plugin_copies.SERVER_MODULE
    module.write_text(module.read_text().replace("DEVELOPMENT = True", "DEVELOPMENT = False"))
    problems = generated.check(manifest, root)
    assert sorted(p.split(":")[0] for p in problems) == sorted(
        str(root / rel)
        for rel in (
            generated.CHART_YAML,
            generated.DOCS_PAGE,
            generated.FLUX_DIR / "helmrelease.yaml",
            plugin_copies.SERVER_MODULE,
        )
    )


def test_a_real_release_regenerates_every_tracked_copy(tmp_path: Path) -> None:
    root = _tree_copy(tmp_path)
    release = parse_manifest(RELEASE)
    # Chart.yaml, 5 Flux files, docs, the kubeconfig page's module (this release has no binary)
    assert len(generated.check(release, root)) == 8
    generated.write_tracked(release, root)
    assert generated.check(release, root) == []
    chart = yaml.safe_load((root / generated.CHART_YAML).read_text())
    assert (chart["version"], chart["appVersion"]) == ("1.4.2", "1.4.2")
    docs = (root / generated.DOCS_PAGE).read_text()
    assert release.image.reference in docs
    assert "placeholder" not in docs.split(generated.BLOCK_START)[1].split(generated.BLOCK_END)[0]


def test_published_index_has_the_seeds_layout(tmp_path: Path) -> None:
    release = parse_manifest(RELEASE)
    written = generated.write_index(release, tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "addons/portcullis/charts/1.4.2/portcullis.yaml",
        "addons/portcullis/images/1.4.2/distroless-fips.yaml",
    ]
    patch = yaml.safe_load(written[0].read_text())
    assert patch["kind"] == "OCIRepository"
    assert patch["spec"] == {
        "url": "oci://registry.example.com/portcullis/charts/portcullis",
        "ref": {"tag": "1.4.2", "digest": "sha256:" + "b" * 64},
    }
    images = yaml.safe_load(written[1].read_text())
    assert images == {
        "images": [
            {
                "name": "registry.example.com/portcullis/portcullis",
                "newTag": "1.4.2",
                "digest": "sha256:" + "a" * 64,
            }
        ]
    }
    tree = _tree_copy(tmp_path / "t")
    generated.write_tracked(release, tree)
    assert generated.check(release, tree, tmp_path) == []
    written[1].write_text(written[1].read_text().replace("a" * 64, "c" * 64))
    assert generated.check(release, tree, tmp_path) == [
        f"{written[1]}: differs from release/manifest.yaml's rendering"
    ]
