"""The connector contract: how an upstream identity provider plugs into the issuer.

Three styles, as in Dex: *password* connectors check a username and password themselves
(local DB, LDAP); *callback* connectors send the browser upstream and finish on /callback
(OIDC, OAuth2, GitHub, SAML...); either may also *refresh*, re-checking the user upstream when a
refresh token is used so that upstream removals and group changes bite.

Each connector type is a :class:`ConnectorType`: the pydantic model of its ``connectors[].config``
and the function that opens it (as each Dex connector has its ``Config`` struct with ``Open()``).
The config loader validates with the model; the assembly calls ``open`` with a
:class:`ConnectorEnv`, the only server facilities a connector gets.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel

from portcullis.clock import Clock
from portcullis.storage.base import Storage
from portcullis.storage.models import Identity


@dataclass(frozen=True)
class ConnectorEnv:
    """What the assembly gives every connector when it opens it."""

    storage: Storage
    clock: Clock
    issuer: str  # the issuer URL, without a trailing slash
    fips_mode: bool
    #: web.clientRemoteIP.trustedProxies: the networks whose requests may carry headers set by
    #: a proxy. The authproxy connector falls back to them when it names no proxies itself.
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConnectorType:
    """One connector type: its config model and how to open it.

    ``open(connector_id, name, connector_type, config, env)``: ``config`` is an instance of
    ``config_model`` (validated by the config loader); ``connector_type`` is the name it was
    configured under (one type may be registered under several names)."""

    config_model: type[BaseModel]
    open: Callable[[str, str, str, BaseModel, ConnectorEnv], Connector]


@dataclass(frozen=True)
class Scopes:
    """What the client asked for that changes what a connector must fetch."""

    offline_access: bool = False
    groups: bool = False


@dataclass(frozen=True)
class LoginRedirect:
    """How a callback connector starts an upstream login.

    ``connector_state`` is kept with the auth request and handed back to ``handle_callback``:
    per-login secrets (the upstream PKCE verifier, the nonce, a SAML request id) live there, in
    storage shared by every replica, never in a cookie or in process memory. ``post_form`` asks
    for an HTTP POST of those fields to ``url`` instead of a redirect (SAML's HTTP-POST binding).
    """

    url: str
    connector_state: bytes = b""
    post_form: Mapping[str, str] | None = None


class ConnectorError(Exception):
    """Upstream failed or refused; the message is safe to show to the user."""


class Connector:
    def __init__(self, connector_id: str, name: str, connector_type: str) -> None:
        self.id = connector_id
        self.name = name
        self.type = connector_type

    @property
    def dev_only(self) -> bool:
        """True for connectors that must never run in production (shown in the UI and logs)."""
        return False


class PasswordConnector(Connector):
    #: Label of the username field on the login form ("Email Address", "Username", ...).
    prompt: str = "Username"

    @abstractmethod
    async def login(self, scopes: Scopes, username: str, password: str) -> Identity | None:
        """The identity, or None for wrong credentials (never say which part was wrong)."""


class CallbackConnector(Connector):
    #: True when upstream comes back with a cross-site POST (SAML's HTTP-POST binding): the
    #: browser then withholds our SameSite=Lax binding cookie, so the web layer re-posts the
    #: callback once from our own origin before checking who owns the login.
    callback_by_post: bool = False

    @abstractmethod
    async def login_url(self, scopes: Scopes, callback_url: str, state: str) -> LoginRedirect:
        """Where to send the browser; upstream comes back to callback_url with state."""

    @abstractmethod
    async def handle_callback(
        self, scopes: Scopes, params: Mapping[str, str], connector_state: bytes
    ) -> Identity:
        """Finish the upstream login from the callback's parameters (query or POST form) and
        the ``connector_state`` that ``login_url`` returned for this login."""


class HeaderConnector(Connector):
    """A connector that reads the identity from request headers set by a trusted
    authenticating proxy (Dex's ``authproxy``).

    As in Dex, the login sends the browser to ``/callback/{id}``, the path the operator's proxy
    authenticates, and the identity comes from the headers the proxy adds there. The connector
    gets the headers and the address of the TCP peer (never a forwarded-for value) and decides
    itself whether that peer is a proxy it trusts."""

    @abstractmethod
    def login_url(self, callback_url: str, state: str) -> LoginRedirect:
        """The URL under /callback/{id} the proxy authenticates, carrying ``state``."""

    @abstractmethod
    async def login(self, scopes: Scopes, headers: Mapping[str, str], peer: str) -> Identity:
        """The identity from the proxy's headers (names lower-cased); raise ConnectorError
        when the peer is not a trusted proxy or the headers are missing."""


class RefreshConnector(ABC):
    """Mixin for connectors that can re-validate a user when a refresh token is used."""

    @abstractmethod
    async def refresh(self, scopes: Scopes, identity: Identity) -> Identity:
        """The user's current identity; raise ConnectorError if they may no longer log in."""


#: RFC 8693 token types a ``TokenIdentityConnector`` may be handed (Dex's two).
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105 - a URN
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN


class TokenIdentityConnector(ABC):
    """Mixin for connectors that can verify a token their upstream issued, so it can be
    exchanged for ours (RFC 8693, Dex's ``TokenIdentityConnector``): CI jobs and workloads
    (a Kubernetes service-account token, a CI provider's OIDC token) log in without a browser.
    """

    @abstractmethod
    async def token_identity(self, subject_token_type: str, subject_token: str) -> Identity:
        """The identity the upstream token proves; raise ConnectorError when it proves none
        (bad signature, wrong issuer or audience, expired, unknown type)."""
