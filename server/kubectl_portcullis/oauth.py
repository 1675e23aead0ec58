"""The OAuth 2.0 / OpenID Connect client side: discovery, the grants, refresh, revocation.

Every grant ends in :class:`Tokens`; the caller caches them and builds the ExecCredential.
Error handling follows the RFCs the issuer follows: an OAuth error body becomes
:class:`OAuthError` with the issuer's code, so the CLI can say *which* step failed and *why*.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from kubectl_portcullis import browser, loopback
from kubectl_portcullis.errors import OAuthError, PluginError
from kubectl_portcullis.http import Http
from kubectl_portcullis.jwt import decode_claims

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_DEVICE_INTERVAL = 5  # RFC 8628 §3.2: "If no value is provided, clients MUST use 5"
SLOW_DOWN_STEP = 5  # RFC 8628 §3.5: slow_down adds 5 seconds to every following interval
DEVICE_GRACE = 60  # seconds past expires_in before the client stops polling on its own


@dataclass(frozen=True)
class Provider:
    """The parts of the issuer's discovery document (OIDC Discovery 1.0) the plugin uses."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    device_authorization_endpoint: str | None
    revocation_endpoint: str | None
    grant_types: tuple[str, ...]
    code_challenge_methods: tuple[str, ...]
    scopes_supported: tuple[str, ...] | None
    document: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def discover(cls, http: Http, issuer: str) -> Provider:
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = http.get_json(url)
        if not isinstance(document, dict):
            raise PluginError(f"{url} is not a JSON object")
        # OIDC Discovery §4.3: the document must name exactly the issuer it was fetched for.
        if document.get("issuer") != issuer:
            raise PluginError(
                f"discovery at {url} names issuer {document.get('issuer')!r}, "
                f"not {issuer!r} (check --issuer, including any trailing slash)"
            )

        def endpoint(name: str, required: bool) -> str | None:
            value = document.get(name)
            if isinstance(value, str) and value:
                return value
            if required:
                raise PluginError(f"discovery at {url} has no {name}")
            return None

        def strings(name: str) -> tuple[str, ...] | None:
            value = document.get(name)
            if isinstance(value, list):
                return tuple(v for v in value if isinstance(v, str))
            return None

        return cls(
            issuer=issuer,
            authorization_endpoint=endpoint("authorization_endpoint", True) or "",
            token_endpoint=endpoint("token_endpoint", True) or "",
            device_authorization_endpoint=endpoint("device_authorization_endpoint", False),
            revocation_endpoint=endpoint("revocation_endpoint", False),
            # RFC 8414 §2: absent means ["authorization_code", "implicit"].
            grant_types=strings("grant_types_supported") or ("authorization_code", "implicit"),
            code_challenge_methods=strings("code_challenge_methods_supported") or (),
            scopes_supported=strings("scopes_supported"),
            document=document,
        )


@dataclass(frozen=True)
class Client:
    """The OAuth client the plugin acts as (usually a public client such as ``kubectl``)."""

    client_id: str
    client_secret: str | None = None

    def auth(self, form: dict[str, str]) -> tuple[str, str] | None:
        """Client authentication: HTTP Basic with a secret, else ``client_id`` in the form."""
        if self.client_secret:
            return (self.client_id, self.client_secret)
        form["client_id"] = self.client_id
        return None


@dataclass(frozen=True)
class Tokens:
    id_token: str
    refresh_token: str | None


def _tokens(body: dict[str, Any], endpoint: str, *, nonce: str | None = None) -> Tokens:
    id_token = body.get("id_token")
    if not isinstance(id_token, str) or not id_token:
        raise PluginError(
            f"{endpoint} returned no id_token (is the 'openid' scope allowed for this client?)"
        )
    if nonce is not None and decode_claims(id_token).get("nonce") != nonce:
        raise PluginError(f"{endpoint} returned an ID token for another login (nonce mismatch)")
    refresh = body.get("refresh_token")
    return Tokens(id_token, refresh if isinstance(refresh, str) and refresh else None)


class Session:
    """One issuer + client + scopes: the grants that produce :class:`Tokens`."""

    def __init__(
        self,
        http: Http,
        provider: Provider,
        client: Client,
        scopes: Sequence[str],
        *,
        stderr: TextIO | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.http = http
        self.provider = provider
        self.client = client
        self.scopes = list(scopes)
        self.stderr = stderr or sys.stderr
        self.sleep = sleep
        self.monotonic = monotonic

    def _say(self, message: str) -> None:
        print(message, file=self.stderr, flush=True)

    def _token(self, form: dict[str, str], *, nonce: str | None = None) -> Tokens:
        auth = self.client.auth(form)
        body = self.http.post_oauth(self.provider.token_endpoint, form, basic_auth=auth)
        return _tokens(body, self.provider.token_endpoint, nonce=nonce)

    # -- authorization code + PKCE on a loopback port (RFC 6749 §4.1, RFC 7636, RFC 8252) ------
    def authorization_code(
        self,
        listen_addresses: Sequence[str],
        redirect_host: str,
        *,
        open_browser: bool,
        timeout: float,
        pkce: bool,
        extra_params: dict[str, str] | None = None,
    ) -> Tokens:
        if (
            pkce
            and self.provider.code_challenge_methods
            and ("S256" not in self.provider.code_challenge_methods)
        ):
            raise PluginError(
                "the issuer does not offer PKCE with S256 "
                f"(code_challenge_methods_supported: {list(self.provider.code_challenge_methods)})"
            )
        state = secrets.token_urlsafe(24)
        nonce = secrets.token_urlsafe(24)
        verifier = secrets.token_urlsafe(48)  # 64 characters of the RFC 7636 §4.1 alphabet
        with loopback.Receiver(listen_addresses, redirect_host, state) as receiver:
            params = {
                **(extra_params or {}),
                "response_type": "code",
                "client_id": self.client.client_id,
                "redirect_uri": receiver.redirect_uri,
                "scope": " ".join(self.scopes),
                "state": state,
                "nonce": nonce,
            }
            if pkce:
                digest = hashlib.sha256(verifier.encode("ascii")).digest()
                params["code_challenge"] = base64.urlsafe_b64encode(digest).decode().rstrip("=")
                params["code_challenge_method"] = "S256"
            separator = "&" if "?" in self.provider.authorization_endpoint else "?"
            url = self.provider.authorization_endpoint + separator + urllib.parse.urlencode(params)
            opened = open_browser and browser.open_browser(url)
            if opened:
                self._say(f"Opened the browser to log in. If it did not open, visit:\n{url}")
            else:
                self._say(f"Open this URL in your browser to log in:\n{url}")
            code, iss = receiver.wait(timeout)
        # RFC 9207: an issuer that names itself in the response must be the one we asked.
        announced = self.provider.document.get("authorization_response_iss_parameter_supported")
        if iss is None and announced is True:
            raise PluginError("the authorization response lacks the 'iss' parameter (RFC 9207)")
        if iss is not None and iss != self.provider.issuer:
            raise PluginError(
                f"the authorization response comes from issuer {iss!r}, "
                f"not {self.provider.issuer!r} (RFC 9207)"
            )
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": receiver.redirect_uri,
        }
        if pkce:
            form["code_verifier"] = verifier
        return self._token(form, nonce=nonce)

    # -- device authorization grant (RFC 8628) --------------------------------------------------
    def device(self, *, open_browser: bool) -> Tokens:
        endpoint = self.provider.device_authorization_endpoint
        if endpoint is None:
            raise PluginError(
                "the issuer has no device_authorization_endpoint in its discovery document "
                "(is the device grant enabled for this issuer?)"
            )
        form = {"scope": " ".join(self.scopes)}
        auth = self.client.auth(form)
        body = self.http.post_oauth(endpoint, form, basic_auth=auth)
        device_code = body.get("device_code")
        user_code = body.get("user_code")
        verification_uri = body.get("verification_uri")
        if not all(isinstance(v, str) and v for v in (device_code, user_code, verification_uri)):
            raise PluginError(f"{endpoint} answered without device_code/user_code/verification_uri")
        assert isinstance(device_code, str)
        complete = body.get("verification_uri_complete")
        expires_in = body.get("expires_in")
        interval = body.get("interval", DEFAULT_DEVICE_INTERVAL)
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            interval = DEFAULT_DEVICE_INTERVAL
        self._say(
            f"To log in, visit {verification_uri} and enter the code: {user_code}"
            + (f"\n(or open {complete})" if isinstance(complete, str) else "")
        )
        if open_browser and isinstance(complete, str):
            browser.open_browser(complete)
        # The issuer decides when the code expires (expired_token); the local deadline is only
        # a safety net against an issuer that never answers it.
        lifetime = expires_in if isinstance(expires_in, int) and expires_in > 0 else 1800
        deadline = self.monotonic() + lifetime + DEVICE_GRACE
        while True:
            self.sleep(interval)
            form = {"grant_type": DEVICE_GRANT, "device_code": device_code}
            try:
                return self._token(form)
            except OAuthError as exc:
                if exc.error == "authorization_pending":
                    pass
                elif exc.error == "slow_down":
                    interval += SLOW_DOWN_STEP
                elif exc.error == "expired_token":
                    raise PluginError(
                        "the device code expired (expired_token) before the login was "
                        "completed; run the command again for a new code"
                    ) from None
                elif exc.error == "access_denied":
                    raise PluginError(
                        "the login was denied (access_denied) on the verification page"
                    ) from None
                else:
                    raise
            if self.monotonic() >= deadline:
                raise PluginError(
                    "the issuer still answered authorization_pending "
                    f"{DEVICE_GRACE}s after the device code's expiry; giving up"
                )

    # -- resource owner password credentials (RFC 6749 §4.3) ------------------------------------
    def password(self, username: str, password: str) -> Tokens:
        if "password" not in self.provider.grant_types:
            raise PluginError(
                "the issuer does not allow the password grant "
                "(grant_types_supported lacks 'password'); use --grant-type authcode or device"
            )
        form = {
            "grant_type": "password",
            "username": username,
            "password": password,
            "scope": " ".join(self.scopes),
        }
        return self._token(form)

    # -- refresh (RFC 6749 §6) and revocation (RFC 7009) ----------------------------------------
    def refresh(self, refresh_token: str) -> Tokens:
        # No scope: RFC 6749 §6 then grants exactly the scopes of the original login.
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        tokens = self._token(form)
        # RFC 6749 §6: the issuer may keep the old refresh token instead of rotating it.
        return Tokens(tokens.id_token, tokens.refresh_token or refresh_token)

    def revoke(self, refresh_token: str) -> bool:
        """Revoke at the issuer; False when it has no revocation endpoint."""
        endpoint = self.provider.revocation_endpoint
        if endpoint is None:
            return False
        form = {"token": refresh_token, "token_type_hint": "refresh_token"}
        auth = self.client.auth(form)
        response = self.http.post_form(endpoint, form, basic_auth=auth)
        if response.status == 200:
            return True
        body = response.body
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            description = body.get("error_description")
            raise OAuthError(
                endpoint, body["error"], description if isinstance(description, str) else ""
            )
        raise PluginError(f"POST {endpoint} answered HTTP {response.status}")
