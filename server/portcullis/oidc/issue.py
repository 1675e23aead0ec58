"""The token response every user-facing grant returns: access token, ID token and, when
``offline_access`` was granted to a client allowed the refresh grant, a new refresh family.

One place, because the rules are shared: which audiences and ``sid`` a JWT carries, when a
refresh token is issued, and the response's field set (RFC 6749 §5.1) must not differ between
the authorization-code, password, refresh and (later) device-code grants. ``issue`` writes to
storage and signs: call it from a worker thread.
"""

from __future__ import annotations

from typing import Any

from portcullis.clock import Clock
from portcullis.oidc import scopes
from portcullis.oidc.refresh import RefreshStore, session_id
from portcullis.oidc.settings import ProtocolSettings
from portcullis.oidc.tokens import TokenMinter
from portcullis.storage.models import Client, Identity


class TokenIssuer:
    def __init__(
        self,
        settings: ProtocolSettings,
        minter: TokenMinter,
        refresh: RefreshStore,
        clock: Clock,
    ) -> None:
        self._settings = settings
        self._minter = minter
        self._refresh = refresh
        self._clock = clock

    def issue(
        self,
        client: Client,
        *,
        identity: Identity,
        connector_id: str,
        granted: tuple[str, ...],
        nonce: str,
        auth_time: float,
        jti_seed: str,
        issued_by_code: str,
        granted_resources: tuple[str, ...] = (),
        resources: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        """Tokens for a fresh login (code exchange or password): starts a refresh family
        when the client asked for offline access and may refresh. The family keeps
        ``granted_resources`` (RFC 8707, what later refreshes may narrow); this access token
        is for ``resources``."""
        refresh_token = ""
        family_id = ""
        if self.starts_family(client, granted):
            family_id, refresh_token = self._refresh.create(
                client,
                identity=identity,
                connector_id=connector_id,
                granted=granted,
                nonce=nonce,
                auth_time=auth_time,
                issued_by_code=issued_by_code,
                resources=granted_resources,
            )
        return self.response(
            client,
            identity=identity,
            connector_id=connector_id,
            granted=granted,
            nonce=nonce,
            auth_time=auth_time,
            jti_seed=jti_seed,
            family_id=family_id,
            refresh_token=refresh_token,
            resources=resources,
        )

    def starts_family(self, client: Client, granted: tuple[str, ...]) -> bool:
        """A fresh login gets a refresh family when the client asked for offline access and
        may use the refresh grant."""
        return scopes.OFFLINE_ACCESS in granted and "refresh_token" in (
            self._settings.client_grants(client)
        )

    def response(
        self,
        client: Client,
        *,
        identity: Identity,
        connector_id: str,
        granted: tuple[str, ...],
        nonce: str,
        auth_time: float,
        jti_seed: str,
        family_id: str,
        refresh_token: str,
        resources: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        """Mint the JWTs and build the response. JWTs of a refresh family carry its ``sid``,
        so ending the family (logout, reuse, code replay) revokes them all at once."""
        scope_request = scopes.check_scopes(granted, require_openid=False)
        minted = self._minter.mint(
            client_id=client.id,
            audiences=scope_request.audiences,
            identity=identity,
            connector_id=connector_id,
            scopes=granted,
            now=self._clock.now(),
            ttl=self._settings.id_token_ttl_for(client),
            nonce=nonce,
            auth_time=auth_time,
            jti_seed=jti_seed,
            session=session_id(family_id) if family_id else "",
            resources=resources,
        )
        response: dict[str, Any] = {
            "access_token": minted.access_token,
            "token_type": "bearer",
            "expires_in": minted.expires_in,
            "id_token": minted.id_token,
            "scope": " ".join(granted),
        }
        if refresh_token:
            response["refresh_token"] = refresh_token
        return response
