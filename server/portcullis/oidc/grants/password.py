"""The password grant (RFC 6749 §4.3, Dex's ``oauth2.passwordConnector``): tokens for a username
and password checked by one configured password connector.

The password check is ``authorize.PasswordLogin`` — the same throttled sequence as the browser
login form, so guessing through the token endpoint counts against the same limits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from anyio import to_thread

from portcullis.clock import Clock
from portcullis.connectors.base import Connector, ConnectorError, PasswordConnector
from portcullis.oidc import scopes
from portcullis.oidc.authorize import InvalidCredentialsError, PasswordLogin
from portcullis.oidc.clients import ClientRegistry, UntrustedAudienceError
from portcullis.oidc.errors import (
    OAuthError,
    invalid_grant,
    invalid_request,
    invalid_scope,
    unauthorized_client,
)
from portcullis.oidc.grants.base import TokenRequest
from portcullis.oidc.issue import TokenIssuer
from portcullis.oidc.throttle import ThrottledError


class PasswordGrant:
    grant_type = "password"
    parameters = ("username", "password", "scope")
    allow_public = True

    def __init__(
        self,
        connector_id: str,
        connectors: Mapping[str, Connector],
        clients: ClientRegistry,
        password_login: PasswordLogin,
        issuer: TokenIssuer,
        clock: Clock,
    ) -> None:
        self._connector_id = connector_id
        self._connectors = connectors
        self._clients = clients
        self._password_login = password_login
        self._issuer = issuer
        self._clock = clock

    async def handle(self, request: TokenRequest) -> dict[str, Any]:
        client, form = request.client, request.form
        username = form.get("username", "")
        password = form.get("password", "")
        if not username or not password:
            raise invalid_request("username and password are required")
        requested = scopes.parse_scopes(form.get("scope", "") or "openid")
        try:
            scope_request = scopes.check_scopes(requested)
        except scopes.ScopeError as exc:
            raise invalid_scope(str(exc)) from None
        if scope_request.audiences:
            # Peer lookups may read storage.
            try:
                await to_thread.run_sync(
                    self._clients.check_audiences, client, scope_request.audiences
                )
            except UntrustedAudienceError as exc:
                raise invalid_scope(str(exc)) from None
        connector = self._connectors.get(self._connector_id)
        if not isinstance(connector, PasswordConnector):
            raise unauthorized_client("the password grant has no password connector")
        try:
            identity = await self._password_login.attempt(
                connector, requested, username, password, request.client_ip
            )
        except ThrottledError as exc:
            raise OAuthError(
                "invalid_grant",
                "too many failed logins; try again later",
                headers={"Retry-After": str(exc.retry_after)},
            ) from None
        except InvalidCredentialsError:
            raise invalid_grant("invalid username or password") from None
        except ConnectorError as exc:
            raise invalid_grant(str(exc)) from None
        now = self._clock.now()
        connector_id = connector.id
        return await to_thread.run_sync(
            lambda: self._issuer.issue(
                client,
                identity=identity,
                connector_id=connector_id,
                granted=requested,
                nonce="",
                auth_time=now,
                jti_seed="",
                issued_by_code="",
            )
        )
