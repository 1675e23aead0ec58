"""The authorization endpoint's decisions: validate a request, record the login, finish it.

The web layer owns HTTP (cookies, forms, templates); this module owns what is allowed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from urllib.parse import urlencode

from portcullis.clock import Clock
from portcullis.oidc import pkce, scopes
from portcullis.oidc.clients import ClientRegistry
from portcullis.oidc.errors import AuthorizeError
from portcullis.oidc.redirect import redirect_uri_allowed
from portcullis.oidc.settings import ProtocolSettings
from portcullis.oidc.tokens import TokenMinter, new_id
from portcullis.storage.base import NotFoundError, Storage
from portcullis.storage.models import PKCE, AuthCode, AuthRequest, Client, Identity

_UNSUPPORTED_PARAMS = {
    "request": "request_not_supported",
    "request_uri": "request_uri_not_supported",
    "registration": "registration_not_supported",
}


class AuthorizationFlow:
    def __init__(
        self,
        settings: ProtocolSettings,
        storage: Storage,
        clients: ClientRegistry,
        minter: TokenMinter,
        clock: Clock,
    ) -> None:
        self._settings = settings
        self._storage = storage
        self._clients = clients
        self._minter = minter
        self._clock = clock

    # -- step 1: validate -------------------------------------------------------------------
    def parse(self, params: Mapping[str, str], browser_binding: str) -> AuthRequest:
        """Validate an authorization request and store it. Raises AuthorizeError."""
        client_id = params.get("client_id", "")
        if not client_id:
            raise AuthorizeError("invalid_request", "the client_id parameter is missing")
        client = self._clients.get(client_id)
        if client is None:
            raise AuthorizeError("invalid_request", f"unknown client_id {client_id!r}")
        redirect_uri = params.get("redirect_uri", "")
        if not redirect_uri:
            raise AuthorizeError("invalid_request", "the redirect_uri parameter is missing")
        if not redirect_uri_allowed(redirect_uri, client.redirect_uris, public=client.public):
            raise AuthorizeError(
                "invalid_request",
                "redirect_uri is not registered for this client (exact match required)",
            )
        state = params.get("state", "")
        response_types = tuple(sorted(set(params.get("response_type", "").split())))
        fragment = response_types != ("code",)

        def fail(error: str, description: str) -> AuthorizeError:
            return AuthorizeError(
                error, description, redirect_uri=redirect_uri, state=state, use_fragment=fragment
            )

        for name, error in _UNSUPPORTED_PARAMS.items():
            if params.get(name):
                raise fail(error, f"the {name} parameter is not supported")
        if not response_types:
            raise fail("invalid_request", "the response_type parameter is missing")
        allowed_types = self._settings.client_response_types(client)
        for response_type in response_types:
            if response_type not in ("code", "token", "id_token"):
                raise fail("unsupported_response_type", f"unknown response_type {response_type!r}")
            if response_type not in allowed_types:
                raise fail(
                    "unsupported_response_type",
                    f"response_type {response_type!r} is not enabled for this client",
                )
        if response_types == ("token",):
            raise fail("unsupported_response_type", "response_type token alone is not OpenID")
        response_mode = params.get("response_mode", "")
        if response_mode and response_mode not in ("query", "fragment"):
            raise fail("invalid_request", f"unsupported response_mode {response_mode!r}")
        if response_mode == "query" and fragment:
            raise fail("invalid_request", "tokens must not be returned in the query string")

        requested = scopes.parse_scopes(params.get("scope", ""))
        try:
            scope_request = scopes.check_scopes(requested)
        except scopes.ScopeError as exc:
            raise fail("invalid_scope", str(exc)) from None
        for peer_id in scope_request.audiences:
            self._check_peer(client, peer_id, fail)
        grants = self._settings.client_grants(client)
        if scopes.OFFLINE_ACCESS in requested and "refresh_token" not in grants:
            raise fail("invalid_scope", "offline_access is not allowed for this client")
        if "code" in response_types and "authorization_code" not in grants:
            raise fail("unauthorized_client", "this client may not use the authorization code flow")
        if fragment and "implicit" not in grants:
            raise fail("unauthorized_client", "this client may not use the implicit/hybrid flow")

        nonce = params.get("nonce", "")
        if "id_token" in response_types and not nonce:
            raise fail("invalid_request", "nonce is required when an ID token is returned directly")

        challenge = params.get("code_challenge", "")
        method = params.get("code_challenge_method", "")
        if challenge:
            if not method:
                # RFC 7636 makes a missing method mean plain; that default only stands where
                # plain is enabled, so a client cannot downgrade by omission.
                if "plain" not in self._settings.pkce_methods:
                    raise fail(
                        "invalid_request",
                        "code_challenge_method is required "
                        f"(supported: {', '.join(self._settings.pkce_methods)})",
                    )
                method = "plain"
            if method not in self._settings.pkce_methods:
                raise fail(
                    "invalid_request",
                    f"code_challenge_method {method!r} is not supported "
                    f"(supported: {', '.join(self._settings.pkce_methods)})",
                )
            if not pkce.valid_challenge(challenge):
                raise fail("invalid_request", "code_challenge is malformed (RFC 7636 §4.2)")
        elif method:
            raise fail("invalid_request", "code_challenge_method without code_challenge")
        elif "code" in response_types and (client.public or self._settings.pkce_enforce):
            raise fail(
                "invalid_request",
                "PKCE is required: send code_challenge and code_challenge_method=S256",
            )

        prompt = set(params.get("prompt", "").split())
        if "none" in prompt:
            # Portcullis keeps no browser session, so a silent login is never possible.
            raise fail("login_required", "no active session; prompt=none cannot be honoured")

        connector_id = params.get("connector_id", "")
        if (
            connector_id
            and client.allowed_connectors
            and connector_id not in client.allowed_connectors
        ):
            raise fail(
                "invalid_request", f"connector {connector_id!r} is not allowed for this client"
            )

        now = self._clock.now()
        request = AuthRequest(
            id=new_id(),
            client_id=client.id,
            response_types=response_types,
            scopes=requested,
            redirect_uri=redirect_uri,
            expiry=now + self._settings.auth_request_ttl,
            nonce=nonce,
            state=state,
            force_approval_prompt="consent" in prompt,
            connector_id=connector_id,
            pkce=PKCE(code_challenge=challenge, code_challenge_method=method if challenge else ""),
            browser_binding=browser_binding,
        )
        self._storage.create_auth_request(request)
        return request

    def _check_peer(
        self, client: Client, peer_id: str, fail: Callable[[str, str], AuthorizeError]
    ) -> None:
        if peer_id == client.id:
            return
        peer = self._clients.get(peer_id)
        if peer is None:
            raise fail("invalid_scope", f"audience {peer_id!r} is not a known client")
        if client.id not in peer.trusted_peers:
            raise fail(
                "invalid_scope",
                f"client {peer_id!r} does not trust {client.id!r} (trustedPeers)",
            )

    # -- step 2: login ----------------------------------------------------------------------
    def get(self, request_id: str) -> AuthRequest | None:
        try:
            request = self._storage.get_auth_request(request_id)
        except NotFoundError:
            return None
        if request.expiry < self._clock.now():
            return None
        return request

    def client_for(self, request: AuthRequest) -> Client | None:
        return self._clients.get(request.client_id)

    def record_login(self, request_id: str, connector_id: str, identity: Identity) -> AuthRequest:
        now = self._clock.now()
        return self._storage.update_auth_request(
            request_id,
            lambda r: dataclasses.replace(
                r, logged_in=True, identity=identity, connector_id=connector_id, auth_time=now
            ),
        )

    def needs_approval(self, request: AuthRequest) -> bool:
        return request.force_approval_prompt or not self._settings.skip_approval

    # -- step 3: finish ---------------------------------------------------------------------
    def deny(self, request: AuthRequest) -> str:
        self._delete(request.id)
        return _redirect(
            request.redirect_uri,
            {"error": "access_denied", "error_description": "the user denied the request"},
            request.state,
            fragment=request.response_types != ("code",),
        )

    def finish(self, request: AuthRequest) -> str:
        """Issue the code and/or tokens and return the client redirect (single use)."""
        if not request.logged_in or request.identity is None:
            raise AuthorizeError("invalid_request", "the login was not completed")
        self._delete(request.id)
        client = self._clients.get(request.client_id)
        if client is None:
            raise AuthorizeError("invalid_request", "the client no longer exists")
        now = self._clock.now()
        values: dict[str, str] = {}
        code_id = ""
        if "code" in request.response_types:
            code_id = new_id()
            self._storage.create_auth_code(
                AuthCode(
                    id=code_id,
                    client_id=request.client_id,
                    redirect_uri=request.redirect_uri,
                    scopes=request.scopes,
                    identity=request.identity,
                    connector_id=request.connector_id,
                    expiry=now + self._settings.auth_code_ttl,
                    nonce=request.nonce,
                    pkce=request.pkce,
                    auth_time=request.auth_time,
                )
            )
            values["code"] = code_id
        if "token" in request.response_types or "id_token" in request.response_types:
            ttl = self._settings.id_token_ttl_for(client)
            scope_request = scopes.check_scopes(request.scopes)
            minted = self._minter.mint(
                client_id=client.id,
                audiences=scope_request.audiences,
                identity=request.identity,
                connector_id=request.connector_id,
                scopes=request.scopes,
                now=now,
                ttl=ttl,
                nonce=request.nonce,
                auth_time=request.auth_time,
                code=code_id,
            )
            if "token" in request.response_types:
                values.update(
                    access_token=minted.access_token,
                    token_type="bearer",  # noqa: S106 - a token type, not a secret
                    expires_in=str(minted.expires_in),
                )
            if "id_token" in request.response_types:
                values["id_token"] = minted.id_token
        return _redirect(
            request.redirect_uri,
            values,
            request.state,
            fragment=request.response_types != ("code",),
        )

    def _delete(self, request_id: str) -> None:
        try:
            self._storage.delete_auth_request(request_id)
        except NotFoundError:
            raise AuthorizeError(
                "invalid_request", "this login was already completed or has expired"
            ) from None


def _redirect(uri: str, values: dict[str, str], state: str, *, fragment: bool) -> str:
    if state:
        values = {**values, "state": state}
    query = urlencode(values)
    if fragment:
        return f"{uri}#{query}"
    separator = "&" if "?" in uri else "?"
    return f"{uri}{separator}{query}"


def error_redirect(error: AuthorizeError) -> str:
    """The redirect carrying an authorization error back to a verified redirect URI."""
    return _redirect(
        error.redirect_uri,
        {"error": error.error, "error_description": error.description},
        error.state,
        fragment=error.use_fragment,
    )
