"""``/logout``: RP-initiated logout's HTTP side (GET or POST, as §2 requires).

``portcullis.oidc.logout`` decides; this module renders the confirmation and signed-out pages
and redirects only to the URI that module verified as registered. The confirmation form is
CSRF-protected with the per-browser binding cookie under the fixed name ``logout``.
"""

from __future__ import annotations

import logging
from urllib.parse import urlencode

from anyio.to_thread import run_sync
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from portcullis.oidc.logout import LogoutError, LogoutPlan
from portcullis.oidc.provider import Provider
from portcullis.web import security
from portcullis.web.pages import NO_STORE, Pages

log = logging.getLogger("portcullis.logout")

_CSRF_KEY = "logout"
_PARAMS = ("id_token_hint", "client_id", "post_logout_redirect_uri", "state")


class LogoutRoutes:
    def __init__(self, provider: Provider, pages: Pages, *, secure_cookies: bool) -> None:
        self.logout_flow = provider.logout
        self.pages = pages
        self.base = provider.config.issuer_path
        self.secure_cookies = secure_cookies

    async def logout(self, http: Request) -> Response:
        params = {k: v for k, v in http.query_params.items() if k in _PARAMS}
        confirmed = False
        csrf_ok = False
        if http.method == "POST":
            form = await http.form()
            params.update({k: str(v) for k, v in form.items() if k in _PARAMS})
            confirmed = form.get("confirm") == "yes"
            csrf_ok = security.csrf_valid(http, _CSRF_KEY, str(form.get("csrf_token", "")))
        try:
            plan = await run_sync(self.logout_flow.plan, params)
        except LogoutError as exc:
            log.info("logout request refused: %s", exc)
            return self.pages.error(400, "Logout failed", str(exc))
        if not plan.hinted and not (confirmed and csrf_ok):
            return self._confirm(http, plan)
        await run_sync(self.logout_flow.end, plan)
        log.info(
            "logout for client %s (session ended: %s)", plan.client_id or "-", bool(plan.family_id)
        )
        if plan.redirect_uri:
            query = urlencode({"state": plan.state}) if plan.state else ""
            separator = "&" if "?" in plan.redirect_uri else "?"
            target = f"{plan.redirect_uri}{separator}{query}" if query else plan.redirect_uri
            return RedirectResponse(target, status_code=303, headers=NO_STORE)
        return self.pages.render("logout.html", confirm=False)

    def _confirm(self, http: Request, plan: LogoutPlan) -> Response:
        cookie = security.binding_cookie_name(_CSRF_KEY)
        binding = http.cookies.get(cookie) or security.new_binding()
        response = self.pages.render(
            "logout.html",
            confirm=True,
            action=f"{self.base}/logout",
            fields=[
                ("client_id", plan.client_id),
                ("post_logout_redirect_uri", plan.redirect_uri),
                ("state", plan.state),
            ],
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
