"""Every shared library an executable or library in the image needs is in the image.

The rootfs drops libc6 libraries nothing links against (``rootfs._UNUSED_LIBC_LIBRARIES``) and
the freeze leaves out modules nobody imports; this is the check that neither went too far: the
``DT_NEEDED`` entries of every ELF file under the unpacked image (the launcher, libpython, each
extension module, auditwheel's bundled libraries, the Debian libraries) must name a file the
image holds. The ELF files are read here with the standard library, so the check needs no
binutils.
"""

from __future__ import annotations

import struct
from pathlib import Path

_DT_NEEDED = 1
_SHT_DYNAMIC = 6


def needed_libraries(path: Path) -> list[str] | None:
    """The ``DT_NEEDED`` names of a 64-bit ELF file, or None if it is not one."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:  # ELFCLASS64 only: amd64 and arm64 images
        return None
    order = "<" if data[5] == 1 else ">"
    shoff, shentsize, shnum = (
        struct.unpack_from(order + "Q", data, 0x28)[0],
        struct.unpack_from(order + "H", data, 0x3A)[0],
        struct.unpack_from(order + "H", data, 0x3C)[0],
    )
    sections = [
        struct.unpack_from(order + "IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
    ]
    names: list[str] = []
    for _name, kind, _flags, _addr, offset, size, link, _info, _align, entsize in sections:
        if kind != _SHT_DYNAMIC:
            continue
        strtab_offset = sections[link][4]
        for start in range(offset, offset + size, entsize):
            tag, value = struct.unpack_from(order + "qQ", data, start)
            if tag == 0:
                break
            if tag == _DT_NEEDED:
                end = data.index(b"\0", strtab_offset + value)
                names.append(data[strtab_offset + value : end].decode())
    return names


def test_every_needed_shared_library_is_in_the_image(rootfs: Path) -> None:
    present = {p.name for p in rootfs.rglob("*") if p.is_file() or p.is_symlink()}
    missing: dict[str, list[str]] = {}
    checked = 0
    for path in sorted(rootfs.rglob("*")):
        if path.is_symlink() or not path.is_file() or path.stat().st_size < 64:
            continue
        with path.open("rb") as fh:
            if fh.read(4) != b"\x7fELF":
                continue
        needed = needed_libraries(path)
        assert needed is not None, f"{path.relative_to(rootfs)} is not a 64-bit ELF file"
        checked += 1
        absent = [name for name in needed if name not in present]
        if absent:
            missing[str(path.relative_to(rootfs))] = absent
    assert checked > 50, f"only {checked} ELF files found: is this the unpacked image?"
    assert missing == {}


def test_the_reader_finds_what_the_launcher_needs(rootfs: Path) -> None:
    """The parser itself: the frozen launcher needs the C library (so the check cannot pass by
    reading nothing)."""
    needed = needed_libraries(rootfs / "opt/portcullis/portcullis")
    assert needed is not None
    assert "libc.so.6" in needed
    assert needed_libraries(rootfs / "etc/passwd") is None
