"""The image ships exactly the runtime lock, and its SBOM lists exactly what the image ships.

Every top-level module or package in the frozen app layer (``/opt/portcullis/_internal``) is
mapped to the distribution that provides it, using the freeze environment's own metadata
(``importlib.metadata.packages_distributions`` plus the distributions' file lists) and the
standard library's module names. The set of distributions found must equal the runtime lock's
and the SBOM's Python components, with equal versions; a name nobody provides fails too, so
nothing can slip in unaccounted (the dev venv once leaked rich, pygments, grpc_tools, ...).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from portcullis_release import oci
from portcullis_release.attest import sbom
from portcullis_release.build import freeze
from portcullis_release.plan import ReleasePlan

from tests.support.image import LAYOUT, REPO

APP_INTERNAL = Path("opt/portcullis/_internal")
RUNTIME_LOCK = REPO / "requirements" / "runtime.txt"
PACKAGES_LOCK = REPO / "images" / "portcullis" / "packages.lock"
# What the app layer holds beside Python code: the server itself, the FIPS provider bundle,
# the interpreter's shared library and lib-dynload directory, and the stdlib archive.
OWN = {"portcullis", "portcullis_fips", "base_library", "python3"}
_SHARED_LIBRARY = re.compile(r"^lib[^/]*\.so(\.[0-9.]+)?$")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _top_level_name(entry: str) -> str | None:
    """The importable top-level name of a ``_internal`` entry, or None if it is not one."""
    if entry.endswith((".dist-info", ".egg-info")) or _SHARED_LIBRARY.match(entry):
        return None
    if entry.endswith(".libs"):  # auditwheel's bundled libraries belong to their package
        return entry.removesuffix(".libs")
    return entry.split(".", 1)[0]


@pytest.fixture(scope="session")
def app_distributions(rootfs: Path) -> dict[str, str]:
    """Distribution name (normalised) -> version, for everything in the app layer."""
    python = freeze.freeze_env(REPO, REPO / ".cache" / "image", [])
    tops, versions = freeze.env_distributions(python)
    by_norm = {_normalise(name): version for name, version in versions.items()}
    found: dict[str, str] = {}
    unknown: list[str] = []
    for entry in sorted(p.name for p in (rootfs / APP_INTERNAL).iterdir()):
        name = _top_level_name(entry)
        if name is None or name in OWN or name.startswith("_sysconfigdata_"):
            continue
        if name in sys.stdlib_module_names:
            continue
        dists = tops.get(name)
        if not dists:
            unknown.append(entry)
            continue
        for dist in dists:
            found[_normalise(dist)] = by_norm[_normalise(dist)]
    assert not unknown, f"app layer entries no distribution or the stdlib provides: {unknown}"
    return found


def _runtime_lock() -> dict[str, str]:
    return {
        _normalise(d.name): d.version
        for d in sbom.parse_requirements_lock(RUNTIME_LOCK.read_text(encoding="utf-8"))
    }


def test_app_layer_holds_exactly_the_runtime_lock(app_distributions: dict[str, str]) -> None:
    locked = _runtime_lock()
    assert sorted(set(app_distributions) - set(locked)) == [], "shipped but not locked"
    assert sorted(set(locked) - set(app_distributions)) == [], "locked but not shipped"
    assert {n: v for n, v in app_distributions.items() if locked[n] != v} == {}


def test_sbom_lists_exactly_what_the_app_layer_holds(
    app_distributions: dict[str, str], image_tag: str, image_artifact: oci.Artifact
) -> None:
    plan = ReleasePlan.load(LAYOUT, None, "registry.invalid")
    assert plan.image.digest == image_artifact.digest
    bom = sbom.image_bom(plan, sbom.ImageInputs(RUNTIME_LOCK, PACKAGES_LOCK))
    listed = {
        _normalise(c["name"]): c["version"]
        for c in bom["components"]
        if c.get("purl", "").startswith("pkg:pypi/")
    }
    assert listed == app_distributions


def test_dist_info_in_the_app_layer_agrees_with_the_lock(rootfs: Path) -> None:
    """The metadata PyInstaller copies (read at run time by importlib.metadata) is the lock's."""
    locked = _runtime_lock()
    for entry in (rootfs / APP_INTERNAL).glob("*.dist-info"):
        name, version = entry.name.removesuffix(".dist-info").rsplit("-", 1)
        assert locked.get(_normalise(name)) == version, entry.name
