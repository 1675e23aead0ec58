"""Build the OpenSSL FIPS provider (``fips.so``) from Debian's ``openssl`` source package.

Debian ships no FIPS provider, so the image carries one built here from the signed source
package (``apt-get source`` checks it against the signed Sources index), with Debian's
patches applied. Only ``providers/fips.so`` is compiled (about 40 s on two cores). The build
is byte-reproducible when ``SOURCE_DATE_EPOCH`` is fixed, so it is set from the source's own
changelog rather than from the commit; the result must match the sha256 pinned in
``packages.lock`` or the build stops. The provider is cached per source version.

For another architecture (arm64) the same source is cross-compiled with Debian's
``gcc-<triplet>`` (seconds, where compiling under emulation would take many minutes); the
cross compiler's version is part of what the pin fixes. Its ``fipsinstall`` (which loads the
module and runs its self-tests) runs the target's own ``openssl`` under qemu, via the
``fipsinstall`` hook of ``assemble_bundle``.

Honest wording: this is a FIPS-capable OpenSSL 3.0.x provider built from Debian's source, not
the CMVP-validated module (see docs/fips.md).

The *bundle* handed to PyInstaller holds the OpenSSL config, ``fipsmodule.cnf`` (from
``openssl fipsinstall -self_test_onload`` so the known-answer tests run at every load, on any
machine), a ``provider.json`` with the pin, and three identical copies of ``fips.so``: one per
OpenSSL library in the process (the stdlib's, the one inside ``cryptography``, and libpq's in
the psycopg wheel), because one loaded file cannot serve two libraries (see ``portcullis.fips``).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from portcullis_release.build.packages_lock import FipsProviderPin

# Names inside the bundle; portcullis.fips reads the same layout.
BUNDLE_CONFIG = "openssl.cnf"
BUNDLE_MODULE_CNF = "fipsmodule.cnf"
BUNDLE_PROVIDER_JSON = "provider.json"
BUNDLE_MODULE_DIRS = ("modules/stdlib", "modules/cryptography", "modules/late")

_OPENSSL_TARGETS = {"amd64": "linux-x86_64", "arm64": "linux-aarch64"}
_MACHINE_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
# GNU triplet of each architecture: the prefix of Debian's cross toolchain (gcc-<triplet>).
GNU_TRIPLETS = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}


def machine_architecture() -> str:
    """The dpkg name of the architecture this process runs on."""
    return _MACHINE_ARCH.get(platform.machine(), platform.machine())


class FipsBuildError(RuntimeError):
    """The provider could not be built or does not match its pin."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise FipsBuildError(f"{' '.join(cmd)} failed ({proc.returncode}):\n" + "\n".join(tail))


def _compile(pin: FipsProviderPin, out: Path, log: list[str], architecture: str) -> None:
    """Fetch the source package, apply Debian's patches, and compile only fips.so."""
    target = _OPENSSL_TARGETS.get(architecture)
    if target is None:
        raise FipsBuildError(f"no OpenSSL target known for architecture {architecture!r}")
    configure = ["./Configure", target, "enable-fips", "no-tests", "shared"]
    if architecture != machine_architecture():
        triplet = GNU_TRIPLETS[architecture]
        if shutil.which(f"{triplet}-gcc") is None:
            raise FipsBuildError(
                f"cross-compiling fips.so for {architecture} needs {triplet}-gcc: "
                f"apt-get install gcc-{triplet}"
            )
        configure.append(f"--cross-compile-prefix={triplet}-")
    with tempfile.TemporaryDirectory(prefix="portcullis-fips-") as tmp:
        work = Path(tmp)
        log.append(f"fetching {pin.source_package}={pin.source_version} source package")
        try:
            _run(
                [
                    "apt-get",
                    "source",
                    "--download-only",
                    f"{pin.source_package}={pin.source_version}",
                ],
                work,
            )
        except FipsBuildError as exc:
            raise FipsBuildError(
                f"source package {pin.source_package}={pin.source_version} is not available "
                "from the configured deb-src mirrors (has it been superseded? update "
                f"fips_provider.source_version in packages.lock): {exc}"
            ) from exc
        dsc = next(work.glob("*.dsc"))
        src = work / "src"
        _run(["dpkg-source", "--no-check", "-x", dsc.name, str(src)], work)
        epoch = subprocess.run(
            ["dpkg-parsechangelog", "-STimestamp"],
            cwd=src,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        env = dict(os.environ, SOURCE_DATE_EPOCH=epoch, LC_ALL="C", TZ="UTC")
        log.append(f"compiling providers/fips.so ({target}, SOURCE_DATE_EPOCH={epoch})")
        _run(configure, src, env)
        jobs = str(os.cpu_count() or 1)
        _run(["make", "-s", f"-j{jobs}", "build_generated"], src, env)
        _run(["make", "-s", f"-j{jobs}", "providers/fips.so"], src, env)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_suffix(".partial")
        shutil.copyfile(src / "providers" / "fips.so", partial)
        partial.chmod(0o644)
        partial.replace(out)


def provider_path(cache: Path, source_version: str, architecture: str | None = None) -> Path:
    """Where the built ``fips.so`` of a source version is cached (per foreign architecture)."""
    base = cache / "fips-provider" / source_version
    if architecture is None or architecture == machine_architecture():
        return base / "fips.so"
    return base / architecture / "fips.so"


def build_fips_so(
    pin: FipsProviderPin, cache: Path, log: list[str], architecture: str | None = None
) -> Path:
    """Return the cached ``fips.so`` for ``pin``, building it first when absent.

    ``architecture`` defaults to the machine's; another one is cross-compiled.
    Raises FipsBuildError when the built module does not hash to the pinned value: a changed
    compiler or source must be an explicit decision (update the pin), never a silent drift.
    """
    arch = architecture or machine_architecture()
    out = provider_path(cache, pin.source_version, arch)
    if not out.exists():
        _compile(pin, out, log, arch)
    actual = sha256_file(out)
    if actual != pin.fips_so_sha256:
        raise FipsBuildError(
            f"fips.so ({arch}) built from {pin.source_package} {pin.source_version} has sha256 "
            f"{actual}, "
            f"but packages.lock pins fips_provider.fips_so_sha256 = {pin.fips_so_sha256}"
        )
    log.append(f"fips.so {pin.upstream_version} ({arch}) sha256 {actual}")
    return out


def host_fipsinstall(fips_so: Path, module_cnf: Path) -> None:
    """``openssl fipsinstall`` with the machine's openssl (the module must be native)."""
    proc = subprocess.run(
        [
            "openssl",
            "fipsinstall",
            "-module",
            str(fips_so),
            "-out",
            str(module_cnf),
            "-self_test_onload",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise FipsBuildError(f"openssl fipsinstall failed: {proc.stderr.strip()}")


def assemble_bundle(
    pin: FipsProviderPin,
    fips_so: Path,
    openssl_cnf: Path,
    dest: Path,
    fipsinstall: Callable[[Path, Path], None] = host_fipsinstall,
) -> Path:
    """Write the provider bundle directory that the frozen server ships as data.

    ``fipsinstall(module, out)`` loads the module, runs its self-tests and writes
    ``fipsmodule.cnf``; a foreign module needs one that runs the target's openssl (emulated).
    """
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    module_cnf = dest / BUNDLE_MODULE_CNF
    fipsinstall(fips_so, module_cnf)
    shutil.copyfile(openssl_cnf, dest / BUNDLE_CONFIG)
    for sub in BUNDLE_MODULE_DIRS:
        (dest / sub).mkdir(parents=True)
        shutil.copyfile(fips_so, dest / sub / "fips.so")
    provider = {
        "source_package": pin.source_package,
        "source_version": pin.source_version,
        "version": pin.upstream_version,
        "fips_so_sha256": pin.fips_so_sha256,
    }
    (dest / BUNDLE_PROVIDER_JSON).write_text(json.dumps(provider, indent=2, sort_keys=True) + "\n")
    for path in dest.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dest


def _same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all(
        (a / rel).read_bytes() == (b / rel).read_bytes() for rel in files_a
    )


def publish_bundle(bundle: Path, dest: Path) -> None:
    """Leave a copy of the bundle at a stable path for FIPS mode outside the image.

    ``PORTCULLIS_FIPS_BUNDLE=<dest>`` then runs the venv server in FIPS mode. An identical copy
    is left alone (other processes may be using it); a different one is swapped out whole.
    """
    if dest.is_dir() and _same_tree(bundle, dest):
        return
    staging = dest.with_name(dest.name + ".new")
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(bundle, staging)
    retired = dest.with_name(dest.name + ".old")
    if retired.exists():
        shutil.rmtree(retired)
    if dest.exists():
        dest.rename(retired)
    staging.rename(dest)
    if retired.exists():
        shutil.rmtree(retired)
