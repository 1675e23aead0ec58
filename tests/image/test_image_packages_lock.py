"""packages.lock: strict parsing with named fields, and re-pinning against the mirror."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from portcullis_release.build import debs, image
from portcullis_release.build.packages_lock import LockError, load_lock, parse_lock

from tests.support.image import REPO

LOCK = REPO / "images" / "portcullis" / "packages.lock"


def _doc() -> dict[str, object]:
    loaded: dict[str, object] = json.loads(LOCK.read_text())
    return loaded


def test_the_committed_lock_parses_and_round_trips() -> None:
    lock = load_lock(LOCK)
    assert lock.to_json() == LOCK.read_text()
    recipe = json.loads((REPO / "images/portcullis/image.json").read_text())
    assert sorted(d.name for d in lock.debs) == sorted(recipe["packages"])


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("debs", 0, "sha256"), "abc", "debs[0].sha256 must be 64 lowercase hex digits"),
        (("debs", 1, "version"), "", "debs[1].version must be a non-empty string"),
        (("fips_provider", "fips_so_sha256"), None, "fips_provider.fips_so_sha256"),
        (("format",), 2, "format must be 1"),
    ],
)
def test_malformed_fields_are_named(path: tuple[object, ...], value: object, message: str) -> None:
    doc = _doc()
    target: object = doc
    for key in path[:-1]:
        target = target[key]  # type: ignore[index]
    target[path[-1]] = value  # type: ignore[index]
    with pytest.raises(LockError, match=re.escape(message)):
        parse_lock(json.dumps(doc))


def test_epoch_versions_map_to_apt_file_names() -> None:
    zlib = next(d for d in load_lock(LOCK).debs if d.name == "zlib1g")
    assert ":" in zlib.version
    assert zlib.filename == f"zlib1g_{zlib.version.replace(':', '%3a')}_amd64.deb"


def test_a_deb_that_does_not_match_its_pin_is_refused(tmp_path: Path) -> None:
    pin = next(d for d in load_lock(LOCK).debs if d.name == "netbase")
    (tmp_path / "debs").mkdir()
    (tmp_path / "debs" / pin.filename).write_bytes(b"not the package")
    with pytest.raises(debs.DebError, match=r"does not match packages\.lock"):
        debs.fetch(pin, tmp_path)


def test_relock_pins_the_mirrors_candidates(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "images").mkdir(parents=True)
    shutil.copytree(REPO / "images" / "portcullis", repo / "images" / "portcullis")
    recipe = json.loads((repo / "images/portcullis/image.json").read_text())
    recipe["packages"] = ["netbase"]
    (repo / "images/portcullis/image.json").write_text(json.dumps(recipe))
    lock = image.relock(repo, tmp_path / "cache", None, [])
    assert [d.name for d in lock.debs] == ["netbase"]
    reread = load_lock(repo / "images/portcullis/packages.lock")
    assert reread == lock
    assert reread.fips_provider == load_lock(LOCK).fips_provider
    fetched = debs.fetch(reread.debs[0], tmp_path / "cache")
    assert fetched.is_file()
