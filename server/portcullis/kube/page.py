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
import dataclasses
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import quote, urlencode

from anyio.to_thread import run_sync
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from portcullis.config.load import ClientSpec, Config
from portcullis.config.model import KubeconfigPageSection
from portcullis.kube import plugin_release
from portcullis.kube.apiserver import apiserver_flags, settings_for
from portcullis.kube.kubeconfig import Credentials, cluster_setups
from portcullis.oidc.errors import OAuthError
from portcullis.oidc.pkce import s256
from portcullis.oidc.provider import Provider

log = logging.getLogger("portcullis.kube")

#: The page's own redirect URI, under the issuer (registered on the page's client implicitly).
KUBECONFIG_CALLBACK_PATH = "/kubeconfig/callback"
COOKIE = "pc_kubeconfig"
SCOPES = "openid email profile groups offline_access"
COOKIE_TTL = 15 * 60
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# Copy buttons: hidden until this script (allowed by its hash on this page only, as the SAML
# POST binding does) shows and wires them; without JavaScript every block is plain text to
# select and copy.
COPY_SCRIPT = (
    'document.querySelectorAll("button.pc-copy").forEach(function (b) {'
    " b.hidden = false;"
    ' b.addEventListener("click", function () {'
    " var text = document.getElementById(b.dataset.copy).textContent;"
    ' navigator.clipboard.writeText(text).then(function () { b.textContent = "Copied"; });'
    " });"
    " });"
)
_COPY_HASH = base64.b64encode(hashlib.sha256(COPY_SCRIPT.encode()).digest()).decode()
PAGE_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; "
    f"script-src 'sha256-{_COPY_HASH}'; frame-ancestors 'none'; base-uri 'none'"
)
SHOWN_CLAIMS = ("sub", "email", "email_verified", "name", "preferred_username")
#: The platforms the release builds kubectl-portcullis for (docs/kubectl-plugin.md).
PLUGIN_PLATFORMS = (
    ("linux", "amd64"),
    ("linux", "arm64"),
    ("darwin", "amd64"),
    ("darwin", "arm64"),
)


def plugin_downloads(base: str) -> list[tuple[str, str, str]]:
    """(label, URL, sha256 or "") per platform below ``base``; "" shows no links.

    The sha256 is the released binary's, from ``plugin_release`` (generated from
    ``release/manifest.yaml``), so a user can check the file they download against the digest
    the release signed; a development build knows none and shows none.
    """
    if not base:
        return []
    known = {} if plugin_release.DEVELOPMENT else plugin_release.SHA256
    return [
        (
            f"{os_name}/{arch}",
            f"{base}/kubectl-portcullis-{os_name}-{arch}",
            known.get((os_name, arch), ""),
        )
        for os_name, arch in PLUGIN_PLATFORMS
    ]


class PageRenderer(Protocol):
    """The issuer's HTML pages (web's Jinja2 environment, with the operator's frontend.dir),
    handed in by the assembly so the kubeconfig page looks like every other page."""

    def render(self, template: str, status: int = 200, **context: Any) -> Response: ...

    def error(self, status: int, title: str, message: str) -> Response: ...


#: The client's address as the issuer resolves it (trusting forwarding headers only from the
#: configured proxies), for the login throttle.
ClientAddress = Callable[[Request], str]


def register_page_client(config: Config) -> Config:
    """The config with the page's callback added to the redirect URIs of its client (the issuer
    is the relying party there, so operators need not repeat the issuer URL in redirectURIs).
    The config loader has already checked that the client exists and allows the code grant."""
    page = config.raw.kubernetes.kubeconfig_page
    if not page.enabled:
        return config
    callback = config.issuer + KUBECONFIG_CALLBACK_PATH
    clients = tuple(
        dataclasses.replace(spec, redirect_uris=(*spec.redirect_uris, callback))
        if spec.id == page.client_id and callback not in spec.redirect_uris
        else spec
        for spec in config.clients
    )
    return dataclasses.replace(config, clients=clients)


def page_routes(
    config: Config,
    provider: Provider,
    pages: PageRenderer,
    client_address: ClientAddress,
    *,
    secure_cookies: bool,
) -> list[Route]:
    """The page's routes, relative to the issuer path (none when the page is off). ``config``
    must have gone through :func:`register_page_client`."""
    section = config.raw.kubernetes.kubeconfig_page
    if not section.enabled:
        return []
    client = next(c for c in config.clients if c.id == section.client_id)  # checked on load
    page = KubeconfigPage(
        provider, pages, client_address, section, client, secure_cookies=secure_cookies
    )
    return [
        Route("/kubeconfig", page.start, methods=["GET"]),
        Route(KUBECONFIG_CALLBACK_PATH, page.callback, methods=["GET"]),
    ]


class KubeconfigPage:
    def __init__(
        self,
        provider: Provider,
        pages: PageRenderer,
        client_address: ClientAddress,
        section: KubeconfigPageSection,
        client: ClientSpec,
        *,
        secure_cookies: bool,
    ) -> None:
        self.provider = provider
        # What each cluster's API server must be started with for these kubeconfigs to work:
        # the same generator as `portcullis kube apiserver-config`, so the two never disagree.
        self.apiserver_flags = {
            cluster.name: "\n".join(
                apiserver_flags(settings_for(provider.config, cluster.name, require_https=False))
            )
            for cluster in section.clusters
        }
        self.pages = pages
        self.client_address = client_address
        self.section = section
        self.client = client
        self.secure_cookies = secure_cookies
        # The identifier kubectl's idp-issuer-url must equal (byte for byte, as `iss`); the
        # callback is built on the endpoint base.
        self.issuer = provider.config.issuer_id
        self.base = provider.config.issuer_path
        self.callback_url = provider.config.issuer + KUBECONFIG_CALLBACK_PATH
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
                "code_challenge": s256(verifier),
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
                self._token_form(code, verifier),
                self._authorization(),
                self.client_address(request),
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
            issuer_ca_data=self.section.issuer_certificate_authority_data,
        )
        groups = claims.get("groups")
        response = self.pages.render(
            "kubeconfig.html",
            user=label,
            issuer=self.issuer,
            client_id=self.client.id,
            expires_in=int(tokens.get("expires_in", 0)),
            clusters=cluster_setups(list(self.section.clusters), creds),
            apiserver_flags=self.apiserver_flags,
            # What the API server will see: the claims it maps (autoescaped in the template).
            claims=[
                (name, claims[name] if isinstance(claims[name], str) else repr(claims[name]))
                for name in SHOWN_CLAIMS
                if name in claims
            ],
            groups=[g for g in groups if isinstance(g, str)] if isinstance(groups, list) else [],
            downloads=plugin_downloads(self.section.plugin_download_url),
            copy_script=COPY_SCRIPT,
        )
        response.headers["Content-Security-Policy"] = PAGE_CSP
        return response

    def _finish(self, response: Response) -> Response:
        response.delete_cookie(
            COOKIE,
            path=self.cookie_path,
            secure=self.secure_cookies,
            httponly=True,
            samesite="lax",
        )
        return response
