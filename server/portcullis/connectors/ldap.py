"""The ``ldap`` connector: username and password checked by a bind against an LDAP directory.

Dex-compatible (``connector/ldap/ldap.go``): the same keys and the same two-step dance. With the
service account (``bindDN``/``bindPW``, or anonymously when both are empty) find exactly one
entry under ``userSearch.baseDN`` whose ``userSearch.username`` attribute equals the typed
username; bind *as that entry's DN with the typed password* (the directory checks the password,
we never see a hash); map attributes to the identity; then, again as the service account, find
the groups whose ``groupSearch.userMatchers[].groupAttr`` holds the user's ``userAttr`` value
(optionally walking up nested groups through ``recursionGroupAttr``).

Where Portcullis is stricter than Dex, on purpose:

* An empty password never reaches a bind. An LDAP simple bind with a DN and an empty password is
  an *unauthenticated* bind (RFC 4513 §5.1.2) that many directories answer with "success", so
  accepting it would log anyone in as anyone. Dex has the same guard; here the same reasoning
  also forbids a ``bindDN`` without ``bindPW`` at config time.
* The typed username is escaped exactly once (RFC 4515, ``escape_filter_chars``) before it goes
  into a filter, so ``*``, ``)(`` and ``\\`` match themselves and nothing else. (Dex escapes
  twice, which makes usernames containing those characters unmatchable.)
* Every network step runs in a worker thread with a connect timeout, a receive timeout and an
  overall deadline, under a per-connector limit on concurrent directory conversations: ldap3
  blocks, and a dead or black-holed directory must give a clear error in seconds instead of
  hanging the event loop or eating every worker thread.
* Certificates are checked by the standard library's OpenSSL (``ssl.SSLContext`` with hostname
  checking), not by ldap3's own name matching, so FIPS mode's OpenSSL provider does the TLS.
  In FIPS mode ``insecureNoSSL`` and ``insecureSkipVerify`` are refused: they would send
  passwords in clear or to an unauthenticated peer.
* Refresh also insists that the user's ID attribute still has the value it had at login, so a
  re-created account with the same username never inherits somebody else's session.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import ssl
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
import ldap3  # type: ignore[import-untyped]
from ldap3.core import exceptions as ldap_exc  # type: ignore[import-untyped]
from ldap3.core.tls import Tls  # type: ignore[import-untyped]
from ldap3.operation.search import parse_filter  # type: ignore[import-untyped]
from ldap3.utils.conv import escape_filter_chars  # type: ignore[import-untyped]
from ldap3.utils.dn import safe_dn  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from portcullis.connectors.base import (
    Connector,
    ConnectorEnv,
    ConnectorError,
    ConnectorType,
    PasswordConnector,
    RefreshConnector,
    Scopes,
)
from portcullis.storage.models import Identity

__all__ = ["CONNECTOR_TYPE", "LDAPConfig", "LDAPConnector", "open_ldap"]

log = logging.getLogger("portcullis.connectors.ldap")

#: Seconds to wait for the TCP connection to the directory.
CONNECT_TIMEOUT = 3
#: Seconds to wait for any one answer (TLS handshake, bind, search) once connected.
RECEIVE_TIMEOUT = 5
#: Upper bound for one whole login or refresh (several round trips), whatever the server does.
OPERATION_DEADLINE = 20.0
#: Directory conversations one connector runs at once; more wait (within the deadline).
MAX_CONCURRENT = 8
#: Nested-group walks stop after this many levels (cycles are cut by name before that).
MAX_GROUP_DEPTH = 32

# LDAP result codes (RFC 4511 §4.1.9) the connector tells apart.
_SUCCESS = 0
_SIZE_LIMIT_EXCEEDED = 4
_CONSTRAINT_VIOLATION = 19
_NO_SUCH_OBJECT = 32
_INVALID_CREDENTIALS = 49

_UNREACHABLE = "The login directory (LDAP) could not be reached. Try again in a moment."
_DIRECTORY_FAILED = "The login directory (LDAP) failed to answer. Try again in a moment."
_MISCONFIGURED = "The login directory (LDAP) is not set up correctly; contact an administrator."

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Configuration (Dex's keys, camelCase aliases; unknown keys are errors at their path)
# --------------------------------------------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


def _check_filter(value: str) -> str:
    """A configured filter is ANDed with ours as ``(&<filter>(attr=value))``: it must be one
    parenthesised, parseable filter, or the combined filter changes meaning."""
    if not value:
        return value
    text = value.strip()
    if not (text.startswith("(") and text.endswith(")")):
        raise ValueError(
            f"must be an LDAP filter in parentheses, e.g. '(objectClass=person)'; got {value!r}"
        )
    depth = 0
    for position, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0 and position != len(text) - 1:
            raise ValueError(
                f"must be a single filter; wrap several in '(&...)' or '(|...)': {value!r}"
            )
    try:
        parse_filter(
            text, None, auto_escape=False, auto_encode=True, validator=None, check_names=False
        )
    except (ldap_exc.LDAPException, ValueError, IndexError) as exc:
        raise ValueError(f"is not a valid LDAP filter: {value!r} ({exc})") from None
    return text


def _check_attribute(value: str) -> str:
    """Attribute descriptions (RFC 4512 §2.5): a name or OID with options, never a filter."""
    if value and not all(c.isalnum() or c in "-.;" for c in value):
        raise ValueError(f"not an LDAP attribute name: {value!r}")
    return value


class UserMatcher(_Section):
    """One way of linking a user to a group: the group's ``groupAttr`` holds the user's
    ``userAttr`` value (``DN`` means the user's distinguished name)."""

    user_attr: str = Field(alias="userAttr", min_length=1)
    group_attr: str = Field(alias="groupAttr", min_length=1)
    recursion_group_attr: str = Field("", alias="recursionGroupAttr")

    _attrs = field_validator("user_attr", "group_attr", "recursion_group_attr")(_check_attribute)


class UserSearch(_Section):
    base_dn: str = Field(alias="baseDN", min_length=1)
    filter: str = ""
    # Dex accepts one attribute or a list (ORed).
    username: tuple[str, ...] = Field(min_length=1)
    scope: Literal["", "sub", "one"] = ""
    id_attr: str = Field("uid", alias="idAttr", min_length=1)
    email_attr: str = Field("mail", alias="emailAttr", min_length=1)
    name_attr: str = Field("", alias="nameAttr")
    preferred_username_attr: str = Field("", alias="preferredUsernameAttr")
    email_suffix: str = Field("", alias="emailSuffix")

    @field_validator("username", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if isinstance(value, str):
            return (value,) if value else ()
        return value

    _filter = field_validator("filter")(_check_filter)

    @field_validator("username")
    @classmethod
    def _usernames(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for attr in value:
            if not attr:
                raise ValueError("attribute names must not be empty")
            _check_attribute(attr)
        return value

    _attrs = field_validator("id_attr", "email_attr", "name_attr", "preferred_username_attr")(
        _check_attribute
    )

    @field_validator("email_suffix")
    @classmethod
    def _suffix(cls, value: str) -> str:
        if "@" in value:
            raise ValueError("give the domain without '@' (e.g. 'example.com')")
        return value

    @model_validator(mode="after")
    def _suffix_needs_name(self) -> UserSearch:
        # Dex builds the address from the nameAttr value; without one it would be "@domain".
        if self.email_suffix and not self.name_attr:
            raise ValueError(
                "emailSuffix needs nameAttr (the address is <nameAttr value>@emailSuffix)"
            )
        return self


class GroupSearch(_Section):
    base_dn: str = Field("", alias="baseDN")
    filter: str = ""
    scope: Literal["", "sub", "one"] = ""
    user_matchers: tuple[UserMatcher, ...] = Field((), alias="userMatchers")
    name_attr: str = Field("", alias="nameAttr")
    # Dex's older single-matcher form, still accepted.
    user_attr: str = Field("", alias="userAttr")
    group_attr: str = Field("", alias="groupAttr")
    recursion_group_attr: str = Field("", alias="recursionGroupAttr")

    _filter = field_validator("filter")(_check_filter)
    _attrs = field_validator("name_attr", "user_attr", "group_attr", "recursion_group_attr")(
        _check_attribute
    )

    @model_validator(mode="after")
    def _consistent(self) -> GroupSearch:
        legacy = self.user_attr or self.group_attr or self.recursion_group_attr
        if legacy and self.user_matchers:
            raise ValueError(
                "set either userMatchers or the older userAttr/groupAttr pair, not both"
            )
        if legacy and not (self.user_attr and self.group_attr):
            raise ValueError("userAttr and groupAttr must be set together")
        configured = self.filter or self.name_attr or legacy or self.user_matchers
        if not self.base_dn:
            if configured:
                raise ValueError(
                    "baseDN is required when group search is configured (without it no "
                    "groups are looked up)"
                )
            return self
        if not self.name_attr:
            raise ValueError("nameAttr is required with baseDN (the attribute naming a group)")
        if not (legacy or self.user_matchers):
            raise ValueError("userMatchers is required with baseDN (how users link to groups)")
        return self

    def matchers(self) -> tuple[UserMatcher, ...]:
        if self.user_matchers:
            return self.user_matchers
        if self.user_attr:
            return (
                UserMatcher(
                    user_attr=self.user_attr,
                    group_attr=self.group_attr,
                    recursion_group_attr=self.recursion_group_attr,
                ),
            )
        return ()


def _pem_certificates(data: str, where: str) -> str:
    """Check that ``data`` holds at least one PEM certificate OpenSSL accepts."""
    if "-----BEGIN CERTIFICATE-----" not in data:
        raise ValueError(f"{where} holds no PEM certificate")
    try:
        ssl.create_default_context().load_verify_locations(cadata=data)
    except ssl.SSLError as exc:
        raise ValueError(f"{where}: certificate not usable ({exc.reason or exc})") from None
    return data


class LDAPConfig(_Section):
    """``connectors[].config`` of a ``type: ldap`` connector, with Dex's key names."""

    host: str = Field(min_length=1)
    insecure_no_ssl: bool = Field(False, alias="insecureNoSSL")
    insecure_skip_verify: bool = Field(False, alias="insecureSkipVerify")
    start_tls: bool = Field(False, alias="startTLS")
    root_ca: str = Field("", alias="rootCA")
    # Dex reads this as a JSON []byte: base64 of the PEM text.
    root_ca_data: str = Field("", alias="rootCAData")
    client_cert: str = Field("", alias="clientCert")
    client_key: str = Field("", alias="clientKey")
    bind_dn: str = Field("", alias="bindDN")
    bind_pw: SecretStr = Field(SecretStr(""), alias="bindPW")
    username_prompt: str = Field("", alias="usernamePrompt")
    user_search: UserSearch = Field(alias="userSearch")
    group_search: GroupSearch = Field(default_factory=lambda: GroupSearch(), alias="groupSearch")
    # Dex's optional Kerberos/SPNEGO single sign-on: recognised so the error says what it is.
    kerberos: dict[str, Any] | None = None

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if "://" in value:
            raise ValueError(
                "give host[:port] without a scheme (TLS is chosen by insecureNoSSL/startTLS); "
                f"got {value!r}"
            )
        _split_host(value, default_port=636)
        return value

    @field_validator("root_ca")
    @classmethod
    def _root_ca(cls, value: str) -> str:
        if value:
            try:
                text = Path(value).read_text(encoding="ascii", errors="replace")
            except OSError as exc:
                raise ValueError(f"cannot read {value}: {exc.strerror}") from None
            _pem_certificates(text, value)
        return value

    @field_validator("root_ca_data")
    @classmethod
    def _root_ca_data(cls, value: str) -> str:
        if value:
            try:
                text = base64.b64decode("".join(value.split()), validate=True).decode("ascii")
            except (binascii.Error, UnicodeDecodeError):
                raise ValueError("must be base64 of PEM certificate(s), as in Dex") from None
            _pem_certificates(text, "the decoded data")
        return value

    @field_validator("client_cert", "client_key")
    @classmethod
    def _readable(cls, value: str) -> str:
        if value and not Path(value).is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @field_validator("kerberos")
    @classmethod
    def _no_kerberos(cls, value: dict[str, Any] | None) -> None:
        if value is not None:
            raise ValueError(
                "Kerberos (SPNEGO) single sign-on is not supported by Portcullis; remove this "
                "key (users log in with their directory password)"
            )
        return

    @model_validator(mode="after")
    def _combinations(self) -> LDAPConfig:
        if self.insecure_no_ssl and self.start_tls:
            raise ValueError(
                "insecureNoSSL and startTLS contradict each other: startTLS encrypts the "
                "connection; remove one"
            )
        if self.root_ca and self.root_ca_data:
            raise ValueError("set rootCA or rootCAData, not both")
        if bool(self.client_cert) != bool(self.client_key):
            raise ValueError("clientCert and clientKey must be set together")
        if self.bind_dn and not self.bind_pw.get_secret_value():
            raise ValueError(
                "bindDN needs bindPW: a bind with a DN and no password is an unauthenticated "
                "bind, which directories treat as anonymous"
            )
        if self.bind_pw.get_secret_value() and not self.bind_dn:
            raise ValueError("bindPW is set but bindDN is empty")
        return self

    def ignored_tls_keys(self) -> list[str]:
        """TLS settings that have no effect because insecureNoSSL turns TLS off (Dex ignores
        them too; they are accepted so Dex files load, and named in a warning)."""
        if not self.insecure_no_ssl:
            return []
        keys = {
            "insecureSkipVerify": self.insecure_skip_verify,
            "rootCA": self.root_ca,
            "rootCAData": self.root_ca_data,
            "clientCert": self.client_cert,
            "clientKey": self.client_key,
        }
        return [key for key, value in keys.items() if value]

    def uses_tls(self) -> bool:
        return not self.insecure_no_ssl


def _split_host(host: str, *, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address, as Go's SplitHostPort."""
    name, port_text = host, ""
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            raise ValueError(f"unbalanced '[' in {host!r}")
        name, rest = host[1:end], host[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"unexpected text after ']' in {host!r}")
        port_text = rest[1:]
    elif host.count(":") == 1:
        name, port_text = host.split(":")
    if not name or any(c.isspace() or c in "/?#@" for c in name):
        raise ValueError(f"not a host name or address: {host!r}")
    if not port_text:
        return name, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"port must be 1-65535 in {host!r}")
    return name, int(port_text)


# --------------------------------------------------------------------------------------------
# TLS through the standard library's OpenSSL
# --------------------------------------------------------------------------------------------


def _tls_context(config: LDAPConfig) -> ssl.SSLContext:
    """Verification as Go's crypto/tls does it for Dex: chain to rootCA (or the system store)
    and the host name, TLS 1.2 or newer; a client certificate when configured."""
    cadata = None
    if config.root_ca_data:
        cadata = base64.b64decode("".join(config.root_ca_data.split())).decode("ascii")
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=config.root_ca or None, cadata=cadata
        )
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"rootCA: cannot load the certificates: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.client_cert:
        try:
            context.load_cert_chain(config.client_cert, config.client_key)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"clientCert/clientKey: cannot load the key pair: {exc}") from None
    if config.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _ContextTls(Tls):  # type: ignore[misc]
    """ldap3's TLS hook, wrapping sockets with our prepared ``ssl.SSLContext``.

    ldap3's own ``Tls`` turns OpenSSL's hostname check off and substitutes a Python matcher; this
    keeps verification (chain and name) inside OpenSSL, for LDAPS and StartTLS alike.
    """

    def __init__(self, context: ssl.SSLContext, server_hostname: str) -> None:
        super().__init__(validate=context.verify_mode)
        self._context = context
        self._server_hostname = server_hostname

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        connection.socket = self._context.wrap_socket(
            connection.socket,
            server_side=False,
            do_handshake_on_connect=do_handshake,
            server_hostname=self._server_hostname,
        )


# --------------------------------------------------------------------------------------------
# The connector
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """A search result: the DN and its attributes (names lower-cased, values as text)."""

    dn: str
    attributes: dict[str, list[str]] = field(default_factory=dict)

    def values(self, name: str) -> list[str]:
        found = self.attributes.get(name.lower())
        if found:
            return found
        # Dex: "DN" means the entry's distinguished name unless the entry has such an attribute.
        if name.lower() == "dn":
            return [self.dn]
        return []

    def first(self, name: str) -> str:
        values = self.values(name)
        return values[0] if values else ""


class _LoginRefusedError(Exception):
    """Wrong username or password: the caller answers None, never saying which."""


class LDAPConnector(PasswordConnector, RefreshConnector):
    """A Dex-compatible LDAP password connector (see the module docstring)."""

    def __init__(
        self,
        connector_id: str,
        name: str,
        connector_type: str,
        config: LDAPConfig,
        *,
        fips_mode: bool = False,
        connect_timeout: int = CONNECT_TIMEOUT,
        receive_timeout: int = RECEIVE_TIMEOUT,
        deadline: float = OPERATION_DEADLINE,
        max_concurrent: int = MAX_CONCURRENT,
    ) -> None:
        super().__init__(connector_id, name, connector_type)
        if fips_mode and config.insecure_no_ssl:
            raise ValueError(
                "insecureNoSSL: refused in FIPS mode (passwords would cross the network in clear)"
            )
        if fips_mode and config.insecure_skip_verify:
            raise ValueError(
                "insecureSkipVerify: refused in FIPS mode (the directory would be unauthenticated)"
            )
        self._config = config
        self.prompt = config.username_prompt or "Username"
        self._deadline = deadline
        self._receive_timeout = receive_timeout
        self._limiter = anyio.CapacityLimiter(max_concurrent)
        self._user_scope = ldap3.LEVEL if config.user_search.scope == "one" else ldap3.SUBTREE
        self._group_scope = ldap3.LEVEL if config.group_search.scope == "one" else ldap3.SUBTREE
        self._matchers = config.group_search.matchers()
        host, port = _split_host(config.host, default_port=389 if config.insecure_no_ssl else 636)
        tls = None
        if config.uses_tls():
            tls = _ContextTls(_tls_context(config), host)
        self._server = ldap3.Server(
            host,
            port=port,
            use_ssl=config.uses_tls() and not config.start_tls,
            tls=tls,
            get_info=ldap3.NONE,
            connect_timeout=connect_timeout,
            mode=ldap3.IP_V4_PREFERRED,
        )
        if config.insecure_no_ssl:
            log.warning(
                "LDAP connector %r: insecureNoSSL is set, passwords cross the network in clear",
                connector_id,
            )
        if config.ignored_tls_keys():
            log.warning(
                "LDAP connector %r: %s ignored because insecureNoSSL turns TLS off",
                connector_id,
                ", ".join(config.ignored_tls_keys()),
            )
        if config.insecure_skip_verify and config.uses_tls():
            log.warning(
                "LDAP connector %r: insecureSkipVerify is set, the directory's certificate is "
                "not checked",
                connector_id,
            )
        if config.group_search.user_attr:
            log.warning(
                "LDAP connector %r: groupSearch.userAttr/groupAttr are Dex's deprecated form; "
                "use groupSearch.userMatchers",
                connector_id,
            )
        self._user_attrs = self._user_attributes()

    # ---- the async surface (the event loop never blocks on the directory) ----------------

    async def login(self, scopes: Scopes, username: str, password: str) -> Identity | None:
        # No bind with an empty password, ever: it would be an unauthenticated bind that the
        # directory answers with success. Checked before any network traffic.
        if not password or not username:
            return None
        try:
            return await self._run(lambda: self._login_sync(scopes, username, password))
        except _LoginRefusedError:
            return None

    async def refresh(self, scopes: Scopes, identity: Identity) -> Identity:
        try:
            data = json.loads(identity.connector_data)
            username, dn = data["username"], data["dn"]
            if not isinstance(username, str) or not isinstance(dn, str):
                raise TypeError("username/dn")
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("LDAP connector %r: unusable refresh data (%s)", self.id, exc)
            raise ConnectorError("The session cannot be renewed; log in again.") from None
        fresh = await self._run(lambda: self._refresh_sync(scopes, username, dn))
        if fresh.user_id != identity.user_id:
            log.warning(
                "LDAP connector %r: %s now has ID %r, the session was for %r",
                self.id,
                dn,
                fresh.user_id,
                identity.user_id,
            )
            raise ConnectorError("The account changed since login; log in again.")
        return fresh

    async def _run(self, work: Callable[[], T]) -> T:
        try:
            with anyio.fail_after(self._deadline):
                return await anyio.to_thread.run_sync(
                    work, limiter=self._limiter, abandon_on_cancel=True
                )
        except TimeoutError:
            log.error(
                "LDAP connector %r: no answer from %s within %.0f s",
                self.id,
                self._config.host,
                self._deadline,
            )
            raise ConnectorError(_UNREACHABLE) from None

    # ---- blocking work, in a worker thread -------------------------------------------------

    def _login_sync(self, scopes: Scopes, username: str, password: str) -> Identity:
        with self._service_connection() as conn:
            entry = self._find_user(conn, username)
            if entry is None:
                log.info("LDAP connector %r: no user matches the username", self.id)
                raise _LoginRefusedError
            self._check_password(entry.dn, password)
            identity = self._identity(entry)
            groups = self._groups(conn, entry) if scopes.groups else ()
        data = json.dumps({"username": username, "dn": entry.dn}, separators=(",", ":"))
        return _replace(identity, groups=groups, connector_data=data.encode())

    def _refresh_sync(self, scopes: Scopes, username: str, dn: str) -> Identity:
        with self._service_connection() as conn:
            entry = self._find_user(conn, username)
            if entry is None:
                log.info("LDAP connector %r: refresh refused, %s is gone", self.id, dn)
                raise ConnectorError("The account no longer exists in the directory.")
            if _normalise_dn(entry.dn) != _normalise_dn(dn):
                log.warning(
                    "LDAP connector %r: refresh refused, the username now maps to %s, not %s",
                    self.id,
                    entry.dn,
                    dn,
                )
                raise ConnectorError("The account changed since login; log in again.")
            identity = self._identity(entry)
            groups = self._groups(conn, entry) if scopes.groups else ()
        data = json.dumps({"username": username, "dn": entry.dn}, separators=(",", ":"))
        return _replace(identity, groups=groups, connector_data=data.encode())

    def _connection(self, user: str | None, password: str | None) -> Any:
        return ldap3.Connection(
            self._server,
            user=user,
            password=password,
            authentication=ldap3.SIMPLE if user else ldap3.ANONYMOUS,
            client_strategy=ldap3.SYNC,
            read_only=True,
            raise_exceptions=False,
            receive_timeout=self._receive_timeout,
            auto_referrals=False,
        )

    def _open(self, conn: Any) -> None:
        """Connect (and StartTLS); every failure becomes a ConnectorError, logged in full."""
        try:
            conn.open(read_server_info=False)
            if self._config.start_tls and not conn.start_tls(read_server_info=False):
                raise ldap_exc.LDAPStartTLSError(f"StartTLS refused: {_result(conn)}")
        except (ldap_exc.LDAPException, OSError) as exc:
            log.error(
                "LDAP connector %r: cannot connect to %s (%s): %s",
                self.id,
                self._config.host,
                self._transport(),
                _describe(exc),
            )
            raise ConnectorError(_UNREACHABLE) from None

    def _transport(self) -> str:
        if self._config.insecure_no_ssl:
            return "plain LDAP"
        return "StartTLS" if self._config.start_tls else "LDAPS"

    @contextmanager
    def _service_connection(self) -> Iterator[Any]:
        bind_dn = self._config.bind_dn or None
        bind_pw = self._config.bind_pw.get_secret_value() or None
        conn = self._connection(bind_dn, bind_pw)
        try:
            self._open(conn)
            ok = self._call(conn, lambda: conn.bind(read_server_info=False))
            if not ok:
                log.error(
                    "LDAP connector %r: the service bind as %r failed: %s",
                    self.id,
                    self._config.bind_dn or "(anonymous)",
                    _result(conn),
                )
                raise ConnectorError(_MISCONFIGURED)
            yield conn
        finally:
            _close(conn)

    def _check_password(self, dn: str, password: str) -> None:
        """Bind as the user on a connection of its own, so the service connection keeps the
        service account's rights for the group search."""
        if not password:  # login() already refused it; never rely on that alone
            raise _LoginRefusedError
        conn = self._connection(dn, password)
        try:
            self._open(conn)
            if self._call(conn, lambda: conn.bind(read_server_info=False)):
                return
            code = conn.result.get("result") if conn.result else None
            if code in (_INVALID_CREDENTIALS, _CONSTRAINT_VIOLATION):
                # Constraint violation: e.g. a locked or expired account (ppolicy).
                log.info(
                    "LDAP connector %r: wrong password for %s (%s)", self.id, dn, _result(conn)
                )
                raise _LoginRefusedError
            log.error("LDAP connector %r: bind as %s failed: %s", self.id, dn, _result(conn))
            raise ConnectorError(_DIRECTORY_FAILED)
        finally:
            _close(conn)

    def _call(self, conn: Any, operation: Callable[[], T]) -> T:
        try:
            return operation()
        except ldap_exc.LDAPPasswordIsMandatoryError:
            raise _LoginRefusedError from None
        except (ldap_exc.LDAPException, OSError) as exc:
            log.error(
                "LDAP connector %r: %s stopped answering: %s",
                self.id,
                self._config.host,
                _describe(exc),
            )
            raise ConnectorError(_DIRECTORY_FAILED) from None

    def _search(
        self,
        conn: Any,
        base: str,
        search_filter: str,
        scope: str,
        attributes: Sequence[str],
        *,
        size_limit: int = 0,
        missing_base_ok: bool = False,
    ) -> list[_Entry]:
        wanted = sorted({a for a in attributes if a and a.lower() != "dn"}) or ["1.1"]
        self._call(
            conn,
            lambda: conn.search(
                base,
                search_filter,
                search_scope=scope,
                attributes=wanted,
                size_limit=size_limit,
                time_limit=self._receive_timeout,
            ),
        )
        code = conn.result.get("result") if conn.result else None
        if code == _NO_SUCH_OBJECT:
            if missing_base_ok:
                return []
            # A wrong baseDN, or one the service account may not see (directories hide what
            # a client may not read, anonymous clients included).
            log.error(
                "LDAP connector %r: search base %r does not exist or is not visible to %s",
                self.id,
                base,
                self._config.bind_dn or "anonymous clients",
            )
            raise ConnectorError(_MISCONFIGURED)
        if code not in (_SUCCESS, _SIZE_LIMIT_EXCEEDED):
            log.error(
                "LDAP connector %r: search under %r with %s failed: %s",
                self.id,
                base,
                search_filter,
                _result(conn),
            )
            raise ConnectorError(_DIRECTORY_FAILED)
        return [
            _entry(item) for item in conn.response or () if item.get("type") == "searchResEntry"
        ]

    def _user_attributes(self) -> list[str]:
        search = self._config.user_search
        return [
            search.id_attr,
            search.email_attr,
            search.name_attr,
            search.preferred_username_attr,
            *search.username,
            *(m.user_attr for m in self._matchers),
        ]

    def _find_user(self, conn: Any, username: str) -> _Entry | None:
        search = self._config.user_search
        value = escape_filter_chars(username)
        clauses = [f"({attr}={value})" for attr in search.username]
        user_filter = clauses[0] if len(clauses) == 1 else f"(|{''.join(clauses)})"
        if search.filter:
            user_filter = f"(&{search.filter}{user_filter})"
        entries = self._search(
            conn, search.base_dn, user_filter, self._user_scope, self._user_attrs, size_limit=2
        )
        if len(entries) > 1:
            log.error(
                "LDAP connector %r: the username matches several entries (%s, %s, ...); "
                "userSearch must identify one user",
                self.id,
                entries[0].dn,
                entries[1].dn,
            )
            raise ConnectorError(_MISCONFIGURED)
        return entries[0] if entries else None

    def _identity(self, entry: _Entry) -> Identity:
        search = self._config.user_search
        missing: list[str] = []

        def required(attr: str) -> str:
            value = entry.first(attr)
            if not value:
                missing.append(attr)
            return value

        user_id = required(search.id_attr)
        name = required(search.name_attr) if search.name_attr else ""
        preferred = (
            required(search.preferred_username_attr) if search.preferred_username_attr else ""
        )
        if search.email_suffix:
            email = f"{name}@{search.email_suffix}"
        else:
            email = required(search.email_attr)
        if missing:
            log.error(
                "LDAP connector %r: entry %s lacks required attribute(s) %s",
                self.id,
                entry.dn,
                ", ".join(missing),
            )
            raise ConnectorError(_MISCONFIGURED)
        return Identity(
            user_id=user_id,
            username=name,
            preferred_username=preferred,
            email=email,
            # Dex marks directory addresses verified: the directory is the authority.
            email_verified=True,
        )

    def _groups(self, conn: Any, user: _Entry) -> tuple[str, ...]:
        search = self._config.group_search
        if not search.base_dn:
            return ()
        names: list[str] = []
        seen: set[str] = set()
        for matcher in self._matchers:
            level = [
                group
                for value in user.values(matcher.user_attr)
                for group in self._query_groups(conn, matcher.group_attr, value)
            ]
            depth = 0
            while level:
                parents: list[_Entry] = []
                for group in level:
                    name = group.first(search.name_attr)
                    if not name:
                        log.error(
                            "LDAP connector %r: group %s has no %s",
                            self.id,
                            group.dn,
                            search.name_attr,
                        )
                        raise ConnectorError(_MISCONFIGURED)
                    if name in seen:
                        continue  # duplicates and cycles in nested groups
                    seen.add(name)
                    names.append(name)
                    if matcher.recursion_group_attr:
                        parents.extend(
                            self._query_groups(conn, matcher.recursion_group_attr, group.dn)
                        )
                depth += 1
                if depth >= MAX_GROUP_DEPTH:
                    log.warning(
                        "LDAP connector %r: nested groups deeper than %d levels, stopped",
                        self.id,
                        MAX_GROUP_DEPTH,
                    )
                    break
                level = parents
        return tuple(names)

    def _query_groups(self, conn: Any, member_attr: str, value: str) -> list[_Entry]:
        search = self._config.group_search
        group_filter = f"({member_attr}={escape_filter_chars(value)})"
        if search.filter:
            group_filter = f"(&{search.filter}{group_filter})"
        return self._search(
            conn,
            search.base_dn,
            group_filter,
            self._group_scope,
            [search.name_attr],
            missing_base_ok=True,
        )


def _entry(item: dict[str, Any]) -> _Entry:
    """A search result entry from ldap3's raw values (schema-independent), as UTF-8 text."""
    attributes: dict[str, list[str]] = {}
    for name, values in (item.get("raw_attributes") or {}).items():
        decoded = []
        for raw in values:
            try:
                decoded.append(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
            except UnicodeDecodeError:
                # Binary values (objectGUID, photos) are not usable as claims; skip them.
                continue
        attributes.setdefault(name.lower(), []).extend(decoded)
    return _Entry(dn=str(item.get("dn", "")), attributes=attributes)


def _normalise_dn(dn: str) -> str:
    try:
        return str(safe_dn(dn)).lower()
    except (ldap_exc.LDAPException, ValueError, IndexError):
        return dn.lower()


def _replace(identity: Identity, **changes: Any) -> Identity:
    return Identity(**{**identity.__dict__, **changes})


def _result(conn: Any) -> str:
    result = conn.result or {}
    description = result.get("description", "?")
    message = result.get("message") or ""
    return f"{description} ({result.get('result', '?')}){': ' + message if message else ''}"


def _describe(exc: BaseException) -> str:
    """An exception as text for the log. ldap3 messages carry no credentials."""
    if isinstance(exc, TimeoutError):  # socket.timeout is an alias
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text if len(text) < 500 else text[:500] + "..."


def _close(conn: Any) -> None:
    try:
        if not conn.closed:
            conn.unbind()
    except (ldap_exc.LDAPException, OSError):
        pass


def open_ldap(
    connector_id: str, name: str, connector_type: str, config: BaseModel, env: ConnectorEnv
) -> Connector:
    """Open an ``ldap`` connector from its validated config (the registry's entry point)."""
    if not isinstance(config, LDAPConfig):
        raise TypeError(f"expected LDAPConfig, got {type(config).__name__}")
    return LDAPConnector(connector_id, name, connector_type, config, fips_mode=env.fips_mode)


CONNECTOR_TYPE = ConnectorType(LDAPConfig, open_ldap)
