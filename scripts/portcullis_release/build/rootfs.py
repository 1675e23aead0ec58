"""Assemble the distroless root filesystem from pinned Debian packages.

Maintainer scripts never run (there is no shell to run them), so what they would have done is
done here: the CA bundle is concatenated, ``/etc/localtime`` points at UTC, and each package gets
a ``/var/lib/dpkg/status.d/<name>`` paragraph so image scanners still see what is installed
(the layout distroless images use). Everything a runtime image does not need is removed:
executables, docs (copyright files stay), man pages, locales, gconv modules. Accounts: root,
nobody and ``nonroot`` (65532), all with a non-existent login shell.

The result is a directory plus the owners that differ from root, ready for
``oci_layout.tar_tree``.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from portcullis_release.build import debs
from portcullis_release.build.packages_lock import DebPin

NONROOT_UID = 65532

_PASSWD = (
    "root:x:0:0:root:/root:/sbin/nologin\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
    f"nonroot:x:{NONROOT_UID}:{NONROOT_UID}:nonroot:/home/nonroot:/sbin/nologin\n"
)
_GROUP = f"root:x:0:\nnogroup:x:65534:\nnonroot:x:{NONROOT_UID}:\n"
_NSSWITCH = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\n"

# Paths (relative to the rootfs) removed after unpacking. Directories holding executables go
# entirely: the image runs one binary, from the app layer.
_REMOVE = (
    "bin",
    "sbin",
    "usr/bin",
    "usr/sbin",
    "usr/libexec",
    "usr/lib/x86_64-linux-gnu/gconv",
    "usr/lib/aarch64-linux-gnu/gconv",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bug",
    "usr/share/menu",
    "usr/share/i18n",
    "etc/init.d",
    "etc/update-motd.d",
    "etc/default",
    "etc/skel",
    "etc/profile",
    "etc/profile.d",
    "etc/bash.bashrc",
    "etc/ld.so.conf.d",
    "usr/share/base-files/dot.bashrc",
    "usr/share/base-files/dot.profile",
    "usr/share/base-files/dot.profile.md5sums",
    "usr/share/base-files/profile",
    "usr/share/base-files/profile.md5sums",
    "usr/share/ca-certificates-java",
    "usr/sbin/update-ca-certificates",
)

# libc6 libraries that nothing in the image links against (no DT_NEEDED names them; checked by
# tests/image/test_image_shared_libraries.py) and that glibc loads only on request: the vector
# maths library, NIS, the compat and Hesiod NSS modules (nsswitch.conf names files and dns),
# the malloc/memusage/profiling debug helpers, libthread_db (debuggers), BrokenLocale, and the
# empty libanl/libutil stubs. Removed in whichever multiarch directory the libc6 package of the
# target architecture uses; about 0.45 MB of the compressed image on amd64.
_UNUSED_LIBC_LIBRARIES = (
    "libmvec.so.1",
    "libnsl.so.1",
    "libnss_compat.so.2",
    "libnss_hesiod.so.2",
    "libc_malloc_debug.so.0",
    "libmemusage.so",
    "libpcprofile.so",
    "libthread_db.so.1",
    "libBrokenLocale.so.1",
    "libanl.so.1",
    "libutil.so.1",
)


@dataclass
class Rootfs:
    """The assembled tree and the archive paths that must not be owned by root."""

    path: Path
    owners: dict[str, tuple[int, int]] = field(default_factory=dict)
    packages: list[DebPin] = field(default_factory=list)


def _status_paragraph(control: str) -> str:
    lines = control.rstrip("\n").splitlines()
    out: list[str] = []
    for line in lines:
        out.append(line)
        if line.startswith("Package: "):
            out.append("Status: install ok installed")
    return "\n".join(out) + "\n"


def _prune_docs(root: Path) -> None:
    doc = root / "usr/share/doc"
    if not doc.is_dir():
        return
    for pkg_dir in doc.iterdir():
        if pkg_dir.is_symlink() or not pkg_dir.is_dir():
            pkg_dir.unlink()
            continue
        for entry in pkg_dir.iterdir():
            if entry.name == "copyright":
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def _ca_bundle(root: Path) -> None:
    """What update-ca-certificates would build: every bundled certificate, sorted."""
    source = root / "usr/share/ca-certificates"
    certs = sorted(source.rglob("*.crt"), key=lambda p: p.relative_to(source).as_posix())
    if not certs:
        raise debs.DebError("ca-certificates unpacked no certificates")
    bundle = root / "etc/ssl/certs/ca-certificates.crt"
    bundle.parent.mkdir(parents=True, exist_ok=True)
    with bundle.open("wb") as out:
        for cert in certs:
            data = cert.read_bytes()
            out.write(data if data.endswith(b"\n") else data + b"\n")
    # OpenSSL's built-in default paths on Debian (OPENSSLDIR=/usr/lib/ssl).
    ssl_dir = root / "usr/lib/ssl"
    ssl_dir.mkdir(parents=True, exist_ok=True)
    for name, target in (
        ("cert.pem", "/etc/ssl/certs/ca-certificates.crt"),
        ("certs", "/etc/ssl/certs"),
    ):
        link = ssl_dir / name
        if link.exists() or link.is_symlink():
            if link.is_dir() and not link.is_symlink():
                shutil.rmtree(link)
            else:
                link.unlink()
        link.symlink_to(target)


def _write(root: Path, rel: str, text: str, mode: int = 0o644) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)


def _strip_privilege_bits(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                continue
            mode = stat.S_IMODE(st.st_mode)
            if mode & (stat.S_ISUID | stat.S_ISGID):
                path.chmod(mode & ~(stat.S_ISUID | stat.S_ISGID))


def build_rootfs(
    pins: Sequence[DebPin],
    cache: Path,
    dest: Path,
    writable_dirs: dict[str, int],
    log: list[str],
) -> Rootfs:
    """Unpack ``pins`` into ``dest`` (emptied first) and finish it as a distroless rootfs."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    status_dir = dest / "var/lib/dpkg/status.d"
    controls: dict[str, str] = {}
    debs.prefetch(pins, cache)
    for pin in sorted(pins, key=lambda p: p.name):
        deb = debs.fetch(pin, cache)
        debs.extract(deb, dest)
        controls[pin.name] = debs.control_fields(deb)
    log.append(f"unpacked {len(pins)} Debian packages")
    for rel in _REMOVE:
        path = dest / rel
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
    for libdir in sorted([*dest.glob("lib/*-linux-gnu*"), *dest.glob("usr/lib/*-linux-gnu*")]):
        for name in _UNUSED_LIBC_LIBRARIES:
            if (libdir / name).is_symlink() or (libdir / name).is_file():
                (libdir / name).unlink()
    _prune_docs(dest)
    _ca_bundle(dest)
    status_dir.mkdir(parents=True, exist_ok=True)
    for name, control in controls.items():
        _write(dest, f"var/lib/dpkg/status.d/{name}", _status_paragraph(control))
    _write(dest, "etc/passwd", _PASSWD)
    _write(dest, "etc/group", _GROUP)
    _write(dest, "etc/nsswitch.conf", _NSSWITCH)
    _write(dest, "etc/timezone", "Etc/UTC\n")
    localtime = dest / "etc/localtime"
    if localtime.exists() or localtime.is_symlink():
        localtime.unlink()
    localtime.symlink_to("/usr/share/zoneinfo/Etc/UTC")
    tmp = dest / "tmp"
    tmp.mkdir(exist_ok=True)
    tmp.chmod(0o1777)
    (dest / "etc/portcullis").mkdir(parents=True, exist_ok=True)
    (dest / "etc/portcullis").chmod(0o755)
    owners: dict[str, tuple[int, int]] = {}
    for abs_path, mode in sorted(writable_dirs.items()):
        rel = abs_path.strip("/")
        (dest / rel).mkdir(parents=True, exist_ok=True)
        (dest / rel).chmod(mode)
        owners[rel] = (NONROOT_UID, NONROOT_UID)
    _strip_privilege_bits(dest)
    return Rootfs(path=dest, owners=owners, packages=list(pins))
