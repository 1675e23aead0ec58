"""The token-exchange grant (RFC 8693) with Dex's semantics: a token an upstream issued (an ID
token or an access token, ``subject_token_type``) is verified by the connector ``connector_id``
names and exchanged for one of ours (``requested_token_type``, Dex's default the access token).

This is how CI jobs and workloads get cluster credentials without a browser: a GitHub Actions
or GitLab OIDC token, or a Kubernetes service-account token, verified through an upstream
``oidc`` connector, becomes a Portcullis ID token that kube-apiserver trusts.

Rules: confidential clients only (Dex's ``RequiresClientAuth``), and only connectors the client
may use; no refresh token (there is no upstream session to re-check); ``audience`` (RFC 8693
§2.1) names one client that must trust the requester, as ``audience:server:client_id:`` scopes
do. Errors are RFC 8693 §2.2.2's: a subject token that does not verify is ``invalid_request``
(Dex answers ``access_denied``; the RFC is explicit, and clients branch on it).

The connector call (upstream I/O) is awaited on the event loop; the audience check (may read
stored clients) and signing run in a worker thread.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from anyio import to_thread

from portcullis.clock import Clock
from portcullis.config.model import TOKEN_EXCHANGE_GRANT
from portcullis.connectors.base import (
    ACCESS_TOKEN_TYPE,
    ID_TOKEN_TYPE,
    Connector,
    ConnectorError,
    TokenIdentityConnector,
)
from portcullis.oidc import scopes
from portcullis.oidc.clients import ClientRegistry, UntrustedAudienceError
from portcullis.oidc.errors import invalid_request, invalid_scope
from portcullis.oidc.grants.base import TokenRequest
from portcullis.oidc.settings import ProtocolSettings
from portcullis.oidc.tokens import TokenMinter
from portcullis.storage.models import Client, Identity

log = logging.getLogger("portcullis.token")

_TOKEN_TYPES = (ID_TOKEN_TYPE, ACCESS_TOKEN_TYPE)


class TokenExchangeGrant:
    grant_type = TOKEN_EXCHANGE_GRANT
    parameters = (
        "subject_token",
        "subject_token_type",
        "requested_token_type",
        "connector_id",
        "scope",
        "audience",
    )
    allow_public = False

    def __init__(
        self,
        settings: ProtocolSettings,
        clients: ClientRegistry,
        connectors: Mapping[str, Connector],
        minter: TokenMinter,
        clock: Clock,
    ) -> None:
        self._settings = settings
        self._clients = clients
        self._connectors = connectors
        self._minter = minter
        self._clock = clock

    async def handle(self, request: TokenRequest) -> dict[str, Any]:
        client, form = request.client, request.form
        subject_token = form.get("subject_token", "")
        subject_type = form.get("subject_token_type", "")
        if not subject_token:
            raise invalid_request("the subject_token parameter is missing")
        if subject_type not in _TOKEN_TYPES:
            raise invalid_request("subject_token_type must be one of: " + ", ".join(_TOKEN_TYPES))
        requested_type = form.get("requested_token_type", "") or ACCESS_TOKEN_TYPE
        if requested_type not in _TOKEN_TYPES:
            raise invalid_request("requested_token_type must be one of: " + ", ".join(_TOKEN_TYPES))
        requested = scopes.parse_scopes(form.get("scope", "") or "openid")
        try:
            scope_request = scopes.check_scopes(requested, require_openid=False)
        except scopes.ScopeError as exc:
            raise invalid_scope(str(exc)) from None
        if scopes.OFFLINE_ACCESS in requested:
            raise invalid_scope("token exchange issues no refresh token (offline_access)")
        audiences = scope_request.audiences
        audience = form.get("audience", "")
        if audience:
            audiences = (*audiences, audience)
        connector_id = form.get("connector_id", "")
        if not connector_id:
            raise invalid_request("the connector_id parameter is missing")
        connector = self._connectors.get(connector_id)
        if connector is None or (
            client.allowed_connectors and connector_id not in client.allowed_connectors
        ):
            raise invalid_request(f"connector_id {connector_id!r} is unknown to this client")
        if not isinstance(connector, TokenIdentityConnector):
            raise invalid_request(
                f"connector {connector_id!r} cannot verify upstream tokens (token exchange)"
            )
        try:
            identity = await connector.token_identity(subject_type, subject_token)
        except ConnectorError as exc:
            log.info(
                "token exchange via %s refused for client %s: %s", connector_id, client.id, exc
            )
            raise invalid_request(f"the subject_token was not accepted: {exc}") from None
        return await to_thread.run_sync(
            self._issue, client, identity, connector_id, requested, audiences, requested_type
        )

    def _issue(
        self,
        client: Client,
        identity: Identity,
        connector_id: str,
        requested: tuple[str, ...],
        audiences: tuple[str, ...],
        requested_type: str,
    ) -> dict[str, Any]:
        try:
            self._clients.check_audiences(client, audiences)
        except UntrustedAudienceError as exc:
            raise invalid_request(f"audience refused: {exc}") from None
        minted = self._minter.mint(
            client_id=client.id,
            audiences=audiences,
            identity=identity,
            connector_id=connector_id,
            scopes=requested,
            now=self._clock.now(),
            ttl=self._settings.id_token_ttl_for(client),
            include_id_token=requested_type == ID_TOKEN_TYPE,
        )
        log.info(
            "token exchange via %s for client %s issued an %s",
            connector_id,
            client.id,
            "ID token" if requested_type == ID_TOKEN_TYPE else "access token",
        )
        return {
            "access_token": (
                minted.id_token if requested_type == ID_TOKEN_TYPE else minted.access_token
            ),
            "issued_token_type": requested_type,
            "token_type": "bearer",
            "expires_in": minted.expires_in,
            "scope": " ".join(requested),
        }
