"""release/manifest.yaml: a typed model with errors that name the field, and a stable file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from portcullis_release.cli import main as release_cli
from portcullis_release.manifest import (
    DEFAULT_MANIFEST,
    PLACEHOLDER_DIGEST,
    ManifestError,
    load_manifest,
    parse_manifest,
    render_manifest,
)

GOOD = {
    "development": False,
    "image": {
        "repository": "ghcr.io/example/portcullis",
        "tag": "1.0.0",
        "digest": "sha256:" + "a" * 64,
    },
    "chart": {
        "repository": "ghcr.io/example/charts/portcullis",
        "version": "1.0.0",
        "digest": "sha256:" + "b" * 64,
    },
}


def test_in_tree_manifest_is_valid_and_in_canonical_form() -> None:
    manifest = load_manifest(DEFAULT_MANIFEST)
    assert DEFAULT_MANIFEST.read_text() == render_manifest(manifest)
    if not manifest.development:
        manifest.require_release()  # a release manifest never carries a placeholder


def test_references_are_derived_from_the_fields() -> None:
    manifest = parse_manifest(GOOD)
    assert manifest.image.reference == f"ghcr.io/example/portcullis:1.0.0@sha256:{'a' * 64}"
    assert manifest.chart.oci_url == "oci://ghcr.io/example/charts/portcullis"
    assert manifest.chart.name == "portcullis"
    manifest.require_release()


def test_file_round_trip_keeps_other_sections(tmp_path: Path) -> None:
    path = tmp_path / "manifest.yaml"
    data = {**GOOD, "signatures": {"keyRef": "cosign.pub"}}
    path.write_text(render_manifest(parse_manifest(data)))
    loaded = load_manifest(path)
    assert loaded.to_data() == data
    assert render_manifest(loaded) == path.read_text()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image": {**GOOD["image"], "digest": "sha256:ABC"}}, "image.digest: must be 'sha256:'"),
        ({"image": {**GOOD["image"], "repository": "oci://x/y"}}, "image.repository: must not"),
        ({"image": {**GOOD["image"], "tag": "has space"}}, "image.tag: must be a valid OCI tag"),
        ({"image": {**GOOD["image"], "tga": "x"}}, "image.tga: is not a known field"),
        ({"chart": {**GOOD["chart"], "version": "v1"}}, "chart.version: must be a semantic"),
        ({"chart": {"repository": "a.io/b", "version": "1.0.0"}}, "chart.digest: is required"),
    ],
)
def test_invalid_fields_are_named(change: dict[str, object], message: str) -> None:
    with pytest.raises(ManifestError, match=re.escape(message)):
        parse_manifest({**GOOD, **change})


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ManifestError) as excinfo:
        parse_manifest({"image": {"repository": "UPPER/case", "tag": "1"}, "chart": {}})
    text = str(excinfo.value)
    for field in ("image.repository", "image.digest", "chart.repository", "chart.version"):
        assert field in text


def test_development_manifest_is_not_a_release() -> None:
    manifest = parse_manifest({**GOOD, "image": {**GOOD["image"], "digest": PLACEHOLDER_DIGEST}})
    with pytest.raises(ManifestError, match=re.escape("image.digest: is the placeholder digest")):
        manifest.require_release()


def test_unreadable_and_malformed_files_say_so(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read release manifest"):
        load_manifest(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("image: [unclosed\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifest(bad)


def test_cli_set_updates_fields_and_show_validates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "manifest.yaml"
    development = {**GOOD, "development": True, "chart": {**GOOD["chart"], "version": "0.1.0"}}
    path.write_text(render_manifest(parse_manifest(development)))
    digest = "sha256:" + "c" * 64
    assert release_cli(["manifest", "--manifest", str(path), "set", "--image-digest", digest]) == 0
    assert load_manifest(path).image.digest == digest
    assert release_cli(["manifest", "--manifest", str(path), "show", "--require-release"]) == 2
    assert "not a release manifest" in capsys.readouterr().err
    assert release_cli(["manifest", "--manifest", str(path), "set", "--chart-version", "x"]) == 2
    assert "chart.version" in capsys.readouterr().err
    assert load_manifest(path).chart.version == "0.1.0"  # a failed set leaves the file alone
