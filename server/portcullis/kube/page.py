"""The kubeconfig page: ``GET {issuer}/kubeconfig`` signs the user in as the configured client
(a normal authorization-code login with PKCE, through the same login pages and connectors), and
``{issuer}/kubeconfig/callback`` exchanges the code inside the process and renders the kubectl
set-up for every configured cluster.

The state and PKCE verifier travel in one HttpOnly, SameSite=Lax cookie scoped to the page's
path: only the browser that started the login can finish it (login CSRF), and the verifier never
appears in a URL. Tokens are rendered into a no-store page and never logged.

A cluster may trust another issuer (``clusters[].issuer``: another Portcullis, Dex, any OpenID
provider), as dex-k8s-authenticator allows per cluster. The main page then links
``{issuer}/kubeconfig/cluster/<name>``, where the page becomes that issuer's relying party with
the cluster's client: authorization code with PKCE (S256), ``state`` and ``nonce``, the code
redeemed and the ID token verified by the upstream ``oidc`` connector's code (discovery, JWKS,
``iss``/``aud``/``azp``/times/nonce, the cluster's CA beside the system roots, a timeout and a
size bound on every call), handed in by the assembly as a :class:`RelyingParty`. The callback is
``{issuer}/kubeconfig/cluster/<name>/callback`` (register it at that issuer); its state and the
connector's login state (nonce, verifier) travel in a cookie scoped to that cluster's path, as
the page's own login keeps its verifier, so a login started for one cluster cannot be finished
as another's or in another browser. The verifier is worth something only with the code, which
the issuer sends to the same browser. The page shows that login's claims and groups and the
kubeconfigs with that issuer, client, secret and CA.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urlencode

from anyio.to_thread import run_sync
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from portcullis.config.load import ClientSpec, Config
from portcullis.config.model import DEFAULT_FOREIGN_SCOPES, KubeCluster, KubeconfigPageSection
from portcullis.connectors.base import ConnectorError, LoginRedirect, Scopes
from portcullis.kube import plugin_release
from portcullis.kube.apiserver import apiserver_flags, settings_for
from portcullis.kube.kubeconfig import ClusterSetup, Credentials, cluster_setups
from portcullis.oidc.errors import OAuthError
from portcullis.oidc.pkce import s256
from portcullis.oidc.provider import Provider

if TYPE_CHECKING:
    # Only the sign-in at a foreign cluster's issuer uses the OIDC client stack (the oidc
    # connector, httpx); a server without such clusters never imports it (issue 13).
    from portcullis.connectors.oidc import VerifiedLogin

log = logging.getLogger("portcullis.kube")

#: The page's own redirect URI, under the issuer (registered on the page's client implicitly).
KUBECONFIG_CALLBACK_PATH = "/kubeconfig/callback"
COOKIE = "pc_kubeconfig"
#: The cookie of a login at a cluster's own issuer (one per cluster, by its path).
FOREIGN_COOKIE = "pc_kubeconfig_rp"
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


class RelyingParty(Protocol):
    """A login at a cluster's own issuer (the upstream ``oidc`` connector, opened by the
    assembly with the cluster's issuer, client, CA and :func:`cluster_callback_url`)."""

    async def login_url(self, scopes: Scopes, callback_url: str, state: str) -> LoginRedirect: ...

    async def redeem(self, params: Mapping[str, str], connector_state: bytes) -> VerifiedLogin: ...


def cluster_path(name: str) -> str:
    """Where a login at the issuer of cluster ``name`` starts, relative to the issuer path
    (names are ``[A-Za-z0-9_:@-]+``: nothing to escape in a path)."""
    return f"/kubeconfig/cluster/{name}"


def cluster_callback_url(config: Config, name: str) -> str:
    """The redirect URI to register at the issuer of cluster ``name``."""
    return f"{config.issuer}{cluster_path(name)}/callback"


def foreign_clusters(config: Config) -> list[KubeCluster]:
    """The page's clusters that trust another issuer (none when the page is off)."""
    page = config.raw.kubernetes.kubeconfig_page
    return [c for c in page.clusters if c.issuer] if page.enabled else []


def foreign_scopes(cluster: KubeCluster) -> tuple[str, ...]:
    return tuple(cluster.scopes) or DEFAULT_FOREIGN_SCOPES


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
    relying_parties: Mapping[str, RelyingParty] | None = None,
) -> list[Route]:
    """The page's routes, relative to the issuer path (none when the page is off). ``config``
    must have gone through :func:`register_page_client`; ``relying_parties`` has one entry
    per cluster of :func:`foreign_clusters`, by name."""
    section = config.raw.kubernetes.kubeconfig_page
    if not section.enabled:
        return []
    client = next(c for c in config.clients if c.id == section.client_id)  # checked on load
    page = KubeconfigPage(
        provider,
        pages,
        client_address,
        section,
        client,
        secure_cookies=secure_cookies,
        relying_parties=relying_parties or {},
    )
    routes = [
        Route("/kubeconfig", page.start, methods=["GET"]),
        Route(KUBECONFIG_CALLBACK_PATH, page.callback, methods=["GET"]),
    ]
    if page.foreign:
        routes += [
            Route(cluster_path("{name}"), page.start_foreign, methods=["GET"]),
            Route(cluster_path("{name}") + "/callback", page.callback_foreign, methods=["GET"]),
        ]
    return routes


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
        relying_parties: Mapping[str, RelyingParty] | None = None,
    ) -> None:
        self.provider = provider
        # Clusters that trust another issuer, each with its relying party (the assembly opened
        # one per such cluster; a missing one is a wiring bug, caught here at start-up).
        self.foreign = {c.name: c for c in section.clusters if c.issuer}
        self.relying_parties = dict(relying_parties or {})
        missing = sorted(set(self.foreign) - set(self.relying_parties))
        if missing:
            raise ValueError(f"kubeconfig page: no relying party for clusters {missing}")
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
        label = _label(claims)
        creds = Credentials(
            issuer=self.issuer,
            client_id=self.client.id,
            id_token=str(tokens["id_token"]),
            refresh_token=str(tokens.get("refresh_token", "")),
            username=label,
            issuer_ca_data=self.section.issuer_certificate_authority_data,
        )
        own = [c for c in self.section.clusters if c.name not in self.foreign]
        return self._page(
            tokens,
            claims,
            issuer=self.issuer,
            clusters=cluster_setups(own, creds),
            apiserver_flags=self.apiserver_flags,
            foreign=[
                (c.name, c.server, c.issuer, f"{self.base}{cluster_path(c.name)}")
                for c in self.foreign.values()
            ],
        )

    def _page(
        self,
        tokens: Mapping[str, Any],
        claims: dict[str, Any],
        *,
        issuer: str,
        clusters: list[ClusterSetup],
        apiserver_flags: dict[str, str],
        foreign: list[tuple[str, str, str, str]],
    ) -> Response:
        groups = claims.get("groups")
        expires_in = tokens.get("expires_in", 0)
        response = self.pages.render(
            "kubeconfig.html",
            user=_label(claims),
            issuer=issuer,
            expires_in=expires_in if isinstance(expires_in, int) else 0,
            clusters=clusters,
            apiserver_flags=apiserver_flags,
            foreign=foreign,
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

    # -- GET /kubeconfig/cluster/<name> (a cluster trusting another issuer) --------------------
    async def start_foreign(self, request: Request) -> Response:
        name = request.path_params["name"]
        cluster = self.foreign.get(name)
        if cluster is None:
            return self.pages.error(404, "Unknown cluster", "No such cluster signs in here.")
        state = secrets.token_urlsafe(24)
        scopes = foreign_scopes(cluster)
        try:
            start = await self.relying_parties[name].login_url(
                Scopes(offline_access="offline_access" in scopes, groups="groups" in scopes),
                self._foreign_callback(name),
                state,
            )
        except ConnectorError as exc:
            log.warning("kubeconfig: cannot start a login at the issuer of %s: %s", name, exc)
            return self.pages.error(502, "Sign-in failed", str(exc))
        response = RedirectResponse(start.url, status_code=303, headers=NO_STORE)
        packed = base64.urlsafe_b64encode(start.connector_state).decode().rstrip("=")
        response.set_cookie(
            FOREIGN_COOKIE,
            f"{state}.{packed}",
            max_age=COOKIE_TTL,
            path=self._foreign_cookie_path(name),
            secure=self.secure_cookies,
            httponly=True,
            samesite="lax",
        )
        return response

    # -- GET /kubeconfig/cluster/<name>/callback -----------------------------------------------
    async def callback_foreign(self, request: Request) -> Response:
        name = request.path_params["name"]
        cluster = self.foreign.get(name)
        if cluster is None:
            return self.pages.error(404, "Unknown cluster", "No such cluster signs in here.")
        state, _, packed = request.cookies.get(FOREIGN_COOKIE, "").partition(".")
        returned = request.query_params.get("state", "")
        connector_state = _unpack(packed)
        if not state or connector_state is None or not hmac.compare_digest(state, returned):
            return self._finish_foreign(
                name,
                self.pages.error(
                    400,
                    "Sign-in not started here",
                    "This sign-in was not started in this browser or has expired. "
                    f"Open {self.base}{cluster_path(name)} again.",
                ),
            )
        error = request.query_params.get("error", "")
        if error:
            return self._finish_foreign(
                name,
                self.pages.error(400, "Sign-in failed", f"The sign-in ended with {error[:64]!s}."),
            )
        try:
            login = await self.relying_parties[name].redeem(
                dict(request.query_params), connector_state
            )
        except ConnectorError as exc:
            log.warning("kubeconfig: sign-in at the issuer of %s failed: %s", name, exc)
            return self._finish_foreign(name, self.pages.error(502, "Sign-in failed", str(exc)))
        return self._finish_foreign(name, self._render_foreign(cluster, login))

    def _render_foreign(self, cluster: KubeCluster, login: VerifiedLogin) -> Response:
        creds = Credentials(
            issuer=cluster.issuer,
            client_id=cluster.client_id,
            id_token=login.tokens.id_token,
            refresh_token=login.tokens.refresh_token,
            username=_label(login.claims),
            issuer_ca_data=cluster.issuer_certificate_authority_data,
            client_secret=cluster.client_secret,
        )
        settings = settings_for(
            self.provider.config,
            cluster.name,
            require_https=False,
            signing_algorithm=login.algorithm,
        )
        return self._page(
            login.tokens.raw,
            login.claims,
            issuer=cluster.issuer,
            clusters=cluster_setups([cluster], creds),
            apiserver_flags={cluster.name: "\n".join(apiserver_flags(settings))},
            foreign=[],
        )

    def _foreign_callback(self, name: str) -> str:
        return self.provider.config.issuer + cluster_path(name) + "/callback"

    def _foreign_cookie_path(self, name: str) -> str:
        return f"{self.base}{cluster_path(name)}"

    def _finish_foreign(self, name: str, response: Response) -> Response:
        response.delete_cookie(
            FOREIGN_COOKIE,
            path=self._foreign_cookie_path(name),
            secure=self.secure_cookies,
            httponly=True,
            samesite="lax",
        )
        return response


def _label(claims: Mapping[str, Any]) -> str:
    """The kubeconfig user name for these claims: the email, else the subject."""
    email = claims.get("email")
    return email if isinstance(email, str) and email else str(claims.get("sub", "user"))


def _unpack(packed: str) -> bytes | None:
    """The connector state from the cookie, None when it is not one (any garbage): a cookie
    the browser altered is a sign-in not started here (400), never an upstream failure."""
    if not packed:
        return None
    from portcullis.connectors.oauth2_common import decode_state  # see TYPE_CHECKING above

    try:
        raw = base64.urlsafe_b64decode(packed + "=" * (-len(packed) % 4))
        decode_state(raw, "login state")
    except (ValueError, binascii.Error, ConnectorError):
        return None
    return raw
