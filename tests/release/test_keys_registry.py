"""Key formats, DSSE, signature payloads and registry error handling."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from portcullis_release import oci
from portcullis_release.attest import cosign_format, cosign_keys, dsse
from portcullis_release.distribute.registry import (
    AuthenticationError,
    AuthorizationError,
    DockerAuth,
    Reference,
    RegistryClient,
    RegistryError,
    RegistryUnreachableError,
)

from tests.release.conftest import KeyPair, cosign_env
from tests.support.registry import Registry


def test_cosign_generated_key_is_read_and_ours_is_read_by_cosign(
    tmp_path: Path, cosign: Path, registry: Registry, keypair: KeyPair
) -> None:
    env = cosign_env(tmp_path, registry, password="pw-from-cosign")
    made = subprocess.run(
        [str(cosign), "generate-key-pair"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    key = cosign_keys.load_private_key(tmp_path / "cosign.key", b"pw-from-cosign")
    assert cosign_keys.public_pem(key) == (tmp_path / "cosign.pub").read_bytes()

    # cosign signs a blob with OUR key file and verifies it with our public key.
    blob = tmp_path / "blob"
    blob.write_bytes(b"hello")
    env["COSIGN_PASSWORD"] = keypair.password
    signed = subprocess.run(
        [
            str(cosign),
            "sign-blob",
            "--key",
            str(keypair.private),
            "--tlog-upload=false",
            "-y",
            "--output-signature",
            str(tmp_path / "blob.sig"),
            str(blob),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert signed.returncode == 0, signed.stderr
    checked = subprocess.run(
        [
            str(cosign),
            "verify-blob",
            "--key",
            str(keypair.public),
            "--insecure-ignore-tlog=true",
            "--signature",
            str(tmp_path / "blob.sig"),
            str(blob),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr


def test_wrong_password_is_reported(keypair: KeyPair) -> None:
    with pytest.raises(cosign_keys.KeyFileError, match="wrong password"):
        cosign_keys.load_private_key(keypair.private, b"not the password")


def test_pem_keys_plain_and_encrypted(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    plain = tmp_path / "plain.pem"
    plain.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert cosign_keys.load_private_key(plain, None).private_numbers() == key.private_numbers()
    enc = tmp_path / "enc.pem"
    enc.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    assert cosign_keys.load_private_key(enc, b"pw").private_numbers() == key.private_numbers()
    with pytest.raises(cosign_keys.KeyFileError, match="COSIGN_PASSWORD"):
        cosign_keys.load_private_key(enc, None)
    rsa_like = tmp_path / "p384.pem"
    rsa_like.write_bytes(
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(cosign_keys.KeyFileError, match="not P-256"):
        cosign_keys.load_private_key(rsa_like, None)


def test_cosign_key_format_is_refused_in_fips_mode(
    keypair: KeyPair, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(cosign_keys, "fips_mode_enabled", lambda: True)
    with pytest.raises(cosign_keys.KeyFileError, match="not FIPS-approved"):
        cosign_keys.load_private_key(keypair.private, keypair.password.encode())
    with pytest.raises(cosign_keys.KeyFileError, match="FIPS mode"):
        cosign_keys.generate_key_pair(tmp_path, b"x")
    # A PEM key still works in FIPS mode.
    key_path, _ = cosign_keys.generate_key_pair(tmp_path, b"x", pem=True)
    assert cosign_keys.load_private_key(key_path, b"x")


def test_dsse_pae_and_tamper_detection() -> None:
    assert dsse.pae("t", b"ab") == b"DSSEv1 1 t 2 ab"
    key = ec.generate_private_key(ec.SECP256R1())
    statement = {"_type": "https://in-toto.io/Statement/v1", "subject": []}
    raw = dsse.sign_envelope(key, json.dumps(statement).encode())
    env = dsse.Envelope.parse(raw)
    assert env.verified_by(key.public_key())
    assert not env.verified_by(ec.generate_private_key(ec.SECP256R1()).public_key())
    doc = json.loads(raw)
    doc["payload"] = base64.b64encode(b'{"_type":"forged"}').decode()
    assert not dsse.Envelope.parse(json.dumps(doc).encode()).verified_by(key.public_key())
    # Deterministic signing: same input, same envelope (so re-publishing is a no-op).
    assert dsse.sign_envelope(key, b"x") == dsse.sign_envelope(key, b"x")


def test_simple_signing_payload_matches_cosign_bytes() -> None:
    digest = "sha256:" + "ab" * 32
    assert cosign_format.simple_signing_payload("127.0.0.1:5000/demo/app", digest) == (
        b'{"critical":{"identity":{"docker-reference":"127.0.0.1:5000/demo/app"},'
        b'"image":{"docker-manifest-digest":"' + digest.encode() + b'"},'
        b'"type":"cosign container image signature"},"optional":null}'
    )
    layer = cosign_format.Layer(cosign_format.SIMPLESIGNING_MEDIA_TYPE, b"{}", {})
    config = next(iter(cosign_format.attachment_artifact([layer]).blobs.values()))
    assert config == (
        b'{"architecture":"","created":"0001-01-01T00:00:00Z","history":[{"created":'
        b'"0001-01-01T00:00:00Z"}],"os":"","rootfs":{"type":"layers","diff_ids":['
        b'"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"]},'
        b'"config":{}}'
    )


def test_reference_parsing() -> None:
    ref = Reference.parse("127.0.0.1:5000/a/b:1.0@sha256:" + "0" * 64)
    assert (ref.host, ref.repository, ref.tag) == ("127.0.0.1:5000", "a/b", "1.0")
    with pytest.raises(ValueError, match="registry host"):
        Reference.parse("library/busybox:latest")
    with pytest.raises(ValueError, match="invalid repository"):
        Reference.parse("example.test/UPPER")


def test_docker_config_errors_name_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "auth.json"
    bad.write_text(json.dumps({"auths": {"h:1": {"auth": "bm9jb2xvbg=="}}}))  # "nocolon"
    with pytest.raises(RegistryError, match=r"auths.h:1.auth does not decode"):
        DockerAuth.from_file(bad)
    bad.write_text("{}")
    with pytest.raises(RegistryError, match="no 'auths'"):
        DockerAuth.from_file(bad)


def test_registry_auth_failures_are_clear(registry: Registry, tmp_path: Path) -> None:
    anonymous = RegistryClient(registry.host)
    with pytest.raises(AuthenticationError, match="has none for"):
        anonymous.check_access()
    wrong_file = tmp_path / "wrong.json"
    wrong_file.write_text(
        json.dumps({"auths": {registry.host: {"username": registry.username, "password": "wrong"}}})
    )
    wrong = DockerAuth.from_file(wrong_file)
    with pytest.raises(AuthenticationError, match="HTTP 401") as exc:
        RegistryClient(registry.host, wrong).check_access()
    assert "wrong" not in str(exc.value)  # the password never appears in messages
    RegistryClient(registry.host, DockerAuth.from_file(registry.auth_file)).check_access()


def test_network_failure_is_reported() -> None:
    client = RegistryClient("127.0.0.1:9", timeout=2)  # discard port: nothing listens
    with pytest.raises(RegistryUnreachableError, match="cannot reach registry"):
        client.check_access()


def test_bearer_token_flow_and_403() -> None:
    """A token-service registry (Bearer challenge): token fetched with Basic credentials, then
    a push denied by policy comes back as AuthorizationError."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path} {request.headers.get('authorization')}")
        if request.url.path == "/token":
            assert request.url.params["scope"].startswith("repository:r:")
            return httpx.Response(200, json={"token": "tok"})
        if request.headers.get("authorization") != "Bearer tok":
            return httpx.Response(
                401,
                headers={
                    "www-authenticate": 'Bearer realm="http://reg.test/token",service="reg.test"'
                },
            )
        if request.method == "POST":
            return httpx.Response(403)
        return httpx.Response(200, headers={"docker-content-digest": "sha256:" + "1" * 64})

    auth = DockerAuth.from_config({"auths": {"reg.test": {"username": "u", "password": "p"}}})
    client = RegistryClient("reg.test", auth, plain_http=True)
    client._http = httpx.Client(transport=httpx.MockTransport(handler))
    assert client.manifest_digest("r", "latest") == "sha256:" + "1" * 64
    assert seen[1].startswith("GET /token Basic ")
    with pytest.raises(AuthorizationError, match="HTTP 403"):
        client.push_blob("r", oci.sha256_digest(b"data"), b"data")
