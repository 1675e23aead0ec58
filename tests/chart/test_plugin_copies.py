"""The released kubectl-portcullis binary's sha256s, generated from release/manifest.yaml: the
kubeconfig page's module and the krew manifest, drift-checked like every other copy."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from portcullis.config.model import FrontendSection
from portcullis.kube import page, plugin_release
from portcullis.web.pages import Pages
from portcullis_release import REPO_ROOT
from portcullis_release.distribute import generated, plugin_copies
from portcullis_release.manifest import ManifestError, parse_manifest

BINARY_SHA = "d" * 64
ARCHIVE_SHA = "e" * 64
PLUGIN: dict[str, Any] = {
    "repository": "registry.example.com/portcullis/kubectl-portcullis",
    "version": "1.4.2",
    "digest": "sha256:" + "f" * 64,
    "downloadURL": "https://github.example/org/portcullis/releases/download/v1.4.2/",
    "homepage": "https://github.example/org/portcullis",
    "binaries": [
        {
            "os": "linux",
            "arch": "amd64",
            "file": "kubectl-portcullis-linux-amd64",
            "sha256": BINARY_SHA,
            "archiveSha256": ARCHIVE_SHA,
        }
    ],
}
RELEASE: dict[str, Any] = {
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
    "plugin": PLUGIN,
}


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for rel in (generated.CHART_YAML, generated.DOCS_PAGE, plugin_copies.SERVER_MODULE):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / rel, root / rel)
    shutil.copytree(REPO_ROOT / generated.FLUX_DIR, root / generated.FLUX_DIR)
    return root


def _module_values(path: Path) -> dict[str, Any]:
    """The generated module's values, loaded as Python loads it (it must be valid Python)."""
    spec = importlib.util.spec_from_file_location("generated_plugin_release", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return vars(module)


def test_a_release_with_the_binary_generates_the_krew_manifest_and_the_page_module(
    tmp_path: Path,
) -> None:
    release = parse_manifest(RELEASE)
    root = _tree(tmp_path)
    problems = generated.check(release, root)
    assert f"{root / plugin_copies.KREW_FILE}: missing" in problems
    generated.write_tracked(release, root)
    assert generated.check(release, root) == []

    krew = yaml.safe_load((root / plugin_copies.KREW_FILE).read_text())
    assert krew["kind"] == "Plugin"
    assert krew["spec"]["version"] == "v1.4.2"
    assert krew["spec"]["homepage"] == "https://github.example/org/portcullis"
    (entry,) = krew["spec"]["platforms"]
    assert entry["sha256"] == ARCHIVE_SHA
    assert entry["uri"] == (
        "https://github.example/org/portcullis/releases/download/v1.4.2/"
        "kubectl-portcullis-linux-amd64.tar.gz"
    )

    values = _module_values(root / plugin_copies.SERVER_MODULE)
    assert values["DEVELOPMENT"] is False
    assert values["VERSION"] == "1.4.2"
    assert values["SHA256"] == {("linux", "amd64"): BINARY_SHA}
    docs = (root / generated.DOCS_PAGE).read_text()
    assert f"`kubectl-portcullis-linux-amd64` (linux/amd64): sha256 `{BINARY_SHA}`" in docs

    # A drifted sha256 in either copy is reported.
    krew_path = root / plugin_copies.KREW_FILE
    krew_path.write_text(krew_path.read_text().replace(ARCHIVE_SHA, "0" * 64))
    module = root / plugin_copies.SERVER_MODULE
    module.write_text(module.read_text().replace(BINARY_SHA, "1" * 64))
    assert sorted(p.split(":")[0] for p in generated.check(release, root)) == sorted(
        str(root / rel) for rel in (plugin_copies.KREW_FILE, plugin_copies.SERVER_MODULE)
    )


def test_without_a_download_url_no_krew_manifest_may_exist(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    generated.write_tracked(parse_manifest(RELEASE), root)
    no_url = parse_manifest({**RELEASE, "plugin": {**PLUGIN, "downloadURL": None}})
    assert any("exists, but" in p for p in generated.check(no_url, root))
    generated.write_tracked(no_url, root)
    assert not (root / plugin_copies.KREW_FILE).exists()
    assert generated.check(no_url, root) == []


def test_the_committed_page_module_is_the_development_manifests() -> None:
    # The in-tree manifest is a development one: the page shows no sha256 yet.
    assert plugin_release.DEVELOPMENT is True
    assert page.plugin_downloads("https://dl.example")[0] == (
        "linux/amd64",
        "https://dl.example/kubectl-portcullis-linux-amd64",
        "",
    )
    assert page.plugin_downloads("") == []


def test_the_page_shows_the_released_sha256_beside_its_link(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(plugin_release, "DEVELOPMENT", False)
    monkeypatch.setattr(plugin_release, "SHA256", {("linux", "amd64"): BINARY_SHA})
    downloads = {label: (url, sha) for label, url, sha in page.plugin_downloads("https://dl")}
    assert downloads["linux/amd64"] == ("https://dl/kubectl-portcullis-linux-amd64", BINARY_SHA)
    # A platform this release built no binary for is linked without a digest.
    assert downloads["darwin/arm64"][1] == ""

    # The page itself (the issuer's templates) prints the digest beside the link.
    html = (
        Pages(FrontendSection(), "/dex")
        .render(
            "kubeconfig.html",
            user="jane",
            issuer="https://issuer.example/dex",
            client_id="kubernetes",
            expires_in=60,
            clusters=[],
            apiserver_flags="",
            foreign=[],
            claims=[],
            groups=[],
            downloads=page.plugin_downloads("https://dl"),
            copy_script="",
        )
        .body.decode()
    )
    assert (
        '<a href="https://dl/kubectl-portcullis-linux-amd64" rel="noopener">linux/amd64</a> '
        f'(sha256 <code class="pc-sha256" data-platform="linux/amd64">{BINARY_SHA}</code>)'
    ) in html
    assert html.count('class="pc-sha256"') == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"downloadURL": "http://insecure.example/x"}, "plugin.downloadURL"),
        ({"binaries": []}, "plugin.binaries"),
        ({"binaries": [{**PLUGIN["binaries"][0], "sha256": "XYZ"}]}, "plugin.binaries.0.sha256"),
        ({"binaries": [{**PLUGIN["binaries"][0], "os": "plan9"}]}, "plugin.binaries.0.os"),
    ],
)
def test_a_bad_plugin_section_is_refused_naming_the_field(
    change: dict[str, Any], field: str
) -> None:
    with pytest.raises(ManifestError, match=field.replace(".", r"\.")):
        parse_manifest({**RELEASE, "plugin": {**PLUGIN, **change}})
