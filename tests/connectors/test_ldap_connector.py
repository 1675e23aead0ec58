"""The ``ldap`` connector against a real OpenLDAP (tests/support/slapd.py).

Every test talks to the session's slapd over loopback: plain LDAP, LDAPS and StartTLS with real
certificates, binds checked by the directory itself, changes made with OpenLDAP's own
``ldapmodify`` between a login and a refresh. The dead-directory tests use a closed port and a
socket that accepts connections but never answers (a black-holed server).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from portcullis.clock import SystemClock
from portcullis.connectors import ldap as ldap_module
from portcullis.connectors.base import ConnectorEnv, ConnectorError, Scopes
from portcullis.connectors.ldap import CONNECTOR_TYPE, LDAPConfig, LDAPConnector, open_ldap
from portcullis.storage.memory import MemoryStorage
from portcullis.storage.models import Identity
from pydantic import ValidationError

from tests.support.slapd import (
    GROUPS_DN,
    PASSWORDS,
    PEOPLE_DN,
    SERVICE_PASSWORD,
    SlapdServer,
)

pytestmark = pytest.mark.anyio

REPO_ROOT = Path(__file__).resolve().parents[2]
GROUPS = Scopes(groups=True, offline_access=True)
NO_GROUPS = Scopes(groups=False, offline_access=True)


def connector(config: dict[str, Any], **kwargs: Any) -> LDAPConnector:
    return LDAPConnector(
        "ldap", "Corporate LDAP", "ldap", LDAPConfig.model_validate(config), **kwargs
    )


@pytest.fixture
def plain(slapd_server: SlapdServer) -> LDAPConnector:
    return connector(slapd_server.config())


@pytest.fixture
def fresh_user(slapd_server: SlapdServer) -> Iterator[tuple[str, str, str]]:
    """A user of its own for tests that change the directory: (uid, DN, password)."""
    uid = f"temp-{secrets.token_hex(4)}"
    dn = f"uid={uid},{PEOPLE_DN}"
    password = secrets.token_urlsafe(12)
    slapd_server.modify(
        f"dn: {dn}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: Temp {uid}\n"
        f"sn: Temp\nmail: {uid}@example.org\nuserPassword: {password}\n"
    )
    yield uid, dn, password
    with contextlib.suppress(RuntimeError):  # unless the test deleted it
        slapd_server.delete(dn)


def add_group(server: SlapdServer, name: str, member_dn: str) -> str:
    dn = f"cn={name},{GROUPS_DN}"
    server.modify(
        f"dn: {dn}\nchangetype: add\nobjectClass: groupOfNames\ncn: {name}\nmember: {member_dn}\n"
    )
    return dn


# --------------------------------------------------------------------------------------------
# Logging in
# --------------------------------------------------------------------------------------------


async def test_login_maps_attributes_and_collects_dn_and_posix_groups(
    plain: LDAPConnector,
) -> None:
    identity = await plain.login(GROUPS, "jane", PASSWORDS["jane"])

    assert identity is not None
    assert identity.user_id == "jane"
    assert identity.username == "Jane Doe"
    assert identity.preferred_username == "jane"
    assert identity.email == "jane@example.org"
    assert identity.email_verified is True
    # groupOfNames by DN (admins, developers) and posixGroup by uid (ops).
    assert sorted(identity.groups) == ["admins", "developers", "ops"]
    assert plain.prompt == "Directory username"


async def test_login_without_groups_scope_asks_for_no_groups(
    plain: LDAPConnector, slapd_server: SlapdServer
) -> None:
    before = slapd_server.logs().count(f'base="{GROUPS_DN}"')
    identity = await plain.login(NO_GROUPS, "jane", PASSWORDS["jane"])
    assert identity is not None
    assert identity.groups == ()
    assert slapd_server.logs().count(f'base="{GROUPS_DN}"') == before


async def test_wrong_password_and_unknown_user_are_both_just_refused(
    plain: LDAPConnector,
) -> None:
    assert await plain.login(GROUPS, "jane", PASSWORDS["john"]) is None
    assert await plain.login(GROUPS, "jane", PASSWORDS["jane"] + " ") is None
    assert await plain.login(GROUPS, "nobody-here", PASSWORDS["jane"]) is None


@pytest.mark.parametrize("username", ["jane", "", "*", "nobody"])
async def test_empty_password_never_reaches_a_bind(
    plain: LDAPConnector, slapd_server: SlapdServer, username: str
) -> None:
    accepted_before = slapd_server.logs().count(" ACCEPT from ")
    binds_before = slapd_server.bind_count(f"uid=jane,{PEOPLE_DN}")

    assert await plain.login(GROUPS, username, "") is None

    # Not one connection: the guard sits before any network traffic.
    assert slapd_server.logs().count(" ACCEPT from ") == accepted_before
    assert slapd_server.bind_count(f"uid=jane,{PEOPLE_DN}") == binds_before


async def test_login_by_any_of_several_username_attributes(slapd_server: SlapdServer) -> None:
    config = slapd_server.config()
    config["userSearch"] = {**config["userSearch"], "username": ["uid", "mail"]}
    conn = connector(config)
    by_mail = await conn.login(GROUPS, "john@example.org", PASSWORDS["john"])
    by_uid = await conn.login(GROUPS, "john", PASSWORDS["john"])
    assert by_mail is not None
    assert by_uid is not None
    assert by_mail.user_id == by_uid.user_id == "john"


async def test_username_matching_several_entries_is_an_error_not_a_login(
    slapd_server: SlapdServer,
) -> None:
    config = slapd_server.config()
    config["userSearch"] = {**config["userSearch"], "username": "mail"}
    with pytest.raises(ConnectorError, match="not set up correctly"):
        await connector(config).login(GROUPS, "twins@example.org", PASSWORDS["twin"])


async def test_missing_required_attribute_fails_clearly(plain: LDAPConnector) -> None:
    with pytest.raises(ConnectorError, match="not set up correctly"):
        await plain.login(GROUPS, "nomail", PASSWORDS["nomail"])


async def test_email_suffix_builds_the_address_from_the_name_attribute(
    slapd_server: SlapdServer,
) -> None:
    config = slapd_server.config()
    config["userSearch"] = {**config["userSearch"], "nameAttr": "uid", "emailSuffix": "corp.test"}
    identity = await connector(config).login(GROUPS, "nomail", PASSWORDS["nomail"])
    assert identity is not None
    assert identity.email == "nomail@corp.test"


async def test_user_search_scope_one_only_sees_direct_children(slapd_server: SlapdServer) -> None:
    config = slapd_server.config()
    config["userSearch"] = {**config["userSearch"], "baseDN": "dc=example,dc=org", "scope": "one"}
    assert await connector(config).login(GROUPS, "jane", PASSWORDS["jane"]) is None
    config["userSearch"]["scope"] = "sub"
    assert await connector(config).login(GROUPS, "jane", PASSWORDS["jane"]) is not None


async def test_without_bind_dn_the_search_is_anonymous(
    slapd_server: SlapdServer, caplog: pytest.LogCaptureFixture
) -> None:
    # This directory hides everything from anonymous clients (slapd then answers noSuchObject
    # for the base itself): a configuration problem, reported as one, with no user bind.
    config = slapd_server.config()
    del config["bindDN"], config["bindPW"]
    binds_before = slapd_server.bind_count(f"uid=jane,{PEOPLE_DN}")
    with caplog.at_level(logging.ERROR), pytest.raises(ConnectorError, match="not set up"):
        await connector(config).login(GROUPS, "jane", PASSWORDS["jane"])
    assert "not visible to anonymous clients" in caplog.text
    assert slapd_server.bind_count(f"uid=jane,{PEOPLE_DN}") == binds_before


async def test_user_search_base_that_does_not_exist_is_a_configuration_error(
    slapd_server: SlapdServer, caplog: pytest.LogCaptureFixture
) -> None:
    config = slapd_server.config()
    config["userSearch"] = {**config["userSearch"], "baseDN": "ou=Nobody,dc=example,dc=org"}
    with caplog.at_level(logging.ERROR), pytest.raises(ConnectorError, match="not set up"):
        await connector(config).login(GROUPS, "jane", PASSWORDS["jane"])
    assert "'ou=Nobody,dc=example,dc=org' does not exist" in caplog.text


def test_tls_keys_with_insecure_no_ssl_are_named_in_a_warning(
    slapd_server: SlapdServer, caplog: pytest.LogCaptureFixture
) -> None:
    config = slapd_server.config(insecureSkipVerify=True, rootCA=str(slapd_server.tls.ca))
    with caplog.at_level(logging.WARNING):
        connector(config)
    assert "insecureSkipVerify, rootCA ignored because insecureNoSSL" in caplog.text


# --------------------------------------------------------------------------------------------
# Injection
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "username",
    [
        "*",
        "j*",
        "*)(uid=*",
        "admin)(|(uid=*",
        "jane)(uid=*",
        "jane)(|(objectClass=*",
        "\\6a\\61\\6e\\65",  # "jane" as filter escapes: must stay literal backslashes
        "jane\x00",
        "*)(&",
    ],
)
async def test_filter_injection_matches_nothing(
    plain: LDAPConnector, slapd_server: SlapdServer, username: str
) -> None:
    binds_before = slapd_server.bind_count(f"uid=jane,{PEOPLE_DN}")
    for password in (PASSWORDS["jane"], PASSWORDS["john"]):
        assert await plain.login(GROUPS, username, password) is None
    # No user matched, so no user bind was even attempted.
    assert slapd_server.bind_count(f"uid=jane,{PEOPLE_DN}") == binds_before


async def test_injection_bait_user_logs_in_as_exactly_itself(
    plain: LDAPConnector, slapd_server: SlapdServer
) -> None:
    identity = await plain.login(GROUPS, "*)(uid=*", PASSWORDS["*)(uid=*"])
    assert identity is not None
    assert identity.user_id == "*)(uid=*"
    assert identity.username == "bait"
    # What went over the wire: the RFC 4515 escapes, not a filter fragment.
    assert "(uid=\\2a\\29\\28uid=\\2a)" in slapd_server.logs().lower()
    # And its password is not anyone else's.
    assert await plain.login(GROUPS, "*)(uid=*", PASSWORDS["jane"]) is None


# --------------------------------------------------------------------------------------------
# Groups
# --------------------------------------------------------------------------------------------


async def test_nested_groups_are_walked_through_recursion_group_attr(
    slapd_server: SlapdServer,
) -> None:
    config = slapd_server.config()
    config["groupSearch"] = {
        "baseDN": GROUPS_DN,
        "filter": "(objectClass=groupOfNames)",
        "userMatchers": [{"userAttr": "DN", "groupAttr": "member", "recursionGroupAttr": "member"}],
        "nameAttr": "cn",
    }
    identity = await connector(config).login(GROUPS, "john", PASSWORDS["john"])
    assert identity is not None
    # developers -> engineering -> staff, and the loop-a <-> loop-b cycle, each once.
    assert sorted(identity.groups) == ["developers", "engineering", "loop-a", "loop-b", "staff"]
    assert len(identity.groups) == len(set(identity.groups))


async def test_without_recursion_only_direct_groups(plain: LDAPConnector) -> None:
    identity = await plain.login(GROUPS, "john", PASSWORDS["john"])
    assert identity is not None
    assert sorted(identity.groups) == ["developers", "loop-b"]


async def test_dex_legacy_user_attr_group_attr_form(slapd_server: SlapdServer) -> None:
    config = slapd_server.config()
    config["groupSearch"] = {
        "baseDN": GROUPS_DN,
        "filter": "(objectClass=posixGroup)",
        "userAttr": "uid",
        "groupAttr": "memberUid",
        "nameAttr": "cn",
    }
    identity = await connector(config).login(GROUPS, "jane", PASSWORDS["jane"])
    assert identity is not None
    assert identity.groups == ("ops",)


async def test_missing_group_base_means_no_groups(slapd_server: SlapdServer) -> None:
    config = slapd_server.config()
    config["groupSearch"] = {**config["groupSearch"], "baseDN": "ou=Nowhere,dc=example,dc=org"}
    identity = await connector(config).login(GROUPS, "jane", PASSWORDS["jane"])
    assert identity is not None
    assert identity.groups == ()


# --------------------------------------------------------------------------------------------
# TLS
# --------------------------------------------------------------------------------------------


def _ldaps(server: SlapdServer, **overrides: Any) -> dict[str, Any]:
    config = server.config(host=f"127.0.0.1:{server.ldaps_port}")
    del config["insecureNoSSL"]
    config.update(overrides)
    return config


async def test_ldaps_with_root_ca_file(slapd_server: SlapdServer) -> None:
    conn = connector(_ldaps(slapd_server, rootCA=str(slapd_server.tls.ca)))
    identity = await conn.login(GROUPS, "jane", PASSWORDS["jane"])
    assert identity is not None
    assert "admins" in identity.groups


async def test_ldaps_with_root_ca_data_as_dex_writes_it(slapd_server: SlapdServer) -> None:
    data = base64.b64encode(slapd_server.tls.ca.read_bytes()).decode()
    conn = connector(_ldaps(slapd_server, rootCAData=data))
    assert await conn.login(GROUPS, "jane", PASSWORDS["jane"]) is not None


async def test_start_tls_upgrades_the_plain_port(slapd_server: SlapdServer) -> None:
    before = slapd_server.logs().count("oid=1.3.6.1.4.1.1466.20037")
    config = slapd_server.config(startTLS=True, rootCA=str(slapd_server.tls.ca))
    del config["insecureNoSSL"]
    identity = await connector(config).login(GROUPS, "jane", PASSWORDS["jane"])
    assert identity is not None
    # Two connections (service account and the user's bind), each upgraded first.
    assert slapd_server.logs().count("oid=1.3.6.1.4.1.1466.20037") >= before + 2


async def test_insecure_skip_verify_accepts_an_unknown_ca(slapd_server: SlapdServer) -> None:
    conn = connector(_ldaps(slapd_server, insecureSkipVerify=True))
    assert await conn.login(GROUPS, "jane", PASSWORDS["jane"]) is not None


@pytest.mark.parametrize("trust", ["foreign", "system"])
@pytest.mark.parametrize("mode", ["ldaps", "starttls"])
async def test_certificate_from_an_untrusted_ca_is_refused(
    slapd_server: SlapdServer, caplog: pytest.LogCaptureFixture, trust: str, mode: str
) -> None:
    overrides = {"rootCA": str(slapd_server.tls.foreign_ca)} if trust == "foreign" else {}
    if mode == "ldaps":
        config = _ldaps(slapd_server, **overrides)
    else:
        config = slapd_server.config(startTLS=True, **overrides)
        del config["insecureNoSSL"]
    with (
        caplog.at_level(logging.ERROR),
        pytest.raises(ConnectorError, match="could not be reached"),
    ):
        await connector(config).login(GROUPS, "jane", PASSWORDS["jane"])
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


async def test_certificate_for_another_host_name_is_refused(
    slapd_server: SlapdServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Same server, same certificate, but reached as 127.0.0.2, which the certificate omits.
    config = _ldaps(
        slapd_server, host=f"127.0.0.2:{slapd_server.ldaps_port}", rootCA=str(slapd_server.tls.ca)
    )
    with caplog.at_level(logging.ERROR), pytest.raises(ConnectorError):
        await connector(config).login(GROUPS, "jane", PASSWORDS["jane"])
    assert "127.0.0.2" in caplog.text
    assert "mismatch" in caplog.text


async def test_client_certificate_is_presented(slapd_server: SlapdServer) -> None:
    tls = slapd_server.tls
    good = _ldaps(
        slapd_server,
        rootCA=str(tls.ca),
        clientCert=str(tls.client_cert),
        clientKey=str(tls.client_key),
    )
    assert await connector(good).login(GROUPS, "jane", PASSWORDS["jane"]) is not None
    # slapd (TLSVerifyClient try) rejects a certificate it cannot verify: proof it was sent.
    foreign = {
        **good,
        "clientCert": str(tls.foreign_client_cert),
        "clientKey": str(tls.foreign_client_key),
    }
    # (With TLS 1.3 the client learns of the rejection just after its handshake completes.)
    with pytest.raises(ConnectorError, match=r"could not be reached|failed to answer"):
        await connector(foreign).login(GROUPS, "jane", PASSWORDS["jane"])


# --------------------------------------------------------------------------------------------
# Refresh
# --------------------------------------------------------------------------------------------


async def test_refresh_picks_up_group_changes(
    plain: LDAPConnector, slapd_server: SlapdServer, fresh_user: tuple[str, str, str]
) -> None:
    uid, dn, password = fresh_user
    identity = await plain.login(GROUPS, uid, password)
    assert identity is not None
    assert identity.groups == ()
    assert identity.connector_data  # what refresh needs, recorded at login

    group = f"team-{secrets.token_hex(3)}"
    group_dn = add_group(slapd_server, group, dn)
    try:
        refreshed = await plain.refresh(GROUPS, identity)
        assert refreshed.groups == (group,)
        assert refreshed.user_id == identity.user_id

        slapd_server.modify(
            f"dn: {group_dn}\nchangetype: modify\nreplace: member\nmember: uid=john,{PEOPLE_DN}\n"
        )
        again = await plain.refresh(GROUPS, refreshed)
        assert again.groups == ()
    finally:
        slapd_server.delete(group_dn)


async def test_refresh_picks_up_attribute_changes(
    plain: LDAPConnector, slapd_server: SlapdServer, fresh_user: tuple[str, str, str]
) -> None:
    uid, dn, password = fresh_user
    identity = await plain.login(NO_GROUPS, uid, password)
    assert identity is not None
    slapd_server.modify(
        f"dn: {dn}\nchangetype: modify\nreplace: mail\nmail: new-{uid}@example.org\n"
    )
    refreshed = await plain.refresh(NO_GROUPS, identity)
    assert refreshed.email == f"new-{uid}@example.org"


async def test_refresh_fails_when_the_user_is_deleted(
    plain: LDAPConnector, slapd_server: SlapdServer, fresh_user: tuple[str, str, str]
) -> None:
    uid, dn, password = fresh_user
    identity = await plain.login(GROUPS, uid, password)
    assert identity is not None
    slapd_server.delete(dn)
    with pytest.raises(ConnectorError, match="no longer exists"):
        await plain.refresh(GROUPS, identity)


async def test_refresh_fails_when_the_username_now_belongs_to_another_entry(
    plain: LDAPConnector, slapd_server: SlapdServer, fresh_user: tuple[str, str, str]
) -> None:
    uid, dn, password = fresh_user
    identity = await plain.login(GROUPS, uid, password)
    assert identity is not None
    slapd_server.delete(dn)
    impostor = f"cn=impostor-{uid},{PEOPLE_DN}"
    slapd_server.modify(
        f"dn: {impostor}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: {uid}\n"
        f"cn: Impostor\nsn: I\nmail: x@example.org\nuserPassword: whatever-123\n"
    )
    try:
        with pytest.raises(ConnectorError, match="changed since login"):
            await plain.refresh(GROUPS, identity)
    finally:
        slapd_server.delete(impostor)


async def test_refresh_fails_when_the_id_attribute_changed(
    slapd_server: SlapdServer, fresh_user: tuple[str, str, str]
) -> None:
    uid, dn, password = fresh_user
    config = slapd_server.config()
    config["userSearch"] = {**config["userSearch"], "idAttr": "cn"}
    conn = connector(config)
    identity = await conn.login(GROUPS, uid, password)
    assert identity is not None
    assert identity.user_id == f"Temp {uid}"
    slapd_server.modify(f"dn: {dn}\nchangetype: modify\nreplace: cn\ncn: Someone Else\n")
    with pytest.raises(ConnectorError, match="changed since login"):
        await conn.refresh(GROUPS, identity)


@pytest.mark.parametrize("data", [b"", b"not json", b'{"username": "jane"}', b"[1]"])
async def test_refresh_with_unusable_connector_data_is_refused(
    plain: LDAPConnector, data: bytes
) -> None:
    identity = Identity(user_id="jane", username="Jane Doe", connector_data=data)
    with pytest.raises(ConnectorError, match="log in again"):
        await plain.refresh(GROUPS, identity)


# --------------------------------------------------------------------------------------------
# A dead directory: clear errors within seconds, the event loop never blocked
# --------------------------------------------------------------------------------------------


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel completes the handshake into the listen
    backlog) and then never says a word: a hung or black-holed directory."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def _fails_fast_without_blocking(conn: LDAPConnector, limit: float) -> float:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.05)
            ticks += 1

    started = time.monotonic()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(ticker)
        with pytest.raises(ConnectorError, match=r"could not be reached|failed to answer"):
            await conn.login(GROUPS, "jane", PASSWORDS["jane"])
        tasks.cancel_scope.cancel()
    elapsed = time.monotonic() - started
    assert elapsed < limit
    # The loop kept running while the directory hung (at least half the expected ticks).
    assert ticks >= int(elapsed / 0.05 / 2)
    return elapsed


async def test_closed_port_fails_at_once(slapd_server: SlapdServer) -> None:
    config = slapd_server.config(host=f"127.0.0.1:{_closed_port()}")
    await _fails_fast_without_blocking(connector(config), limit=2.0)


@pytest.mark.parametrize("mode", ["plain", "ldaps", "starttls"])
async def test_black_holed_directory_fails_within_seconds(
    slapd_server: SlapdServer, blackhole: int, mode: str
) -> None:
    config = slapd_server.config(host=f"127.0.0.1:{blackhole}")
    if mode != "plain":
        del config["insecureNoSSL"]
        config["rootCA"] = str(slapd_server.tls.ca)
        config["startTLS"] = mode == "starttls"
    # The shipped defaults, not test-only ones: the receive timeout bounds the wait.
    elapsed = await _fails_fast_without_blocking(
        connector(config), limit=ldap_module.RECEIVE_TIMEOUT + 3
    )
    assert elapsed >= ldap_module.RECEIVE_TIMEOUT - 0.5


async def test_overall_deadline_bounds_a_login_whatever_the_socket_timeouts(
    slapd_server: SlapdServer, blackhole: int
) -> None:
    config = slapd_server.config(host=f"127.0.0.1:{blackhole}")
    conn = connector(config, receive_timeout=60, deadline=1.5)
    elapsed = await _fails_fast_without_blocking(conn, limit=3.0)
    assert elapsed >= 1.4


async def test_wrong_service_password_is_a_configuration_error(
    slapd_server: SlapdServer, caplog: pytest.LogCaptureFixture
) -> None:
    config = slapd_server.config(bindPW="not-the-service-password")
    with caplog.at_level(logging.DEBUG), pytest.raises(ConnectorError, match="not set up"):
        await connector(config).login(GROUPS, "jane", PASSWORDS["jane"])
    assert "service bind" in caplog.text
    assert "invalidCredentials" in caplog.text


async def test_secrets_never_reach_the_log(
    slapd_server: SlapdServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        conn = connector(slapd_server.config())
        await conn.login(GROUPS, "jane", PASSWORDS["jane"])
        await conn.login(GROUPS, "jane", "Wrong-Secret-Typed-7")
        await conn.login(GROUPS, "nomail-x", "Another-Secret-8")
        with pytest.raises(ConnectorError):
            await connector(slapd_server.config(bindPW="Bad-Service-Secret-9")).login(
                GROUPS, "jane", PASSWORDS["jane"]
            )
        with pytest.raises(ConnectorError):
            await connector(slapd_server.config(host=f"127.0.0.1:{_closed_port()}")).login(
                GROUPS, "jane", PASSWORDS["jane"]
            )
    logged = caplog.text + "".join(repr(r.args) for r in caplog.records)
    for secret in (
        PASSWORDS["jane"],
        "Wrong-Secret-Typed-7",
        "Another-Secret-8",
        "Bad-Service-Secret-9",
        SERVICE_PASSWORD,
    ):
        assert secret not in logged
    assert SERVICE_PASSWORD not in repr(LDAPConfig.model_validate(slapd_server.config()))


# --------------------------------------------------------------------------------------------
# Opening and configuration
# --------------------------------------------------------------------------------------------


def _env(fips_mode: bool = False) -> ConnectorEnv:
    return ConnectorEnv(
        storage=MemoryStorage(),
        clock=SystemClock(),
        issuer="https://issuer.test/dex",
        fips_mode=fips_mode,
    )


async def test_connector_type_opens_a_working_connector(slapd_server: SlapdServer) -> None:
    config = CONNECTOR_TYPE.config_model.model_validate(slapd_server.config())
    conn = CONNECTOR_TYPE.open("corp", "Corp", "ldap", config, _env())
    assert isinstance(conn, LDAPConnector)
    assert conn.id == "corp"
    assert await conn.login(GROUPS, "jane", PASSWORDS["jane"]) is not None


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"insecureNoSSL": True}, "insecureNoSSL"),
        ({"insecureSkipVerify": True}, "insecureSkipVerify"),
    ],
)
def test_fips_mode_refuses_cleartext_and_unverified_tls(
    slapd_server: SlapdServer, override: dict[str, Any], key: str
) -> None:
    config = _ldaps(slapd_server, rootCA=str(slapd_server.tls.ca), **override)
    if key == "insecureNoSSL":
        config["host"] = f"127.0.0.1:{slapd_server.ldap_port}"
    with pytest.raises(ValueError, match=f"^{key}: refused in FIPS mode"):
        open_ldap("corp", "Corp", "ldap", LDAPConfig.model_validate(config), _env(fips_mode=True))
    # Verified TLS is fine in FIPS mode.
    open_ldap(
        "corp",
        "Corp",
        "ldap",
        LDAPConfig.model_validate(_ldaps(slapd_server, rootCA=str(slapd_server.tls.ca))),
        _env(fips_mode=True),
    )


def _base() -> dict[str, Any]:
    return {
        "host": "ldap.example.com:636",
        "bindDN": "cn=svc,dc=example,dc=com",
        "bindPW": "pw",
        "userSearch": {"baseDN": "dc=example,dc=com", "username": "uid"},
    }


def _with(path: str, value: Any) -> dict[str, Any]:
    config = _base()
    *parents, last = path.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return config


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "where", "message"),
    [
        ("host", _DELETE, "host", "Field required"),
        ("host", "ldaps://ldap.example.com", "host", "without a scheme"),
        ("host", "ldap.example.com:99999", "host", "port must be 1-65535"),
        ("port", 389, "port", "Extra inputs are not permitted"),
        ("startTLS", True, "", "insecureNoSSL and startTLS"),
        ("bindPW", _DELETE, "", "bindDN needs bindPW"),
        ("bindDN", _DELETE, "", "bindPW is set but bindDN is empty"),
        ("rootCA", "/nonexistent/ca.pem", "rootCA", "cannot read /nonexistent/ca.pem"),
        ("rootCAData", "not base64!", "rootCAData", "base64"),
        ("clientCert", "/etc/hostname", "", "clientCert and clientKey must be set together"),
        ("kerberos", {"enabled": True}, "kerberos", "Kerberos (SPNEGO)"),
        ("userSearch.baseDN", _DELETE, "userSearch.baseDN", "Field required"),
        ("userSearch.username", [], "userSearch.username", "at least 1"),
        ("userSearch.username", "u(id", "userSearch.username", "not an LDAP attribute name"),
        ("userSearch.scope", "base", "userSearch.scope", "'sub' or 'one'"),
        ("userSearch.filter", "objectClass=person", "userSearch.filter", "in parentheses"),
        ("userSearch.filter", "(a=b)(c=d)", "userSearch.filter", "single filter"),
        ("userSearch.filter", "(&(a=b)", "userSearch.filter", "not a valid LDAP filter"),
        ("userSearch.emailSuffix", "@example.com", "userSearch.emailSuffix", "without '@'"),
        ("userSearch.emailSuffix", "example.com", "userSearch", "emailSuffix needs nameAttr"),
        ("userSearch.idAtr", "uid", "userSearch.idAtr", "Extra inputs are not permitted"),
        ("groupSearch", {"baseDN": "ou=g"}, "groupSearch", "nameAttr is required"),
        (
            "groupSearch",
            {"baseDN": "ou=g", "nameAttr": "cn"},
            "groupSearch",
            "userMatchers is required",
        ),
        ("groupSearch", {"nameAttr": "cn"}, "groupSearch", "baseDN is required"),
        (
            "groupSearch",
            {"baseDN": "ou=g", "nameAttr": "cn", "userAttr": "uid"},
            "groupSearch",
            "userAttr and groupAttr must be set together",
        ),
        (
            "groupSearch",
            {
                "baseDN": "ou=g",
                "nameAttr": "cn",
                "userAttr": "uid",
                "groupAttr": "memberUid",
                "userMatchers": [{"userAttr": "DN", "groupAttr": "member"}],
            },
            "groupSearch",
            "not both",
        ),
        (
            "groupSearch",
            {"baseDN": "ou=g", "nameAttr": "cn", "userMatchers": [{"userAttr": "DN"}]},
            "groupSearch.userMatchers.0.groupAttr",
            "Field required",
        ),
    ],
)
def test_config_errors_name_the_field(path: str, value: Any, where: str, message: str) -> None:
    config = _with(path, value)
    if path == "startTLS":
        config["insecureNoSSL"] = True
    with pytest.raises(ValidationError) as caught:
        LDAPConfig.model_validate(config)
    errors = caught.value.errors()
    assert len(errors) == 1, errors
    loc = ".".join(str(p) for p in errors[0]["loc"])
    assert loc == where
    assert message in errors[0]["msg"]


def test_root_ca_that_is_not_a_certificate_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("hello\n")
    with pytest.raises(ValidationError, match="holds no PEM certificate"):
        LDAPConfig.model_validate({**_base(), "rootCA": str(bogus)})


def test_defaults_follow_dex() -> None:
    config = LDAPConfig.model_validate(_base())
    assert config.user_search.id_attr == "uid"
    assert config.user_search.email_attr == "mail"
    assert config.user_search.username == ("uid",)
    conn = LDAPConnector("ldap", "LDAP", "ldap", config)
    assert conn.prompt == "Username"


def _docs_examples() -> list[dict[str, Any]]:
    text = (REPO_ROOT / "docs" / "connectors" / "ldap.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    documents = [yaml.safe_load(block) for block in blocks]
    return [
        connector["config"]
        for document in documents
        if isinstance(document, dict)
        for connector in document.get("connectors", [])
        if connector.get("type") == "ldap"
    ]


def test_every_example_in_the_docs_loads() -> None:
    examples = _docs_examples()
    assert len(examples) >= 2
    for example in examples:
        LDAPConfig.model_validate(example)
