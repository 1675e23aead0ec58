"""The ``authproxy`` connector: the identity comes from headers set by an authenticating proxy.

Dex's ``connector/authproxy``: the operator's front-end web server (Apache, nginx with
oauth2-proxy, ...) authenticates the user on ``/callback/{id}`` and forwards the request with
the user in ``userHeader`` (default ``X-Remote-User``) and, optionally, comma-separated groups
in ``groupHeader`` (default ``X-Remote-Group``); ``staticGroups`` are added to every user. The
user becomes the user ID, the username and the (verified) email, as in Dex.

Anyone who can reach the issuer directly can send those headers too, so Portcullis adds what Dex
leaves to the network: a header is believed only when the TCP peer of the request is a trusted
proxy. The networks come from the connector's own ``trustedProxies`` (a Portcullis key) or,
when it has none, from ``web.clientRemoteIP.trustedProxies`` (a Dex key, so a Dex config with a
proxy already set up loads unchanged); a config with neither is refused when the connector is
opened, never silently open to header spoofing. The peer is the socket address, never a
forwarded-for value (which is itself a header the attacker could write).

A header sent more than once (the web layer joins repeats with a newline) is ambiguous: the
proxy may have appended its value to one the client sent. A repeated user header is refused;
repeated group headers are merged.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, field_validator

from portcullis.config.model import CIDR
from portcullis.connectors.base import (
    Connector,
    ConnectorEnv,
    ConnectorError,
    ConnectorType,
    HeaderConnector,
    LoginRedirect,
    Scopes,
)
from portcullis.storage.models import Identity

__all__ = ["CONNECTOR_TYPE", "AuthProxyConfig", "AuthProxyConnector", "open_authproxy"]

log = logging.getLogger(__name__)

DEFAULT_USER_HEADER = "X-Remote-User"
DEFAULT_GROUP_HEADER = "X-Remote-Group"
#: Longer values are not a user name any proxy sets; refusing them bounds what reaches storage.
MAX_VALUE_LENGTH = 1024

_USER_MESSAGE = "The authenticating proxy did not identify you. Try again."


def _header_name(value: str) -> str:
    # RFC 9110 token characters; an empty value means Dex's default.
    allowed = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    if value and not set(value) <= allowed:
        raise ValueError(f"not an HTTP header name: {value!r}")
    return value


class AuthProxyConfig(BaseModel):
    """Dex's ``authproxy`` config keys, plus ``trustedProxies`` (Portcullis)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    user_header: str = Field("", alias="userHeader")
    group_header: str = Field("", alias="groupHeader")
    static_groups: list[str] = Field(default_factory=list, alias="staticGroups")
    trusted_proxies: list[CIDR] = Field(default_factory=list, alias="trustedProxies")

    @field_validator("user_header", "group_header")
    @classmethod
    def _names(cls, value: str) -> str:
        return _header_name(value)


class AuthProxyConnector(HeaderConnector):
    """Believes the proxy's headers, only from the proxy's own address."""

    def __init__(
        self,
        connector_id: str,
        name: str,
        connector_type: str,
        config: AuthProxyConfig,
        trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
    ) -> None:
        super().__init__(connector_id, name, connector_type)
        self._user_header = (config.user_header or DEFAULT_USER_HEADER).lower()
        self._group_header = (config.group_header or DEFAULT_GROUP_HEADER).lower()
        self._static_groups = tuple(config.static_groups)
        self._trusted = trusted

    def login_url(self, callback_url: str, state: str) -> LoginRedirect:
        return LoginRedirect(f"{callback_url}/{self.id}?{urlencode({'state': state})}")

    def _peer_trusted(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._trusted)

    async def login(self, scopes: Scopes, headers: Mapping[str, str], peer: str) -> Identity:
        if not self._peer_trusted(peer):
            # Loud: either the proxy's address changed or someone is trying the headers.
            log.warning(
                "authproxy connector %r: request from %s, which is not a trusted proxy; "
                "its headers are ignored",
                self.id,
                peer,
            )
            raise ConnectorError("This login method only works through the login proxy.")
        user = headers.get(self._user_header, "")
        if "\n" in user:
            log.warning(
                "authproxy connector %r: %s sent more than once; refused",
                self.id,
                self._user_header,
            )
            raise ConnectorError(_USER_MESSAGE)
        user = user.strip()
        if not user or len(user) > MAX_VALUE_LENGTH or not user.isprintable():
            log.warning(
                "authproxy connector %r: header %s is missing or unusable",
                self.id,
                self._user_header,
            )
            raise ConnectorError(_USER_MESSAGE)
        raw_groups = headers.get(self._group_header, "")
        groups: list[str] = []
        for part in raw_groups.replace("\n", ",").split(","):
            group = part.strip()
            if group and len(group) <= MAX_VALUE_LENGTH and group.isprintable():
                groups.append(group)
        groups.extend(self._static_groups)
        return Identity(
            user_id=user,
            username=user,
            email=user,
            email_verified=True,
            groups=tuple(dict.fromkeys(groups)),
        )


def open_authproxy(
    connector_id: str, name: str, connector_type: str, config: BaseModel, env: ConnectorEnv
) -> Connector:
    """Open the connector; no I/O. Raises ValueError naming ``trustedProxies`` when no proxy
    is trusted at all (the connector would be either useless or spoofable)."""
    assert isinstance(config, AuthProxyConfig)
    networks = config.trusted_proxies or list(env.trusted_proxies)
    if not networks:
        raise ValueError(
            "trustedProxies: required (the addresses of the authenticating proxy); set it here "
            "or in web.clientRemoteIP.trustedProxies, otherwise anyone could send the headers"
        )
    trusted = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
    return AuthProxyConnector(connector_id, name, connector_type, config, trusted)


CONNECTOR_TYPE = ConnectorType(AuthProxyConfig, open_authproxy)
