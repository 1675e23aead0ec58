"""The kubeconfig page: ``GET {issuer}/kubeconfig`` signs the user in as the configured client
(a normal authorization-code login with PKCE, through the same login pages and connectors), and
``{issuer}/kubeconfig/callback`` exchanges the code inside the process and renders the kubectl
set-up for every configured cluster.

The state and PKCE verifier travel in one HttpOnly, SameSite=Lax cookie scoped to the page's
path: only the browser that started the login can finish it (login CSRF), and the verifier never
appears in a URL. Tokens are rendered into a no-store page and never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from typing import Any
from urllib.parse import quote, urlencode

from anyio.to_thread import run_sync
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from portcullis.config.load import KUBECONFIG_CALLBACK_PATH, ClientSpec
from portcullis.config.model import KubeconfigPageSection
from portcullis.kube.kubeconfig import Credentials, cluster_setups
from portcullis.oidc.errors import OAuthError
from portcullis.oidc.provider import Provider
from portcullis.web import security
from portcullis.web.pages import NO_STORE, Pages

log = logging.getLogger("portcullis.kube")

COOKIE = "pc_kubeconfig"
SCOPES = "openid email profile groups offline_access"
COOKIE_TTL = 15 * 60


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class KubeconfigPage:
    def __init__(
        self,
        provider: Provider,
        pages: Pages,
        ip_resolver: security.ClientIPResolver,
        section: KubeconfigPageSection,
        client: ClientSpec,
        *,
        secure_cookies: bool,
    ) -> None:
        self.provider = provider
        self.pages = pages
        self.ip = ip_resolver
        self.section = section
        self.client = client
        self.secure_cookies = secure_cookies
        issuer = provider.config.issuer
        self.issuer = issuer
        self.base = provider.config.issuer_path
        self.callback_url = issuer + KUBECONFIG_CALLBACK_PATH
        self.cookie_path = f"{self.base}/kubeconfig"

    # -- GET /kubeconfig -----------------------------------------------------------------------
    async def start(self, request: Request) -> Response:
        state = secrets.token_urlsafe(24)
        verifier = secrets.token_urlsafe(48)
        query = urlencode(
            {
                "client_id": self.client.id,
                "redirect_uri": self.callback_url,
                "response_type": "code",
                "scope": SCOPES,
                "state": state,
                "nonce": secrets.token_urlsafe(16),
                "code_challenge": _challenge(verifier),
                "code_challenge_method": "S256",
            }
        )
        response = RedirectResponse(f"{self.base}/auth?{query}", status_code=303, headers=NO_STORE)
        response.set_cookie(
            COOKIE,
            f"{state}.{verifier}",
            max_age=COOKIE_TTL,
            path=self.cookie_path,
            secure=self.secure_cookies,
            httponly=True,
            samesite="lax",
        )
        return response

    # -- GET /kubeconfig/callback --------------------------------------------------------------
    async def callback(self, request: Request) -> Response:
        state, _, verifier = request.cookies.get(COOKIE, "").partition(".")
        returned = request.query_params.get("state", "")
        if not state or not verifier or not hmac.compare_digest(state, returned):
            return self._finish(
                self.pages.error(
                    400,
                    "Sign-in not started here",
                    "This sign-in was not started in this browser or has expired. "
                    f"Open {self.base}/kubeconfig again.",
                )
            )
        error = request.query_params.get("error", "")
        if error:
            # Only the registered error code is echoed (autoescaped); descriptions may carry
            # upstream text we do not control.
            return self._finish(
                self.pages.error(400, "Sign-in failed", f"The sign-in ended with {error[:64]!s}.")
            )
        code = request.query_params.get("code", "")
        try:
            tokens = await self.provider.tokens.handle(
                self._token_form(code, verifier), self._authorization(), self.ip.resolve(request)
            )
        except OAuthError as exc:
            log.info("kubeconfig: code exchange refused: %s", exc.error)
            return self._finish(
                self.pages.error(400, "Sign-in failed", "The sign-in could not be completed.")
            )
        claims = await run_sync(self.provider.reader.verified_claims, tokens["id_token"])
        if claims is None:
            return self._finish(self.pages.error(500, "Sign-in failed", "Try again."))
        return self._finish(self._render(tokens, claims))

    def _token_form(self, code: str, verifier: str) -> dict[str, str]:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.callback_url,
            "code_verifier": verifier,
        }
        if self.client.public:
            form["client_id"] = self.client.id
        return form

    def _authorization(self) -> str | None:
        if self.client.public:
            return None
        pair = f"{quote(self.client.id, safe='')}:{quote(self.client.secret, safe='')}"
        return "Basic " + base64.b64encode(pair.encode()).decode()

    def _render(self, tokens: dict[str, Any], claims: dict[str, Any]) -> Response:
        email = claims.get("email")
        label = email if isinstance(email, str) and email else str(claims.get("sub", "user"))
        creds = Credentials(
            issuer=self.issuer,
            client_id=self.client.id,
            id_token=str(tokens["id_token"]),
            refresh_token=str(tokens.get("refresh_token", "")),
            username=label,
        )
        return self.pages.render(
            "kubeconfig.html",
            user=label,
            issuer=self.issuer,
            client_id=self.client.id,
            expires_in=int(tokens.get("expires_in", 0)),
            clusters=cluster_setups(list(self.section.clusters), creds),
        )

    def _finish(self, response: Response) -> Response:
        response.delete_cookie(
            COOKIE,
            path=self.cookie_path,
            secure=self.secure_cookies,
            httponly=True,
            samesite="lax",
        )
        return response
