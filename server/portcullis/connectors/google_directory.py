"""Google Workspace group memberships through the Admin SDK Directory API, as a service account
acting for a Workspace admin (domain-wide delegation). Used by the ``google`` connector.

What Dex does (connector/google/google.go, with golang.org/x/oauth2/google and
google.golang.org/api/admin/directory/v1), over plain HTTP here:

* **Credentials.** The service account's JSON key file (``serviceAccountFilePath``; without it
  Application Default Credentials: ``GOOGLE_APPLICATION_CREDENTIALS``, then gcloud's
  well-known file) must be of type ``service_account``. An OAuth access token is obtained with
  the JWT bearer grant (RFC 7523): an assertion signed RS256 with the key's ``private_key``
  (``kid`` = ``private_key_id``), ``iss`` = the service account's ``client_email``, ``sub`` = the
  admin to act for, ``scope`` = ``admin.directory.group.readonly``, ``aud`` = the key's
  ``token_uri``, valid one hour, POSTed to that ``token_uri``. Tokens are cached per admin until
  a minute before they expire; the key file is re-read for each new token (a rotated Kubernetes
  Secret is picked up without a restart).
* **Workload identity** (no key file found, as on GKE or GCE): the service account of the
  metadata server is used through IAM Credentials ``signJwt`` (the key never leaves Google):
  the account's email and an access token come from the metadata server
  (``/computeMetadata/v1/instance/service-accounts/default/...`` with ``Metadata-Flavor:
  Google``; ``GCE_METADATA_HOST`` moves it, as in Google's libraries), ``signJwt`` signs the same
  assertion, which is then exchanged at ``https://oauth2.googleapis.com/token``. That is what
  Dex's ``impersonate.CredentialsTokenSource`` with a ``Subject`` does.
* **Groups.** ``GET /admin/directory/v1/groups?userKey=EMAIL`` page by page through
  ``pageToken``/``nextPageToken`` (``maxResults`` 200, Google's largest); a group is named by its
  email address. The admin used is ``domainToAdminEmail`` of the domain of the user's (or
  group's) email address, else its ``*`` entry. With ``fetchTransitiveGroupMembership`` the
  groups of each group are listed too (a group's email is a valid ``userKey``); a group seen
  once is not listed again, so membership cycles end.

Beyond Dex: the walk is bounded (pages and nesting depth) and fails closed past the bound rather
than returning a partial list; a 401 from the API drops the cached token and retries once with a
fresh one; Google's rate-limit answers (429, or 403 with ``rateLimitExceeded``) and 5xx fail the
login with a clear message and the upstream status logged. Keys, assertions and tokens are never
logged or put in messages.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from portcullis.clock import Clock
from portcullis.connectors.base import ConnectorError
from portcullis.connectors.oauth2_common import (
    EXPIRY_MARGIN_S,
    ClientCredentials,
    UpstreamHTTP,
    raise_for_api_status,
    token_request,
)

__all__ = [
    "DIRECTORY_SCOPE",
    "MAX_DEPTH",
    "MAX_PAGES",
    "DirectoryGroups",
    "GoogleAPIs",
    "ServiceAccountKey",
    "load_service_account_key",
]

log = logging.getLogger(__name__)

DIRECTORY_SCOPE = "https://www.googleapis.com/auth/admin.directory.group.readonly"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 - an endpoint
WILDCARD = "*"
#: Lifetime of a signed assertion (Google accepts at most one hour).
ASSERTION_LIFETIME_S = 3600
#: Google's largest page for groups.list.
PAGE_SIZE = 200
#: Directory pages read for one login before failing closed (every page of every group when
#: memberships are transitive).
MAX_PAGES = 500
#: Group nesting followed before failing closed.
MAX_DEPTH = 32


@dataclass(frozen=True)
class GoogleAPIs:
    """Where Google's APIs are; fixed in production (Dex has no keys for them), given by
    tests. ``metadata`` empty: ``GCE_METADATA_HOST`` or 169.254.169.254, as Google's libraries
    resolve it."""

    admin: str = "https://admin.googleapis.com"
    iam_credentials: str = "https://iamcredentials.googleapis.com"
    token: str = DEFAULT_TOKEN_URI
    metadata: str = ""


@dataclass(frozen=True)
class ServiceAccountKey:
    client_email: str
    private_key_id: str
    token_uri: str
    key: RSAKey

    def __repr__(self) -> str:  # never print the key, not even in a traceback's locals
        return f"ServiceAccountKey(client_email={self.client_email!r})"


def load_service_account_key(path: Path, source: str) -> ServiceAccountKey:
    """The key from a service-account JSON key file; ConnectorError naming ``source`` (the
    config key or environment variable it came from) when it cannot be used. The message never
    quotes the file's content."""
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        log.warning("google: cannot read the service account key %s (%s)", path, exc.strerror)
        raise ConnectorError(f"the Google service account key ({source}) cannot be read") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ConnectorError(f"the Google service account key ({source}) is not JSON") from None
    if not isinstance(document, dict):
        raise ConnectorError(f"the Google service account key ({source}) is not a JSON object")
    kind = document.get("type")
    if kind != "service_account":
        # Dex (golang.org/x/oauth2/google.JWTConfigFromJSON) refuses these the same way: user
        # credentials and external accounts cannot act for a Workspace admin.
        raise ConnectorError(
            f"the Google credentials ({source}) are of type {str(kind)[:40]!r}, not "
            "'service_account': groups need a service account key"
        )
    fields = {}
    for name in ("client_email", "private_key", "private_key_id"):
        value = document.get(name)
        if not isinstance(value, str) or not value:
            raise ConnectorError(f"the Google service account key ({source}) has no {name}")
        fields[name] = value
    token_uri = document.get("token_uri") or DEFAULT_TOKEN_URI
    if not isinstance(token_uri, str) or not token_uri.startswith(("https://", "http://")):
        raise ConnectorError(f"the Google service account key ({source}) has an invalid token_uri")
    try:
        key = RSAKey.import_key(fields["private_key"])
    except (JoseError, ValueError, TypeError):
        raise ConnectorError(
            f"the Google service account key ({source}) has no usable RSA private_key"
        ) from None
    if not key.is_private:
        raise ConnectorError(
            f"the Google service account key ({source}) has no usable RSA private_key"
        )
    return ServiceAccountKey(fields["client_email"], fields["private_key_id"], token_uri, key)


class _NoClientAuthentication(ClientCredentials):
    """The JWT bearer grant authenticates with the assertion itself (RFC 7523 §3.1): no client
    id or secret is sent."""

    def __init__(self) -> None:
        super().__init__("", "", True)

    def apply(self, in_body: bool, body: dict[str, str], headers: dict[str, str]) -> None:
        return


class DirectoryGroups:
    """Reads a user's Workspace groups; one per connector (it caches admin access tokens)."""

    def __init__(
        self,
        *,
        http: UpstreamHTTP,
        clock: Clock,
        domain_to_admin_email: Mapping[str, str],
        key_file: str,
        apis: GoogleAPIs,
        environ: Mapping[str, str],
    ) -> None:
        self._http = http
        self._clock = clock
        self._admins = dict(domain_to_admin_email)
        self._key_file = key_file
        self._apis = apis
        self._environ = dict(environ)
        host = apis.metadata or environ.get("GCE_METADATA_HOST", "") or "169.254.169.254"
        self._metadata = host if "://" in host else f"http://{host}"
        self._tokens: dict[str, tuple[str, float]] = {}

    # -- credentials -------------------------------------------------------------------------

    def _key_path(self) -> tuple[Path, str] | None:
        """The key file and where it was configured, as Application Default Credentials look
        for one; None when there is none (the metadata server is asked then)."""
        if self._key_file:
            return Path(self._key_file), "serviceAccountFilePath"
        adc = self._environ.get("GOOGLE_APPLICATION_CREDENTIALS", "")
        if adc:
            return Path(adc), "GOOGLE_APPLICATION_CREDENTIALS"
        config_dir = self._environ.get("CLOUDSDK_CONFIG", "")
        home = self._environ.get("HOME", "")
        base = Path(config_dir) if config_dir else Path(home) / ".config" / "gcloud"
        well_known = base / "application_default_credentials.json"
        if (config_dir or home) and well_known.is_file():
            return well_known, "gcloud application default credentials"
        return None

    async def _access_token(self, admin_email: str) -> str:
        cached = self._tokens.get(admin_email)
        now = self._clock.now()
        if cached is not None and now < cached[1] - EXPIRY_MARGIN_S:
            return cached[0]
        located = self._key_path()
        if located is not None:
            key = load_service_account_key(*located)
            token_uri = key.token_uri
            assertion = self._sign_locally(key, admin_email, token_uri, now)
        else:
            token_uri = self._apis.token
            assertion = await self._sign_with_iam(admin_email, token_uri, now)
        tokens = await token_request(
            self._http,
            token_uri,
            _NoClientAuthentication(),
            {"grant_type": JWT_BEARER, "assertion": assertion},
            what="service account token",
        )
        lifetime = tokens.raw.get("expires_in")
        seconds = float(lifetime) if isinstance(lifetime, int | float) else 3600.0
        self._tokens[admin_email] = (tokens.access_token, now + seconds)
        return tokens.access_token

    @staticmethod
    def _claims(client_email: str, admin_email: str, audience: str, now: float) -> dict[str, Any]:
        issued = int(now)
        return {
            "iss": client_email,
            "sub": admin_email,
            "scope": DIRECTORY_SCOPE,
            "aud": audience,
            "iat": issued,
            "exp": issued + ASSERTION_LIFETIME_S,
        }

    def _sign_locally(
        self, key: ServiceAccountKey, admin_email: str, audience: str, now: float
    ) -> str:
        header = {"alg": "RS256", "typ": "JWT", "kid": key.private_key_id}
        claims = self._claims(key.client_email, admin_email, audience, now)
        try:
            return jwt.encode(header, claims, key.key, algorithms=["RS256"])
        except (JoseError, ValueError) as exc:
            log.warning("google: signing the service account assertion failed (%s)", exc)
            raise ConnectorError("the Google service account key cannot sign") from None

    async def _sign_with_iam(self, admin_email: str, audience: str, now: float) -> str:
        """Workload identity: the metadata server's service account signs through IAM
        Credentials ``signJwt`` (it needs roles/iam.serviceAccountTokenCreator on itself)."""
        metadata = f"{self._metadata}/computeMetadata/v1/instance/service-accounts/default"
        flavor = {"Metadata-Flavor": "Google"}
        try:
            # alt=json: the metadata server answers the email JSON-encoded instead of as text.
            email_response = await self._http.fetch(
                f"{metadata}/email?alt=json", what="metadata server", headers=flavor
            )
            token_response = await self._http.fetch(
                f"{metadata}/token", what="metadata server", headers=flavor
            )
        except ConnectorError:
            log.warning(
                "google: no service account key and no metadata server at %s", self._metadata
            )
            raise ConnectorError(
                "no Google service account: set serviceAccountFilePath (or "
                "GOOGLE_APPLICATION_CREDENTIALS), or run where a metadata server provides one"
            ) from None
        email, body = email_response.body, token_response.body
        base_token = body.get("access_token") if isinstance(body, dict) else None
        if email_response.status != 200 or token_response.status != 200:
            failed = email_response if email_response.status != 200 else token_response
            raise_for_api_status(failed, "metadata server", self._clock.now())
        if not isinstance(email, str) or "@" not in email:
            raise ConnectorError("the metadata server names no service account")
        if not isinstance(base_token, str) or not base_token:
            raise ConnectorError("the metadata server's token answer has no access_token")
        url = (
            f"{self._apis.iam_credentials}/v1/projects/-/serviceAccounts/"
            f"{quote(email, safe='@')}:signJwt"
        )
        payload = json.dumps(self._claims(email, admin_email, audience, now))
        response = await self._http.fetch(
            url,
            what="IAM signJwt",
            method="POST",
            json_body={"payload": payload},
            headers={"Authorization": f"Bearer {base_token}"},
        )
        if response.status != 200:
            raise_for_api_status(response, "IAM signJwt", self._clock.now())
        signed = response.body.get("signedJwt") if isinstance(response.body, dict) else None
        if not isinstance(signed, str) or not signed:
            raise ConnectorError("Google IAM's signJwt answer has no signedJwt")
        return signed

    # -- Directory API -----------------------------------------------------------------------

    def _admin_for(self, email: str) -> str:
        at = email.rfind("@")
        domain = email[at + 1 :].lower() if at >= 0 else WILDCARD
        admin = self._admins.get(domain) or self._admins.get(WILDCARD)
        if not admin:
            raise ConnectorError(
                f"domainToAdminEmail has no entry for the domain {domain[:100]!r} (nor '*')"
            )
        return admin

    async def groups(self, email: str, transitive: bool) -> list[str]:
        """The email addresses of the groups ``email`` belongs to (and, with ``transitive``,
        of the groups those belong to), each once, in Dex's order."""
        found: list[str] = []
        seen: set[str] = set()
        pages = [0]

        async def walk(user_key: str, depth: int) -> None:
            if depth > MAX_DEPTH:
                raise ConnectorError(
                    f"Google group nesting is deeper than {MAX_DEPTH} levels; refusing a partial "
                    "group list"
                )
            async for group in self._list(user_key, pages):
                address = group.get("email")
                if not isinstance(address, str) or not address:
                    continue
                if address.lower() in seen:
                    continue
                seen.add(address.lower())
                found.append(address)
                if transitive:
                    await walk(address, depth + 1)

        await walk(email, 0)
        return found

    async def _list(self, user_key: str, pages: list[int]) -> AsyncIterator[dict[str, Any]]:
        admin = self._admin_for(user_key)
        page_token = ""
        while True:
            pages[0] += 1
            if pages[0] > MAX_PAGES:
                raise ConnectorError(
                    f"Google's group list has more than {MAX_PAGES} pages; refusing a partial list"
                )
            query = {"userKey": user_key, "maxResults": str(PAGE_SIZE)}
            if page_token:
                query["pageToken"] = page_token
            url = f"{self._apis.admin}/admin/directory/v1/groups?{urlencode(query)}"
            body = await self._get(url, admin)
            groups = body.get("groups", [])  # Google leaves the list out when it is empty
            if not isinstance(groups, list):
                raise ConnectorError("Google's group list response is malformed")
            for group in groups:
                if isinstance(group, dict):
                    yield group
            following = body.get("nextPageToken")
            if not following:
                return
            if not isinstance(following, str):
                raise ConnectorError("Google's group list has a malformed nextPageToken")
            page_token = following

    async def _get(self, url: str, admin: str) -> dict[str, Any]:
        for attempt in (1, 2):
            token = await self._access_token(admin)
            response = await self._http.fetch(
                url, what="group memberships", headers={"Authorization": f"Bearer {token}"}
            )
            if response.status == 401 and attempt == 1:
                # The cached token was revoked or expired early: one fresh token, then fail.
                self._tokens.pop(admin, None)
                continue
            if response.status != 200:
                raise_for_api_status(response, "group memberships", self._clock.now())
            if not isinstance(response.body, dict):
                raise ConnectorError("Google's group list response is not a JSON object")
            return response.body
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises
