"""A real SAML 2.0 identity provider for tests, built with pysaml2 (+ Debian's ``xmlsec1``).

pysaml2 is a different implementation from the connector's signxml, so a bug the two shared
could not pass both sides: pysaml2 parses the AuthnRequest the connector produced, builds the
Response and signs it by running ``xmlsec1``, and the connector verifies it with signxml.

The IdP listens on a free loopback port (``POST /sso`` takes the HTTP-POST binding form the
connector's ``login_url`` returns and answers with pysaml2's auto-submitting form to the ACS URL,
as a browser would see it; ``GET /metadata`` serves its metadata). Tests that need a response
with a particular flaw ask :meth:`SamlIdp.respond` directly: the same pysaml2 server, with
knobs for signing, audience, destination and so on. A second IdP with the same entity ID but its
own key (:attr:`SamlIdpHarness.rogue`) plays an attacker holding some other valid key.

Use from a conftest::

    from tests.support.saml_idp import saml_idp  # noqa: F401
"""

from __future__ import annotations

import base64
import datetime
import html
import re
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

with warnings.catch_warnings():  # pysaml2 imports a cipher mode cryptography has deprecated
    warnings.simplefilter("ignore")
    from saml2 import BINDING_HTTP_POST
    from saml2.authn_context import PASSWORD
    from saml2.config import IdPConfig
    from saml2.saml import NAME_FORMAT_URI, NAMEID_FORMAT_PERSISTENT, NameID
    from saml2.server import Server

XMLSEC1 = "/usr/bin/xmlsec1"
SIG_RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
DIGEST_SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"

IDP_ENTITY_ID = "https://idp.portcullis.test/saml/metadata"
SP_ENTITY_ID = "https://portcullis.test/dex/saml/sp"
SP_ACS_URL = "https://portcullis.test/dex/callback"
OTHER_SP_ENTITY_ID = "https://other-sp.example/saml/sp"
OTHER_SP_ACS_URL = "https://other-sp.example/saml/acs"


@dataclass(frozen=True)
class User:
    name_id: str
    attributes: dict[str, list[str]]


USERS = {
    "alice": User(
        name_id="alice-0001",
        attributes={
            "username": ["alice"],
            "mail": ["alice@example.com"],
            "groups": ["admins", "developers", "everyone"],
            "groupList": ["admins;developers;everyone"],
        },
    ),
    "bob": User(
        name_id="bob-0002",
        attributes={
            "username": ["bob"],
            "mail": ["bob@example.com"],
            "groups": ["everyone"],
            "groupList": ["everyone"],
        },
    ),
}


def _certificate(
    common_name: str,
    key: rsa.RSAPrivateKey,
    issuer: tuple[rsa.RSAPrivateKey, x509.Certificate] | None = None,
    *,
    ca: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    signing_key, issuer_name = (issuer[0], issuer[1].subject) if issuer else (key, name)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(signing_key, hashes.SHA256())
    )


@dataclass(frozen=True)
class IssuingCA:
    """A CA that issues an IdP's signing certificate (for ``ca`` configured as a real CA)."""

    key: rsa.RSAPrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, common_name: str) -> IssuingCA:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(key, _certificate(common_name, key, ca=True))

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _write_key_pair(
    directory: Path, common_name: str, issuer: IssuingCA | None = None
) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = _certificate(common_name, key, (issuer.key, issuer.cert) if issuer else None)
    key_path = directory / f"{common_name}.key"
    cert_path = directory / f"{common_name}.crt"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def _sp_metadata(entity_id: str, acs_url: str) -> str:
    return (
        '<?xml version="1.0"?>'
        '<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" '
        f'entityID="{entity_id}"><md:SPSSODescriptor '
        'protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">'
        f'<md:AssertionConsumerService Binding="{BINDING_HTTP_POST}" Location="{acs_url}" '
        'index="0"/></md:SPSSODescriptor></md:EntityDescriptor>'
    )


class SamlIdp:
    """One pysaml2 IdP (entity ``IDP_ENTITY_ID``) with its own key pair."""

    def __init__(
        self, directory: Path, key_name: str, sso_url: str, issuer: IssuingCA | None = None
    ) -> None:
        self.key_path, self.cert_path = _write_key_pair(directory, key_name, issuer)
        self.sso_url = sso_url
        config = IdPConfig().load(
            {
                "entityid": IDP_ENTITY_ID,
                "service": {
                    "idp": {
                        "endpoints": {"single_sign_on_service": [(sso_url, BINDING_HTTP_POST)]},
                        "policy": {
                            "default": {"lifetime": {"minutes": 5}, "name_form": NAME_FORMAT_URI}
                        },
                    }
                },
                "key_file": str(self.key_path),
                "cert_file": str(self.cert_path),
                "metadata": {
                    "inline": [
                        _sp_metadata(SP_ENTITY_ID, SP_ACS_URL),
                        _sp_metadata(OTHER_SP_ENTITY_ID, OTHER_SP_ACS_URL),
                    ]
                },
                "xmlsec_binary": XMLSEC1,
            }
        )
        self.server = Server(config=config)
        self._lock = threading.Lock()  # pysaml2's server is not documented as thread-safe

    @property
    def cert_pem(self) -> bytes:
        return self.cert_path.read_bytes()

    def parse_request(self, saml_request: str) -> Any:
        """Our AuthnRequest as pysaml2 understands it (it checks Destination, format, ...)."""
        with self._lock:
            return self.server.parse_authn_request(saml_request, BINDING_HTTP_POST).message

    def respond(
        self,
        saml_request: str,
        *,
        user: str = "alice",
        sign_response: bool = True,
        sign_assertion: bool = True,
        sp_entity_id: str | None = None,
        destination: str | None = None,
        in_response_to: str | None = None,
        name_id: str | None = None,
    ) -> bytes:
        """A signed Response (XML bytes) to the given base64 AuthnRequest.

        Every override defaults to what the request asked for; ``destination`` is both the
        Response's Destination and the SubjectConfirmationData Recipient (pysaml2 uses one value).
        """
        request = self.parse_request(saml_request)
        account = USERS[user]
        with self._lock:
            response = self.server.create_authn_response(
                identity=account.attributes,
                in_response_to=in_response_to or request.id,
                destination=destination or request.assertion_consumer_service_url,
                sp_entity_id=sp_entity_id or request.issuer.text,
                name_id=NameID(format=NAMEID_FORMAT_PERSISTENT, text=name_id or account.name_id),
                authn={"class_ref": PASSWORD},
                sign_response=sign_response,
                sign_assertion=sign_assertion,
                sign_alg=SIG_RSA_SHA256,
                digest_alg=DIGEST_SHA256,
            )
        return str(response).encode()

    def error_response(self, saml_request: str, message: str, *, sign: bool) -> bytes:
        """A Responder/AuthnFailed answer, as an IdP sends when the user cannot log in."""
        request = self.parse_request(saml_request)
        with self._lock:
            response = self.server.create_error_response(
                request.id,
                request.assertion_consumer_service_url,
                ("urn:oasis:names:tc:SAML:2.0:status:AuthnFailed", message),
                sign=sign,
                sign_alg=SIG_RSA_SHA256,
                digest_alg=DIGEST_SHA256,
            )
        return str(response).encode()

    def post_form(self, response: bytes, acs_url: str, relay_state: str) -> str:
        """pysaml2's HTTP-POST binding page for a response, as the browser receives it."""
        with self._lock:
            args = self.server.apply_binding(
                BINDING_HTTP_POST, response.decode(), acs_url, relay_state, response=True
            )
        return str(args["data"])


def form_fields(page: str) -> tuple[str, dict[str, str]]:
    """(action, fields) of the auto-submitting form on an HTTP-POST binding page."""
    action = re.search(r'<form[^>]*action="([^"]*)"', page)
    assert action, page
    fields = {
        html.unescape(name): html.unescape(value)
        for name, value in re.findall(
            r'<input[^>]*name="([^"]*)"[^>]*value="([^"]*)"', page, flags=re.DOTALL
        )
    }
    return html.unescape(action.group(1)), fields


@dataclass
class SamlIdpHarness:
    """The IdP over HTTP on loopback, plus a rogue twin with another key."""

    idp: SamlIdp
    rogue: SamlIdp
    #: Signs with a certificate issued by ``ca`` (not self-signed).
    issued: SamlIdp
    ca: IssuingCA
    #: A CA that issued nothing here.
    other_ca: IssuingCA
    base_url: str
    #: Which account ``POST /sso`` logs in (the test stands in for the IdP's own login form).
    current_user: str = "alice"
    requests: list[Any] = field(default_factory=list)

    @property
    def sso_url(self) -> str:
        return self.idp.sso_url


def _handler(harness_ref: list[SamlIdpHarness]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path != "/metadata":
                self._send(404, b"not found", "text/plain")
                return
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from saml2.metadata import entity_descriptor

            harness = harness_ref[0]
            body = str(entity_descriptor(harness.idp.server.config)).encode()
            self._send(200, body, "application/samlmetadata+xml")

        def do_POST(self) -> None:
            harness = harness_ref[0]
            length = int(self.headers.get("Content-Length", "0"))
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            if self.path != "/sso" or "SAMLRequest" not in form:
                self._send(400, b"expected a SAMLRequest on /sso", "text/plain")
                return
            try:
                request = harness.idp.parse_request(form["SAMLRequest"])
            except Exception as exc:
                self._send(400, f"bad AuthnRequest: {exc}".encode(), "text/plain")
                return
            harness.requests.append(request)
            response = harness.idp.respond(form["SAMLRequest"], user=harness.current_user)
            page = harness.idp.post_form(
                response, request.assertion_consumer_service_url, form.get("RelayState", "")
            )
            self._send(200, page.encode(), "text/html; charset=utf-8")

    return Handler


@pytest.fixture(scope="session")
def saml_idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SamlIdpHarness]:
    """A pysaml2 IdP serving on a free 127.0.0.1 port for the whole session."""
    if not Path(XMLSEC1).exists():
        pytest.fail(f"{XMLSEC1} is missing: install Debian's xmlsec1 (make test does)")
    directory = tmp_path_factory.mktemp("saml-idp")
    ref: list[SamlIdpHarness] = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(ref))
    base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    sso_url = f"{base_url}/sso"
    ca = IssuingCA.create("portcullis test SAML CA")
    harness = SamlIdpHarness(
        idp=SamlIdp(directory, "idp", sso_url),
        rogue=SamlIdp(directory, "rogue", sso_url),
        issued=SamlIdp(directory, "issued", sso_url, issuer=ca),
        ca=ca,
        other_ca=IssuingCA.create("some other CA"),
        base_url=base_url,
    )
    ref.append(harness)
    thread = threading.Thread(target=httpd.serve_forever, name="saml-idp", daemon=True)
    thread.start()
    try:
        yield harness
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
