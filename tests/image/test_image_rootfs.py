"""The unpacked image filesystem, checked with testinfra's local backend from the host.

A distroless image has no shell, so testinfra's container backends (which exec /bin/sh inside)
cannot work; the same checks run against the unpacked rootfs instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import testinfra
from testinfra.host import Host

from tests.support.image import NONROOT

APP = "opt/portcullis"


@pytest.fixture(scope="module")
def host() -> Host:
    return testinfra.get_host("local://")


def _find(host: Host, rootfs: Path, *expr: str) -> list[str]:
    """``find ROOTFS EXPR -print`` with every argument quoted by testinfra."""
    template = "find " + " ".join(["%s"] * (len(expr) + 1)) + " -print"
    out = host.check_output(template, str(rootfs), *expr)
    return [line[len(str(rootfs)) :] for line in out.splitlines() if line]


def test_nonroot_user_and_group_exist_without_a_login_shell(host: Host, rootfs: Path) -> None:
    passwd = host.file(str(rootfs / "etc/passwd"))
    assert passwd.contains(f"^nonroot:x:{NONROOT}:{NONROOT}:")
    for line in passwd.content_string.splitlines():
        assert line.split(":")[6] == "/sbin/nologin", line
    assert host.file(str(rootfs / "etc/group")).contains(f"^nonroot:x:{NONROOT}:")
    home = host.file(str(rootfs / "home/nonroot"))
    assert home.is_directory
    assert (home.uid, home.gid, home.mode) == (NONROOT, NONROOT, 0o700)


def test_no_shell_package_manager_or_python_outside_the_bundle(host: Host, rootfs: Path) -> None:
    forbidden = [
        "sh",
        "bash",
        "dash",
        "busybox",
        "ash",
        "zsh",
        "dpkg",
        "apt",
        "apt-get",
        "su",
        "sudo",
        "login",
        "passwd",
        "ldconfig",
        "ldd",
    ]
    names = [arg for name in forbidden for arg in ("-o", "-name", name)][1:]
    # Executables or links by these names (etc/passwd the file is fine, a passwd binary is not).
    found = _find(
        host,
        rootfs,
        "-not",
        "-type",
        "d",
        "(",
        "-type",
        "l",
        "-o",
        "-perm",
        "/111",
        ")",
        "(",
        *names,
        ")",
    )
    assert found == []
    pythons = [p for p in _find(host, rootfs, "-name", "python*") if not p.startswith(f"/{APP}/")]
    assert pythons == []
    libpython = _find(host, rootfs, "-name", "libpython*")
    assert libpython
    assert all(p.startswith(f"/{APP}/") for p in libpython)
    for directory in ("bin", "sbin", "usr/bin", "usr/sbin"):
        assert not host.file(str(rootfs / directory)).exists, directory


def test_no_setuid_or_setgid_files(host: Host, rootfs: Path) -> None:
    assert _find(host, rootfs, "-perm", "/6000", "-not", "-type", "d") == []


def test_only_runtime_state_directories_belong_to_nonroot(host: Host, rootfs: Path) -> None:
    owned = sorted(_find(host, rootfs, "-uid", str(NONROOT)))
    assert owned == ["/home/nonroot", "/var/lib/portcullis"]
    assert _find(host, rootfs, "-not", "-uid", "0", "-not", "-uid", str(NONROOT)) == []
    # World-writable means a sticky directory (and the root is mounted read-only anyway).
    writable = _find(host, rootfs, "-perm", "-o+w", "-not", "-type", "l")
    assert "/tmp" in writable
    for path in writable:
        entry = host.file(str(rootfs) + path)
        assert entry.is_directory, path
        assert entry.mode == 0o1777, path


def test_frozen_server_files_are_root_owned_and_not_writable(host: Host, rootfs: Path) -> None:
    binary = host.file(str(rootfs / APP / "portcullis"))
    assert binary.is_file
    assert (binary.uid, binary.gid) == (0, 0)
    assert binary.mode & 0o022 == 0
    assert binary.mode & 0o111
    fips_dir = rootfs / APP / "_internal/portcullis_fips"
    for name in ("openssl.cnf", "fipsmodule.cnf", "provider.json"):
        entry = host.file(str(fips_dir / name))
        assert entry.is_file
        assert (entry.uid, entry.mode) == (0, 0o644)


def test_system_libraries_come_from_pinned_packages_not_the_build_machine(
    host: Host, rootfs: Path
) -> None:
    import json

    from tests.support.image import REPO

    recipe = json.loads((REPO / "images/portcullis/image.json").read_text())
    for soname in recipe["system_libraries"]:
        assert not host.file(str(rootfs / APP / "_internal" / soname)).exists, soname
        found = _find(host, rootfs, "-name", soname, "-not", "-path", f"{rootfs}/{APP}/*")
        assert found, f"{soname} is neither bundled nor in the rootfs"
        assert all(p.startswith(("/usr/lib/", "/lib/")) for p in found), found


def test_runtime_files_a_real_server_needs_are_present(host: Host, rootfs: Path) -> None:
    bundle = host.file(str(rootfs / "etc/ssl/certs/ca-certificates.crt"))
    assert bundle.contains("BEGIN CERTIFICATE")
    assert bundle.size > 100_000
    assert host.file(str(rootfs / "etc/localtime")).linked_to == "/usr/share/zoneinfo/Etc/UTC"
    assert host.file(str(rootfs / "usr/share/zoneinfo/Europe/Berlin")).is_file
    assert host.file(str(rootfs / "etc/services")).contains("^https")
    assert host.file(str(rootfs / "etc/nsswitch.conf")).contains("^hosts:")
    assert host.file(str(rootfs / "lib64/ld-linux-x86-64.so.2")).exists
    assert host.file(str(rootfs / "etc/os-release")).exists
    # Docs are gone but licences stay.
    assert host.file(str(rootfs / "usr/share/doc/libc6/copyright")).is_file
    assert not host.file(str(rootfs / "usr/share/man")).exists
