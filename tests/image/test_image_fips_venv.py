"""FIPS mode outside the image: the venv server with the provider bundle `make image` leaves.

Each case runs in a fresh interpreter, because FIPS mode is decided when OpenSSL first loads.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.image import REPO

if TYPE_CHECKING:
    from tests.support.postgres import PostgresCluster

BUNDLE = REPO / ".cache" / "image" / "fips-bundle"

_STATUS = """
import json
from portcullis import fips
fips.configure_environment()
fips.enforce_or_exit()
print(json.dumps(fips.status()))
"""


def _run(
    code: str,
    bundle: Path | None = BUNDLE,
    fips: str = "1",
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENSSL_", "PORTCULLIS_"))}
    env.update(extra_env or {})
    env["PORTCULLIS_FIPS"] = fips
    if bundle is not None:
        env["PORTCULLIS_FIPS_BUNDLE"] = str(bundle)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def bundle() -> Path:
    assert (BUNDLE / "provider.json").is_file(), f"{BUNDLE} missing: `make image` writes it"
    return BUNDLE


def test_self_check_passes_with_the_pinned_provider(bundle: Path) -> None:
    proc = _run(_STATUS, bundle)
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    pinned = json.loads((bundle / "provider.json").read_text())["fips_so_sha256"]
    assert status["enabled"] is True
    assert status["fips_so_sha256"] == pinned
    assert status["fips_so_sha256_ok"] is True
    assert status["validated_module"] is False
    assert proc.stderr == ""


def test_non_approved_algorithms_and_builtin_fallbacks_are_refused(bundle: Path) -> None:
    code = (
        _STATUS
        + """
import hashlib, sys
from cryptography.hazmat.primitives.asymmetric import x25519, ec
from cryptography.hazmat.primitives import hashes
results = {}
for name in ("md5", "blake2b", "sha1", "sha256", "sha3_256"):
    try:
        hashlib.new(name, b"x"); results[name] = "ok"
    except ValueError:
        results[name] = "refused"
try:
    hashlib.md5(b"etag", usedforsecurity=False); results["md5-non-security"] = "ok"
except ValueError:
    results["md5-non-security"] = "refused"
try:
    import _md5; results["_md5"] = "ok"
except ImportError:
    results["_md5"] = "refused"
try:
    x25519.X25519PrivateKey.generate(); results["x25519"] = "ok"
except Exception:
    results["x25519"] = "refused"
key = ec.generate_private_key(ec.SECP384R1())
key.sign(b"m", ec.ECDSA(hashes.SHA384())); results["es384"] = "ok"
print(json.dumps(results))
"""
    )
    proc = _run(code, bundle)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.splitlines()[-1])
    assert results == {
        "md5": "refused",
        "blake2b": "refused",
        "sha1": "ok",
        "sha256": "ok",
        "sha3_256": "ok",
        "md5-non-security": "ok",
        "_md5": "refused",
        "x25519": "refused",
        "es384": "ok",
    }


def test_tampered_provider_exits_78_with_one_line(bundle: Path, tmp_path: Path) -> None:
    broken = tmp_path / "bundle"
    shutil.copytree(bundle, broken)
    with (broken / "modules/stdlib/fips.so").open("ab") as fh:
        fh.write(b"\0")
    proc = _run(_STATUS, broken)
    assert proc.returncode == 78
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "modules/stdlib/fips.so has sha256" in lines[0]


def test_provider_swapped_with_matching_pin_still_fails_closed(
    bundle: Path, tmp_path: Path
) -> None:
    """A changed fips.so whose pin was updated too fails the provider's own integrity test."""
    broken = tmp_path / "bundle"
    shutil.copytree(bundle, broken)
    for sub in ("stdlib", "cryptography"):
        with (broken / "modules" / sub / "fips.so").open("ab") as fh:
            fh.write(b"\0")
    import hashlib

    digest = hashlib.sha256((broken / "modules/stdlib/fips.so").read_bytes()).hexdigest()
    provider = json.loads((broken / "provider.json").read_text())
    provider["fips_so_sha256"] = digest
    (broken / "provider.json").write_text(json.dumps(provider))
    proc = _run(_STATUS, broken)
    assert proc.returncode == 78, proc.stdout
    assert proc.stderr.startswith("portcullis: FIPS self-check failed:")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_openssl_loaded_before_configuration_fails_closed(bundle: Path) -> None:
    proc = _run("import ssl\n" + _STATUS, bundle)
    assert proc.returncode == 78
    assert "after OpenSSL was loaded" in proc.stderr


def test_missing_bundle_fails_closed() -> None:
    proc = _run(_STATUS, bundle=None)
    assert proc.returncode == 78
    assert "PORTCULLIS_FIPS_BUNDLE" in proc.stderr


def test_fips_off_changes_nothing(bundle: Path) -> None:
    code = _STATUS + "import hashlib; hashlib.md5(b'x'); print('md5 ok')"
    proc = _run(code, bundle, fips="0")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[0])["enabled"] is False
    assert proc.stdout.splitlines()[1] == "md5 ok"


# Connects with the parameters in $TEST_PG_PARAMS; prints TLS version and cipher as the server
# saw them, then which fips.so copies are mapped.
_PG_TLS_PROBE = """
import os, psycopg, re
conn = psycopg.connect(**json.loads(os.environ["TEST_PG_PARAMS"]))
row = conn.execute(
    "SELECT version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
).fetchone()
print(row[0], row[1])
maps = open("/proc/self/maps").read()
print(sorted(set(re.findall(r"modules/(\\w+)/fips\\.so", maps))))
"""


def _verify_full_params(cluster: PostgresCluster) -> dict[str, Any]:
    """libpq parameters for a TLS connection to ``cluster`` that verifies its certificate."""
    return {
        "host": "127.0.0.1",
        "port": cluster.port,
        "user": cluster.config("postgres")["user"],
        "password": cluster.password,
        "dbname": "postgres",
        "sslmode": "verify-full",
        "sslrootcert": str(cluster.ca_file),
    }


def test_postgres_tls_works_in_fips_mode(bundle: Path) -> None:
    """libpq's own OpenSSL (psycopg wheel) gets a working provider: its own fips.so copy."""
    from tests.support.postgres import start_cluster

    cluster = start_cluster()
    try:
        params = _verify_full_params(cluster)
        code = _STATUS + _PG_TLS_PROBE
        proc = _run(code, bundle, extra_env={"TEST_PG_PARAMS": json.dumps(params)})
    finally:
        cluster.stop()
    assert proc.returncode == 0, proc.stderr
    protocol, cipher = proc.stdout.splitlines()[1].split()
    assert protocol in ("TLSv1.2", "TLSv1.3")
    assert "GCM" in cipher
    assert proc.stdout.splitlines()[2] == "['cryptography', 'late', 'stdlib']"


def test_signing_keys_are_generated_inside_the_provider(bundle: Path) -> None:
    code = (
        _STATUS
        + """
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
out = {}
for alg in ("RS256", "PS256", "ES256", "ES384"):
    key = serialization.load_pem_private_key(fips.generate_private_key_pem(alg), None)
    if isinstance(key, rsa.RSAPrivateKey):
        sig = key.sign(b"m", padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
        out[alg] = f"RSA-{key.key_size}"
    else:
        key.sign(b"m", ec.ECDSA(hashes.SHA256()))
        out[alg] = key.curve.name
# The provider itself refuses what it does not approve: proof the keygen runs inside it.
for kind, parameter in (("RSA", 1024), ("EC", "secp256k1")):
    try:
        fips._provider_keygen_der(kind, parameter)
        out[f"{kind}-{parameter}"] = "generated"
    except fips.ProviderKeygenError:
        out[f"{kind}-{parameter}"] = "refused"
print(json.dumps(out))
"""
    )
    proc = _run(code, bundle)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == {
        "RS256": "RSA-2048",
        "PS256": "RSA-2048",
        "ES256": "secp256r1",
        "ES384": "secp384r1",
        "RSA-1024": "refused",
        "EC-secp256k1": "refused",
    }


def _bundle_without_late_copy(bundle: Path, tmp_path: Path) -> Path:
    """The bundle as the frozen image ships it: no provider copy for late OpenSSL users."""
    frozen_like = tmp_path / "bundle"
    shutil.copytree(bundle, frozen_like)
    shutil.rmtree(frozen_like / "modules" / "late")
    return frozen_like


def test_self_check_passes_without_the_late_copy(bundle: Path, tmp_path: Path) -> None:
    proc = _run(_STATUS, _bundle_without_late_copy(bundle, tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["fips_so_sha256_ok"] is True


def test_late_copy_directory_without_its_provider_exits_78(bundle: Path, tmp_path: Path) -> None:
    """Only an absent directory is the image's layout; a late directory missing its fips.so
    is a damaged bundle."""
    broken = tmp_path / "bundle"
    shutil.copytree(bundle, broken)
    (broken / "modules" / "late" / "fips.so").unlink()
    proc = _run(_STATUS, broken)
    assert proc.returncode == 78
    assert "modules/late/fips.so is missing" in proc.stderr


def test_late_openssl_without_its_copy_fails_closed(bundle: Path, tmp_path: Path) -> None:
    """Without the late copy, an OpenSSL library that initialises after the self-check (the
    venv's psycopg-binary bundles its own) cannot load any provider: its TLS connection
    fails, it never runs outside the FIPS provider."""
    from tests.support.postgres import start_cluster

    cluster = start_cluster()
    try:
        params = _verify_full_params(cluster)
        proc = _run(
            _STATUS + _PG_TLS_PROBE,
            _bundle_without_late_copy(bundle, tmp_path),
            extra_env={"TEST_PG_PARAMS": json.dumps(params)},
        )
    finally:
        cluster.stop()
    assert proc.returncode != 0, proc.stdout
    # libpq's OpenSSL found no provider to fetch from ("library has no ciphers").
    assert "could not create SSL context" in proc.stderr, proc.stderr[-2000:]
    assert len(proc.stdout.splitlines()) == 1  # the status line, no TLS session
