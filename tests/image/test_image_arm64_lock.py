"""packages-arm64.lock: the arm64 image's pins, its emulated build root, and foreign fetching."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from portcullis_release.build import debs, emulation, image
from portcullis_release.build.packages_lock import LockError, load_lock, parse_lock

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "images" / "portcullis"
ARM64_LOCK = RECIPE / "packages-arm64.lock"


def test_the_arm64_lock_parses_round_trips_and_matches_the_recipe() -> None:
    lock = load_lock(ARM64_LOCK)
    assert lock.to_json() == ARM64_LOCK.read_text()
    assert lock.architecture == "arm64"
    recipe = json.loads((RECIPE / "image.json").read_text())
    assert sorted(d.name for d in lock.debs) == sorted(recipe["packages"])
    for pin in (*lock.debs, *lock.build_debs):
        assert pin.architecture in ("arm64", "all"), pin
    assert image.lock_file(REPO, "arm64") == Path("images/portcullis/packages-arm64.lock")
    assert image.lock_file(REPO, "amd64") == image.LOCK_FILE


def test_the_build_root_pins_what_the_emulated_freeze_runs() -> None:
    names = {d.name for d in load_lock(ARM64_LOCK).build_debs}
    assert set(image.BUILD_ROOT_PACKAGES) <= names
    # The Python's own runtime closure, so the root is complete without maintainer scripts.
    assert {"libc6", "libpython3.11-stdlib", "python3.11-minimal", "libssl3"} <= names


def test_both_architectures_pin_the_same_debian_versions() -> None:
    """A security update is one Debian version for every architecture: the locks move together."""
    amd64 = load_lock(RECIPE / "packages.lock")
    arm64 = load_lock(ARM64_LOCK)
    assert {d.name: d.version for d in amd64.debs} == {d.name: d.version for d in arm64.debs}
    assert amd64.fips_provider.source_version == arm64.fips_provider.source_version
    # The provider is built per architecture, so its bytes differ.
    assert amd64.fips_provider.fips_so_sha256 != arm64.fips_provider.fips_so_sha256
    shared = {d.name: d for d in amd64.debs if d.architecture == "all"}
    for pin in arm64.debs:
        if pin.name in shared:
            assert pin == shared[pin.name]


def test_a_malformed_build_root_pin_is_named() -> None:
    doc = json.loads(ARM64_LOCK.read_text())
    doc["build_debs"][0]["sha256"] = "nothex"
    with pytest.raises(LockError, match=r"build_debs\[0\]\.sha256"):
        parse_lock(json.dumps(doc))
    doc = json.loads(ARM64_LOCK.read_text())
    doc["build_debs"].append(dict(doc["build_debs"][0]))
    with pytest.raises(LockError, match="build_debs lists a package twice"):
        parse_lock(json.dumps(doc))


def test_a_lock_without_build_root_does_not_write_one() -> None:
    amd64_text = (RECIPE / "packages.lock").read_text()
    lock = parse_lock(amd64_text)
    assert lock.build_debs == ()
    assert "build_debs" not in json.loads(lock.to_json())


def test_an_arm64_package_is_fetched_without_changing_the_machines_architectures(
    tmp_path: Path,
) -> None:
    """Fetched through a private apt state under the cache, checked against its pin."""
    before = subprocess.run(
        ["dpkg", "--print-foreign-architectures"], capture_output=True, text=True, check=True
    ).stdout
    pin = next(d for d in load_lock(ARM64_LOCK).debs if d.name == "zlib1g")
    cache = tmp_path / "cache"
    path = debs.fetch(pin, cache)
    assert path.name == pin.filename
    assert "Architecture: arm64" in debs.control_fields(path)
    assert (cache / "apt-arm64" / "lists").is_dir()
    after = subprocess.run(
        ["dpkg", "--print-foreign-architectures"], capture_output=True, text=True, check=True
    ).stdout
    assert after == before


def test_wheel_platforms_cover_every_manylinux_up_to_bookworms_glibc() -> None:
    tags = emulation.platform_tags("arm64")
    assert tags[0] == "manylinux_2_36_aarch64"
    assert "manylinux_2_17_aarch64" in tags
    assert "manylinux2014_aarch64" in tags
    assert not any("x86_64" in tag for tag in tags)


def test_an_architecture_without_emulation_is_refused_by_name() -> None:
    with pytest.raises(emulation.EmulationError, match="'s390x'"):
        emulation.ensure_binfmt("s390x")
