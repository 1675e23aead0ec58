"""A stand-in for Google's OpenID provider, OAuth token endpoint, Admin SDK Directory API,
IAM Credentials ``signJwt`` and the GCE metadata server.

Google cannot run here, so this reproduces what the google connector relies on, as Google
documents it (identity/openid-connect, identity/protocols/oauth2/web-server and
service-account, workspace/admin/directory/v1/reference/groups/list and limits,
iam/docs/reference/credentials/rest/v1/projects.serviceAccounts/signJwt,
compute/docs/metadata):

* discovery (``/.well-known/openid-configuration``, issuer = this server), ``/oauth2/v3/certs``;
* ``GET /o/oauth2/v2/auth``: the signed-in browser (an ``SID`` cookie) returns to the redirect
  URI with ``code`` and ``state``; ``hd``, ``prompt``, ``access_type``, PKCE and ``nonce``
  recorded and bound to the code;
* ``POST /token``: client authentication by HTTP Basic or form; the code grant (PKCE checked;
  a refresh token only with ``access_type=offline``), the refresh grant (a new ID token without
  ``nonce``, no new refresh token; ``name`` optionally left out, as Google sometimes does) and
  the JWT bearer grant (RFC 7523) for service accounts: the assertion's RS256 signature against
  the account's key (by ``kid``), ``iss`` = its ``client_email``, ``aud`` = this token endpoint,
  ``iat``/``exp`` at most an hour apart and current, ``scope``, ``sub`` an existing user, and
  domain-wide delegation of the scope to the account's client id — with Google's error bodies
  (``invalid_grant`` "Invalid JWT Signature.", ``unauthorized_client``, ...);
* ``POST /revoke``: a refresh or access token and its whole grant die;
* ``GET /admin/directory/v1/groups?userKey=..&maxResults=..&pageToken=..``: the bearer token
  must carry ``admin.directory.group.readonly`` for a super admin of the Workspace; groups the
  key (a user's or a group's email) is a direct member of, ``nextPageToken`` paging, the
  ``groups`` list left out when empty; Google's error bodies (``{"error": {"code", "message",
  "errors": [{"message", "domain", "reason"}], "status"}}``): 401 ``authError``, 403
  ``forbidden``, 404 ``notFound``, 403 ``rateLimitExceeded`` (no ``Retry-After``), 429
  ``RESOURCE_EXHAUSTED`` with ``Retry-After``, injected 5xx (``backendError``);
* the metadata server (``/computeMetadata/v1/instance/service-accounts/default/email`` and
  ``/token``, ``Metadata-Flavor: Google`` required) and IAM Credentials
  ``POST /v1/projects/-/serviceAccounts/{email}:signJwt`` (the caller's token must be the
  account's own, which needs roles/iam.serviceAccountTokenCreator on itself).

Signatures are made and checked with ``cryptography`` directly, not with the JOSE library the
connector uses, so the two sides do not share an implementation.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.support.standin_http import StandInHandler, server_url, serving

CLIENT_ID = "407408718192-6v1u3sf5kq3mt8ndbdr6p8jo9ahb0vna.apps.googleusercontent.com"
CLIENT_SECRET = "GOCSPX-" + "Jq3dF0sW2xZ9vB7nM1kL5pR8tY4u"
CALLBACK = "http://127.0.0.1:5556/dex/callback"
DIRECTORY_SCOPE = "https://www.googleapis.com/auth/admin.directory.group.readonly"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
PAGE_MAX = 200


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_rs256(key: rsa.RSAPrivateKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(signature)}"


@dataclass
class GoogleUser:
    sub: str
    email: str
    name: str
    hd: str = ""
    email_verified: bool = True


@dataclass
class ServiceAccount:
    client_email: str
    client_id: str
    key_id: str
    key: rsa.RSAPrivateKey
    #: Domain-wide delegation granted to this client id for these scopes (Admin console).
    delegated_scopes: set[str] = field(default_factory=set)
    #: roles/iam.serviceAccountTokenCreator on itself (needed for signJwt).
    token_creator: bool = True

    def key_file(self, path: Path, token_uri: str, kind: str = "service_account") -> Path:
        """A JSON key file as the Cloud console downloads it."""
        pem = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        document = {
            "type": kind,
            "project_id": "portcullis-test",
            "private_key_id": self.key_id,
            "private_key": pem,
            "client_email": self.client_email,
            "client_id": self.client_id,
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/"
            + self.client_email.replace("@", "%40"),
            "universe_domain": "googleapis.com",
        }
        path.write_text(json.dumps(document, indent=2))
        return path


@dataclass
class _Grant:
    sub: str
    scopes: tuple[str, ...]
    #: For service-account tokens: the account (None for user tokens).
    service_account: str = ""


@dataclass
class GoogleAPI:
    base_url: str = ""
    id_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    id_kid: str = field(default_factory=lambda: secrets.token_hex(20))
    users: dict[str, GoogleUser] = field(default_factory=dict)
    #: group email -> the emails (users or groups) that are its direct members, in order
    groups: dict[str, list[str]] = field(default_factory=dict)
    #: Workspace domains of the one customer this stand-in serves, and its super admins.
    workspace_domains: set[str] = field(default_factory=lambda: {"example.com", "example.org"})
    super_admins: set[str] = field(default_factory=set)
    service_accounts: dict[str, ServiceAccount] = field(default_factory=dict)
    #: The service account the metadata server hands out (workload identity), or "".
    metadata_account: str = ""
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    access_tokens: dict[str, _Grant] = field(default_factory=dict)
    refresh_tokens: dict[str, _Grant] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)
    authorize_queries: list[dict[str, str]] = field(default_factory=list)
    assertions: list[dict[str, Any]] = field(default_factory=list)
    directory_requests: list[dict[str, str]] = field(default_factory=list)
    #: ID tokens carry "accounts.google.com"-style issuers (no scheme).
    schemeless_issuer: bool = False
    omit_name_on_refresh: bool = False
    #: The next directory call answers (status, retry-after or None) as a rate limit.
    throttle_next: tuple[int, int | None] | None = None
    fail_next: tuple[str, int] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/token"

    def add_user(self, login: str, domain: str = "example.com", name: str = "") -> GoogleUser:
        with self.lock:
            hd = domain if domain in self.workspace_domains else ""
            user = GoogleUser(
                str(secrets.randbelow(10**21)).rjust(21, "1"),
                f"{login}@{domain}",
                name or login.title(),
                hd,
            )
            self.users[user.email] = user
            return user

    def add_service_account(self, name: str, delegated: bool = True) -> ServiceAccount:
        with self.lock:
            account = ServiceAccount(
                f"{name}@portcullis-test.iam.gserviceaccount.com",
                str(secrets.randbelow(10**21)).rjust(21, "1"),
                secrets.token_hex(20),
                rsa.generate_private_key(public_exponent=65537, key_size=2048),
                {DIRECTORY_SCOPE} if delegated else set(),
            )
            self.service_accounts[account.client_email] = account
            return account

    def add_member(self, group: str, member: str) -> None:
        with self.lock:
            self.groups.setdefault(group, []).append(member)

    def remove_member(self, group: str, member: str) -> None:
        with self.lock:
            self.groups[group].remove(member)

    def revoke(self, token: str) -> None:
        """What ``POST /revoke`` does: the token's whole grant dies."""
        with self.lock:
            grant = self.refresh_tokens.get(token) or self.access_tokens.get(token)
            if grant is None:
                return
            for table in (self.access_tokens, self.refresh_tokens):
                for value, other in list(table.items()):
                    if other is grant:
                        self.revoked.add(value)
                        del table[value]

    # -- tokens --------------------------------------------------------------------------------

    def _id_token(self, user: GoogleUser, access: str, nonce: str, with_name: bool) -> str:
        now = int(time.time())
        issuer = self.base_url.partition("://")[2] if self.schemeless_issuer else self.base_url
        digest = hashlib.sha256(access.encode()).digest()
        claims: dict[str, Any] = {
            "iss": issuer,
            "azp": CLIENT_ID,
            "aud": CLIENT_ID,
            "sub": user.sub,
            "email": user.email,
            "email_verified": user.email_verified,
            "at_hash": b64url(digest[:16]),
            "iat": now,
            "exp": now + 3600,
        }
        if user.hd:
            claims["hd"] = user.hd
        if with_name:
            claims.update(name=user.name, given_name=user.name.split()[0], locale="en")
        if nonce:
            claims["nonce"] = nonce
        return sign_rs256(self.id_key, {"alg": "RS256", "kid": self.id_kid, "typ": "JWT"}, claims)

    def _user_tokens(self, grant: _Grant, offline: bool, nonce: str, refresh: bool) -> Any:
        access = "ya29." + secrets.token_urlsafe(120)
        self.access_tokens[access] = grant
        user = self.users[grant.sub]
        answer: dict[str, Any] = {
            "access_token": access,
            "expires_in": 3599,
            "scope": " ".join(grant.scopes),
            "token_type": "Bearer",
        }
        if "openid" in grant.scopes:
            with_name = not (refresh and self.omit_name_on_refresh)
            answer["id_token"] = self._id_token(user, access, nonce, with_name)
        if offline:
            token = "1//0g" + secrets.token_urlsafe(72)
            self.refresh_tokens[token] = grant
            answer["refresh_token"] = token
        return answer


def _oauth_error(error: str, description: str) -> dict[str, str]:
    return {"error": error, "error_description": description}


def _google_error(code: int, message: str, reason: str, status: str = "") -> dict[str, Any]:
    domain = "usageLimits" if "imit" in reason else "global"
    error: dict[str, Any] = {
        "code": code,
        "message": message,
        "errors": [{"message": message, "domain": domain, "reason": reason}],
    }
    if status:
        error["status"] = status
    return {"error": error}


def _handler(api: GoogleAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(StandInHandler):
        json_content_type = "application/json; charset=UTF-8"

        def _bearer(self) -> str:
            authorization = self.headers.get("Authorization", "")
            return authorization[7:] if authorization.startswith("Bearer ") else ""

        # -- GET -----------------------------------------------------------------------------

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            path = parts.path
            if path == "/.well-known/openid-configuration":
                self._send(200, self._discovery())
            elif path == "/oauth2/v3/certs":
                numbers = api.id_key.public_key().public_numbers()
                jwk = {
                    "kty": "RSA",
                    "alg": "RS256",
                    "use": "sig",
                    "kid": api.id_kid,
                    "n": b64url(numbers.n.to_bytes(256, "big")),
                    "e": b64url(numbers.e.to_bytes(3, "big")),
                }
                self._send(200, {"keys": [jwk]})
            elif path == "/o/oauth2/v2/auth":
                self._authorize(query)
            elif path == "/admin/directory/v1/groups":
                with api.lock:
                    api.directory_requests.append(query)
                    status, body, headers = self._groups(query)
                self._send(status, body, headers)
            elif path.startswith("/computeMetadata/v1/"):
                self._metadata(path, query)
            else:
                self._send(404, _google_error(404, "Not Found", "notFound"))

        def _discovery(self) -> dict[str, Any]:
            base = api.base_url
            return {
                "issuer": base,
                "authorization_endpoint": f"{base}/o/oauth2/v2/auth",
                "device_authorization_endpoint": f"{base}/device/code",
                "token_endpoint": f"{base}/token",
                "userinfo_endpoint": f"{base}/v1/userinfo",
                "revocation_endpoint": f"{base}/revoke",
                "jwks_uri": f"{base}/oauth2/v3/certs",
                "response_types_supported": ["code", "token", "id_token", "code token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "scopes_supported": ["openid", "email", "profile"],
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "client_secret_basic",
                ],
                "claims_supported": [
                    "aud",
                    "email",
                    "email_verified",
                    "exp",
                    "family_name",
                    "given_name",
                    "iat",
                    "iss",
                    "name",
                    "picture",
                    "sub",
                ],
                "code_challenge_methods_supported": ["plain", "S256"],
                "grant_types_supported": [
                    "authorization_code",
                    "refresh_token",
                    "urn:ietf:params:oauth:grant-type:device_code",
                    "urn:ietf:params:oauth:grant-type:jwt-bearer",
                ],
            }

        def _authorize(self, query: dict[str, str]) -> None:
            with api.lock:
                api.authorize_queries.append(query)
            if query.get("client_id") != CLIENT_ID:
                self._send(400, _oauth_error("invalid_client", "The OAuth client was not found."))
                return
            if query.get("redirect_uri") != CALLBACK:
                self._send(400, _oauth_error("redirect_uri_mismatch", "Bad Request"))
                return
            state = query.get("state", "")
            login = self.headers.get("Cookie", "").partition("SID=")[2].split(";")[0]
            with api.lock:
                user = api.users.get(unquote(login))
                if user is None:
                    answer = {"error": "access_denied", "state": state}
                else:
                    code = "4/0A" + secrets.token_urlsafe(60)
                    api.codes[code] = {
                        "sub": user.email,
                        "scopes": tuple(query.get("scope", "").split()),
                        "offline": query.get("access_type") == "offline",
                        "nonce": query.get("nonce", ""),
                        "challenge": query.get("code_challenge", ""),
                        "method": query.get("code_challenge_method", "plain"),
                        "redirect_uri": query["redirect_uri"],
                    }
                    answer = {"state": state, "code": code, "scope": query.get("scope", "")}
            self._send(302, None, {"Location": f"{CALLBACK}?{urlencode(answer)}"})

        def _groups(self, query: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
            if api.fail_next is not None and api.fail_next[0] == "directory":
                status = api.fail_next[1]
                api.fail_next = None
                body = _google_error(status, "Backend Error", "backendError", "UNAVAILABLE")
                return status, body, {}
            if api.throttle_next is not None:
                status, wait = api.throttle_next
                api.throttle_next = None
                if status == 429:
                    body = _google_error(
                        429,
                        "Quota exceeded for quota metric 'Queries' and limit 'Queries per minute "
                        "per user' of service 'admin.googleapis.com'.",
                        "rateLimitExceeded",
                        "RESOURCE_EXHAUSTED",
                    )
                else:
                    body = _google_error(403, "Rate Limit Exceeded", "rateLimitExceeded")
                return status, body, ({"Retry-After": str(wait)} if wait is not None else {})
            grant = api.access_tokens.get(self._bearer())
            if grant is None:
                body = _google_error(
                    401,
                    "Request had invalid authentication credentials. Expected OAuth 2 access "
                    "token, login cookie or other valid authentication credential.",
                    "authError",
                    "UNAUTHENTICATED",
                )
                return (
                    401,
                    body,
                    {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'},
                )
            if DIRECTORY_SCOPE not in grant.scopes:
                body = _google_error(
                    403,
                    "Request had insufficient authentication scopes.",
                    "insufficientPermissions",
                    "PERMISSION_DENIED",
                )
                return 403, body, {}
            key = query.get("userKey", "")
            domain = key.rpartition("@")[2]
            if grant.sub not in api.super_admins or domain not in api.workspace_domains:
                body = _google_error(403, "Not Authorized to access this resource/api", "forbidden")
                return 403, body, {}
            if key not in api.users and key not in api.groups:
                body = _google_error(404, "Resource Not Found: userKey", "notFound")
                return 404, body, {}
            size = min(PAGE_MAX, max(1, int(query.get("maxResults", str(PAGE_MAX)))))
            start = 0
            if query.get("pageToken"):
                try:
                    start = int(b64url_decode(query["pageToken"]).decode().split(":")[1])
                except (ValueError, IndexError):
                    body = _google_error(400, "Invalid Input: pageToken", "invalid")
                    return 400, body, {}
            member_of = [g for g, members in api.groups.items() if key in members]
            page = member_of[start : start + size]
            listing: dict[str, Any] = {"kind": "admin#directory#groups", "etag": '"stand-in"'}
            if page:
                listing["groups"] = [
                    {
                        "kind": "admin#directory#group",
                        "id": hashlib.sha256(g.encode()).hexdigest()[:17],
                        "etag": '"stand-in"',
                        "email": g,
                        "name": g.partition("@")[0].replace("-", " ").title(),
                        "directMembersCount": str(len(api.groups[g])),
                        "description": "",
                        "adminCreated": True,
                    }
                    for g in page
                ]
            if start + size < len(member_of):
                listing["nextPageToken"] = b64url(f"{secrets.token_hex(4)}:{start + size}".encode())
            return 200, listing, {}

        def _metadata(self, path: str, query: dict[str, str]) -> None:
            if self.headers.get("Metadata-Flavor") != "Google":
                self._send(
                    403,
                    b"Missing required header: Metadata-Flavor",
                    content_type="text/plain; charset=utf-8",
                )
                return
            headers = {"Metadata-Flavor": "Google"}
            account = api.metadata_account
            prefix = "/computeMetadata/v1/instance/service-accounts/default/"
            if not account or not path.startswith(prefix):
                self._send(404, b"Not Found", headers, "text/plain; charset=utf-8")
                return
            leaf = path[len(prefix) :]
            if leaf == "email":
                if query.get("alt") == "json":
                    self._send(200, json.dumps(account).encode(), headers, "application/json")
                else:
                    self._send(200, account.encode(), headers, "application/text")
            elif leaf == "token":
                access = "ya29.c." + secrets.token_urlsafe(100)
                with api.lock:
                    api.access_tokens[access] = _Grant(
                        account, ("https://www.googleapis.com/auth/cloud-platform",), account
                    )
                body = {"access_token": access, "expires_in": 3599, "token_type": "Bearer"}
                self._send(200, body, headers)
            else:
                self._send(404, b"Not Found", headers, "text/plain; charset=utf-8")

        # -- POST ----------------------------------------------------------------------------

        def do_POST(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length)
            if parts.path == "/token":
                form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
                status, body = self._token(form)
                self._send(status, body, {"Cache-Control": "no-cache, no-store"})
            elif parts.path == "/revoke":
                form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
                api.revoke(form.get("token", ""))
                self._send(200, {})
            elif parts.path.startswith("/v1/projects/-/serviceAccounts/") and parts.path.endswith(
                ":signJwt"
            ):
                email = unquote(parts.path.split("/")[5].rsplit(":", 1)[0])
                status, body = self._sign_jwt(email, raw)
                self._send(status, body)
            else:
                self._send(404, _google_error(404, "Not Found", "notFound"))

        def _client_ok(self, form: dict[str, str]) -> bool:
            authorization = self.headers.get("Authorization", "")
            if authorization.startswith("Basic "):
                user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
                return unquote(user) == CLIENT_ID and unquote(password) == CLIENT_SECRET
            return form.get("client_id") == CLIENT_ID and form.get("client_secret") == CLIENT_SECRET

        def _token(self, form: dict[str, str]) -> tuple[int, Any]:
            grant_type = form.get("grant_type", "")
            if grant_type == JWT_BEARER:
                return self._jwt_bearer(form.get("assertion", ""))
            if not self._client_ok(form):
                return 401, _oauth_error("invalid_client", "Unauthorized")
            with api.lock:
                if grant_type == "authorization_code":
                    entry = api.codes.pop(form.get("code", ""), None)
                    if entry is None or entry["redirect_uri"] != form.get("redirect_uri"):
                        return 400, _oauth_error("invalid_grant", "Bad Request")
                    verifier = form.get("code_verifier", "")
                    if entry["challenge"]:
                        computed = (
                            b64url(hashlib.sha256(verifier.encode()).digest())
                            if entry["method"] == "S256"
                            else verifier
                        )
                        if computed != entry["challenge"]:
                            return 400, _oauth_error("invalid_grant", "Invalid code verifier.")
                    grant = _Grant(entry["sub"], entry["scopes"])
                    return 200, api._user_tokens(grant, entry["offline"], entry["nonce"], False)
                if grant_type == "refresh_token":
                    held = api.refresh_tokens.get(form.get("refresh_token", ""))
                    if held is None:
                        return 400, _oauth_error(
                            "invalid_grant", "Token has been expired or revoked."
                        )
                    answer = api._user_tokens(held, False, "", True)
                    return 200, answer
            return 400, _oauth_error("unsupported_grant_type", "Invalid grant_type: " + grant_type)

        def _jwt_bearer(self, assertion: str) -> tuple[int, Any]:
            """RFC 7523 as Google checks it (identity/protocols/oauth2/service-account)."""
            try:
                header_b64, claims_b64, signature_b64 = assertion.split(".")
                header = json.loads(b64url_decode(header_b64))
                claims = json.loads(b64url_decode(claims_b64))
                signature = b64url_decode(signature_b64)
            except ValueError:
                return 400, _oauth_error("invalid_request", "Invalid JWT: malformed")
            with api.lock:
                api.assertions.append({"header": header, "claims": claims})
                account = api.service_accounts.get(str(claims.get("iss", "")))
            if header.get("alg") != "RS256" or account is None:
                return 400, _oauth_error("invalid_grant", "Invalid JWT Signature.")
            if header.get("kid") not in (account.key_id, None):
                return 400, _oauth_error("invalid_grant", "Invalid JWT Signature.")
            try:
                account.key.public_key().verify(
                    signature,
                    f"{header_b64}.{claims_b64}".encode(),
                    padding.PKCS1v15(),
                    hashes.SHA256(),
                )
            except InvalidSignature:
                return 400, _oauth_error("invalid_grant", "Invalid JWT Signature.")
            if claims.get("aud") != api.token_url:
                return 400, _oauth_error(
                    "invalid_grant",
                    f"Invalid JWT: Failed audience check. The expected value was {api.token_url} "
                    f"but the value was {claims.get('aud')!r}",
                )
            now = time.time()
            iat, exp = claims.get("iat"), claims.get("exp")
            if (
                not isinstance(iat, int)
                or not isinstance(exp, int)
                or exp - iat > 3600
                or iat > now + 300
                or exp < now
            ):
                return 400, _oauth_error(
                    "invalid_grant",
                    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                    "reasonable timeframe. Check your iat and exp values in the JWT claim.",
                )
            scopes = tuple(str(claims.get("scope", "")).split())
            if not scopes:
                return 400, _oauth_error(
                    "invalid_scope", "Invalid OAuth scope or ID token audience provided."
                )
            subject = str(claims.get("sub") or account.client_email)
            with api.lock:
                if subject != account.client_email and subject not in api.users:
                    return 400, _oauth_error("invalid_grant", "Invalid email or User ID")
                if subject != account.client_email and not set(scopes) <= account.delegated_scopes:
                    return 401, _oauth_error(
                        "unauthorized_client",
                        "Client is unauthorized to retrieve access tokens using this method, or "
                        "client not authorized for any of the scopes requested.",
                    )
                access = "ya29.c." + secrets.token_urlsafe(100)
                api.access_tokens[access] = _Grant(subject, scopes, account.client_email)
            return 200, {"access_token": access, "expires_in": 3599, "token_type": "Bearer"}

        def _sign_jwt(self, email: str, raw: bytes) -> tuple[int, Any]:
            with api.lock:
                caller = api.access_tokens.get(self._bearer())
                account = api.service_accounts.get(email)
            if caller is None:
                body = _google_error(
                    401,
                    "Request had invalid authentication credentials.",
                    "authError",
                    "UNAUTHENTICATED",
                )
                return 401, body
            if account is None or caller.service_account != email or not account.token_creator:
                message = (
                    "Permission 'iam.serviceAccounts.signJwt' denied on resource (or it may not "
                    "exist)."
                )
                return 403, _google_error(403, message, "forbidden", "PERMISSION_DENIED")
            try:
                payload = json.loads(json.loads(raw)["payload"])
            except (ValueError, KeyError, TypeError):
                return 400, _google_error(400, "Invalid JSON payload received.", "badRequest")
            token = sign_rs256(
                account.key, {"alg": "RS256", "kid": account.key_id, "typ": "JWT"}, payload
            )
            return 200, {"keyId": account.key_id, "signedJwt": token}

    return Handler


@pytest.fixture(scope="session")
def google_api() -> Iterator[GoogleAPI]:
    api = GoogleAPI()
    with serving(_handler(api), "google-standin") as server:
        api.base_url = server_url(server)
        yield api


def google_browser(url: str, email: str) -> dict[str, str]:
    """The callback parameters a browser signed in to Google as ``email`` brings back."""
    response = httpx.get(url, headers={"Cookie": f"SID={email}"}, follow_redirects=False)
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert location.startswith(CALLBACK), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
