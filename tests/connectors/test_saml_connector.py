"""The ``saml`` connector against a pysaml2 IdP (a different SAML implementation, signing with
xmlsec1), and a corpus of attack documents made from the IdP's genuine signed responses.

Every attack must be refused *and* logged with its reason code: a refusal for the wrong reason
would hide a check that does not work.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from lxml import etree
from portcullis.clock import FrozenClock
from portcullis.connectors.base import ConnectorEnv, ConnectorError, LoginRedirect, Scopes
from portcullis.connectors.saml import (
    CONNECTOR_TYPE,
    MAX_RESPONSE_BYTES,
    SAMLConfig,
    SAMLConnector,
    open_saml,
    text_content,
)
from portcullis.storage.memory import MemoryStorage
from portcullis.storage.models import Identity
from portcullis.storage.sqlite import SQLiteStorage
from pydantic import ValidationError

from tests.support.saml_idp import (
    OTHER_SP_ENTITY_ID,
    SP_ACS_URL,
    SP_ENTITY_ID,
    SamlIdp,
    SamlIdpHarness,
    b64,
    form_fields,
    saml_idp,  # noqa: F401 - session fixture
)

pytestmark = pytest.mark.anyio

SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
DS = "http://www.w3.org/2000/09/xmldsig#"
NS = {"samlp": SAMLP, "saml": SAML, "ds": DS}
LOGGER = "portcullis.connectors.saml"
GROUPS = Scopes(groups=True)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(time.time())


def dex_config(idp: SamlIdpHarness, **overrides: Any) -> dict[str, Any]:
    """A connector config exactly as it would sit under ``config:`` in a Dex YAML file."""
    config: dict[str, Any] = {
        "ssoURL": idp.sso_url,
        "caData": base64.b64encode(idp.idp.cert_pem).decode(),
        "entityIssuer": SP_ENTITY_ID,
        "ssoIssuer": "https://idp.portcullis.test/saml/metadata",
        "redirectURI": SP_ACS_URL,
        "usernameAttr": "username",
        "emailAttr": "urn:oid:0.9.2342.19200300.100.1.3",  # pysaml2 names "mail" by its OID
        "groupsAttr": "groups",
        "nameIDPolicyFormat": "persistent",
    }
    config.update(overrides)
    return {k: v for k, v in config.items() if v is not None}


Factory = Callable[..., SAMLConnector]


@pytest.fixture
def make_connector(saml_idp: SamlIdpHarness, clock: FrozenClock) -> Factory:  # noqa: F811
    storage = MemoryStorage()

    def make(*, fips: bool = False, storage_: Any = None, **overrides: Any) -> SAMLConnector:
        model = CONNECTOR_TYPE.config_model.model_validate(dex_config(saml_idp, **overrides))
        env = ConnectorEnv(
            storage=storage_ or storage,
            clock=clock,
            issuer="https://portcullis.test/dex",
            fips_mode=fips,
        )
        connector = CONNECTOR_TYPE.open("saml", "SAML", "saml", model, env)
        assert isinstance(connector, SAMLConnector)
        return connector

    return make


@pytest.fixture
def connector(make_connector: Factory) -> SAMLConnector:
    return make_connector()


async def start(connector: SAMLConnector, state: str = "auth-request-1") -> LoginRedirect:
    return await connector.login_url(GROUPS, SP_ACS_URL, state)


def saml_request(redirect: LoginRedirect) -> str:
    """The SAMLRequest the browser would POST to the IdP."""
    assert redirect.post_form is not None
    return redirect.post_form["SAMLRequest"]


async def sign_in(
    connector: SAMLConnector, idp: SamlIdp, scopes: Scopes = GROUPS, **respond: Any
) -> Identity:
    """A whole login: the IdP answers this connector's request, the callback brings it back."""
    redirect = await start(connector)
    xml = idp.respond(saml_request(redirect), **respond)
    form = callback(redirect, xml)
    return await connector.handle_callback(scopes, form, redirect.connector_state)


def request_id(redirect: LoginRedirect) -> str:
    return str(json.loads(redirect.connector_state)["request_id"])


def callback(redirect: LoginRedirect, response: bytes) -> dict[str, str]:
    assert redirect.post_form is not None
    return {"SAMLResponse": b64(response), "RelayState": redirect.post_form["RelayState"]}


def assert_rejected(caplog: pytest.LogCaptureFixture, code: str, *detail: str) -> None:
    records = [r for r in caplog.records if r.name == LOGGER and hasattr(r, "saml_reject_code")]
    assert records, "no rejection was logged"
    record = records[-1]
    assert record.saml_reject_code == code, record.getMessage()
    assert record.levelno == logging.WARNING
    for part in detail:
        assert part in record.getMessage(), record.getMessage()


async def refused(
    connector: SAMLConnector,
    redirect: LoginRedirect,
    params: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    code: str,
    *detail: str,
) -> None:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER), pytest.raises(ConnectorError) as raised:
        await connector.handle_callback(GROUPS, params, redirect.connector_state)
    # The user-facing message is generic; the reason is in the log only.
    assert "not accepted" in str(raised.value)
    assert code not in str(raised.value)
    assert_rejected(caplog, code, *detail)


# -- the round trip --------------------------------------------------------------------------


async def test_login_round_trip_through_the_pysaml2_idp_over_http(
    connector: SAMLConnector,
    saml_idp: SamlIdpHarness,  # noqa: F811
) -> None:
    redirect = await start(connector, state="req-abc")
    assert redirect.url == saml_idp.sso_url
    assert redirect.post_form is not None
    assert redirect.post_form["RelayState"] == "req-abc"

    # The browser POSTs the form to the IdP, which answers with its own POST-binding page.
    async with httpx.AsyncClient() as http:
        page = await http.post(redirect.url, data=dict(redirect.post_form))
    assert page.status_code == 200, page.text
    action, fields = form_fields(page.text)
    assert action == SP_ACS_URL
    assert fields["RelayState"] == "req-abc"

    # pysaml2 understood our AuthnRequest as we meant it.
    parsed = saml_idp.requests[-1]
    assert parsed.id == request_id(redirect)
    assert parsed.issuer.text == SP_ENTITY_ID
    assert parsed.protocol_binding == "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
    assert parsed.name_id_policy.format == "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"

    identity = await connector.handle_callback(GROUPS, fields, redirect.connector_state)
    assert identity.user_id == "alice-0001"
    assert identity.username == "alice"
    assert identity.email == "alice@example.com"
    assert identity.email_verified is True
    assert identity.groups == ("admins", "developers", "everyone")


@pytest.mark.parametrize(
    ("sign_response", "sign_assertion"),
    [(True, False), (False, True), (True, True)],
    ids=["response-signed", "assertion-signed", "both-signed"],
)
async def test_either_signature_placement_is_accepted(
    connector: SAMLConnector,
    saml_idp: SamlIdpHarness,  # noqa: F811
    sign_response: bool,
    sign_assertion: bool,
) -> None:
    redirect = await start(connector)
    xml = saml_idp.idp.respond(
        saml_request(redirect),
        sign_response=sign_response,
        sign_assertion=sign_assertion,
    )
    identity = await connector.handle_callback(
        GROUPS, callback(redirect, xml), redirect.connector_state
    )
    assert identity.user_id == "alice-0001"


async def test_groups_need_the_groups_scope(
    connector: SAMLConnector,
    saml_idp: SamlIdpHarness,  # noqa: F811
) -> None:
    identity = await sign_in(connector, saml_idp.idp, Scopes())
    assert identity.groups == ()


async def test_groups_delimiter_splits_one_value(
    make_connector: Factory,
    saml_idp: SamlIdpHarness,  # noqa: F811
) -> None:
    connector = make_connector(groupsAttr="groupList", groupsDelim=";")
    identity = await sign_in(connector, saml_idp.idp, GROUPS)
    assert identity.groups == ("admins", "developers", "everyone")


async def test_allowed_groups_with_filter_keeps_only_the_allowed_ones(
    make_connector: Factory,
    saml_idp: SamlIdpHarness,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    connector = make_connector(allowedGroups=["admins", "auditors"], filterGroups=True)
    identity = await sign_in(connector, saml_idp.idp, GROUPS)
    assert identity.groups == ("admins",)

    redirect = await start(connector)
    bob = saml_idp.idp.respond(saml_request(redirect), user="bob")
    await refused(connector, redirect, callback(redirect, bob), caplog, "groups", "bob-0002")


async def test_allowed_groups_without_filter_keeps_every_group(
    make_connector: Factory,
    saml_idp: SamlIdpHarness,  # noqa: F811
) -> None:
    connector = make_connector(allowedGroups=["developers"])
    identity = await sign_in(connector, saml_idp.idp, GROUPS)
    assert identity.groups == ("admins", "developers", "everyone")


async def test_missing_username_attribute_is_refused(
    make_connector: Factory,
    saml_idp: SamlIdpHarness,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    connector = make_connector(usernameAttr="uid")
    redirect = await start(connector)
    xml = saml_idp.idp.respond(saml_request(redirect))
    await refused(connector, redirect, callback(redirect, xml), caplog, "attribute", "'uid'")


# -- the attack corpus: made from genuine signed responses ---------------------------------------


def parse(xml: bytes) -> Any:
    return etree.fromstring(xml)


def serialize(root: Any) -> bytes:
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def evil_copy(assertion: Any, new_id: str | None = "_evil-assertion") -> Any:
    """The attacker's assertion: a clone with the NameID changed and its signature removed."""
    clone = copy.deepcopy(assertion)
    for sig in clone.findall("ds:Signature", NS):
        clone.remove(sig)
    clone.find("saml:Subject/saml:NameID", NS).text = "admin-0000"
    if new_id is not None:
        clone.set("ID", new_id)
    return clone


def xsw1(xml: bytes) -> bytes:
    """Response signature: a forged Response at the root, the signed original inside the
    (moved) Signature element."""
    original = parse(xml)
    sig = original.find("ds:Signature", NS)
    index = list(original).index(sig)
    original.remove(sig)
    forged = copy.deepcopy(original)
    forged.set("ID", "_evil-response")
    forged.replace(
        forged.find("saml:Assertion", NS), evil_copy(original.find("saml:Assertion", NS))
    )
    forged.insert(index, sig)
    sig.append(original)
    return serialize(forged)


def xsw2(xml: bytes) -> bytes:
    """Response signature: the signed original as a sibling before the Signature (detached)."""
    original = parse(xml)
    sig = original.find("ds:Signature", NS)
    index = list(original).index(sig)
    original.remove(sig)
    forged = copy.deepcopy(original)
    forged.set("ID", "_evil-response")
    forged.replace(
        forged.find("saml:Assertion", NS), evil_copy(original.find("saml:Assertion", NS))
    )
    forged.insert(index, sig)
    forged.insert(index, original)
    return serialize(forged)


def xsw3(xml: bytes) -> bytes:
    """Assertion signature: a forged Assertion placed before the signed one."""
    root = parse(xml)
    signed = root.find("saml:Assertion", NS)
    signed.addprevious(evil_copy(signed))
    return serialize(root)


def xsw4(xml: bytes) -> bytes:
    """Assertion signature: the signed Assertion moved inside the forged one."""
    root = parse(xml)
    signed = root.find("saml:Assertion", NS)
    forged = evil_copy(signed)
    root.replace(signed, forged)
    forged.append(signed)
    return serialize(root)


def xsw5(xml: bytes) -> bytes:
    """Assertion signature: the Signature moved onto the forged Assertion, an unsigned copy of
    the original appended at the end of the Response."""
    root = parse(xml)
    signed = root.find("saml:Assertion", NS)
    sig = signed.find("ds:Signature", NS)
    forged = evil_copy(signed)
    forged.insert(1, copy.deepcopy(sig))
    signed.remove(sig)
    root.replace(signed, forged)
    root.append(signed)
    return serialize(root)


def xsw6(xml: bytes) -> bytes:
    """Assertion signature: the forged Assertion keeps the original ID and carries the Signature,
    with the original inside the Signature."""
    root = parse(xml)
    signed = root.find("saml:Assertion", NS)
    sig = signed.find("ds:Signature", NS)
    forged = evil_copy(signed, new_id=None)
    signed.remove(sig)
    root.replace(signed, forged)
    forged.insert(1, sig)
    sig.append(signed)
    return serialize(root)


def xsw7(xml: bytes) -> bytes:
    """Assertion signature: the signed original hidden in an Extensions element, a forged
    Assertion where it was."""
    root = parse(xml)
    signed = root.find("saml:Assertion", NS)
    forged = evil_copy(signed)
    root.replace(signed, forged)
    extensions = etree.Element(f"{{{SAMLP}}}Extensions")
    extensions.append(signed)
    root.find("saml:Issuer", NS).addnext(extensions)
    return serialize(root)


def xsw8(xml: bytes) -> bytes:
    """Assertion signature: the forged Assertion carries the Signature, with the original
    (unsigned) inside a ds:Object of that Signature."""
    root = parse(xml)
    signed = root.find("saml:Assertion", NS)
    sig = signed.find("ds:Signature", NS)
    signed.remove(sig)
    forged = evil_copy(signed)
    root.replace(signed, forged)
    obj = etree.SubElement(sig, f"{{{DS}}}Object")
    obj.append(signed)
    forged.insert(1, sig)
    return serialize(root)


@pytest.mark.parametrize(
    ("attack", "sign_response", "code"),
    [
        (xsw1, True, "signature-reference"),
        (xsw2, True, "signature-reference"),
        (xsw3, False, "assertion-count"),
        (xsw4, False, "signature-location"),
        (xsw5, False, "assertion-count"),
        (xsw6, False, "duplicate-id"),
        (xsw7, False, "signature-location"),
        (xsw8, False, "signature-reference"),
    ],
    ids=["XSW1", "XSW2", "XSW3", "XSW4", "XSW5", "XSW6", "XSW7", "XSW8"],
)
async def test_signature_wrapping_is_refused(
    connector: SAMLConnector,
    saml_idp: SamlIdpHarness,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
    attack: Callable[[bytes], bytes],
    sign_response: bool,
    code: str,
) -> None:
    redirect = await start(connector)
    genuine = saml_idp.idp.respond(
        saml_request(redirect),
        sign_response=sign_response,
        sign_assertion=not sign_response,
    )
    forged = attack(genuine)
    assert b"admin-0000" in forged
    await refused(connector, redirect, callback(redirect, forged), caplog, code)
    # The genuine response still works: the refusal was about the wrapping, not the setup.
    identity = await connector.handle_callback(
        GROUPS, callback(redirect, genuine), redirect.connector_state
    )
    assert identity.user_id == "alice-0001"


@pytest.mark.parametrize(
    ("attack", "sign_response"),
    [
        (xsw1, True),
        (xsw2, True),
        (xsw3, False),
        (xsw4, False),
        (xsw5, False),
        (xsw6, False),
        (xsw7, False),
        (xsw8, False),
    ],
    ids=["XSW1", "XSW2", "XSW3", "XSW4", "XSW5", "XSW6", "XSW7", "XSW8"],
)
async def test_signature_wrapping_fails_even_without_the_structural_guards(
    connector: SAMLConnector,
    saml_idp: SamlIdpHarness,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    attack: Callable[[bytes], bytes],
    sign_response: bool,
) -> None:
    # The guards above name the attack early; the defence itself is reading only the subtree
    # signxml verified. With the guards off, every wrapping must still fail or yield the user
    # the IdP actually signed for -- never the forged one.
    for guard in (
        "_guard_unique_ids",
        "_guard_signature_places",
        "_guard_reference",
        "_guard_assertion_count",
    ):
        monkeypatch.setattr(SAMLConnector, guard, staticmethod(lambda *_: None))
    redirect = await start(connector)
    genuine = saml_idp.idp.respond(
        saml_request(redirect),
        sign_response=sign_response,
        sign_assertion=not sign_response,
    )
    try:
        identity = await connector.handle_callback(
            GROUPS, callback(redirect, attack(genuine)), redirect.connector_state
        )
    except ConnectorError:
        return
    assert identity.user_id == "alice-0001"


async def test_tampered_signed_assertion_fails_the_digest(
    connector: SAMLConnector,
    saml_idp: SamlIdpHarness,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    redirect = await start(connector)
    root = parse(saml_idp.idp.respond(saml_request(redirect), sign_response=False))
    root.find("saml:Assertion/saml:Subject/saml:NameID", NS).text = "admin-0000"
    await refused(
        connector, redirect, callback(redirect, serialize(root)), caplog, "signature", "Digest"
    )


async def test_nameid_comment_injection_is_refused(
    connector: SAMLConnector,
    saml_idp: SamlIdpHarness,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The attacker owns "admin@example.com.evil.com" at the IdP and gets it signed; a comment
    # is outside exclusive c14n, so the signature still verifies after it is inserted.
    redirect = await start(connector)
    genuine = saml_idp.idp.respond(saml_request(redirect), name_id="admin@example.com.evil.com")
    root = parse(genuine)
    name_id = root.find("saml:Assertion/saml:Subject/saml:NameID", NS)
    name_id.text = "admin@example.com"
    comment = etree.Comment("")
    comment.tail = ".evil.com"
    name_id.append(comment)
    injected = serialize(root)
    assert b"admin@example.com<!---->.evil.com" in injected

    # A reader that stops at the comment sees the victim; ours reads the whole value.
    injected_name_id = parse(injected).find("saml:Assertion/saml:Subject/saml:NameID", NS)
    assert injected_name_id.text == "admin@example.com"
    assert text_content(injected_name_id) == "admin@example.com.evil.com"

    await refused(connector, redirect, callback(redirect, injected), caplog, "comment")


XXE = (
    b'<?xml version="1.0"?>\n<!DOCTYPE samlp:Response [\n'
    b'  <!ENTITY xxe SYSTEM "file:///etc/passwd">\n]>\n'
)
BILLION_LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n<!ENTITY lol "lol">\n'
    + b"".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">\n'.encode()
        for i in range(1, 10)
    )
    + b"]>\n"
)


def _with_prolog(xml: bytes, prolog: bytes, entity: str) -> bytes:
    root = parse(xml)
    root.find("saml:Assertion/saml:Subject/saml:NameID", NS).text = "PLACEHOLDER"
    body = etree.tostring(root).replace(b"PLACEHOLDER", f"&{entity};".encode())
    return prolog + body


async def test_external_entity_is_refused(
    connector: SAMLConnector,
    saml_idp: SamlIdpHarness,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    redirect = await start(connector)
    xml = _with_prolog(saml_idp.idp.respond(saml_request(redirect)), XXE, "xxe")
    await refused(connector, redirect, callback(redirect, xml), caplog, "doctype")


async def test_external_entity_hidden_from_a_byte_search_is_refused_by_the_parser(
    connector: SAMLConnector,
    saml_idp: SamlIdpHarness,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    # UTF-16 hides "<!DOCTYPE" from the byte pre-check; the parser settings and the docinfo
    # check must catch it, and /etc/passwd must never be read into the tree.
    redirect = await start(connector)
    xml = _with_prolog(saml_idp.idp.respond(saml_request(redirect)), XXE, "xxe")
    utf16 = xml.replace(b'<?xml version="1.0"?>', b'<?xml version="1.0" encoding="UTF-16"?>')
    encoded = utf16.decode().encode("utf-16")
    assert b"<!DOCTYPE" not in encoded
    await refused(connector, redirect, callback(redirect, encoded), caplog, "doctype")


async def test_billion_laughs_is_refused(
    connector: SAMLConnector,
    saml_idp: SamlIdpHarness,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    redirect = await start(connector)
    xml = _with_prolog(saml_idp.idp.respond(saml_request(redirect)), BILLION_LAUGHS, "lol9")
    await refused(connector, redirect, callback(redirect, xml), caplog, "doctype")


async def test_plain_doctype_is_refused(
    connector: SAMLConnector,
    saml_idp: SamlIdpHarness,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    redirect = await start(connector)
    xml = saml_idp.idp.respond(saml_request(redirect))
    doc = xml.replace(b"<ns0:Response", b"<!DOCTYPE Response>\n<ns0:Response", 1)
    await refused(connector, redirect, callback(redirect, doc), caplog, "doctype")


async def test_oversize_response_is_refused_before_decoding(
    connector: SAMLConnector,
    caplog: pytest.LogCaptureFixture,
) -> None:
    redirect = await start(connector)
    assert redirect.post_form is not None
    params = {
        "SAMLResponse": "A" * (MAX_RESPONSE_BYTES + 4),
        "RelayState": redirect.post_form["RelayState"],
    }
    await refused(connector, redirect, params, caplog, "size")


async def test_unsigned_assertion_in_a_signed_response_for_another_audience_is_refused(
    connector: SAMLConnector,
    saml_idp: SamlIdpHarness,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    redirect = await start(connector)
    xml = saml_idp.idp.respond(
        saml_request(redirect),
        sp_entity_id=OTHER_SP_ENTITY_ID,
        sign_response=True,
        sign_assertion=False,
    )
    await refused(
        connector, redirect, callback(redirect, xml), caplog, "audience", OTHER_SP_ENTITY_ID
    )


async def test_unsigned_response_is_refused(
    connector: SAMLConnector,
    saml_idp: SamlIdpHarness,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    redirect = await start(connector)
    xml = saml_idp.idp.respond(saml_request(redirect), sign_response=False, sign_assertion=False)
    await refused(connector, redirect, callback(redirect, xml), caplog, "unsigned")


async def test_response_signed_by_another_certificate_is_refused(
    connector: SAMLConnector,
    saml_idp: SamlIdpHarness,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    redirect = await start(connector)
    xml = saml_idp.rogue.respond(saml_request(redirect))
    await refused(connector, redirect, callback(redirect, xml), caplog, "untrusted-cert")


async def test_signing_certificate_issued_by_the_configured_ca_is_accepted(
    make_connector: Factory,
    saml_idp: SamlIdpHarness,  # noqa: F811
) -> None:
    connector = make_connector(caData=base64.b64encode(saml_idp.ca.pem).decode())
    redirect = await start(connector)
    xml = saml_idp.issued.respond(saml_request(redirect))
    identity = await connector.handle_callback(
        GROUPS, callback(redirect, xml), redirect.connector_state
    )
    assert identity.user_id == "alice-0001"


async def test_signing_certificate_from_another_ca_is_refused(
    make_connector: Factory,
    saml_idp: SamlIdpHarness,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    bundle = saml_idp.other_ca.pem + saml_idp.idp.cert_pem
    connector = make_connector(caData=base64.b64encode(bundle).decode())
    redirect = await start(connector)
    xml = saml_idp.issued.respond(saml_request(redirect))
    await refused(connector, redirect, callback(redirect, xml), caplog, "untrusted-cert")


async def test_response_signed_by_another_key_without_keyinfo_is_refused(
    connector: SAMLConnector,
    saml_idp: SamlIdpHarness,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Without a certificate to compare, the configured one is tried and the math must fail.
    redirect = await start(connector)
    root = parse(saml_idp.rogue.respond(saml_request(redirect), sign_assertion=False))
    sig = root.find("ds:Signature", NS)
    sig.remove(sig.find("ds:KeyInfo", NS))
    await refused(
        connector,
        redirect,
        callback(redirect, serialize(root)),
        caplog,
        "signature",
        "Signature verification failed",
    )


async def test_expired_assertion_is_refused(
    connector: SAMLConnector,
    saml_idp: SamlIdpHarness,  # noqa: F811
    clock: FrozenClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    redirect = await start(connector)
    xml = saml_idp.idp.respond(saml_request(redirect))
    clock.advance(5 * 60 + 31)  # the IdP's 5-minute lifetime plus the 30 s skew
    await refused(connector, redirect, callback(redirect, xml), caplog, "expired")


async def test_assertion_within_the_clock_skew_is_accepted(
    connector: SAMLConnector,
    saml_idp: SamlIdpHarness,  # noqa: F811
    clock: FrozenClock,
) -> None:
    redirect = await start(connector)
    xml = saml_idp.idp.respond(saml_request(redirect))
    clock.advance(5 * 60 + 20)
    identity = await connector.handle_callback(
        GROUPS, callback(redirect, xml), redirect.connector_state
    )
    assert identity.user_id == "alice-0001"


async def test_assertion_from_the_future_is_refused(
    connector: SAMLConnector,
    saml_idp: SamlIdpHarness,  # noqa: F811
    clock: FrozenClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    redirect = await start(connector)
    xml = saml_idp.idp.respond(saml_request(redirect))
    clock.advance(-120)
    await refused(connector, redirect, callback(redirect, xml), caplog, "not-yet-valid")


async def test_wrong_audience_is_refused(
    connector: SAMLConnector,
    saml_idp: SamlIdpHarness,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    redirect = await start(connector)
    xml = saml_idp.idp.respond(saml_request(redirect), sp_entity_id=OTHER_SP_ENTITY_ID)
    await refused(connector, redirect, callback(redirect, xml), caplog, "audience")


async def test_wrong_destination_is_refused(
    connector: SAMLConnector,
    saml_idp: SamlIdpHarness,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    redirect = await start(connector)
    xml = saml_idp.idp.respond(saml_request(redirect), destination="https://evil.example/acs")
    await refused(
        connector, redirect, callback(redirect, xml), caplog, "destination", "evil.example"
    )


async def test_wrong_recipient_is_refused(
    connector: SAMLConnector,
    saml_idp: SamlIdpHarness,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Only the assertion signed: the envelope's Destination is not read, the Recipient is.
    redirect = await start(connector)
    xml = saml_idp.idp.respond(
        saml_request(redirect),
        destination="https://evil.example/acs",
        sign_response=False,
    )
    await refused(connector, redirect, callback(redirect, xml), caplog, "recipient", "evil.example")


@pytest.mark.parametrize("sign_response", [True, False], ids=["response", "assertion"])
async def test_wrong_in_response_to_is_refused(
    connector: SAMLConnector,
    saml_idp: SamlIdpHarness,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
    sign_response: bool,
) -> None:
    redirect = await start(connector)
    xml = saml_idp.idp.respond(
        saml_request(redirect),
        in_response_to="_someone-elses-request",
        sign_response=sign_response,
    )
    await refused(
        connector, redirect, callback(redirect, xml), caplog, "in-response-to", "_someone-elses"
    )


async def test_response_to_another_login_is_refused(
    connector: SAMLConnector,
    saml_idp: SamlIdpHarness,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A genuine response to login A presented with login B's state: InResponseTo binds it.
    first = await start(connector, state="login-a")
    second = await start(connector, state="login-b")
    xml = saml_idp.idp.respond(saml_request(first))
    await refused(connector, second, callback(second, xml), caplog, "in-response-to")


async def test_relay_state_must_match_the_login(
    connector: SAMLConnector,
    saml_idp: SamlIdpHarness,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    redirect = await start(connector, state="login-a")
    xml = saml_idp.idp.respond(saml_request(redirect))
    params = {"SAMLResponse": b64(xml), "RelayState": "login-b"}
    await refused(connector, redirect, params, caplog, "relay-state")


@pytest.mark.parametrize(
    ("sign", "code", "detail"),
    [(True, "status", "account locked"), (False, "unsigned", "Responder")],
    ids=["signed", "unsigned"],
)
async def test_idp_error_status_is_refused_with_its_status_logged(
    connector: SAMLConnector,
    saml_idp: SamlIdpHarness,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
    sign: bool,
    code: str,
    detail: str,
) -> None:
    redirect = await start(connector)
    xml = saml_idp.idp.error_response(saml_request(redirect), "account locked", sign=sign)
    await refused(connector, redirect, callback(redirect, xml), caplog, code, detail)


async def test_replayed_assertion_is_refused(
    connector: SAMLConnector,
    saml_idp: SamlIdpHarness,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    redirect = await start(connector)
    xml = saml_idp.idp.respond(saml_request(redirect))
    await connector.handle_callback(GROUPS, callback(redirect, xml), redirect.connector_state)
    await refused(connector, redirect, callback(redirect, xml), caplog, "replay")


async def test_replay_is_refused_by_another_replica_sharing_the_database(
    make_connector: Factory,
    saml_idp: SamlIdpHarness,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    database = str(tmp_path / "portcullis.db")
    storage_a, storage_b = SQLiteStorage(database), SQLiteStorage(database)
    try:
        replica_a = make_connector(storage_=storage_a)
        replica_b = make_connector(storage_=storage_b)
        redirect = await start(replica_a)
        xml = saml_idp.idp.respond(saml_request(redirect))
        await replica_a.handle_callback(GROUPS, callback(redirect, xml), redirect.connector_state)
        await refused(replica_b, redirect, callback(redirect, xml), caplog, "replay")
    finally:
        storage_a.close()
        storage_b.close()


async def test_missing_or_garbled_response_is_refused(
    connector: SAMLConnector,
    caplog: pytest.LogCaptureFixture,
) -> None:
    redirect = await start(connector)
    assert redirect.post_form is not None
    relay = redirect.post_form["RelayState"]
    await refused(connector, redirect, {"RelayState": relay}, caplog, "missing")
    await refused(
        connector, redirect, {"SAMLResponse": "%%%", "RelayState": relay}, caplog, "base64"
    )
    not_xml = b64(b"<samlp:Response")
    await refused(
        connector, redirect, {"SAMLResponse": not_xml, "RelayState": relay}, caplog, "xml"
    )


# -- configuration ---------------------------------------------------------------------------------


def test_dex_config_loads_with_dex_key_names(saml_idp: SamlIdpHarness) -> None:  # noqa: F811
    config = SAMLConfig.model_validate(
        dex_config(saml_idp, groupsDelim=",", allowedGroups=["a"], filterGroups=True)
    )
    assert config.sso_url == saml_idp.sso_url
    assert config.nameid_format == "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
    assert config.audience == SP_ENTITY_ID
    assert config.allowed_groups == ("a",)
    without_entity = SAMLConfig.model_validate(dex_config(saml_idp, entityIssuer=None))
    assert without_entity.audience == SP_ACS_URL  # Dex falls back to the redirect URI


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"ssoURL": None}, "ssoURL"),
        ({"usernameAttr": None}, "usernameAttr"),
        ({"emailAttr": None}, "emailAttr"),
        ({"redirectURI": None}, "redirectURI"),
        ({"caData": None}, "exactly one of 'ca'"),
        ({"ca": "/etc/idp.pem"}, "exactly one of 'ca'"),
        ({"nameIDPolicyFormat": "bogus"}, "unknown NameID format"),
        ({"caData": "not base64!"}, "caData must be the base64"),
        ({"signedAuthnRequests": True}, "signedAuthnRequests"),
    ],
)
def test_bad_config_is_refused_naming_the_key(
    saml_idp: SamlIdpHarness,  # noqa: F811
    overrides: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(ValidationError) as raised:
        SAMLConfig.model_validate(dex_config(saml_idp, **overrides))
    assert message in str(raised.value)


def test_ca_file_is_read_at_open(
    saml_idp: SamlIdpHarness,  # noqa: F811
    clock: FrozenClock,
    tmp_path: Path,
) -> None:
    env = ConnectorEnv(MemoryStorage(), clock, "https://portcullis.test/dex", False)
    pem = tmp_path / "idp.pem"
    pem.write_bytes(saml_idp.idp.cert_pem)
    config = SAMLConfig.model_validate(dex_config(saml_idp, caData=None, ca=str(pem)))
    assert isinstance(open_saml("saml", "SAML", "saml", config, env), SAMLConnector)

    missing = SAMLConfig.model_validate(dex_config(saml_idp, caData=None, ca=str(tmp_path / "no")))
    with pytest.raises(ValueError, match="ca: cannot read"):
        open_saml("saml", "SAML", "saml", missing, env)

    pem.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(ValueError, match="not a valid certificate"):
        open_saml("saml", "SAML", "saml", config, env)


def test_skip_signature_validation_is_refused_in_fips_mode(
    make_connector: Factory,
) -> None:
    with pytest.raises(ValueError, match="insecureSkipSignatureValidation is refused in FIPS"):
        make_connector(fips=True, caData=None, insecureSkipSignatureValidation=True)


async def test_skip_signature_validation_outside_fips_is_logged_loudly_and_still_checks(
    make_connector: Factory,
    saml_idp: SamlIdpHarness,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        connector = make_connector(caData=None, insecureSkipSignatureValidation=True)
    assert any(
        r.levelno == logging.CRITICAL and "NOT verified" in r.getMessage() for r in caplog.records
    )
    redirect = await start(connector)
    unsigned = saml_idp.idp.respond(
        saml_request(redirect), sign_response=False, sign_assertion=False
    )
    identity = await connector.handle_callback(
        GROUPS, callback(redirect, unsigned), redirect.connector_state
    )
    assert identity.user_id == "alice-0001"
    # The hardened parsing and the assertion checks still apply.
    redirect = await start(connector)
    other = saml_idp.idp.respond(
        saml_request(redirect), sp_entity_id=OTHER_SP_ENTITY_ID, sign_response=False
    )
    await refused(connector, redirect, callback(redirect, other), caplog, "audience")


async def test_authn_request_is_not_injectable_through_config(
    make_connector: Factory,
) -> None:
    connector = make_connector(entityIssuer='urn:x"><evil/>&amp;')
    redirect = await start(connector)
    request = base64.b64decode(saml_request(redirect))
    root = etree.fromstring(request)
    assert root.find("saml:Issuer", NS).text == 'urn:x"><evil/>&amp;'
    assert root.find(".//evil") is None
    assert root.get("ID") == request_id(redirect)
