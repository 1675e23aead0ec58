"""The authorization endpoint's decisions and the login state machine.

An auth request goes: validated and stored (``parse``) -> a connector chosen (``choose_connector``,
``start_login``: the choice and the connector's per-login state written to the request) ->
logged in (``password_login`` or ``finish_callback``: the identity recorded) -> approved or
denied -> finished (code and/or tokens, the request deleted, single use).

The web layer owns HTTP (cookies, CSRF, forms, templates, status codes); this module owns what
is allowed and every storage write, so the same rules hold for any front end (the browser
routes today, the device flow's verification page later) and no adapter can skip a step.
Methods that touch storage are plain functions run in worker threads by the caller, or
coroutines that hand their storage calls to worker threads themselves: a slow database must
never stall the event loop. Connector calls (upstream I/O) are awaited on the loop.

``PasswordLogin`` is the one password check with throttling, shared by the login form and the
password grant, so the two cannot count failures differently.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from anyio import to_thread

from portcullis.clock import Clock
from portcullis.config.model import DEVICE_CODE_GRANT
from portcullis.connectors.base import (
    CallbackConnector,
    Connector,
    ConnectorError,
    HeaderConnector,
    LoginRedirect,
    PasswordConnector,
)
from portcullis.oidc import pkce, resources, scopes
from portcullis.oidc.clients import ClientRegistry, UntrustedAudienceError
from portcullis.oidc.device import DEVICE_CALLBACK_PATH
from portcullis.oidc.errors import AuthorizeError, OAuthError
from portcullis.oidc.input_limits import check_auth_parameter_lengths
from portcullis.oidc.redirect import redirect_uri_allowed
from portcullis.oidc.settings import ProtocolSettings
from portcullis.oidc.throttle import LoginThrottle
from portcullis.oidc.tokens import TokenMinter, new_id
from portcullis.storage.base import NotFoundError, Storage
from portcullis.storage.models import PKCE, AuthCode, AuthRequest, Client, Identity

_UNSUPPORTED_PARAMS = {
    "request": "request_not_supported",
    "request_uri": "request_uri_not_supported",
    "registration": "registration_not_supported",
}


class InvalidCredentialsError(Exception):
    """Wrong username or password (never which of the two)."""


class UnknownConnectorError(Exception):
    """No such connector, or the client may not use it."""


class UnusableConnectorError(Exception):
    """The connector can neither check a password nor send the browser upstream."""


class NoLoginWaitingError(Exception):
    """A callback arrived for an auth request that did not start an upstream login."""


class UpstreamRefusedError(Exception):
    """The upstream identity provider came back with an error instead of a login."""


@dataclass(frozen=True)
class ConnectorChoice:
    """Where a new login goes: straight to ``connector_id`` when it is decided (requested by
    the client, or the only option and the login screen may be skipped), else the user picks
    one of ``options``."""

    connector_id: str
    options: tuple[Connector, ...]


@dataclass(frozen=True)
class PasswordForm:
    """The chosen connector checks a password: show its form."""

    connector: PasswordConnector


@dataclass(frozen=True)
class UpstreamLogin:
    """The chosen connector logs in upstream: send the browser there."""

    redirect: LoginRedirect


LoginStart = PasswordForm | UpstreamLogin


class PasswordLogin:
    """Check a username and password through a password connector, with throttling.

    The sequence is: count the attempt and refuse it if the user from this address, the user
    overall (progressive delay) or this address has too many recent attempts, in one storage
    transaction (``LoginThrottle.admit``), before the password is even checked, so parallel
    guesses cannot slip past and guessing costs nothing upstream; then ask the connector;
    then settle: a good password clears the user's counters, an upstream failure is uncounted,
    a wrong one stays counted. Counters live in storage, so every worker and replica sees the
    same attempts; their calls run in worker threads. See ``oidc.throttle`` for the policy.
    """

    def __init__(self, throttle: LoginThrottle) -> None:
        self._throttle = throttle

    async def attempt(
        self,
        connector: PasswordConnector,
        granted: tuple[str, ...],
        username: str,
        password: str,
        client_ip: str,
    ) -> Identity:
        """The identity, or raise ThrottledError, InvalidCredentialsError, or ConnectorError
        (upstream failed; not the user's fault, so not counted)."""
        counted = await to_thread.run_sync(self._throttle.admit, username, client_ip)
        try:
            identity = await connector.login(scopes.connector_scopes(granted), username, password)
        except ConnectorError:
            await to_thread.run_sync(self._throttle.not_a_guess, counted)
            raise
        if identity is None:
            raise InvalidCredentialsError()
        await to_thread.run_sync(self._throttle.succeeded, counted)
        return identity


class AuthorizationFlow:
    def __init__(
        self,
        settings: ProtocolSettings,
        storage: Storage,
        clients: ClientRegistry,
        minter: TokenMinter,
        clock: Clock,
        connectors: Mapping[str, Connector],
        password_login: PasswordLogin,
    ) -> None:
        self._settings = settings
        self._storage = storage
        self._clients = clients
        self._minter = minter
        self._clock = clock
        self._connectors = connectors
        self._password_login = password_login

    @property
    def issuer(self) -> str:
        """The issuer identifier every authorization response carries as ``iss`` (RFC 9207)."""
        return self._settings.token_issuer

    # -- step 1: validate -------------------------------------------------------------------
    def parse(
        self,
        params: Mapping[str, str],
        browser_binding: str,
        repeated: Collection[str] = (),
    ) -> AuthRequest:
        """Validate an authorization request and store it. Raises AuthorizeError.

        ``repeated`` names the parameters the request carried more than once (in the query, or
        in both the query and a POST body); ``params`` holds one value of each. A repeated
        parameter is refused (RFC 6749 §3.1), as at the token endpoint, rather than letting
        one copy silently win: a proxy, a WAF and the issuer must not read different requests.
        """
        check_auth_parameter_lengths(params)
        for name in ("client_id", "redirect_uri"):
            if name in repeated:
                # No verified redirect to send the error to: the error page says it.
                raise AuthorizeError("invalid_request", f"the {name} parameter is repeated")
        client_id = params.get("client_id", "")
        if not client_id:
            raise AuthorizeError("invalid_request", "the client_id parameter is missing")
        client = self._clients.get(client_id)
        if client is None:
            raise AuthorizeError("invalid_request", f"unknown client_id {client_id!r}")
        redirect_uri = params.get("redirect_uri", "")
        if not redirect_uri:
            raise AuthorizeError("invalid_request", "the redirect_uri parameter is missing")
        # The device flow's browser leg (RFC 8628) comes back to the issuer's own page, which
        # Dex allows for every client that may use the device grant; portcullis.oidc.device
        # binds that leg to its device request with PKCE.
        device_leg = (
            redirect_uri == self._settings.issuer + DEVICE_CALLBACK_PATH
            and DEVICE_CODE_GRANT in self._settings.client_grants(client)
        )
        if not device_leg and not redirect_uri_allowed(
            redirect_uri, client.redirect_uris, public=client.public
        ):
            raise AuthorizeError(
                "invalid_request",
                "redirect_uri is not registered for this client (exact match required)",
            )
        # A repeated state is not echoed: which copy would the client recognise?
        state = "" if "state" in repeated else params.get("state", "")
        response_types = tuple(sorted(set(params.get("response_type", "").split())))
        response_mode = "" if "response_mode" in repeated else params.get("response_mode", "")
        fragment = response_types != ("code",) or response_mode == "fragment"

        def fail(error: str, description: str) -> AuthorizeError:
            return AuthorizeError(
                error, description, redirect_uri=redirect_uri, state=state, use_fragment=fragment
            )

        if repeated:
            names = ", ".join(sorted(repeated))
            raise fail("invalid_request", f"parameters must not be repeated: {names}")
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
        if response_mode and response_mode not in ("query", "fragment"):
            raise fail("invalid_request", f"unsupported response_mode {response_mode!r}")
        if response_mode == "query" and response_types != ("code",):
            raise fail("invalid_request", "tokens must not be returned in the query string")

        requested = scopes.parse_scopes(params.get("scope", ""))
        try:
            scope_request = scopes.check_scopes(requested)
        except scopes.ScopeError as exc:
            raise fail("invalid_scope", str(exc)) from None
        try:
            self._clients.check_audiences(client, scope_request.audiences)
        except UntrustedAudienceError as exc:
            raise fail("invalid_scope", str(exc)) from None
        grants = self._settings.client_grants(client)
        if scopes.OFFLINE_ACCESS in requested and "refresh_token" not in grants:
            raise fail("invalid_scope", "offline_access is not allowed for this client")
        if "code" in response_types and "authorization_code" not in grants and not device_leg:
            raise fail("unauthorized_client", "this client may not use the authorization code flow")
        if response_types != ("code",) and "implicit" not in grants:
            raise fail("unauthorized_client", "this client may not use the implicit/hybrid flow")

        try:
            requested_resources = resources.check_allowed(
                resources.parse(params.get(resources.PARAMETER, "")), client.allowed_resources
            )
        except OAuthError as exc:
            raise fail(exc.error, exc.description) from None

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
            response_mode=response_mode,
            resources=requested_resources,
        )
        self._storage.create_auth_request(request)
        return request

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
        """May read storage (dynamic clients): run in a worker thread."""
        return self._clients.get(request.client_id)

    def connectors_for(self, request: AuthRequest) -> list[Connector]:
        """The connectors this request's client may log in with (all when it names none).
        May read storage: run in a worker thread."""
        client = self.client_for(request)
        allowed = client.allowed_connectors if client else ()
        return [c for c in self._connectors.values() if not allowed or c.id in allowed]

    def choose_connector(self, request: AuthRequest) -> ConnectorChoice:
        """May read storage: run in a worker thread."""
        options = tuple(self.connectors_for(request))
        if request.connector_id:
            # parse() already checked it against the client's allowed connectors.
            return ConnectorChoice(request.connector_id, options)
        if len(options) == 1 and not self._settings.always_show_login:
            return ConnectorChoice(options[0].id, options)
        return ConnectorChoice("", options)

    def _connector(self, request: AuthRequest, connector_id: str) -> Connector | None:
        for connector in self.connectors_for(request):
            if connector.id == connector_id:
                return connector
        return None

    async def password_connector(
        self, request: AuthRequest, connector_id: str
    ) -> PasswordConnector:
        """The password connector the form of this login posts to, else UnknownConnectorError."""
        connector = await to_thread.run_sync(self._connector, request, connector_id)
        if not isinstance(connector, PasswordConnector):
            raise UnknownConnectorError(connector_id)
        return connector

    async def start_login(
        self, request: AuthRequest, connector_id: str, callback_url: str
    ) -> LoginStart:
        """Start a login with the chosen connector and remember the choice (and, for a
        callback connector, its per-login state) on the auth request, in storage shared by
        every replica: the callback may reach another one. Raises UnknownConnectorError,
        UnusableConnectorError, or ConnectorError when upstream cannot start a login."""
        connector = await to_thread.run_sync(self._connector, request, connector_id)
        if connector is None:
            raise UnknownConnectorError(connector_id)
        if isinstance(connector, PasswordConnector):
            await to_thread.run_sync(self._choose, request.id, connector_id, b"")
            return PasswordForm(connector)
        if isinstance(connector, CallbackConnector):
            redirect = await connector.login_url(
                scopes.connector_scopes(request.scopes), callback_url, request.id
            )
            await to_thread.run_sync(
                self._choose, request.id, connector_id, redirect.connector_state
            )
            return UpstreamLogin(redirect)
        if isinstance(connector, HeaderConnector):
            # To the /callback/{id} path the operator's proxy authenticates (as in Dex).
            redirect = connector.login_url(callback_url, request.id)
            await to_thread.run_sync(self._choose, request.id, connector_id, b"")
            return UpstreamLogin(redirect)
        raise UnusableConnectorError(connector_id)

    def _choose(self, request_id: str, connector_id: str, state: bytes) -> None:
        def choose(request: AuthRequest) -> AuthRequest:
            # A finished login is never re-pointed at another connector (a stale tab).
            if request.logged_in:
                return request
            return dataclasses.replace(request, connector_id=connector_id, connector_state=state)

        self._storage.update_auth_request(request_id, choose)

    async def password_login(
        self,
        request: AuthRequest,
        connector: PasswordConnector,
        username: str,
        password: str,
        client_ip: str,
    ) -> AuthRequest:
        """Check the password (throttled) and record the login. Raises ThrottledError,
        InvalidCredentialsError or ConnectorError."""
        identity = await self._password_login.attempt(
            connector, request.scopes, username, password, client_ip
        )
        return await to_thread.run_sync(self.record_login, request.id, connector.id, identity)

    async def finish_callback(
        self,
        request: AuthRequest,
        params: Mapping[str, str],
        *,
        headers: Mapping[str, str] | None = None,
        peer: str = "",
        path_connector: str = "",
    ) -> AuthRequest:
        """Finish an upstream login from its callback parameters and the connector state
        stored by ``start_login``, and record it. ``headers`` (names lower-cased) and ``peer``
        (the TCP peer address) are only read by a header connector; ``path_connector`` is the
        ``{id}`` of ``/callback/{id}`` when the callback came there, and must then be the
        waiting connector. Raises NoLoginWaitingError, UpstreamRefusedError or
        ConnectorError."""
        if path_connector and path_connector != request.connector_id:
            raise NoLoginWaitingError()
        connector = await to_thread.run_sync(self._connector, request, request.connector_id)
        if isinstance(connector, HeaderConnector):
            # Only on /callback/{id}: the path the operator's proxy authenticates.
            if path_connector != connector.id:
                raise NoLoginWaitingError()
            identity = await connector.login(
                scopes.connector_scopes(request.scopes), headers or {}, peer
            )
            return await to_thread.run_sync(self.record_login, request.id, connector.id, identity)
        if not isinstance(connector, CallbackConnector):
            raise NoLoginWaitingError()
        if "error" in params:
            raise UpstreamRefusedError()
        identity = await connector.handle_callback(
            scopes.connector_scopes(request.scopes), params, request.connector_state
        )
        return await to_thread.run_sync(self.record_login, request.id, connector.id, identity)

    def callback_needs_same_origin_hop(self, request: AuthRequest) -> bool:
        """Whether a POSTed callback for this login may be re-posted from our own origin:
        only when the waiting connector's upstream answers with a cross-site POST (which
        browsers send without our SameSite=Lax cookie) and the login is not finished. The
        hop itself grants nothing; the ownership check runs on the re-posted request."""
        if request.logged_in:
            return False
        connector = self._connectors.get(request.connector_id)
        return isinstance(connector, CallbackConnector) and connector.callback_by_post

    def record_login(self, request_id: str, connector_id: str, identity: Identity) -> AuthRequest:
        """Storage write: run in a worker thread."""
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
            fragment=request.uses_fragment,
            issuer=self.issuer,
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
                    resources=request.resources,
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
                resources=request.resources,
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
            fragment=request.uses_fragment,
            issuer=self.issuer,
        )

    def _delete(self, request_id: str) -> None:
        try:
            self._storage.delete_auth_request(request_id)
        except NotFoundError:
            raise AuthorizeError(
                "invalid_request", "this login was already completed or has expired"
            ) from None


def _redirect(uri: str, values: dict[str, str], state: str, *, fragment: bool, issuer: str) -> str:
    """The client redirect. Every authorization response, success or error, query or fragment,
    carries ``iss`` (RFC 9207): a client talking to several authorization servers can then
    tell which one answered and refuse a mixed-up response (RFC 9700 §4.4)."""
    if state:
        values = {**values, "state": state}
    values = {**values, "iss": issuer}
    query = urlencode(values)
    if fragment:
        return f"{uri}#{query}"
    separator = "&" if "?" in uri else "?"
    return f"{uri}{separator}{query}"


def error_redirect(error: AuthorizeError, issuer: str) -> str:
    """The redirect carrying an authorization error back to a verified redirect URI, with the
    issuer's ``iss`` (RFC 9207)."""
    return _redirect(
        error.redirect_uri,
        {"error": error.error, "error_description": error.description},
        error.state,
        fragment=error.use_fragment,
        issuer=issuer,
    )
