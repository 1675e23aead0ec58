"""Run a foreign architecture's build tools under qemu: the arm64 image is built on amd64.

The arm64 server must be frozen by an arm64 Python (PyInstaller bundles the interpreter it runs
in and the bootloader of its own architecture), and the arm64 FIPS provider must be self-tested
by an arm64 ``openssl``. Neither needs an arm64 machine: Debian's ``qemu-user-static``
registers ``qemu-aarch64`` with binfmt_misc and the *fix-binary* flag, so the kernel runs any
aarch64 ELF through the emulator, inside a chroot as well.

The *build root* is a directory unpacked from the ``build_debs`` pinned in the architecture's
lock (python3.11 and libpython3.11, binutils for PyInstaller's ``strip``, bash and libc-bin for
its ``ldd`` and ``ldconfig``, openssl), never from whatever the mirror holds today, so the
frozen bytes depend only on pinned inputs. It is cached per set of pins and only read during a
build: each run gets a private mount namespace (``unshare -m``) with /proc, /dev and the
directories it needs bind-mounted, all gone when the run ends.

The Python distributions come from ``requirements/freeze.txt`` like the native freeze
environment: ``pip install --target --platform manylinux_2_X_aarch64 --only-binary=:all:
--require-hashes`` (the lock's hashes cover every wheel of a version), run by the native
freeze environment's pip, since pip only copies files and needs no emulation.

Needs root (chroot, mounts); ``make test`` runs as root on the CI machines.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from portcullis_release.build import debs
from portcullis_release.build.fips_provider import FipsBuildError
from portcullis_release.build.packages_lock import PackagesLock

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
# The binfmt_misc entry Debian's qemu-user-static registers for each architecture.
QEMU_BINFMT = {"arm64": "qemu-aarch64"}
# The manylinux tags a bookworm (glibc 2.36) system accepts, newest first, for pip --platform.
GLIBC_MINOR = 36
_WHEEL_MACHINE = {"arm64": "aarch64"}
_DONE = ".portcullis-complete"
BUILD_ROOT_PYTHON = "/usr/bin/python3.11"
BUILD_ROOT_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"


class EmulationError(RuntimeError):
    """The foreign architecture cannot be emulated here, or a run inside it failed."""


def ensure_binfmt(architecture: str) -> None:
    """Make sure the kernel hands ``architecture`` ELF files to qemu, or say what is missing.

    Mounts binfmt_misc when absent (root only) and enables Debian's registration through
    ``update-binfmts``. The entry must carry the fix-binary flag (``F``): the interpreter is
    then opened at registration time, so it need not exist inside the chroot.
    """
    name = QEMU_BINFMT.get(architecture)
    if name is None:
        raise EmulationError(f"no qemu binfmt entry known for architecture {architecture!r}")
    if not (BINFMT_DIR / "status").exists():
        proc = subprocess.run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise EmulationError(
                f"mounting binfmt_misc on {BINFMT_DIR} failed (needs root): {proc.stderr.strip()}"
            )
    entry = BINFMT_DIR / name
    if not entry.exists() and shutil.which("update-binfmts"):
        subprocess.run(
            ["update-binfmts", "--enable", name], capture_output=True, text=True, check=False
        )
    if not entry.exists():
        raise EmulationError(
            f"no binfmt_misc entry {entry}: apt-get install qemu-user-static binfmt-support "
            f"(then `update-binfmts --enable {name}`)"
        )
    fields = entry.read_text(encoding="ascii").splitlines()
    if not fields or fields[0] != "enabled":
        raise EmulationError(f"{entry} is disabled: update-binfmts --enable {name}")
    flags = next(
        (line.split(":", 1)[1].strip() for line in fields if line.startswith("flags:")), ""
    )
    if "F" not in flags:
        raise EmulationError(
            f"{entry} lacks the fix-binary flag F (flags {flags!r}): qemu would have to exist "
            "inside the build root; use Debian's qemu-user-static registration"
        )


@dataclass(frozen=True)
class BuildRoot:
    """An unpacked build root of ``architecture`` and the key of the pins it came from."""

    path: Path
    architecture: str
    key: str

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        readonly: Mapping[Path, str] | None = None,
        writable: Mapping[Path, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` chrooted into the build root with only ``env`` in its environment.

        ``readonly`` and ``writable`` map host directories to absolute paths inside the root;
        they are bind-mounted in a private mount namespace that ends with the run, so the
        cached root is never modified.
        """
        mounts = [
            f"mount -t proc proc {shlex.quote(str(self.path / 'proc'))}",
            f"mount --rbind /dev {shlex.quote(str(self.path / 'dev'))}",
        ]
        for binds, read_only in ((writable or {}, False), (readonly or {}, True)):
            for host, inside in binds.items():
                target = self.path / inside.lstrip("/")
                target.mkdir(parents=True, exist_ok=True)
                quoted = f"{shlex.quote(str(host))} {shlex.quote(str(target))}"
                mounts.append(f"mount --bind {quoted}")
                if read_only:
                    mounts.append(f"mount -o remount,bind,ro {shlex.quote(str(target))}")
        for sub in ("proc", "dev"):
            (self.path / sub).mkdir(exist_ok=True)
        environment = " ".join(shlex.quote(f"{k}={v}") for k, v in sorted(env.items()))
        command = " ".join(shlex.quote(a) for a in argv)
        script = " && ".join(
            [
                "set -e",
                *mounts,
                f"exec env -i {environment} chroot {shlex.quote(str(self.path))} {command}",
            ]
        )
        return subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            capture_output=True,
            text=True,
            check=False,
        )


def _pins_key(lock: PackagesLock) -> str:
    digest = hashlib.sha256(lock.architecture.encode())
    for pin in sorted(lock.build_debs, key=lambda p: p.name):
        digest.update(f"\0{pin.name}={pin.version}:{pin.sha256}".encode())
    return digest.hexdigest()[:24]


def build_root(lock: PackagesLock, cache: Path, log: list[str]) -> BuildRoot:
    """The cached build root for ``lock.build_debs``, unpacked first when absent."""
    if not lock.build_debs:
        raise EmulationError(
            f"the {lock.architecture} lock pins no build_debs: run "
            f"`portcullis-release image lock --arch {lock.architecture}`"
        )
    ensure_binfmt(lock.architecture)
    key = _pins_key(lock)
    base = cache / f"buildroot-{lock.architecture}"
    path = base / key
    if (path / _DONE).is_file():
        return BuildRoot(path, lock.architecture, key)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    debs.prefetch(lock.build_debs, cache)
    for pin in sorted(lock.build_debs, key=lambda p: p.name):
        debs.extract(debs.fetch(pin, cache), path)
    root = BuildRoot(path, lock.architecture, key)
    # PyInstaller asks `ldconfig -p` where libraries are; maintainer scripts never ran, so
    # the cache is built here, by the root's own (emulated) ldconfig.
    proc = root.run(["/sbin/ldconfig"], env={"PATH": BUILD_ROOT_PATH})
    if proc.returncode != 0:
        raise EmulationError(
            f"running the {lock.architecture} build root's ldconfig under qemu failed "
            f"({proc.returncode}): {proc.stderr.strip()}"
        )
    (path / _DONE).write_text(key + "\n", encoding="ascii")
    for old in base.iterdir():
        if old.name != key:
            shutil.rmtree(old, ignore_errors=True)
    log.append(f"{lock.architecture} build root unpacked from {len(lock.build_debs)} packages")
    return root


def platform_tags(architecture: str) -> list[str]:
    """pip ``--platform`` values for wheels that run on bookworm's glibc on ``architecture``.

    pip expands none of the ``manylinux_2_X`` tags to older ones, so every one is listed.
    """
    machine = _WHEEL_MACHINE.get(architecture)
    if machine is None:
        raise EmulationError(f"no wheel platform known for architecture {architecture!r}")
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(GLIBC_MINOR, 16, -1)]
    return [*tags, f"manylinux2014_{machine}", f"linux_{machine}"]


def install_wheels(
    pip_python: Path, lock_file: Path, target: Path, architecture: str, python_version: str
) -> None:
    """Install every locked distribution's ``architecture`` wheel into ``target``.

    Binary wheels only (building an sdist would need the emulated compiler), hashes required.
    """
    cmd = [
        str(pip_python),
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        "--no-deps",
        "--require-hashes",
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        python_version,
        "--abi",
        "cp" + python_version.replace(".", ""),
        "--abi",
        "abi3",
        "--abi",
        "none",
        "--target",
        str(target),
        "-r",
        str(lock_file),
    ]
    for tag in platform_tags(architecture):
        cmd += ["--platform", tag]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        tail = "\n".join(
            line
            for line in (proc.stderr or proc.stdout).strip().splitlines()[-20:]
            if "is ignored" not in line
        )
        raise EmulationError(f"installing the {architecture} wheels of {lock_file} failed:\n{tail}")


def build_root_python_version(root: BuildRoot) -> str:
    """``3.11`` for the build root's interpreter (the wheels must match it)."""
    proc = root.run(
        [
            BUILD_ROOT_PYTHON,
            "-c",
            "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')",
        ],
        env={"PATH": BUILD_ROOT_PATH},
    )
    if proc.returncode != 0:
        raise EmulationError(
            f"the {root.architecture} Python does not run under qemu: {proc.stderr.strip()}"
        )
    return proc.stdout.strip()


def fipsinstall(root: BuildRoot, scratch: Path) -> Callable[[Path, Path], None]:
    """A ``fips_provider.assemble_bundle`` hook running the build root's openssl under qemu.

    The module's self-tests thus run on the architecture it was compiled for.
    """

    def run(fips_so: Path, module_cnf: Path) -> None:
        work = scratch / "fipsinstall"
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        shutil.copyfile(fips_so, work / "fips.so")
        proc = root.run(
            [
                "/usr/bin/openssl",
                "fipsinstall",
                "-module",
                "/fipsinstall/fips.so",
                "-out",
                "/fipsinstall/fipsmodule.cnf",
                "-self_test_onload",
            ],
            env={"PATH": BUILD_ROOT_PATH},
            writable={work: "/fipsinstall"},
        )
        if proc.returncode != 0:
            raise FipsBuildError(
                f"openssl fipsinstall ({root.architecture}, under qemu) failed: "
                f"{proc.stderr.strip()}"
            )
        shutil.copyfile(work / "fipsmodule.cnf", module_cnf)

    return run
