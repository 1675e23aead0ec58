"""The token endpoint: one module per grant behind the ``Grant`` protocol, and the dispatcher.

Why a table of grants: each grant is a self-contained file (its parameters, its public-client
rule, its handler), so a new grant — device_code (RFC 8628), token exchange (RFC 8693) — is a new
module plus one line in ``TokenEndpoint``'s table, and the steps every grant shares (client
authentication, the server's and the client's grant lists) are written once, here, where no
grant can forget them.

Threading: see ``base``. The dispatcher itself authenticates static clients on the event loop
(no storage involved) and dynamic ones in a worker thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from anyio import to_thread

from portcullis.oidc.clients import ClientRegistry
from portcullis.oidc.errors import invalid_request, unauthorized_client, unsupported_grant_type
from portcullis.oidc.grants.authorization_code import AuthorizationCodeGrant
from portcullis.oidc.grants.base import Grant, TokenRequest
from portcullis.oidc.grants.client_credentials import ClientCredentialsGrant
from portcullis.oidc.grants.device_code import DeviceCodeGrant
from portcullis.oidc.grants.password import PasswordGrant
from portcullis.oidc.grants.refresh_token import RefreshTokenGrant
from portcullis.oidc.grants.token_exchange import TokenExchangeGrant
from portcullis.oidc.settings import ProtocolSettings
from portcullis.storage.models import Client

__all__ = [
    "AuthorizationCodeGrant",
    "ClientCredentialsGrant",
    "DeviceCodeGrant",
    "Grant",
    "PasswordGrant",
    "RefreshTokenGrant",
    "TokenEndpoint",
    "TokenExchangeGrant",
    "TokenRequest",
]


class TokenEndpoint:
    """Dispatch a token request to the grant its ``grant_type`` names.

    Only grants the server enables (``oauth2.grantTypes``) are in the table, so a disabled grant
    is answered exactly like an unknown one.
    """

    def __init__(
        self, settings: ProtocolSettings, clients: ClientRegistry, grants: Iterable[Grant]
    ) -> None:
        self._settings = settings
        self._clients = clients
        self._grants: dict[str, Grant] = {
            g.grant_type: g for g in grants if g.grant_type in settings.grant_types
        }

    def grant(self, grant_type: str) -> Grant | None:
        """The enabled grant for ``grant_type``, if any."""
        return self._grants.get(grant_type)

    async def handle(
        self, form: Mapping[str, str], authorization: str | None, client_ip: str
    ) -> dict[str, Any]:
        """Answer one token request; raise OAuthError to refuse it. ``form`` is the whole
        request body (client credentials may be in it), ``authorization`` the header."""
        grant_type = form.get("grant_type", "")
        if not grant_type:
            raise invalid_request("the grant_type parameter is missing")
        grant = self._grants.get(grant_type)
        if grant is None:
            raise unsupported_grant_type(grant_type)

        def authenticate() -> Client:
            return self._clients.authenticate(authorization, form, allow_public=grant.allow_public)

        # A thread hand-off costs about as much as the rest of a client_credentials request:
        # static clients (from the config) are checked on the event loop, stored ones in a
        # worker thread.
        if self._clients.is_static_request(authorization, form):
            client = authenticate()
        else:
            client = await to_thread.run_sync(authenticate)
        if grant_type not in self._settings.client_grants(client):
            if client.public and grant_type in client.grant_types + self._settings.grant_types:
                raise unauthorized_client(
                    f"public clients may not use the {grant_type} grant "
                    "(it needs a client that authenticates; RFC 9700 §2.4)"
                )
            raise unauthorized_client(f"this client may not use the {grant_type} grant")
        declared = {name: form[name] for name in grant.parameters if name in form}
        return await grant.handle(TokenRequest(client=client, form=declared, client_ip=client_ip))
