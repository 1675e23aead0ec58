"""The client_credentials grant (RFC 6749 §4.4): tokens for a confidential client acting for
itself. No user, so no refresh token and no ``offline_access``; the subject is the client id.

This is the cheapest grant and runs entirely on the event loop unless cross-client audiences
are requested (their trust check may read dynamic clients from storage).
"""

from __future__ import annotations

from typing import Any

from anyio import to_thread

from portcullis.clock import Clock
from portcullis.oidc import scopes
from portcullis.oidc.clients import ClientRegistry, UntrustedAudienceError
from portcullis.oidc.errors import invalid_scope, unauthorized_client
from portcullis.oidc.grants.base import TokenRequest
from portcullis.oidc.settings import ProtocolSettings
from portcullis.oidc.tokens import TokenMinter


class ClientCredentialsGrant:
    grant_type = "client_credentials"
    parameters = ("scope",)
    allow_public = False

    def __init__(
        self,
        settings: ProtocolSettings,
        clients: ClientRegistry,
        minter: TokenMinter,
        clock: Clock,
    ) -> None:
        self._settings = settings
        self._clients = clients
        self._minter = minter
        self._clock = clock

    async def handle(self, request: TokenRequest) -> dict[str, Any]:
        if scopes.AUDIENCE_PREFIX in request.form.get("scope", ""):
            return await to_thread.run_sync(self.issue, request)
        return self.issue(request)

    def issue(self, request: TokenRequest) -> dict[str, Any]:
        client = request.client
        if client.public:
            raise unauthorized_client("public clients cannot use client_credentials")
        requested = scopes.parse_scopes(request.form.get("scope", ""))
        try:
            scope_request = scopes.check_scopes(requested, require_openid=False)
        except scopes.ScopeError as exc:
            raise invalid_scope(str(exc)) from None
        if scopes.OFFLINE_ACCESS in requested:
            raise invalid_scope("offline_access makes no sense without a user")
        try:
            self._clients.check_audiences(client, scope_request.audiences)
        except UntrustedAudienceError as exc:
            raise invalid_scope(str(exc)) from None
        now = self._clock.now()
        minted = self._minter.mint(
            client_id=client.id,
            audiences=scope_request.audiences,
            identity=None,
            connector_id="",
            scopes=requested,
            now=now,
            ttl=self._settings.id_token_ttl_for(client),
            subject=client.id,
            include_id_token=scopes.OPENID in requested,
        )
        response: dict[str, Any] = {
            "access_token": minted.access_token,
            "token_type": "bearer",
            "expires_in": minted.expires_in,
        }
        if minted.id_token:
            response["id_token"] = minted.id_token
        if requested:
            response["scope"] = " ".join(requested)
        return response
