"""SAML 2.0 service-provider connector (Dex's ``saml`` type): the browser carries our AuthnRequest
to the IdP with the HTTP-POST binding and comes back to /callback with a signed SAMLResponse.

SAML's danger is in the XML, so this module trusts as little of it as possible:

* Parsing is hardened: no DTD (a DOCTYPE is refused outright, which also rules out XXE and
  entity-expansion bombs), no entity resolution, no network, no huge trees, a size bound on the
  encoded response, and no comments or processing instructions (they are outside what an
  exclusive canonicalisation signs, which is how NameID comment injection works).
* The signature is checked by ``signxml`` against the configured certificate(s) only, in one of
  two places (a ``Signature`` child of the ``Response``, or of its single ``Assertion``), and its
  one ``Reference`` must name exactly that element. After that every read goes to the XML that
  ``signxml`` returns -- the canonicalised, signed subtree -- never to the document we were sent.
  That is the defence against XML signature wrapping (XSW): whatever an attacker adds around the
  signed element is simply not in the tree we read.
* The assertion is checked strictly, as Dex does and in places more: exactly one assertion,
  issuer, audience, bearer subject confirmation (recipient, InResponseTo bound to the request id
  kept with the login, expiry), conditions with a bounded clock skew, destination, status, and a
  replay cache keyed by assertion ID in storage (``claim_once``), so a replay is refused by
  every replica.

Every rejection is logged with a stable code and the precise reason; the user sees only a short
message. SAML has no way to re-query the IdP, so like Dex there is no upstream refresh: a refresh
token keeps the identity of the login (the core does that for connectors without refresh).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

from anyio import to_thread
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree  # type: ignore[import-untyped]  # no stubs in the lock
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from signxml.algorithms import DigestAlgorithm, SignatureMethod
from signxml.verifier import SignatureConfiguration, XMLVerifier

from portcullis.connectors.base import (
    CallbackConnector,
    ConnectorEnv,
    ConnectorError,
    ConnectorType,
    LoginRedirect,
    Scopes,
)
from portcullis.storage.models import Identity

log = logging.getLogger(__name__)

__all__ = [
    "CONNECTOR_TYPE",
    "MAX_RESPONSE_BYTES",
    "SAMLConfig",
    "SAMLConnector",
    "open_saml",
]

NS_PROTOCOL = "urn:oasis:names:tc:SAML:2.0:protocol"
NS_ASSERTION = "urn:oasis:names:tc:SAML:2.0:assertion"
NS_DSIG = "http://www.w3.org/2000/09/xmldsig#"
_NS = {"samlp": NS_PROTOCOL, "saml": NS_ASSERTION, "ds": NS_DSIG}

BINDING_POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
STATUS_SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"
CM_BEARER = "urn:oasis:names:tc:SAML:2.0:cm:bearer"

#: Dex's accepted NameID formats; nameIDPolicyFormat may name one by its last URN component.
NAMEID_FORMATS = (
    "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress",
    "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified",
    "urn:oasis:names:tc:SAML:1.1:nameid-format:X509SubjectName",
    "urn:oasis:names:tc:SAML:1.1:nameid-format:WindowsDomainQualifiedName",
    "urn:oasis:names:tc:SAML:2.0:nameid-format:encrypted",
    "urn:oasis:names:tc:SAML:2.0:nameid-format:entity",
    "urn:oasis:names:tc:SAML:2.0:nameid-format:kerberos",
    "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent",
    "urn:oasis:names:tc:SAML:2.0:nameid-format:transient",
)
DEFAULT_NAMEID_FORMAT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"

#: Dex allows 30 s of clock drift on every time bound; so do we.
CLOCK_SKEW = 30.0
#: Bound on the base64 SAMLResponse as posted. Real responses are a few KiB (a signed assertion
#: with a certificate and a few dozen groups stays under 64 KiB); the bound keeps a hostile POST
#: from costing more than a small parse.
MAX_RESPONSE_BYTES = 256 * 1024
#: Assertion IDs go into storage keys; xs:ID values from real IdPs are tens of characters.
MAX_ID_LENGTH = 256

_SIGNATURE_METHODS = frozenset(
    {
        SignatureMethod.RSA_SHA256,
        SignatureMethod.RSA_SHA384,
        SignatureMethod.RSA_SHA512,
        SignatureMethod.ECDSA_SHA256,
        SignatureMethod.ECDSA_SHA384,
        SignatureMethod.ECDSA_SHA512,
        SignatureMethod.SHA256_RSA_MGF1,
        SignatureMethod.SHA384_RSA_MGF1,
        SignatureMethod.SHA512_RSA_MGF1,
    }
)
_DIGESTS = frozenset({DigestAlgorithm.SHA256, DigestAlgorithm.SHA384, DigestAlgorithm.SHA512})
_USER_MESSAGE = "The identity provider's SAML response was not accepted. Try logging in again."


def _q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


class SAMLConfig(BaseModel):
    """Dex's ``saml`` connector config, key for key (``connectors[].config``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    sso_url: str = Field(alias="ssoURL", min_length=1)
    ca: str = ""
    #: Dex's ``caData`` is a byte slice, so in YAML it is the base64 of the PEM text.
    ca_data: str = Field("", alias="caData")
    entity_issuer: str = Field("", alias="entityIssuer")
    sso_issuer: str = Field("", alias="ssoIssuer")
    redirect_uri: str = Field(alias="redirectURI", min_length=1)
    username_attr: str = Field(alias="usernameAttr", min_length=1)
    email_attr: str = Field(alias="emailAttr", min_length=1)
    groups_attr: str = Field("", alias="groupsAttr")
    groups_delim: str = Field("", alias="groupsDelim")
    name_id_policy_format: str = Field("", alias="nameIDPolicyFormat")
    allowed_groups: tuple[str, ...] = Field((), alias="allowedGroups")
    filter_groups: bool = Field(False, alias="filterGroups")
    insecure_skip_signature_validation: bool = Field(False, alias="insecureSkipSignatureValidation")

    @field_validator("name_id_policy_format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value and _resolve_nameid_format(value) is None:
            raise ValueError(
                f"unknown NameID format {value!r}; use one of "
                + ", ".join(f.rsplit(":", 1)[1] for f in NAMEID_FORMATS)
                + " or its full URN"
            )
        return value

    @field_validator("ca_data")
    @classmethod
    def _ca_data_is_base64(cls, value: str) -> str:
        if value:
            try:
                base64.b64decode(value, validate=True)
            except binascii.Error:
                raise ValueError("caData must be the base64 encoding of PEM certificates") from None
        return value

    @model_validator(mode="after")
    def _one_ca_source(self) -> SAMLConfig:
        if not self.insecure_skip_signature_validation and bool(self.ca) == bool(self.ca_data):
            raise ValueError("set exactly one of 'ca' (a PEM file) or 'caData' (base64 PEM)")
        return self

    @property
    def nameid_format(self) -> str:
        if not self.name_id_policy_format:
            return DEFAULT_NAMEID_FORMAT
        resolved = _resolve_nameid_format(self.name_id_policy_format)
        assert resolved is not None  # checked by the validator
        return resolved

    @property
    def audience(self) -> str:
        """Dex: the SP's entity ID when set, else the redirect URI."""
        return self.entity_issuer or self.redirect_uri


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _resolve_nameid_format(value: str) -> str | None:
    for known in NAMEID_FORMATS:
        if value in (known, known.rsplit(":", 1)[1]):
            return known
    return None


def load_certificates(pem: bytes, source: str) -> tuple[x509.Certificate, ...]:
    """Every certificate in a PEM bundle; anything else in it is an error (as in Dex)."""
    blocks = re.findall(
        rb"-----BEGIN CERTIFICATE-----\s.*?-----END CERTIFICATE-----", pem, flags=re.DOTALL
    )
    rest = re.sub(
        rb"-----BEGIN CERTIFICATE-----\s.*?-----END CERTIFICATE-----", b"", pem, flags=re.DOTALL
    )
    if rest.strip():
        raise ValueError(f"{source}: unexpected data besides PEM certificates")
    if not blocks:
        raise ValueError(f"{source}: no PEM certificate found")
    certs = []
    for block in blocks:
        try:
            certs.append(x509.load_pem_x509_certificate(block))
        except ValueError as exc:
            raise ValueError(f"{source}: not a valid certificate ({exc})") from None
    return tuple(certs)


# -- rejection ----------------------------------------------------------------------------------


class SAMLRejected(Exception):  # noqa: N818 - a refusal, not a bug
    """A response failed validation: ``code`` is stable (tests and alerts key on it), ``detail``
    is the precise reason for the log. Neither is shown to the user."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"[{code}] {detail}")
        self.code = code
        self.detail = detail


def _reject(code: str, detail: str) -> NoReturn:
    raise SAMLRejected(code, detail)


# -- the pending request ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pending:
    """What login_url keeps with the auth request (``connector_state``)."""

    request_id: str
    relay_state: str

    def encode(self) -> bytes:
        return json.dumps({"request_id": self.request_id, "relay_state": self.relay_state}).encode()

    @classmethod
    def decode(cls, data: bytes) -> _Pending:
        try:
            raw = json.loads(data)
            return cls(request_id=str(raw["request_id"]), relay_state=str(raw["relay_state"]))
        except (ValueError, KeyError, TypeError):
            _reject("state", "no SAML request is recorded for this login")


# -- XML helpers ---------------------------------------------------------------------------------


def _parser() -> etree.XMLParser:
    """A fresh hardened parser (lxml parsers must not be shared between threads)."""
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=False,  # comments are detected and refused, never silently dropped
        remove_pis=False,
    )


def text_content(element: etree._Element) -> str:
    """All the text of an element, comments skipped but the text around them kept.

    ``element.text`` stops at the first child node, so ``user@example.com<!---->.evil.com``
    would read as ``user@example.com``: the NameID comment-injection attack. Joining every text
    node reads the whole value (and signxml's canonicalised output has no comments anyway).
    """
    return "".join(
        node for node in element.xpath("descendant-or-self::*/text()") if isinstance(node, str)
    )


def _attr_id(element: etree._Element) -> str:
    return str(element.get("ID", ""))


def _parse_time(value: str, what: str) -> float:
    match = re.fullmatch(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})", value)
    if not match:
        _reject("time", f"{what} {value!r} is not an xs:dateTime with a time zone")
    base, fraction, zone = match.groups()
    stamp = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    return stamp.timestamp() + (float(fraction) if fraction else 0.0)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the connector --------------------------------------------------------------------------------


class SAMLConnector(CallbackConnector):
    """SAML 2.0 SP over the HTTP-POST binding (Dex's ``saml`` connector)."""

    callback_by_post = True  # the IdP's auto-submitting form POSTs cross-site to /callback

    def __init__(
        self,
        connector_id: str,
        name: str,
        connector_type: str,
        config: SAMLConfig,
        env: ConnectorEnv,
        certificates: Sequence[x509.Certificate],
    ) -> None:
        super().__init__(connector_id, name, connector_type)
        self._config = config
        self._env = env
        self._certs = tuple(certificates)
        self._cert_der = {cert.public_bytes(Encoding.DER): cert for cert in self._certs}
        self._cas = tuple(cert for cert in self._certs if _is_ca(cert))

    # -- login ---------------------------------------------------------------------------------
    async def login_url(self, scopes: Scopes, callback_url: str, state: str) -> LoginRedirect:
        """An AuthnRequest for the IdP, POSTed by the browser (Dex sends it the same way).

        The IdP posts its answer to ``redirectURI`` (the request's ACS URL), as in Dex, not to
        ``callback_url``; open_saml warns when the two differ."""
        request_id = "_" + secrets.token_hex(20)  # xs:ID must not start with a digit
        request = self.authn_request(request_id)
        pending = _Pending(request_id=request_id, relay_state=state)
        return LoginRedirect(
            url=self._config.sso_url,
            connector_state=pending.encode(),
            post_form={
                "SAMLRequest": base64.b64encode(request).decode("ascii"),
                "RelayState": state,
            },
        )

    def authn_request(self, request_id: str) -> bytes:
        """The AuthnRequest XML (built as a tree, so no value can break out of its attribute)."""
        cfg = self._config
        root = etree.Element(_q(NS_PROTOCOL, "AuthnRequest"), nsmap={"samlp": NS_PROTOCOL})
        root.set("ID", request_id)
        root.set("Version", "2.0")
        root.set("IssueInstant", _iso(self._env.clock.now()))
        root.set("Destination", cfg.sso_url)
        root.set("ProtocolBinding", BINDING_POST)
        root.set("AssertionConsumerServiceURL", cfg.redirect_uri)
        if cfg.entity_issuer:
            issuer = etree.SubElement(
                root, _q(NS_ASSERTION, "Issuer"), nsmap={"saml": NS_ASSERTION}
            )
            issuer.text = cfg.entity_issuer
        policy = etree.SubElement(root, _q(NS_PROTOCOL, "NameIDPolicy"))
        policy.set("Format", cfg.nameid_format)
        policy.set("AllowCreate", "true")
        request: bytes = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
        return request

    async def handle_callback(
        self, scopes: Scopes, params: Mapping[str, str], connector_state: bytes
    ) -> Identity:
        try:
            return await to_thread.run_sync(self.validate, scopes, params, connector_state)
        except SAMLRejected as rejected:
            log.warning(
                "saml connector %s: response rejected [%s]: %s",
                self.id,
                rejected.code,
                rejected.detail,
                extra={"saml_reject_code": rejected.code},
            )
            raise ConnectorError(_USER_MESSAGE) from None
        except Exception:
            # A response that trips a bug must still be a refusal (never a 500), and loudly.
            log.exception("saml connector %s: unexpected error validating a response", self.id)
            raise ConnectorError(_USER_MESSAGE) from None

    # -- validation (sync: it parses, verifies and writes the replay cache) ----------------------
    def validate(
        self, scopes: Scopes, params: Mapping[str, str], connector_state: bytes
    ) -> Identity:
        pending = _Pending.decode(connector_state)
        if params.get("RelayState", "") != pending.relay_state:
            _reject("relay-state", "RelayState does not match the login that sent the request")
        encoded = params.get("SAMLResponse", "")
        if not encoded:
            _reject("missing", "the callback carries no SAMLResponse")
        if len(encoded) > MAX_RESPONSE_BYTES:
            _reject("size", f"SAMLResponse is {len(encoded)} bytes, over {MAX_RESPONSE_BYTES}")
        try:
            document = base64.b64decode("".join(encoded.split()), validate=True)
        except binascii.Error:
            _reject("base64", "SAMLResponse is not valid base64")
        root = self._parse(document)
        signed = self._verified_subtree(document, root)
        now = self._env.clock.now()
        assertion = self._the_assertion(signed, pending.request_id)
        identity = self._check_assertion(assertion, pending.request_id, now)
        return self._map_identity(scopes, assertion, identity)

    def _parse(self, document: bytes) -> etree._Element:
        # Refuse DTDs before parsing when they are visible in the bytes; the parser settings and
        # the docinfo check below cover encodings that hide them from a byte search.
        if b"<!DOCTYPE" in document or b"<!ENTITY" in document:
            _reject("doctype", "the document has a DOCTYPE or ENTITY declaration")
        try:
            root = etree.fromstring(document, parser=_parser())
        except etree.XMLSyntaxError as exc:
            _reject("xml", f"not well-formed XML: {exc}")
        docinfo = root.getroottree().docinfo
        if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
            _reject("doctype", "the document has a DOCTYPE")
        for node in root.iter(etree.Entity, etree.Comment, etree.ProcessingInstruction):
            kind = "entity reference" if isinstance(node, etree._Entity) else "comment or PI"
            _reject(
                "comment",
                f"the document contains a {kind} at line {node.sourceline}; they are not "
                "covered by the signature",
            )
        for sibling in (*root.itersiblings(preceding=True), *root.itersiblings()):
            _reject("comment", f"content outside the root element: {type(sibling).__name__}")
        if root.tag != _q(NS_PROTOCOL, "Response"):
            _reject("root", f"the root element is {root.tag}, not a SAML protocol Response")
        return root

    # -- structural guards against signature wrapping --------------------------------------------
    # Reading only signxml's signed subtree is what defeats wrapping; these guards refuse the
    # shapes wrapping needs before any signature work, so an attack fails early with a reason
    # that names it. (A test switches them off to show the signed-subtree reading holds alone.)

    @staticmethod
    def _guard_unique_ids(root: etree._Element) -> None:
        """Two elements with one ID let a reference resolve to the wrong one."""
        seen: set[str] = set()
        for element in root.iter(etree.Element):
            for name, value in element.attrib.items():
                if etree.QName(name).localname in ("ID", "Id", "id"):
                    if value in seen:
                        _reject("duplicate-id", f"the ID {value!r} occurs more than once")
                    seen.add(value)

    @staticmethod
    def _guard_signature_places(root: etree._Element) -> None:
        """A Signature may only sit in the Response or in one of its child Assertions."""
        assertions = root.findall("saml:Assertion", _NS)
        for sig in root.iter(_q(NS_DSIG, "Signature")):
            parent = sig.getparent()
            if parent is root or (parent is not None and any(parent is a for a in assertions)):
                continue
            where = parent.tag if parent is not None else "?"
            _reject(
                "signature-location",
                f"a Signature inside {where} (line {sig.sourceline}) is not where a SAML "
                "response is signed (signature wrapping)",
            )

    @staticmethod
    def _guard_reference(target: etree._Element, signature: etree._Element) -> None:
        """The one Reference must name the element that holds the Signature (not "" = the whole
        document, not an element hidden elsewhere)."""
        references = signature.findall("ds:SignedInfo/ds:Reference", _NS)
        target_id = _attr_id(target)
        if len(references) != 1 or references[0].get("URI") != f"#{target_id}" or not target_id:
            _reject(
                "signature-reference",
                f"the Signature of {etree.QName(target).localname} {target_id!r} references "
                f"{[r.get('URI') for r in references]}, not that element (signature wrapping)",
            )

    @staticmethod
    def _guard_assertion_count(root: etree._Element) -> None:
        """At most one Assertion anywhere in the document, hidden copies included (none is an
        error answer, refused once its signed status has been read)."""
        count = sum(1 for _ in root.iter(_q(NS_ASSERTION, "Assertion")))
        if count > 1:
            _reject("assertion-count", f"the document holds {count} Assertion elements, not one")

    def _verified_subtree(self, document: bytes, root: etree._Element) -> etree._Element:
        """The signed element as signxml returns it: the only XML read from here on."""
        self._guard_unique_ids(root)
        self._guard_signature_places(root)
        assertions = root.findall("saml:Assertion", _NS)
        if self._config.insecure_skip_signature_validation:
            return root
        if root.find("ds:Signature", _NS) is not None:
            target, location = root, "./"
        else:
            if not assertions:
                # Typically an IdP's unsigned error answer; its status (unverified, so only
                # logged) says why the login failed upstream.
                code = root.find("samlp:Status/samlp:StatusCode", _NS)
                status = code.get("Value") if code is not None else None
                _reject("unsigned", f"unsigned Response without an Assertion (status {status!r})")
            if len(assertions) != 1:
                _reject(
                    "assertion-count",
                    f"the Response is unsigned and holds {len(assertions)} Assertion elements; "
                    "exactly one signed Assertion is required",
                )
            target = assertions[0]
            if target.find("ds:Signature", _NS) is None:
                _reject("unsigned", "neither the Response nor its Assertion is signed")
            location = f"./{{{NS_ASSERTION}}}Assertion/"
        if len(target.findall("ds:Signature", _NS)) != 1:
            _reject("signature-location", f"{target.tag} has more than one Signature")
        signature = target.find("ds:Signature", _NS)
        assert signature is not None
        target_id = _attr_id(target)
        self._guard_reference(target, signature)
        self._guard_assertion_count(root)
        cert = self._signing_certificate(signature)
        now = datetime.fromtimestamp(self._env.clock.now(), UTC)
        expect = SignatureConfiguration(
            location=location,
            expect_references=1,
            signature_methods=_SIGNATURE_METHODS,
            digest_algorithms=_DIGESTS,
            verification_time=now,
        )
        candidates = [cert] if cert is not None else list(self._certs)
        failure = ""
        for candidate in candidates:
            try:
                result = XMLVerifier().verify(
                    document, x509_cert=candidate, parser=_parser(), expect_config=expect
                )
            except Exception as exc:
                failure = f"{type(exc).__name__}: {exc}"
                continue
            assert not isinstance(result, list)
            signed = result.signed_xml
            if signed is None or signed.tag != target.tag or _attr_id(signed) != target_id:
                _reject("signature-reference", "the signed data is not the expected element")
            return signed
        _reject("signature", f"the signature does not verify with the configured ca: {failure}")

    def _signing_certificate(self, signature: etree._Element) -> x509.Certificate | None:
        """The configured certificate the signature names, as Dex (goxmldsig) decides it: a
        certificate in KeyInfo must be one of ours; without one, every configured cert is tried."""
        embedded = signature.findall("ds:KeyInfo/ds:X509Data/ds:X509Certificate", _NS)
        if not embedded:
            return None
        try:
            der = base64.b64decode("".join(text_content(embedded[0]).split()), validate=True)
        except binascii.Error:
            _reject("untrusted-cert", "the X509Certificate in the signature is not base64")
        cert = self._cert_der.get(der) or self._issued_by_configured_ca(der)
        if cert is None:
            _reject(
                "untrusted-cert",
                "the response is signed with a certificate that is not in the configured ca "
                "and not issued by a CA certificate in it",
            )
        return cert

    def _issued_by_configured_ca(self, der: bytes) -> x509.Certificate | None:
        """The embedded certificate when a configured CA certificate (basicConstraints CA)
        issued it directly and is itself valid now; its own validity is checked by signxml.

        Dex accepts only the exact certificates listed in ``ca``; accepting their direct issue
        too lets ``ca`` hold what its name says (a CA) without trusting anything a Dex config
        would not name: a self-signed IdP certificate is never treated as an issuer."""
        if not self._cas:
            return None
        try:
            leaf = x509.load_der_x509_certificate(der)
        except ValueError:
            return None
        now = datetime.fromtimestamp(self._env.clock.now(), UTC)
        for ca in self._cas:
            if not ca.not_valid_before_utc <= now <= ca.not_valid_after_utc:
                continue
            try:
                leaf.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return leaf
        return None

    def _the_assertion(self, signed: etree._Element, request_id: str) -> etree._Element:
        """From the signed subtree: check the Response envelope when it is what was signed, and
        return its one Assertion (or the signed Assertion itself). An unsigned envelope is not
        read at all (Dex ignores it too): the assertion's own checks bind it to our request."""
        if signed.tag == _q(NS_ASSERTION, "Assertion"):
            if signed.find(".//saml:Assertion", _NS) is not None:
                _reject("assertion-count", "the signed Assertion contains another Assertion")
            return signed
        response = signed
        self._check_envelope(response, request_id)
        if response.find(".//saml:EncryptedAssertion", _NS) is not None:
            _reject("encrypted", "encrypted assertions are not supported (as in Dex)")
        assertions = response.findall(".//saml:Assertion", _NS)
        if len(assertions) != 1 or assertions[0].getparent() is not response:
            _reject(
                "assertion-count",
                f"the signed Response holds {len(assertions)} Assertion elements; exactly one "
                "child Assertion is required",
            )
        return assertions[0]

    def _check_envelope(self, response: etree._Element, request_id: str) -> None:
        cfg = self._config
        if response.get("Version") != "2.0":
            _reject("version", f"Response Version {response.get('Version')!r} is not 2.0")
        issuer = response.find("saml:Issuer", _NS)
        if cfg.sso_issuer and issuer is not None and text_content(issuer) != cfg.sso_issuer:
            _reject(
                "issuer",
                f"Response Issuer {text_content(issuer)!r} is not ssoIssuer {cfg.sso_issuer!r}",
            )
        if response.get("InResponseTo") != request_id:
            _reject(
                "in-response-to",
                f"Response InResponseTo {response.get('InResponseTo')!r} is not our request "
                f"{request_id!r}",
            )
        destination = response.get("Destination")
        if destination is not None and destination != cfg.redirect_uri:
            _reject(
                "destination",
                f"Response Destination {destination!r} is not redirectURI {cfg.redirect_uri!r}",
            )
        code = response.find("samlp:Status/samlp:StatusCode", _NS)
        if code is None:
            _reject("status", "the Response has no StatusCode")
        if code.get("Value") != STATUS_SUCCESS:
            message = response.find("samlp:Status/samlp:StatusMessage", _NS)
            detail = f": {text_content(message)[:200]}" if message is not None else ""
            _reject("status", f"the IdP answered {code.get('Value')!r}{detail}")

    def _check_assertion(self, assertion: etree._Element, request_id: str, now: float) -> Identity:
        """The assertion's own checks (SAML core 2.3.3, profiles 4.1.4.2) and the replay claim;
        returns the identity's NameID-derived part."""
        cfg = self._config
        if assertion.get("Version") != "2.0":
            _reject("version", f"Assertion Version {assertion.get('Version')!r} is not 2.0")
        assertion_id = _attr_id(assertion)
        if not assertion_id or len(assertion_id) > MAX_ID_LENGTH:
            _reject("assertion-id", "the Assertion has no usable ID")
        issuer = assertion.find("saml:Issuer", _NS)
        if issuer is None:
            _reject("issuer", "the Assertion has no Issuer")
        if cfg.sso_issuer and text_content(issuer) != cfg.sso_issuer:
            _reject(
                "issuer",
                f"Assertion Issuer {text_content(issuer)!r} is not ssoIssuer {cfg.sso_issuer!r}",
            )
        subject = assertion.find("saml:Subject", _NS)
        if subject is None:
            _reject("subject", "the Assertion has no Subject")
        name_ids = subject.findall("saml:NameID", _NS)
        if len(name_ids) != 1:
            _reject("subject", f"the Subject has {len(name_ids)} NameID elements, not one")
        user_id = text_content(name_ids[0]).strip()
        if not user_id:
            _reject("subject", "the NameID is empty")
        expiries = [
            self._check_confirmation(subject, request_id, now),
            self._check_conditions(assertion, now),
        ]
        # Claimed last, so only an assertion that passed every check occupies the cache; the
        # entry lives as long as the assertion could still be accepted.
        expiry = max(e for e in expiries if e is not None) + CLOCK_SKEW
        if not self._env.storage.claim_once(f"saml:{assertion_id}", expiry):
            _reject("replay", f"the Assertion {assertion_id!r} was already used (replay)")
        return Identity(user_id=user_id, username="")

    def _check_confirmation(self, subject: etree._Element, request_id: str, now: float) -> float:
        """One bearer SubjectConfirmation must match us; returns its NotOnOrAfter."""
        cfg = self._config
        failures: list[tuple[str, str]] = []
        confirmations = subject.findall("saml:SubjectConfirmation", _NS)
        if not confirmations:
            _reject("subject-confirmation", "the Subject has no SubjectConfirmation")
        for confirmation in confirmations:
            data = confirmation.find("saml:SubjectConfirmationData", _NS)
            if confirmation.get("Method") != CM_BEARER:
                failures.append(("subject-confirmation", f"method {confirmation.get('Method')}"))
            elif data is None:
                failures.append(("subject-confirmation", "no SubjectConfirmationData"))
            elif data.get("InResponseTo") != request_id:
                failures.append(
                    (
                        "in-response-to",
                        f"SubjectConfirmationData InResponseTo {data.get('InResponseTo')!r} "
                        f"is not our request {request_id!r}",
                    )
                )
            elif data.get("Recipient") != cfg.redirect_uri:
                failures.append(
                    (
                        "recipient",
                        f"Recipient {data.get('Recipient')!r} is not redirectURI "
                        f"{cfg.redirect_uri!r}",
                    )
                )
            elif data.get("NotOnOrAfter") is None:
                failures.append(("expired", "SubjectConfirmationData has no NotOnOrAfter"))
            else:
                not_on_or_after = _parse_time(data.get("NotOnOrAfter", ""), "NotOnOrAfter")
                not_before = data.get("NotBefore")
                if now >= not_on_or_after + CLOCK_SKEW:
                    failures.append(
                        ("expired", f"the subject confirmation expired at {_iso(not_on_or_after)}")
                    )
                elif not_before is not None and now + CLOCK_SKEW < _parse_time(
                    not_before, "NotBefore"
                ):
                    failures.append(("not-yet-valid", f"subject confirmation from {not_before}"))
                else:
                    return not_on_or_after
        code = failures[0][0]
        _reject(code, "no SubjectConfirmation matches: " + "; ".join(f[1] for f in failures))

    def _check_conditions(self, assertion: etree._Element, now: float) -> float | None:
        """Time bounds and audience. The Web SSO profile requires an AudienceRestriction naming
        us, so (stricter than Dex) an assertion without one is refused."""
        cfg = self._config
        conditions = assertion.find("saml:Conditions", _NS)
        if conditions is None:
            _reject("audience", "the Assertion has no Conditions (no AudienceRestriction)")
        not_before = conditions.get("NotBefore")
        if not_before is not None and now + CLOCK_SKEW < _parse_time(not_before, "NotBefore"):
            _reject("not-yet-valid", f"the Assertion is not valid before {not_before}")
        raw_expiry = conditions.get("NotOnOrAfter")
        expiry = _parse_time(raw_expiry, "NotOnOrAfter") if raw_expiry is not None else None
        if expiry is not None and now >= expiry + CLOCK_SKEW:
            _reject("expired", f"the Assertion expired at {raw_expiry}")
        restrictions = conditions.findall("saml:AudienceRestriction", _NS)
        if not restrictions:
            _reject("audience", "the Assertion has no AudienceRestriction")
        for restriction in restrictions:
            audiences = [text_content(a).strip() for a in restriction.findall("saml:Audience", _NS)]
            if cfg.audience not in audiences:
                _reject("audience", f"the Assertion is for {audiences}, not {cfg.audience!r}")
        return expiry

    def _map_identity(
        self, scopes: Scopes, assertion: etree._Element, identity: Identity
    ) -> Identity:
        """Attributes to claims, and Dex's allowedGroups/filterGroups."""
        cfg = self._config
        attributes: dict[str, list[str]] = {}
        for attribute in assertion.findall("saml:AttributeStatement/saml:Attribute", _NS):
            values = attributes.setdefault(str(attribute.get("Name", "")), [])
            values.extend(text_content(v) for v in attribute.findall("saml:AttributeValue", _NS))

        def first(name: str) -> str:
            values = attributes.get(name) or [""]
            if not values[0]:
                _reject(
                    "attribute",
                    f"no value for attribute {name!r}; the assertion has {sorted(attributes)}",
                )
            return values[0]

        email = first(cfg.email_attr)
        username = first(cfg.username_attr)
        groups: list[str] = []
        if cfg.allowed_groups or (scopes.groups and cfg.groups_attr):
            if not (scopes.groups and cfg.groups_attr):
                _reject("groups", "allowedGroups is set but groups were not requested/configured")
            if cfg.groups_attr not in attributes:
                _reject(
                    "attribute",
                    f"no attribute {cfg.groups_attr!r}; the assertion has {sorted(attributes)}",
                )
            if cfg.groups_delim:
                groups = first(cfg.groups_attr).split(cfg.groups_delim)
            else:
                groups = list(attributes[cfg.groups_attr])
            if cfg.allowed_groups:
                matches = [g for g in groups if g in cfg.allowed_groups]
                if not matches:
                    _reject("groups", f"user {identity.user_id!r} is in none of allowedGroups")
                if cfg.filter_groups:
                    groups = matches
        log.info(
            "saml connector %s: verified assertion for %s (attributes %s)",
            self.id,
            identity.user_id,
            sorted(attributes),
        )
        return Identity(
            user_id=identity.user_id,
            username=username,
            email=email,
            email_verified=True,  # as Dex: SAML has no such claim, the IdP vouches for it
            groups=tuple(groups),
        )


def open_saml(
    connector_id: str, name: str, connector_type: str, config: BaseModel, env: ConnectorEnv
) -> SAMLConnector:
    """Check what config validation cannot (the CA file, FIPS policy) and build the connector."""
    assert isinstance(config, SAMLConfig)
    where = f"connector {connector_id!r}"
    if config.insecure_skip_signature_validation:
        if env.fips_mode:
            raise ValueError(
                f"{where}: insecureSkipSignatureValidation is refused in FIPS mode "
                "(unsigned SAML responses would let anyone log in as anyone)"
            )
        log.critical(
            "%s: insecureSkipSignatureValidation is ON: SAML responses are NOT verified and "
            "anyone who can reach the callback can log in as anyone. Never use this in production.",
            where,
        )
        certs: tuple[x509.Certificate, ...] = ()
    elif config.ca:
        try:
            pem = Path(config.ca).read_bytes()
        except OSError as exc:
            raise ValueError(f"{where}: ca: cannot read {config.ca}: {exc.strerror}") from None
        certs = load_certificates(pem, f"{where}: ca ({config.ca})")
    else:
        certs = load_certificates(base64.b64decode(config.ca_data), f"{where}: caData")
    callbacks = (f"{env.issuer}/callback", f"{env.issuer}/callback/{connector_id}")
    if config.redirect_uri not in callbacks:
        log.warning(
            "%s: redirectURI %s is not this issuer's callback (%s): the IdP will post the "
            "response there, so that URL must reach the issuer's /callback",
            where,
            config.redirect_uri,
            callbacks[0],
        )
    return SAMLConnector(connector_id, name, connector_type, config, env, certs)


CONNECTOR_TYPE = ConnectorType(SAMLConfig, open_saml)
