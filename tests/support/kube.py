"""TLS material for the Kubernetes tests (loopback serving certificates made per session)."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import json
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class ServingCert:
    cert: Path
    key: Path
    ca: Path  # the self-signed certificate itself: what a client trusts


def make_serving_cert(directory: Path, name: str = "portcullis-test") -> ServingCert:
    """A self-signed P-256 certificate for 127.0.0.1 (kube-apiserver would trust its CA)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
    return ServingCert(cert_path, key_path, cert_path)


class FakeKubeAPI:
    """A stand-in for the Kubernetes API's TokenReview and SubjectAccessReview endpoints over
    HTTPS (there is no kube-apiserver binary here). ``users`` maps a bearer token to a user name;
    ``allowed`` names the users that may create tokenreviews. It insists on ``sa_token`` as the
    credential of whoever asks, like the real API would, and counts the calls."""

    def __init__(self, cert: ServingCert, sa_token: str, users: dict[str, str], allowed: set[str]):
        self.sa_token = sa_token
        self.users = users
        self.allowed = allowed
        self.calls: list[str] = []
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length))
                api.calls.append(self.path)
                if self.headers.get("authorization") != f"Bearer {api.sa_token}":
                    self._send(401, {"kind": "Status", "code": 401})
                    return
                if self.path == "/apis/authentication.k8s.io/v1/tokenreviews":
                    name = api.users.get(body["spec"]["token"])
                    status: dict[str, object] = (
                        {"authenticated": True, "user": {"username": name, "groups": ["g"]}}
                        if name
                        else {"authenticated": False}
                    )
                elif self.path == "/apis/authorization.k8s.io/v1/subjectaccessreviews":
                    attributes = body["spec"]["resourceAttributes"]
                    wanted = (attributes["group"], attributes["resource"], attributes["verb"])
                    status = {
                        "allowed": body["spec"]["user"] in api.allowed
                        and wanted == ("authentication.k8s.io", "tokenreviews", "create")
                    }
                else:
                    self._send(404, {"kind": "Status", "code": 404})
                    return
                self._send(201, {**body, "status": status})

            def _send(self, code: int, document: object) -> None:
                data = json.dumps(document).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert.cert, cert.key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
