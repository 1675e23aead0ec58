"""The token endpoint: authorization_code, refresh_token, password and client_credentials.

Refresh tokens are families (one per device session): rotation keeps the family id and replaces
the secret; presenting the previous secret again inside ``reuseInterval`` returns the same
successor (a lost response retried), after it revokes the whole family (RFC 9700 §4.14.2).

Storage calls and signing run in worker threads (``anyio.to_thread``): a slow database or a
row lock held by another replica must never stall the event loop that also answers the
liveness probe. Only connector calls (upstream I/O) stay on the loop.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, NoReturn

from anyio import to_thread
from cryptography.exceptions import InvalidTag

from portcullis.clock import Clock
from portcullis.connectors.base import Connector as BaseConnector
from portcullis.connectors.base import (
    ConnectorError,
    PasswordConnector,
    RefreshConnector,
    Scopes,
)
from portcullis.oidc import pkce, scopes
from portcullis.oidc.clients import ClientRegistry
from portcullis.oidc.errors import (
    OAuthError,
    invalid_grant,
    invalid_request,
    invalid_scope,
    unauthorized_client,
    unsupported_grant_type,
)
from portcullis.oidc.families import end_family, session_id
from portcullis.oidc.settings import ProtocolSettings
from portcullis.oidc.throttle import LoginThrottle, ThrottledError
from portcullis.oidc.tokens import (
    TokenMinter,
    derived_jti,
    digest,
    format_refresh_token,
    new_id,
    new_secret,
    parse_refresh_token,
    seal_successor,
    secret_matches,
    unseal_successor,
)
from portcullis.storage.base import CodeReplayedError, NotFoundError, Storage
from portcullis.storage.models import Client, Identity, RefreshToken

log = logging.getLogger("portcullis.token")


class TokenEndpoint:
    def __init__(
        self,
        settings: ProtocolSettings,
        storage: Storage,
        clients: ClientRegistry,
        minter: TokenMinter,
        connectors: Mapping[str, BaseConnector],
        throttle: LoginThrottle,
        clock: Clock,
    ) -> None:
        self._settings = settings
        self._storage = storage
        self._clients = clients
        self._minter = minter
        self._connectors = connectors
        self._throttle = throttle
        self._clock = clock

    async def handle(
        self, form: Mapping[str, str], authorization: str | None, client_ip: str
    ) -> dict[str, Any]:
        grant_type = form.get("grant_type", "")
        if not grant_type:
            raise invalid_request("the grant_type parameter is missing")
        if grant_type not in (
            "authorization_code",
            "refresh_token",
            "password",
            "client_credentials",
        ):
            raise unsupported_grant_type(grant_type)
        if grant_type not in self._settings.grant_types:
            raise unsupported_grant_type(grant_type)
        allow_public = grant_type in ("authorization_code", "refresh_token", "password")

        def authenticate() -> Client:
            return self._clients.authenticate(authorization, form, allow_public=allow_public)

        # A thread hand-off costs about as much as the rest of a client_credentials request:
        # work that touches no storage (static clients, signing with the cached key) stays on
        # the event loop; anything that may wait on storage goes to a worker thread.
        if self._clients.is_static_request(authorization, form):
            client = authenticate()
        else:
            client = await to_thread.run_sync(authenticate)
        if grant_type not in self._settings.client_grants(client):
            raise unauthorized_client(f"this client may not use the {grant_type} grant")
        if grant_type == "authorization_code":
            return await to_thread.run_sync(self._authorization_code, client, form)
        if grant_type == "refresh_token":
            return await self._refresh(client, form)
        if grant_type == "password":
            return await self._password(client, form, client_ip)
        if scopes.AUDIENCE_PREFIX in form.get("scope", ""):
            # Peer lookups may read storage.
            return await to_thread.run_sync(self._client_credentials, client, form)
        return self._client_credentials(client, form)

    # -- authorization_code -----------------------------------------------------------------
    def _authorization_code(self, client: Client, form: Mapping[str, str]) -> dict[str, Any]:
        code_value = form.get("code", "")
        if not code_value:
            raise invalid_request("the code parameter is missing")
        now = self._clock.now()
        try:
            code = self._storage.consume_auth_code(code_value, now)
        except NotFoundError:
            raise invalid_grant("the authorization code is invalid or expired") from None
        except CodeReplayedError as replay:
            self._revoke_code_issue(replay.code.id, now)
            raise invalid_grant(
                "the authorization code was already used; tokens issued from it are revoked"
            ) from None
        if code.client_id != client.id:
            raise invalid_grant("the authorization code was issued to another client")
        if code.expiry < now:
            raise invalid_grant("the authorization code has expired")
        if form.get("redirect_uri", "") != code.redirect_uri:
            raise invalid_grant("redirect_uri does not match the authorization request")
        verifier = form.get("code_verifier", "")
        if code.pkce.code_challenge:
            if not verifier:
                raise invalid_grant("code_verifier is required (PKCE)")
            if not pkce.verify(verifier, code.pkce.code_challenge, code.pkce.code_challenge_method):
                raise invalid_grant("code_verifier does not match the code_challenge")
        elif verifier:
            raise invalid_grant("code_verifier sent but no code_challenge was registered")
        return self._issue(
            client,
            identity=code.identity,
            connector_id=code.connector_id,
            granted=code.scopes,
            nonce=code.nonce,
            auth_time=code.auth_time,
            jti_seed=code.id,
            issued_by_code=code.id,
        )

    def _revoke_code_issue(self, code_id: str, now: float) -> None:
        """A replayed code means it leaked: kill everything it issued (RFC 6749 §4.1.2)."""
        horizon = now + self._settings.max_token_lifetime(self._clients.all())
        for token in self._storage.refresh_tokens_issued_by_code(code_id):
            end_family(self._storage, token.id, horizon)
        for purpose in ("access", "id"):
            self._storage.revoke_token(derived_jti(code_id, purpose), horizon)

    # -- refresh_token ----------------------------------------------------------------------
    async def _refresh(self, client: Client, form: Mapping[str, str]) -> dict[str, Any]:
        token, secret, granted = await to_thread.run_sync(self._load_family, client, form)
        identity = await self._refresh_identity(token, granted)
        return await to_thread.run_sync(self._rotate, client, token, secret, granted, identity)

    def _load_family(
        self, client: Client, form: Mapping[str, str]
    ) -> tuple[RefreshToken, str, tuple[str, ...]]:
        value = form.get("refresh_token", "")
        if not value:
            raise invalid_request("the refresh_token parameter is missing")
        parsed = parse_refresh_token(value)
        if parsed is None:
            raise invalid_grant("the refresh token is invalid")
        token_id, secret = parsed
        try:
            token = self._storage.get_refresh_token(token_id)
        except NotFoundError:
            raise invalid_grant("the refresh token is invalid or was revoked") from None
        if token.client_id != client.id:
            raise invalid_grant("the refresh token was issued to another client")
        # Family ids only ever leave the server inside refresh tokens, so a known id with a
        # secret that is neither the current nor the previous one is an older generation being
        # replayed: the family is compromised (RFC 9700 §4.14.2). This check also comes before
        # the upstream refresh, so nobody can poke the upstream without a live secret.
        if not (
            secret_matches(secret, token.token_hash)
            or secret_matches(secret, token.obsolete_token_hash)
        ):
            self._reuse_detected(token.id, client.id)
        if token.expires_at and self._clock.now() > token.expires_at:
            self._delete_family(token.id)
            raise invalid_grant("the refresh token has expired")
        requested = scopes.parse_scopes(form.get("scope", ""))
        if requested:
            extra = [s for s in requested if s not in token.scopes]
            if extra:
                raise invalid_scope(f"scope {extra[0]!r} was not granted originally")
        return token, secret, requested or token.scopes

    def _rotate(
        self,
        client: Client,
        token: RefreshToken,
        secret: str,
        granted: tuple[str, ...],
        identity: Identity,
    ) -> dict[str, Any]:
        now = self._clock.now()
        policy = self._settings.refresh
        outcome: list[str] = []

        def rotate(current: RefreshToken) -> RefreshToken:
            outcome.clear()
            expires_at = self._family_expiry(client, current.created_at, now)
            if secret_matches(secret, current.token_hash):
                if policy.disable_rotation:
                    outcome.append(secret)
                    return dataclasses.replace(
                        current, last_used=now, identity=identity, expires_at=expires_at
                    )
                successor = new_secret()
                outcome.append(successor)
                return dataclasses.replace(
                    current,
                    token_hash=digest(successor),
                    obsolete_token_hash=current.token_hash,
                    successor_sealed=seal_successor(secret, current.id, successor),
                    last_used=now,
                    identity=identity,
                    expires_at=expires_at,
                )
            if secret_matches(secret, current.obsolete_token_hash):
                if now - current.last_used <= policy.reuse_interval:
                    try:
                        outcome.append(
                            unseal_successor(secret, current.id, current.successor_sealed)
                        )
                    except (InvalidTag, ValueError):
                        outcome.append("!reuse")
                    return current
                outcome.append("!reuse")
            else:
                outcome.append("!invalid")
            return current

        try:
            self._storage.update_refresh_token(token.id, rotate)
        except NotFoundError:
            raise invalid_grant("the refresh token is invalid or was revoked") from None
        result = outcome[0] if outcome else "!invalid"
        if result in ("!reuse", "!invalid"):
            # "!invalid" here means a concurrent rotation overtook an old secret: also reuse.
            self._reuse_detected(token.id, client.id)
        return self._tokens_response(
            client,
            identity=identity,
            connector_id=token.connector_id,
            granted=granted,
            nonce=token.nonce,
            auth_time=token.auth_time,
            jti_seed="",
            family_id=token.id,
            refresh_token=format_refresh_token(token.id, result),
        )

    async def _refresh_identity(self, token: RefreshToken, granted: tuple[str, ...]) -> Identity:
        connector = self._connectors.get(token.connector_id)
        if connector is None:
            await to_thread.run_sync(self._delete_family, token.id)
            raise invalid_grant("the login method of this session no longer exists")
        if not isinstance(connector, RefreshConnector):
            return token.identity
        try:
            return await connector.refresh(_scopes_for(granted), token.identity)
        except ConnectorError as exc:
            await to_thread.run_sync(self._delete_family, token.id)
            raise invalid_grant(
                f"the upstream identity provider refused the refresh: {exc}"
            ) from None

    def _family_expiry(self, client: Client, created_at: float, now: float) -> float:
        policy = self._settings.refresh
        limits = []
        absolute = client.refresh_token_absolute_lifetime or policy.absolute_lifetime
        if absolute:
            limits.append(created_at + absolute)
        if policy.valid_if_not_used_for:
            limits.append(now + policy.valid_if_not_used_for)
        return min(limits) if limits else 0.0

    def _reuse_detected(self, token_id: str, client_id: str) -> NoReturn:
        log.warning("refresh token reuse detected for client %s: session revoked", client_id)
        self._delete_family(token_id)
        raise invalid_grant("the refresh token was already used; the session has been revoked")

    def _delete_family(self, token_id: str) -> None:
        horizon = self._clock.now() + self._settings.max_token_lifetime(self._clients.all())
        end_family(self._storage, token_id, horizon)

    # -- password ---------------------------------------------------------------------------
    async def _password(
        self, client: Client, form: Mapping[str, str], client_ip: str
    ) -> dict[str, Any]:
        username = form.get("username", "")
        password = form.get("password", "")
        if not username or not password:
            raise invalid_request("username and password are required")
        requested = scopes.parse_scopes(form.get("scope", "") or "openid")
        try:
            scope_request = scopes.check_scopes(requested)
        except scopes.ScopeError as exc:
            raise invalid_scope(str(exc)) from None
        self._check_audiences(client, scope_request.audiences)
        connector = self._connectors.get(self._settings.password_connector)
        if not isinstance(connector, PasswordConnector):
            raise unauthorized_client("the password grant has no password connector")
        try:
            await to_thread.run_sync(self._throttle.check, username, client_ip)
        except ThrottledError as exc:
            raise OAuthError(
                "invalid_grant",
                "too many failed logins; try again later",
                headers={"Retry-After": str(exc.retry_after)},
            ) from None
        try:
            identity = await connector.login(_scopes_for(requested), username, password)
        except ConnectorError as exc:
            raise invalid_grant(str(exc)) from None
        if identity is None:
            await to_thread.run_sync(self._throttle.failed, username, client_ip)
            raise invalid_grant("invalid username or password")
        await to_thread.run_sync(self._throttle.succeeded, username)
        now = self._clock.now()
        connector_id = connector.id
        return await to_thread.run_sync(
            lambda: self._issue(
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

    # -- client_credentials -----------------------------------------------------------------
    def _client_credentials(self, client: Client, form: Mapping[str, str]) -> dict[str, Any]:
        if client.public:
            raise unauthorized_client("public clients cannot use client_credentials")
        requested = scopes.parse_scopes(form.get("scope", ""))
        try:
            scope_request = scopes.check_scopes(requested, require_openid=False)
        except scopes.ScopeError as exc:
            raise invalid_scope(str(exc)) from None
        if scopes.OFFLINE_ACCESS in requested:
            raise invalid_scope("offline_access makes no sense without a user")
        self._check_audiences(client, scope_request.audiences)
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

    # -- shared -----------------------------------------------------------------------------
    def _check_audiences(self, client: Client, audiences: tuple[str, ...]) -> None:
        for peer_id in audiences:
            if peer_id == client.id:
                continue
            peer = self._clients.get(peer_id)
            if peer is None or client.id not in peer.trusted_peers:
                raise invalid_scope(f"client {peer_id!r} does not trust {client.id!r}")

    def _issue(
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
    ) -> dict[str, Any]:
        refresh_value = ""
        family_id = ""
        if scopes.OFFLINE_ACCESS in granted and "refresh_token" in self._settings.client_grants(
            client
        ):
            now = self._clock.now()
            secret = new_secret()
            token = RefreshToken(
                id=new_id(),
                token_hash=digest(secret),
                client_id=client.id,
                connector_id=connector_id,
                identity=identity,
                scopes=granted,
                created_at=now,
                last_used=now,
                nonce=nonce,
                auth_time=auth_time,
                issued_by_code=issued_by_code,
                expires_at=self._family_expiry(client, now, now),
            )
            self._storage.create_refresh_token(token)
            refresh_value = format_refresh_token(token.id, secret)
            family_id = token.id
        return self._tokens_response(
            client,
            identity=identity,
            connector_id=connector_id,
            granted=granted,
            nonce=nonce,
            auth_time=auth_time,
            jti_seed=jti_seed,
            family_id=family_id,
            refresh_token=refresh_value,
        )

    def _tokens_response(
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
    ) -> dict[str, Any]:
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


def _scopes_for(granted: tuple[str, ...]) -> Scopes:
    return Scopes(offline_access=scopes.OFFLINE_ACCESS in granted, groups=scopes.GROUPS in granted)
