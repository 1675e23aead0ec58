"""The device flow's HTTP side (RFC 8628): ``/device/code`` (JSON, for the device), ``/device``
(the user-code page), ``/device/auth/verify_code`` (Dex's form target), ``/device/callback``
(where the browser leg's login comes back) and ``/device/token``, Dex's second (deprecated)
polling path, kept because devices configured against Dex may poll there instead of ``/token``.

HTTP only: the rules (codes, throttling, the PKCE binding, single use) are
``portcullis.oidc.device``'s, whose storage calls run in worker threads. The user-code form is
CSRF-protected with the same per-browser binding cookie as the login forms, under the fixed
name ``device``: there is no auth request yet when the page is shown.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlencode

from anyio.to_thread import run_sync
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from portcullis.config.model import DEVICE_CODE_GRANT
from portcullis.oidc.device import DeviceVerificationError, format_user_code
from portcullis.oidc.errors import OAuthError, invalid_grant
from portcullis.oidc.provider import Provider
from portcullis.oidc.throttle import ThrottledError
from portcullis.storage.models import DEVICE_APPROVED
from portcullis.web import security
from portcullis.web.api import json_response, oauth_error_response, read_form
from portcullis.web.pages import NO_STORE, Pages

log = logging.getLogger("portcullis.device")

_CSRF_KEY = "device"


class DeviceRoutes:
    def __init__(
        self,
        provider: Provider,
        pages: Pages,
        ip_resolver: security.ClientIPResolver,
        *,
        secure_cookies: bool,
    ) -> None:
        self.provider = provider
        self.device = provider.device
        self.pages = pages
        self.ip = ip_resolver
        self.base = provider.config.issuer_path
        self.secure_cookies = secure_cookies
        self._warned_device_token = False

    # -- POST /device/code (the device) -------------------------------------------------------
    async def device_code(self, http: Request) -> Response:
        try:
            form = await read_form(http)
            authorization = http.headers.get("authorization")

            def start() -> dict[str, Any]:
                client = self.provider.clients.authenticate(authorization, form, allow_public=True)
                return self.device.start(client, form.get("scope", ""))

            result = await run_sync(start)
        except OAuthError as error:
            log.info("device authorization refused: %s", error.error)
            return oauth_error_response(error)
        return json_response(result)

    # -- POST /device/token (the device, Dex's deprecated polling path) ------------------------
    async def device_token(self, http: Request) -> Response:
        """The token endpoint restricted to the device grant: the same client authentication,
        grant checks, polling answers (``authorization_pending``, ``slow_down``,
        ``expired_token``, ``access_denied``) and single use, because it is the same dispatcher.
        Another ``grant_type`` is ``invalid_grant``, as Dex answers there, so this path can never
        become a second way into the other grants."""
        if not self._warned_device_token:
            # Once per process: devices poll every few seconds, a line per poll would flood.
            self._warned_device_token = True
            log.warning("the deprecated /device/token path was called; devices should use /token")
        try:
            form = await read_form(http)
            if form.get("grant_type") != DEVICE_CODE_GRANT:
                raise invalid_grant(f"only grant_type={DEVICE_CODE_GRANT} is served here")
            result = await self.provider.tokens.handle(
                form, http.headers.get("authorization"), self.ip.resolve(http)
            )
        except OAuthError as error:
            log.info("device token request refused: %s", error.error)
            return oauth_error_response(error)
        return json_response(result)

    # -- GET /device (the person) --------------------------------------------------------------
    async def page(self, http: Request) -> Response:
        typed = http.query_params.get("user_code", "")
        return self._form(http, typed[:32])

    def _form(self, http: Request, user_code: str, status: int = 200, error: str = "") -> Response:
        cookie = security.binding_cookie_name(_CSRF_KEY)
        binding = http.cookies.get(cookie) or security.new_binding()
        response = self.pages.render(
            "device.html",
            status=status,
            action=f"{self.base}/device/auth/verify_code",
            user_code=user_code,
            error=error,
            csrf_token=security.csrf_token_for(binding, _CSRF_KEY),
        )
        response.set_cookie(
            cookie,
            binding,
            max_age=3600,
            path=self.base or "/",
            secure=self.secure_cookies,
            httponly=True,
            samesite="lax",
        )
        return response

    # -- POST /device/auth/verify_code --------------------------------------------------------
    async def verify(self, http: Request) -> Response:
        form = await http.form()
        typed = str(form.get("user_code", ""))[:32]
        if not security.csrf_valid(http, _CSRF_KEY, str(form.get("csrf_token", ""))):
            return self._form(http, typed, 403, "The form expired. Enter the code again.")
        if not typed.strip():
            return self._form(http, typed, 400, "Enter the code your device shows.")
        client_ip = self.ip.resolve(http)
        try:
            request = await run_sync(self.device.verify_user_code, typed, client_ip)
        except ThrottledError as exc:
            log.warning("device user-code entry throttled for %s", client_ip)
            response = self._form(
                http, "", 429, "Too many wrong codes. Wait a few minutes and try again."
            )
            response.headers["Retry-After"] = str(exc.retry_after)
            return response
        except DeviceVerificationError as exc:
            log.info("wrong device user code from %s", client_ip)
            return self._form(http, typed, 400, str(exc))
        params = self.device.authorize_params(request)
        log.info("device login started for client %s", request.client_id)
        return RedirectResponse(
            f"{self.base}/auth?{urlencode(params)}", status_code=303, headers=NO_STORE
        )

    # -- GET /device/callback (end of the browser leg) ---------------------------------------
    async def callback(self, http: Request) -> Response:
        params = dict(http.query_params)
        try:
            request = await run_sync(self.device.complete, params)
        except DeviceVerificationError as exc:
            return self.pages.error(400, "Device login failed", str(exc))
        approved = request.status == DEVICE_APPROVED
        log.info("device request for client %s %s", request.client_id, request.status)
        return self.pages.render(
            "device_done.html",
            approved=approved,
            user_code=format_user_code(request.user_code),
        )
