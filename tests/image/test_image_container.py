"""The image run for real under runc: hardened, FIPS mode on, serving an OIDC login."""

from __future__ import annotations

import html
import json
import re
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import testinfra

from tests.support.image import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    CLIENT_ID,
    CLIENT_SECRET,
    NONROOT,
    REDIRECT_URI,
    Container,
    StartFn,
    demo_config,
    free_port,
    proc_status,
    wait_ready,
)

pytestmark = pytest.mark.integration

FIPS_DIR = "/opt/portcullis/_internal/portcullis_fips"


def _ready(issuer: Container) -> float:
    return wait_ready(issuer, f"http://127.0.0.1:{issuer.ports['telemetry']}/healthz/ready")


def test_container_runs_hardened_as_nonroot_without_capabilities(issuer: Container) -> None:
    _ready(issuer)
    pid = issuer.pid()
    host = testinfra.get_host("local://")
    process = next(p for p in host.process.filter(comm="portcullis") if p.pid == pid)
    assert (process.euid, process.egid) == (NONROOT, NONROOT)
    status = proc_status(pid)
    for capability_set in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[capability_set], 16) == 0, capability_set
    assert status["NoNewPrivs"] == "1"
    assert status["Uid"].split() == [str(NONROOT)] * 4
    # PID 1 of its own PID namespace.
    assert status["NSpid"].split()[-1] == "1"
    mountinfo = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    root_mount = next(line for line in mountinfo if line.split()[4] == "/")
    assert "ro" in root_mount.split()[5].split(",")
    for port in issuer.ports.values():
        assert host.socket(f"tcp://127.0.0.1:{port}").is_listening
    # The FIPS provider is mapped from inside the bundle, both copies.
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert f"{FIPS_DIR}/modules/stdlib/fips.so" in maps
    assert f"{FIPS_DIR}/modules/cryptography/fips.so" in maps
    # The stdlib's OpenSSL is the rootfs's pinned libssl3, not a copy bundled from the builder.
    assert "/usr/lib/x86_64-linux-gnu/libssl.so.3" in maps
    assert "/usr/lib/x86_64-linux-gnu/libcrypto.so.3" in maps
    assert "/opt/portcullis/_internal/libssl.so.3" not in maps


def test_healthz_reports_fips_mode_and_the_pinned_provider(issuer: Container) -> None:
    _ready(issuer)
    from portcullis_release.build.packages_lock import load_lock

    from tests.support.image import REPO

    pin = load_lock(REPO / "images/portcullis/packages.lock").fips_provider
    health = httpx.get(f"http://127.0.0.1:{issuer.ports['telemetry']}/healthz/ready", timeout=5)
    fips = health.json()["fips"]
    assert fips["enabled"] is True
    assert fips["provider_version"] == pin.upstream_version
    assert fips["fips_so_sha256"] == pin.fips_so_sha256
    assert fips["validated_module"] is False


def test_static_and_theme_files_are_served_in_fips_mode(issuer: Container) -> None:
    """Starlette's file responses hash an ETag with md5(usedforsecurity=False)."""
    _ready(issuer)
    base = f"http://127.0.0.1:{issuer.ports['web']}/dex"
    login = httpx.get(f"{base}/auth/local/login", timeout=5)
    stylesheets = re.findall(r'href="([^"]+\.css)"', login.text)
    assert stylesheets, login.text[:300]
    for href in stylesheets:
        response = httpx.get(str(login.url.join(href)), timeout=5)
        assert response.status_code == 200, href
        assert response.headers["etag"]


def test_discovery_keys_and_password_login_through_the_image(issuer: Container) -> None:
    _ready(issuer)
    base = f"http://127.0.0.1:{issuer.ports['web']}/dex"
    discovery = httpx.get(f"{base}/.well-known/openid-configuration", timeout=5).json()
    assert discovery["issuer"] == base
    assert discovery["jwks_uri"] == f"{base}/keys"
    jwks = httpx.get(discovery["jwks_uri"], timeout=5).json()
    assert jwks["keys"], "no signing keys published"
    assert {key["alg"] for key in jwks["keys"]} <= {"RS256", "PS256", "ES256", "ES384"}
    token = httpx.post(
        discovery["token_endpoint"],
        data={
            "grant_type": "password",
            "username": ADMIN_EMAIL,
            "password": ADMIN_PASSWORD,
            "scope": "openid email",
        },
        auth=(CLIENT_ID, CLIENT_SECRET),
        timeout=10,
    )
    assert token.status_code == 200, token.text
    claims = _jwt_claims(token.json()["id_token"])
    assert claims["iss"] == base
    assert claims["email"] == ADMIN_EMAIL
    wrong = httpx.post(
        discovery["token_endpoint"],
        data={"grant_type": "password", "username": ADMIN_EMAIL, "password": "nope"},
        auth=(CLIENT_ID, CLIENT_SECRET),
        timeout=10,
    )
    assert wrong.status_code in (400, 401)


def test_authorization_code_login_through_the_image(issuer: Container) -> None:
    _ready(issuer)
    base = f"http://127.0.0.1:{issuer.ports['web']}/dex"
    with httpx.Client(base_url=base, timeout=10, follow_redirects=False) as client:
        response = client.get(
            "/auth",
            params={
                "client_id": CLIENT_ID,
                "redirect_uri": REDIRECT_URI,
                "response_type": "code",
                "scope": "openid email",
                "state": "s-123",
            },
        )
        # Follow the issuer's own redirects to the password form.
        for _ in range(5):
            if response.status_code not in (302, 303):
                break
            response = client.get(str(response.url.join(response.headers["location"])))
        assert response.status_code == 200, response.text[:500]
        form = _LoginForm()
        form.feed(response.text)
        form_url = (
            str(response.url.join(html.unescape(form.action))) if form.action else str(response.url)
        )
        response = client.post(
            form_url, data={**form.hidden, "login": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
        )
        for _ in range(5):
            location = response.headers.get("location", "")
            if response.status_code not in (302, 303) or location.startswith(REDIRECT_URI):
                break
            response = client.get(str(response.url.join(location)))
        location = response.headers.get("location", "")
        assert location.startswith(REDIRECT_URI), (response.status_code, response.text[:500])
        query = parse_qs(urlsplit(location).query)
        assert query["state"] == ["s-123"]
        token = client.post(
            "/token",
            data={
                "grant_type": "authorization_code",
                "code": query["code"][0],
                "redirect_uri": REDIRECT_URI,
            },
            auth=(CLIENT_ID, CLIENT_SECRET),
        )
    assert token.status_code == 200, token.text
    assert _jwt_claims(token.json()["id_token"])["email"] == ADMIN_EMAIL


def test_sigterm_stops_the_container_cleanly(issuer: Container) -> None:
    _ready(issuer)
    started = time.monotonic()
    code = issuer.stop(timeout=20)
    assert code == 0, issuer.stderr()[-2000:]
    assert time.monotonic() - started < 10


def test_fips_self_check_passes_and_is_reported(run_container: StartFn) -> None:
    container = run_container(args=["/opt/portcullis/portcullis", "version", "--json"])
    assert container.wait(timeout=30) == 0, container.stderr()
    fips = json.loads(container.stdout())["fips"]
    assert fips["enabled"] is True
    assert fips["self_check"] == "passed"
    assert fips["fips_so_sha256_ok"] is True
    assert fips["provider_version"]


def test_tampered_fips_provider_makes_the_container_exit_78(
    run_container: StartFn, rootfs: Path, tmp_path: Path
) -> None:
    original = rootfs / FIPS_DIR.lstrip("/") / "modules/cryptography/fips.so"
    tampered = tmp_path / "fips.so"
    data = bytearray(original.read_bytes())
    index = data.find(b"OpenSSL FIPS Provider")
    assert index > 0
    data[index] ^= 0x20  # one flipped bit in a string: loads fine, fails its integrity pin
    tampered.write_bytes(bytes(data))
    container = run_container(
        args=["/opt/portcullis/portcullis", "serve", "/etc/portcullis/config.yaml"],
        extra_binds={f"{FIPS_DIR}/modules/cryptography/fips.so": tampered},
    )
    assert container.wait(timeout=30) == 78
    lines = container.stderr().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("portcullis: FIPS self-check failed:")
    assert "sha256" in lines[0]


def test_bcrypt_password_hash_is_refused_in_fips_mode(
    run_container: StartFn, tmp_path: Path
) -> None:
    config = tmp_path / "bcrypt.yaml"
    bcrypt_hash = "$2b$10$Vc9R39u3nJXVDBHXzlCa0OixeoMwCrcOGy44I2Sy8vRBI8FOG7GVa"
    config.write_text(demo_config(free_port(), free_port(), bcrypt_hash))
    config.chmod(0o644)
    container = run_container(config_file=config)
    assert container.wait(timeout=30) != 0
    assert "hash-password --pbkdf2" in container.stderr()


class _LoginForm(HTMLParser):
    """The password form's action and hidden fields (CSRF token, request id)."""

    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.hidden: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form" and not self.action:
            self.action = values.get("action", "")
        if tag == "input" and values.get("type") == "hidden" and values.get("name"):
            self.hidden[values["name"]] = values.get("value", "")


def _jwt_claims(token: str) -> dict[str, object]:
    import base64

    payload = token.split(".")[1]
    claims: dict[str, object] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def _self_signed(directory: Path) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    # Test key only: readable by the container's user 65532 through the read-only bind mount.
    key_path.chmod(0o644)
    return cert_path, key_path


def _handshake(port: int, cafile: Path, *, tls12_ciphers: str | None = None) -> tuple[str, str]:
    import socket
    import ssl

    context = ssl.create_default_context(cafile=str(cafile))
    if tls12_ciphers is not None:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(tls12_ciphers)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        version, cipher = tls.version(), tls.cipher()
        assert version is not None
        assert cipher is not None
        return version, cipher[0]


def test_https_in_fips_mode_offers_only_approved_tls(
    run_container: StartFn, admin_password_hash: str, tmp_path: Path
) -> None:
    import ssl

    from tests.support.image import TLS_CERT, TLS_KEY

    cert, key = _self_signed(tmp_path)
    web, telemetry = free_port(), free_port()
    config = tmp_path / "config.yaml"
    config.write_text(demo_config(web, telemetry, admin_password_hash, tls=True))
    config.chmod(0o644)
    container = run_container(config_file=config, extra_binds={TLS_CERT: cert, TLS_KEY: key})
    wait_ready(container, f"http://127.0.0.1:{telemetry}/healthz/ready")
    version, cipher = _handshake(web, cert)
    assert version in ("TLSv1.3", "TLSv1.2")
    assert "GCM" in cipher
    assert _handshake(web, cert, tls12_ciphers="ECDHE-ECDSA-AES128-GCM-SHA256") == (
        "TLSv1.2",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
    )
    with pytest.raises(ssl.SSLError):
        _handshake(web, cert, tls12_ciphers="ECDHE-ECDSA-CHACHA20-POLY1305")
    discovery = httpx.get(
        f"https://127.0.0.1:{web}/dex/.well-known/openid-configuration",
        verify=ssl.create_default_context(cafile=str(cert)),
    )
    assert discovery.json()["issuer"] == f"https://127.0.0.1:{web}/dex"


def test_several_workers_serve_and_stop_cleanly_as_pid_1(
    run_container: StartFn, admin_password_hash: str, tmp_path: Path
) -> None:
    """`serve --workers 2`: the frozen parent forks workers (FIPS state inherited), and as PID 1
    forwards SIGTERM to them and exits 0 once they have all stopped."""
    web, telemetry = free_port(), free_port()
    config = tmp_path / "config.yaml"
    config.write_text(demo_config(web, telemetry, admin_password_hash))
    config.chmod(0o644)
    container = run_container(
        args=[
            "/opt/portcullis/portcullis",
            "serve",
            "--workers",
            "2",
            "/etc/portcullis/config.yaml",
        ],
        config_file=config,
    )
    wait_ready(container, f"http://127.0.0.1:{telemetry}/healthz/ready")
    token = httpx.post(
        f"http://127.0.0.1:{web}/dex/token",
        data={
            "grant_type": "password",
            "username": ADMIN_EMAIL,
            "password": ADMIN_PASSWORD,
            "scope": "openid",
        },
        auth=(CLIENT_ID, CLIENT_SECRET),
        timeout=10,
    )
    assert token.status_code == 200, token.text
    pid = container.pid()
    deadline = time.monotonic() + 10
    while True:  # the parent may still be forking the second worker when the first is ready
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if len(children) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(children) == 2, container.stderr()[-2000:]
    for child in children:
        status = proc_status(int(child))
        assert status["Uid"].split() == [str(NONROOT)] * 4
        assert int(status["CapEff"], 16) == 0
    assert container.stop(timeout=20) == 0, container.stderr()[-2000:]
