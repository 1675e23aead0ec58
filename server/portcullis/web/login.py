"""Browser routes of a login: /auth, /auth/{connector}, /auth/{connector}/login, /callback,
/approval.

HTTP only: parameters in, pages, redirects and cookies out (the browser-binding cookie, CSRF).
Every decision and every storage write is made by ``portcullis.oidc.authorize`` (the login state
machine), whose storage calls run in worker threads; this module only maps its outcomes and
typed errors to responses.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from urllib.parse import parse_qsl, urlencode

from anyio.to_thread import run_sync
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from portcullis.connectors.base import Connector, ConnectorError
from portcullis.oidc import resources
from portcullis.oidc.authorize import (
    InvalidCredentialsError,
    NoLoginWaitingError,
    PasswordForm,
    UnknownConnectorError,
    UnusableConnectorError,
    UpstreamRefusedError,
    error_redirect,
)
from portcullis.oidc.errors import AuthorizeError
from portcullis.oidc.input_limits import PendingAuthLimit, TooManyPendingError
from portcullis.oidc.provider import Provider
from portcullis.oidc.throttle import ThrottledError
from portcullis.storage.models import AuthRequest
from portcullis.web import security
from portcullis.web.pages import NO_STORE, Pages

log = logging.getLogger("portcullis.login")

#: The largest callback body read (a signed SAML response is a few KiB; big ones with many
#: groups and certificates stay well under this). Anything larger is refused unread.
CALLBACK_BODY_LIMIT = 512 * 1024
#: Marks the re-post of a cross-site SAML callback from our own origin, so it happens once.
HOP_FIELD = "pc_hop"


class _BodyTooLargeError(Exception):
    pass


async def _capped_form(http: Request, limit: int) -> dict[str, str]:
    """The urlencoded body of ``http``, reading at most ``limit`` bytes (raises
    _BodyTooLargeError beyond). Only urlencoded forms: that is what every HTTP-POST binding
    sends, and it spares a multipart parser on a cross-site endpoint."""
    declared = http.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _BodyTooLargeError()
    content_type = http.headers.get("content-type", "").split(";")[0].strip().lower()
    body = bytearray()
    async for chunk in http.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise _BodyTooLargeError()
    if content_type != "application/x-www-form-urlencoded":
        return {}
    text = body.decode("latin-1")
    return dict(parse_qsl(text, keep_blank_values=True, max_num_fields=64, encoding="utf-8"))


def _header_map(http: Request) -> dict[str, str]:
    """Request headers by lower-case name; a repeated header's values joined by a newline
    (which no header value can contain), so a connector can tell a repeat from one value."""
    headers: dict[str, str] = {}
    for name, value in http.headers.items():
        headers[name] = f"{headers[name]}\n{value}" if name in headers else value
    return headers


SCOPE_DESCRIPTIONS = {
    "openid": None,
    "email": "View your email address",
    "profile": "View basic profile information",
    "groups": "View your groups",
    "offline_access": "Have offline access",
    "federated:id": "View the identity provider and user id behind your account",
}


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers=NO_STORE)


class LoginRoutes:
    def __init__(
        self,
        provider: Provider,
        pages: Pages,
        ip_resolver: security.ClientIPResolver,
        *,
        secure_cookies: bool,
    ) -> None:
        self.provider = provider
        self.pages = pages
        self.ip = ip_resolver
        self.flow = provider.authorization
        self.base = provider.config.issuer_path
        self.secure_cookies = secure_cookies
        self.cookie_ttl = int(min(provider.settings.auth_request_ttl, 24 * 3600))
        limits = provider.config.raw.web.limits
        self.pending = PendingAuthLimit(
            provider.storage,
            provider.clock,
            limit=limits.pending_auth_requests_per_ip,
            window=limits.pending_auth_requests_window,
        )

    # -- helpers -----------------------------------------------------------------------------
    async def _load(self, http: Request, request_id: str) -> AuthRequest | Response:
        """The auth request, only for the browser that started it."""
        if not request_id:
            return self.pages.error(400, "Bad request", "The login request is missing.")
        auth_request = await run_sync(self.flow.get, request_id)
        if auth_request is None:
            return self.pages.error(
                400,
                "Login expired",
                "This login request is unknown or has expired. Go back to the application "
                "and start again.",
            )
        if not security.browser_owns(http, request_id, auth_request.browser_binding):
            return self.pages.error(
                403,
                "Login not started in this browser",
                "This login was started in another browser or its cookie is missing. Go back "
                "to the application and start again.",
            )
        return auth_request

    def _authorize_error(self, error: AuthorizeError) -> Response:
        if error.redirect_uri:
            return _redirect(error_redirect(error, self.flow.issuer))
        return self.pages.error(400, "Invalid login request", error.description)

    def _connector_url(self, connector_id: str, auth_request: AuthRequest) -> str:
        return f"{self.base}/auth/{connector_id}?{urlencode({'state': auth_request.id})}"

    def _picker(self, auth_request: AuthRequest, options: Sequence[Connector]) -> Response:
        return self.pages.render(
            "login.html",
            connectors=[
                {
                    "id": c.id,
                    "name": c.name,
                    "type": c.type,
                    "dev_only": c.dev_only,
                    "url": self._connector_url(c.id, auth_request),
                }
                for c in options
            ],
        )

    def _retry_url(self, auth_request: AuthRequest) -> str:
        """Back to the login methods of the same request (or straight into the only one)."""
        return f"{self.base}/auth?{urlencode({'state': auth_request.id})}"

    # -- /auth -------------------------------------------------------------------------------
    async def auth(self, http: Request) -> Response:
        if (
            http.method == "GET"
            and "state" in http.query_params
            and ("client_id" not in http.query_params)
        ):
            return await self._picker_again(http)
        items = list(http.query_params.multi_items())
        if http.method == "POST":
            items += [(k, str(v)) for k, v in (await http.form()).multi_items()]
        params: dict[str, str] = {}
        repeated: set[str] = set()
        resource_values: list[str] = []
        for key, value in items:
            if key == resources.PARAMETER:
                # RFC 8707: the one parameter that may repeat.
                resource_values.append(value)
                continue
            if key in params:
                repeated.add(key)
            params.setdefault(key, value)
        if resource_values:
            params[resources.PARAMETER] = resources.join(resource_values)
        connector_from_path = http.path_params.get("connector", "")
        if connector_from_path:
            params.setdefault("connector_id", connector_from_path)
        try:
            await run_sync(self.pending.admit, self.ip.resolve(http))
        except TooManyPendingError as exc:
            refused = self.pages.error(
                429,
                "Too many logins",
                "Too many logins were started from your address. Wait a few minutes and try again.",
            )
            refused.headers["Retry-After"] = str(exc.retry_after)
            return refused
        binding = security.new_binding()
        try:
            auth_request = await run_sync(
                self.flow.parse, params, security.binding_digest(binding), repeated
            )
        except AuthorizeError as error:
            return self._authorize_error(error)
        choice = await run_sync(self.flow.choose_connector, auth_request)
        if choice.connector_id:
            response: Response = _redirect(self._connector_url(choice.connector_id, auth_request))
        else:
            response = self._picker(auth_request, choice.options)
        response.set_cookie(
            security.binding_cookie_name(auth_request.id),
            binding,
            max_age=self.cookie_ttl,
            path=self.base or "/",
            secure=self.secure_cookies,
            httponly=True,
            samesite="lax",
        )
        return response

    async def _picker_again(self, http: Request) -> Response:
        """The retry link of an error page: the login methods again for the same request
        (only for the browser that started it), or the only one when the picker is skipped."""
        loaded = await self._load(http, http.query_params.get("state", ""))
        if isinstance(loaded, Response):
            return loaded
        if loaded.logged_in:
            return _redirect(f"{self.base}/approval?{urlencode({'req': loaded.id})}")
        options = await run_sync(self.flow.connectors_for, loaded)
        if len(options) == 1 and not self.provider.settings.always_show_login:
            return _redirect(self._connector_url(options[0].id, loaded))
        return self._picker(loaded, options)

    # -- /auth/{connector} -------------------------------------------------------------------
    async def auth_connector(self, http: Request) -> Response:
        if "client_id" in http.query_params:
            # Dex lets clients start directly at a connector with the full request.
            return await self.auth(http)
        connector_id = http.path_params["connector"]
        loaded = await self._load(http, http.query_params.get("state", ""))
        if isinstance(loaded, Response):
            return loaded
        try:
            start = await self.flow.start_login(loaded, connector_id, self._callback_url())
        except UnknownConnectorError:
            return self.pages.error(
                404, "Unknown login method", "That login method does not exist."
            )
        except UnusableConnectorError:
            return self.pages.error(
                400,
                "Login failed",
                "This login method cannot be used here.",
                retry_url=self._retry_url(loaded),
                retry_label="Choose another way to log in",
            )
        except ConnectorError as exc:
            log.warning("connector %s failed to start a login: %s", connector_id, exc)
            return self._upstream_error(loaded, str(exc))
        if isinstance(start, PasswordForm):
            return _redirect(
                f"{self.base}/auth/{connector_id}/login?{urlencode({'state': loaded.id})}"
            )
        if start.redirect.post_form is not None:
            return self.pages.post_binding(start.redirect.url, start.redirect.post_form)
        return _redirect(start.redirect.url)

    def _callback_url(self) -> str:
        return f"{self.provider.settings.issuer}/callback"

    def _upstream_error(
        self, auth_request: AuthRequest, message: str, status: int = 502
    ) -> Response:
        return self.pages.error(
            status,
            "Login failed",
            message,
            retry_url=self._retry_url(auth_request),
            retry_label="Try again",
        )

    # -- /auth/{connector}/login (password form) ---------------------------------------------
    async def password_login(self, http: Request) -> Response:
        connector_id = http.path_params["connector"]
        request_id = http.query_params.get("state", "")
        form = await http.form() if http.method == "POST" else None
        if form is not None and not request_id:
            request_id = str(form.get("state", ""))
        loaded = await self._load(http, request_id)
        if isinstance(loaded, Response):
            return loaded
        try:
            connector = await self.flow.password_connector(loaded, connector_id)
        except UnknownConnectorError:
            return self.pages.error(
                404, "Unknown login method", "That login method does not exist."
            )

        def form_page(status: int = 200, error: str = "", username: str = "") -> Response:
            return self.pages.render(
                "password.html",
                status=status,
                action=f"{self.base}/auth/{connector_id}/login?{urlencode({'state': loaded.id})}",
                prompt=connector.prompt,
                connector_name=connector.name,
                dev_only=connector.dev_only,
                username=username,
                error=error,
                csrf_token=security.csrf_token(http, loaded.id),
            )

        if form is None:
            return form_page()
        if not security.csrf_valid(http, loaded.id, str(form.get("csrf_token", ""))):
            return self.pages.error(403, "Form expired", "The form was not valid. Start again.")
        username = str(form.get("login", "")).strip()
        password = str(form.get("password", ""))
        if not username or not password:
            return form_page(400, "Enter both your username and your password.", username)
        client_ip = self.ip.resolve(http)
        try:
            await self.flow.password_login(loaded, connector, username, password, client_ip)
        except ThrottledError as exc:
            response = form_page(
                429, "Too many failed attempts. Wait a few minutes and try again.", username
            )
            response.headers["Retry-After"] = str(exc.retry_after)
            return response
        except ConnectorError as exc:
            # The form again is the retry: the directory may be back on the next attempt.
            log.warning("password login via %s failed upstream: %s", connector_id, exc)
            return form_page(502, str(exc), username)
        except InvalidCredentialsError:
            log.info("failed password login via %s from %s", connector_id, client_ip)
            return form_page(401, "Invalid username or password.", username)
        log.info("login via %s for client %s", connector_id, loaded.client_id)
        return _redirect(f"{self.base}/approval?{urlencode({'req': loaded.id})}")

    # -- /callback ----------------------------------------------------------------------------
    async def callback(self, http: Request) -> Response:
        params = dict(http.query_params)
        if http.method == "POST":  # SAML's HTTP-POST binding
            try:
                params.update(await _capped_form(http, CALLBACK_BODY_LIMIT))
            except _BodyTooLargeError:
                return self.pages.error(413, "Login failed", "The login response is too large.")
        # SAML names the login in RelayState; everything else in state.
        request_id = params.get("state", "") or params.get("RelayState", "")
        hop = params.pop(HOP_FIELD, "")
        if http.method == "POST" and not hop:
            hopped = await self._same_origin_hop(http, request_id, params)
            if hopped is not None:
                return hopped
        loaded = await self._load(http, request_id)
        if isinstance(loaded, Response):
            return loaded
        try:
            await self.flow.finish_callback(
                loaded,
                params,
                headers=_header_map(http),
                peer=http.client.host if http.client else "",
                path_connector=http.path_params.get("connector", ""),
            )
        except NoLoginWaitingError:
            return self.pages.error(
                400,
                "Login failed",
                "No login is waiting for this callback.",
                retry_url=self._retry_url(loaded),
                retry_label="Start the login again",
            )
        except UpstreamRefusedError:
            return self._upstream_error(loaded, "The identity provider refused the login.", 401)
        except ConnectorError as exc:
            log.warning("callback via %s failed: %s", loaded.connector_id, exc)
            return self._upstream_error(loaded, str(exc))
        return _redirect(f"{self.base}/approval?{urlencode({'req': loaded.id})}")

    async def _same_origin_hop(
        self, http: Request, request_id: str, params: dict[str, str]
    ) -> Response | None:
        """A cross-site POST (the IdP's auto-submitting form) arrives without our SameSite=Lax
        binding cookie. Answer once with a page that re-posts the same fields to the same path
        from our own origin, marked with HOP_FIELD: that request carries the cookie and gets
        the normal ownership check before anything reads the SAML response. None when no hop
        applies (cookie present, unknown login, connector that does not POST back)."""
        if not request_id or security.has_binding_cookie(http, request_id):
            return None
        auth_request = await run_sync(self.flow.get, request_id)
        if auth_request is None or not self.flow.callback_needs_same_origin_hop(auth_request):
            return None
        action = f"{self.base}/callback"
        if http.path_params.get("connector"):
            action += f"/{http.path_params['connector']}"
        return self.pages.post_binding(
            action, {**params, HOP_FIELD: "1"}, message="Finishing your login."
        )

    # -- /approval ----------------------------------------------------------------------------
    async def approval(self, http: Request) -> Response:
        form = await http.form() if http.method == "POST" else None
        request_id = http.query_params.get("req", "") or (
            str(form.get("req", "")) if form is not None else ""
        )
        loaded = await self._load(http, request_id)
        if isinstance(loaded, Response):
            return loaded
        if not loaded.logged_in:
            return self.pages.error(400, "Login not finished", "Log in before approving access.")
        try:
            if form is None:
                if not self.flow.needs_approval(loaded):
                    return await self._finish(loaded)
                client = await run_sync(self.flow.client_for, loaded)
                return self.pages.render(
                    "approval.html",
                    client_name=client.name if client else loaded.client_id,
                    scopes=[
                        SCOPE_DESCRIPTIONS[s] for s in loaded.scopes if SCOPE_DESCRIPTIONS.get(s)
                    ],
                    audiences=[
                        s.split(":", 3)[3] for s in loaded.scopes if s.startswith("audience:")
                    ],
                    username=loaded.identity.email or loaded.identity.username
                    if loaded.identity
                    else "",
                    action=f"{self.base}/approval?{urlencode({'req': loaded.id})}",
                    req=loaded.id,
                    csrf_token=security.csrf_token(http, loaded.id),
                )
            if not security.csrf_valid(http, loaded.id, str(form.get("csrf_token", ""))):
                return self.pages.error(403, "Form expired", "The form was not valid. Start again.")
            if form.get("approval") == "approve":
                return await self._finish(loaded)
            return self._clear(_redirect(await run_sync(self.flow.deny, loaded)), loaded.id)
        except AuthorizeError as error:
            return self._authorize_error(error)

    async def _finish(self, auth_request: AuthRequest) -> Response:
        location = await run_sync(self.flow.finish, auth_request)
        return self._clear(_redirect(location), auth_request.id)

    def _clear(self, response: Response, request_id: str) -> Response:
        response.delete_cookie(
            security.binding_cookie_name(request_id),
            path=self.base or "/",
            secure=self.secure_cookies,
            httponly=True,
            samesite="lax",
        )
        return response
