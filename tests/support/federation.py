"""A real Portcullis server federating to real upstream peers, and a loopback client app.

Shared by the browser suite (tests/browser) and the web-layer federation tests
(tests/integration): one ``portcullis serve`` process with an ``ldap`` connector on the session's
slapd, an ``oidc`` connector on its own node-oidc-provider (registered for this issuer's
callback, which is only known once the issuer's port is picked), a ``saml`` connector on the
session's pysaml2 IdP and an ``authproxy`` connector trusting 127.0.0.2 (tests act as the proxy
by binding their client socket to that address). The client app is a loopback HTTP server that
records the authorization responses it receives, as a real relying party's redirect URI would.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx

from tests.support.issuer import Issuer, issuers_in
from tests.support.oidc_peer import OIDCPeer, running_oidc_peer
from tests.support.saml_idp import IDP_ENTITY_ID, SP_ENTITY_ID, SamlIdpHarness
from tests.support.slapd import SlapdServer

APP_CLIENT_ID = "federated-app"
#: Allowed only the LDAP connector: its logins skip the picker.
LDAP_ONLY_CLIENT_ID = "ldap-only-app"
PROXY_ADDRESS = "127.0.0.2"
UPSTREAM_CLIENT_ID = "portcullis-federation"
UPSTREAM_CLIENT_SECRET = "upstream-" + secrets.token_urlsafe(12)
CONNECTOR_IDS = ("ldap", "upstream", "saml", "proxy")


@dataclass
class ClientApp:
    """The relying party's redirect URI on loopback: records every query it receives."""

    port: int
    received: list[dict[str, str]] = field(default_factory=list)

    @property
    def redirect_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/callback"

    def last(self) -> dict[str, str]:
        assert self.received, "the client app received no authorization response"
        return self.received[-1]


@contextlib.contextmanager
def running_client_app() -> Iterator[ClientApp]:
    app_ref: list[ClientApp] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_GET(self) -> None:
            query = dict(parse_qsl(urlsplit(self.path).query))
            app_ref[0].received.append(query)
            outcome = "error" if "error" in query else "code"
            body = (
                f"<!doctype html><title>Client app</title><h1 id='outcome'>{outcome} received</h1>"
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    app_ref.append(ClientApp(port=int(httpd.server_address[1])))
    thread = threading.Thread(target=httpd.serve_forever, name="client-app", daemon=True)
    thread.start()
    try:
        yield app_ref[0]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@dataclass
class Federation:
    issuer: Issuer
    app: ClientApp
    oidc: OIDCPeer
    slapd: SlapdServer
    saml: SamlIdpHarness
    app_secret: str

    def auth_url(self, client_id: str = APP_CLIENT_ID, **extra: str) -> str:
        params = {
            "client_id": client_id,
            "redirect_uri": self.app.redirect_uri,
            "response_type": "code",
            "scope": "openid email profile groups offline_access",
            "state": secrets.token_urlsafe(8),
            **extra,
        }
        return self.issuer.url("/auth") + "?" + urlencode(params)

    def exchange(self, code: str) -> dict[str, Any]:
        response = self.issuer.token(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self.app.redirect_uri,
            },
            auth=(APP_CLIENT_ID, self.app_secret),
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def refresh(self, refresh_token: str) -> httpx.Response:
        return self.issuer.token(
            {"grant_type": "refresh_token", "refresh_token": refresh_token},
            auth=(APP_CLIENT_ID, self.app_secret),
        )


def id_token_claims(id_token: str) -> dict[str, Any]:
    """The payload of an ID token (its signature is checked by the OIDC suites)."""
    payload = id_token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def federation_config(
    issuer: Issuer, app: ClientApp, oidc: OIDCPeer, slapd: SlapdServer, saml: SamlIdpHarness
) -> dict[str, Any]:
    """The connectors and clients, written as a Dex config would have them."""
    callback = issuer.issuer + "/callback"
    return {
        "oauth2": {"skipApprovalScreen": False, "alwaysShowLoginScreen": False},
        "web": {"clientRemoteIP": {"header": "X-Forwarded-For", "trustedProxies": []}},
        "connectors": [
            {"type": "ldap", "id": "ldap", "name": "Corporate directory", "config": slapd.config()},
            {
                "type": "oidc",
                "id": "upstream",
                "name": "Upstream OIDC",
                "config": {
                    "issuer": oidc.issuer,
                    "clientID": UPSTREAM_CLIENT_ID,
                    "clientSecret": UPSTREAM_CLIENT_SECRET,
                    "redirectURI": callback,
                    "scopes": ["profile", "email", "groups", "offline_access"],
                    "insecureEnableGroups": True,
                },
            },
            {
                "type": "saml",
                "id": "saml",
                "name": "SAML IdP",
                "config": {
                    "ssoURL": saml.sso_url,
                    "caData": base64.b64encode(saml.idp.cert_pem).decode(),
                    "entityIssuer": SP_ENTITY_ID,
                    "ssoIssuer": IDP_ENTITY_ID,
                    "redirectURI": callback,
                    "usernameAttr": "username",
                    "emailAttr": "urn:oid:0.9.2342.19200300.100.1.3",
                    "groupsAttr": "groups",
                    "nameIDPolicyFormat": "persistent",
                },
            },
            {
                "type": "authproxy",
                "id": "proxy",
                "name": "Login proxy",
                "config": {
                    "userHeader": "X-Remote-User",
                    "groupHeader": "X-Remote-Group",
                    "staticGroups": ["proxied"],
                    "trustedProxies": [f"{PROXY_ADDRESS}/32"],
                },
            },
        ],
    }


@contextlib.contextmanager
def running_federation(
    workdir: Path, slapd: SlapdServer, saml: SamlIdpHarness, accounts: dict[str, dict[str, Any]]
) -> Iterator[Federation]:
    """The issuer, its own upstream OIDC peer and the client app, stopped by PID afterwards."""
    app_secret = secrets.token_urlsafe(24)
    with running_client_app() as app, issuers_in(workdir / "issuers") as start:
        issuer = start(run=False)
        # The issuer is "localhost" while every peer is "127.0.0.1": a different site to the
        # browser, so the SAML IdP's POST back is cross-site, as in production, and the
        # SameSite=Lax binding cookie is really withheld from it.
        issuer.config["issuer"] = f"http://localhost:{issuer.web_port}/dex"
        with running_oidc_peer(
            workdir,
            clients=[
                {
                    "client_id": UPSTREAM_CLIENT_ID,
                    "client_secret": UPSTREAM_CLIENT_SECRET,
                    "redirect_uris": [issuer.issuer + "/callback"],
                    "grant_types": ["authorization_code", "refresh_token"],
                    "token_endpoint_auth_method": "client_secret_basic",
                }
            ],
            accounts=accounts,
        ) as oidc:
            patch = federation_config(issuer, app, oidc, slapd, saml)
            config = issuer.config
            config["oauth2"].update(patch["oauth2"])
            config["web"].update(patch["web"])
            config["connectors"] = patch["connectors"]
            config["staticClients"].extend(
                [
                    {
                        "id": APP_CLIENT_ID,
                        "name": "Federated App",
                        "secret": app_secret,
                        "redirectURIs": [app.redirect_uri],
                        "allowedConnectors": ["ldap", "upstream", "saml"],
                    },
                    {
                        "id": LDAP_ONLY_CLIENT_ID,
                        "name": "LDAP-only App",
                        "secret": app_secret,
                        "redirectURIs": [app.redirect_uri],
                        "allowedConnectors": ["ldap"],
                    },
                ]
            )
            issuer.remember(app_secret, UPSTREAM_CLIENT_SECRET)
            issuer.start()
            yield Federation(issuer, app, oidc, slapd, saml, app_secret)


#: A Dex config with every federated connector type, written the way Dex's docs write them
#: (format with web, telemetry, db and ca: the ports, the sqlite file, a PEM CA file).
DEX_CONFIG = """\
issuer: http://127.0.0.1:{web}/dex
storage:
  type: sqlite3
  config:
    file: {db}
web:
  http: 127.0.0.1:{web}
  clientRemoteIP:
    header: X-Forwarded-For
    trustedProxies:
    - 10.0.0.0/8
telemetry:
  http: 127.0.0.1:{telemetry}
staticClients:
- id: example-app
  redirectURIs:
  - 'http://127.0.0.1:5555/callback'
  name: 'Example App'
  secret: ZXhhbXBsZS1hcHAtc2VjcmV0
connectors:
- type: ldap
  id: ldap
  name: LDAP
  config:
    host: ldap.example.com:636
    insecureNoSSL: false
    insecureSkipVerify: false
    rootCA: {ca}
    bindDN: uid=serviceaccount,cn=users,dc=example,dc=com
    bindPW: password
    usernamePrompt: SSO Username
    userSearch:
      baseDN: cn=users,dc=example,dc=com
      filter: "(objectClass=person)"
      username: uid
      idAttr: uid
      emailAttr: mail
      nameAttr: name
      preferredUsernameAttr: uid
    groupSearch:
      baseDN: cn=groups,dc=freeipa,dc=example,dc=com
      filter: "(objectClass=group)"
      userMatchers:
      - userAttr: uid
        groupAttr: member
      nameAttr: name
- type: oidc
  id: google
  name: Google
  config:
    issuer: https://accounts.google.com
    clientID: google-client-id
    clientSecret: google-client-secret
    redirectURI: http://127.0.0.1:{web}/dex/callback
    promptType: consent
    scopes:
    - profile
    - email
    insecureSkipEmailVerified: false
    getUserInfo: true
    userIDKey: sub
    userNameKey: name
- type: oauth
  id: myplatform
  name: My Platform
  config:
    clientID: platform-client-id
    clientSecret: platform-client-secret
    redirectURI: http://127.0.0.1:{web}/dex/callback
    tokenURL: https://myplatform.com/oauth/token
    authorizationURL: https://myplatform.com/oauth/authorize
    userInfoURL: https://myplatform.com/userinfo
    scopes:
      - profile
      - email
      - groups
    insecureSkipVerify: false
    userIDKey: user_id
    claimMapping:
      userNameKey: "user_name"
      preferredUsernameKey: "preferred_username"
      groupsKey: "groups"
      emailKey: "email"
      emailVerifiedKey: "email_verified"
- type: saml
  id: saml
  name: SAML
  config:
    ssoURL: https://saml.example.com/sso
    ca: {ca}
    redirectURI: http://127.0.0.1:{web}/dex/callback
    usernameAttr: name
    emailAttr: email
    groupsAttr: groups
    entityIssuer: http://127.0.0.1:{web}/dex/callback
    ssoIssuer: https://saml.example.com/sso
    nameIDPolicyFormat: persistent
- type: authproxy
  id: myBasicAuth
  name: HTTP Basic Auth
"""
