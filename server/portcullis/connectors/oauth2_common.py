"""OAuth 2.0 client plumbing shared by the upstream connectors (oidc, oauth; later GitHub, GitLab).

One place for what every authorization-code connector does the same way, so a fix lands once:

* the outbound HTTP client: ``httpx`` with a timeout on every call, TLS through an ``SSLContext``
  built from the system roots plus Dex-style ``rootCAs`` (a file path, base64 PEM or inline PEM),
  responses read with a size bound (a hostile or broken upstream cannot make us buffer gigabytes);
* the authorization URL (RFC 6749 §4.1.1) with state, optional PKCE S256 (RFC 7636) and extras;
* the token endpoint: code exchange and refresh (§4.1.3, §6) with ``client_secret_basic``
  (§2.3.1: id and secret form-encoded before base64, as golang.org/x/oauth2 does, which matters
  for secrets with ``:`` or ``%``) or ``client_secret_post`` when ``basicAuthUnsupported``;
* mapping a JSON claim set to strings, booleans and group lists the way Dex does.

Upstream tokens and secrets are never logged and never put into exception messages; errors the
user sees say what failed upstream (unreachable, refused with an OAuth error code, bad answer).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import secrets
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import httpx

from portcullis.clock import Clock
from portcullis.connectors.base import ConnectorError
from portcullis.storage.models import Identity

log = logging.getLogger(__name__)

# The transport's own loggers never go below WARNING, whatever level the server runs at:
# httpcore's DEBUG trace prints every response header (Keystone's X-Subject-Token, Set-Cookie)
# and httpx's INFO line prints full request URLs with their query strings. Our own log lines
# say what was called (scheme, host, path) and how it answered, without those.
for _transport_logger in ("httpcore", "httpx"):
    logging.getLogger(_transport_logger).setLevel(logging.WARNING)

#: Seconds to connect and to wait for each read. Short: a login page must not hang a worker.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 10.0
#: Largest upstream JSON document we read (discovery, JWKS, token, userinfo are all far smaller).
MAX_RESPONSE_BYTES = 1 << 20
#: How long a refresh result stays available to late concurrent callers (RefreshFlights).
REFRESH_RESULT_TTL_S = 60.0
#: Upper bound of cached refresh results (memory bound under a refresh storm).
REFRESH_CACHE_MAX = 10_000


class UpstreamError(ConnectorError):
    """The upstream answered with an OAuth error (``error`` is its RFC 6749 code)."""

    def __init__(self, message: str, error: str = "") -> None:
        super().__init__(message)
        self.error = error


def _printable(text: str, limit: int = 200) -> str:
    """Upstream-provided text made safe to show: printable ASCII only, bounded length."""
    cleaned = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)
    return cleaned[:limit]


def http_url(value: str, field: str) -> str:
    """Config check: an absolute http(s) URL (the message names the field)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{field} must be an absolute http(s) URL, got {value!r}")
    return value


# -- TLS ---------------------------------------------------------------------------------------


def _ca_pem(value: str) -> bytes:
    """Dex's rootCAs entry forms: a path to a PEM file, base64 of PEM, or the PEM itself."""
    if "-----BEGIN" in value:
        return value.encode()
    path = Path(value)
    try:
        if path.is_file():
            return path.read_bytes()
    except OSError:
        pass
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if b"-----BEGIN" in decoded:
        return decoded
    return value.encode()


def check_root_cas(values: Sequence[str]) -> list[str]:
    """Validate rootCAs at config time; the message names the entry (``rootCAs.N``)."""
    for index, value in enumerate(values):
        context = ssl.create_default_context()
        try:
            context.load_verify_locations(cadata=_ca_pem(value).decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError(
                f"rootCAs.{index} is not a PEM certificate: give a path to a PEM file, "
                "the PEM text, or base64 of the PEM text"
            ) from exc
    return list(values)


def ssl_context(root_cas: Sequence[str], insecure_skip_verify: bool) -> ssl.SSLContext:
    """System roots plus the configured CAs (like Dex's pool), TLS 1.2 minimum."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    for value in root_cas:
        context.load_verify_locations(cadata=_ca_pem(value).decode("ascii", "replace"))
    if insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


# -- HTTP --------------------------------------------------------------------------------------


class UpstreamHTTP:
    """Bounded, timed JSON requests to one upstream provider.

    A fresh ``httpx.AsyncClient`` per request: logins and refreshes are rare next to their
    network round trips, and a client never outlives the event loop it was made on (workers,
    tests). The SSL context, the expensive part, is built once.
    """

    def __init__(
        self,
        *,
        root_cas: Sequence[str] = (),
        insecure_skip_verify: bool = False,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        read_timeout: float = READ_TIMEOUT_S,
        max_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self._ssl = ssl_context(root_cas, insecure_skip_verify)
        self._timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self._max_bytes = max_bytes

    async def request_json(
        self,
        method: str,
        url: str,
        *,
        what: str,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """(status, JSON object) of the response; ConnectorError naming ``what`` when the
        upstream cannot be reached, answers too much, or answers something that is not a JSON
        object. Non-2xx statuses are returned for the caller to interpret."""
        send_headers = {"Accept": "application/json", **(headers or {})}
        try:
            async with (
                httpx.AsyncClient(
                    verify=self._ssl, timeout=self._timeout, follow_redirects=False, trust_env=True
                ) as client,
                client.stream(method, url, data=data, headers=send_headers) as response,
            ):
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body.extend(chunk)
                    if len(body) > self._max_bytes:
                        raise ConnectorError(
                            f"the identity provider's {what} response is too large"
                        )
                status = response.status_code
                content_type = response.headers.get("content-type", "")
        except httpx.TimeoutException:
            log.warning("upstream %s at %s timed out", what, _url_for_log(url))
            raise ConnectorError(f"the identity provider did not answer in time ({what})") from None
        except httpx.HTTPError as exc:
            log.warning("upstream %s at %s failed: %s", what, _url_for_log(url), type(exc).__name__)
            reason = "TLS verification failed" if _is_tls_error(exc) else "unreachable"
            raise ConnectorError(f"the identity provider is {reason} ({what})") from None
        if status >= 500:
            log.warning("upstream %s at %s answered HTTP %d", what, _url_for_log(url), status)
            raise ConnectorError(f"the identity provider failed ({what}: HTTP {status})")
        try:
            document = json.loads(bytes(body))
        except (UnicodeDecodeError, json.JSONDecodeError):
            if status >= 400:
                return status, {}
            hint = " (signed or non-JSON responses are not supported)" if content_type else ""
            raise ConnectorError(
                f"the identity provider's {what} response is not JSON{hint}"
            ) from None
        if not isinstance(document, dict):
            raise ConnectorError(f"the identity provider's {what} response is not a JSON object")
        return status, document

    async def fetch(
        self,
        url: str,
        *,
        what: str,
        headers: Mapping[str, str] | None = None,
        method: str = "GET",
        json_body: Any = None,
    ) -> ApiResponse:
        """GET a REST API resource: status, headers and the JSON body (any JSON value: list
        endpoints answer arrays). Transport failures, timeouts, oversize bodies and 5xx are a
        ConnectorError naming ``what`` (the 5xx status logged); other statuses are returned
        for the caller, which usually hands them to :func:`raise_for_api_status`.

        ``method``/``json_body`` serve REST APIs whose login is itself a JSON POST (Keystone's
        ``/v3/auth/tokens``, Crowd's ``authentication``): same limits, same error mapping."""
        send_headers = {"Accept": "application/json", **(headers or {})}
        try:
            async with (
                httpx.AsyncClient(
                    verify=self._ssl, timeout=self._timeout, follow_redirects=False, trust_env=True
                ) as client,
                client.stream(method, url, headers=send_headers, json=json_body) as response,
            ):
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body.extend(chunk)
                    if len(body) > self._max_bytes:
                        raise ConnectorError(
                            f"the identity provider's {what} response is too large"
                        )
                status = response.status_code
                response_headers = httpx.Headers(response.headers)
        except httpx.TimeoutException:
            log.warning("upstream %s at %s timed out", what, _url_for_log(url))
            raise ConnectorError(f"the identity provider did not answer in time ({what})") from None
        except httpx.HTTPError as exc:
            log.warning("upstream %s at %s failed: %s", what, _url_for_log(url), type(exc).__name__)
            reason = "TLS verification failed" if _is_tls_error(exc) else "unreachable"
            raise ConnectorError(f"the identity provider is {reason} ({what})") from None
        if status >= 500:
            log.warning("upstream %s at %s answered HTTP %d", what, _url_for_log(url), status)
            raise ConnectorError(f"the identity provider failed ({what}: HTTP {status})")
        try:
            document: Any = json.loads(bytes(body)) if body else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            if 200 <= status < 300:
                raise ConnectorError(
                    f"the identity provider's {what} response is not JSON"
                ) from None
            document = None
        return ApiResponse(status, response_headers, document, url)

    async def get_json(self, url: str, *, what: str, bearer: str = "") -> dict[str, Any]:
        """GET a JSON object; any non-200 answer is an error naming ``what``."""
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        status, document = await self.request_json("GET", url, what=what, headers=headers)
        if status != 200:
            raise ConnectorError(
                f"the identity provider refused the {what} request (HTTP {status})"
            )
        return document


@dataclass(frozen=True)
class ApiResponse:
    """One REST API answer (see :meth:`UpstreamHTTP.fetch`)."""

    status: int
    headers: httpx.Headers
    body: Any
    url: str

    def message(self) -> str:
        """The provider's error text (GitHub/GitLab ``message``, Graph ``error.message``,
        OAuth ``error_description``), printable and bounded; "" when there is none."""
        body = self.body
        if isinstance(body, dict):
            inner = body.get("error")
            if isinstance(inner, dict):
                body = inner
            for key in ("message", "error_description", "error"):
                value = body.get(key)
                if isinstance(value, str) and value:
                    return _printable(value)
        return ""


def retry_after_seconds(headers: httpx.Headers, now: float) -> int | None:
    """Seconds until a rate limit lifts: ``Retry-After`` (delta seconds; an HTTP date counts
    as unknown) or GitHub/GitLab's ``X-RateLimit-Reset`` / ``RateLimit-Reset`` (epoch
    seconds). None when the answer does not say."""
    value = headers.get("retry-after", "").strip()
    if value.isdigit():
        return int(value)
    for name in ("x-ratelimit-reset", "ratelimit-reset"):
        reset = headers.get(name, "").strip()
        if reset.isdigit():
            return max(0, int(reset) - int(now))
    return None


#: The ``error.errors[].reason`` values with which Google APIs mark a 403 as a rate limit or an
#: exhausted quota (developers.google.com/workspace/admin/directory/v1/limits).
GOOGLE_RATE_LIMIT_REASONS = frozenset(
    {"rateLimitExceeded", "userRateLimitExceeded", "quotaExceeded", "dailyLimitExceeded"}
)


def is_rate_limited(response: ApiResponse) -> bool:
    """429 always; 403 when the provider marks it a rate limit (GitHub's primary limit sends
    ``X-RateLimit-Remaining: 0``, its secondary limit ``Retry-After``; Google APIs name the
    reason in the error body)."""
    if response.status == 429:
        return True
    if response.status != 403:
        return False
    headers = response.headers
    if headers.get("x-ratelimit-remaining") == "0" or "retry-after" in headers:
        return True
    return bool(_google_error_reasons(response.body) & GOOGLE_RATE_LIMIT_REASONS)


def _google_error_reasons(body: Any) -> set[str]:
    """The ``reason`` of each entry of a Google API error body
    (``{"error": {"code", "message", "errors": [{"reason", ...}]}}``)."""
    error = body.get("error") if isinstance(body, dict) else None
    entries = error.get("errors") if isinstance(error, dict) else None
    if not isinstance(entries, list):
        return set()
    return {
        e["reason"] for e in entries if isinstance(e, dict) and isinstance(e.get("reason"), str)
    }


def raise_for_api_status(response: ApiResponse, what: str, now: float) -> None:
    """A user-safe ConnectorError for any non-2xx REST answer, with the upstream status and
    message logged (never the token, never the query string). 401 means the upstream token is
    no longer valid (revoked, expired), so the user has to log in again."""
    status = response.status
    if 200 <= status < 300:
        return
    where = _url_for_log(response.url)
    upstream_message = response.message()
    if is_rate_limited(response):
        wait = retry_after_seconds(response.headers, now)
        log.warning(
            "upstream %s at %s rate limited: HTTP %d, retry after %s s (%s)",
            what,
            where,
            status,
            wait,
            upstream_message,
        )
        hint = f"; try again in {wait} seconds" if wait is not None else "; try again later"
        raise ConnectorError(f"the identity provider is rate limiting logins ({what}){hint}")
    log.warning("upstream %s at %s answered HTTP %d (%s)", what, where, status, upstream_message)
    if status == 401:
        raise ConnectorError(
            f"the identity provider no longer accepts this login ({what}: HTTP 401); "
            "please log in again"
        )
    raise ConnectorError(f"the identity provider refused the {what} request (HTTP {status})")


def next_link(headers: httpx.Headers) -> str:
    """The ``rel="next"`` target of an RFC 8288 ``Link`` header (GitHub's and GitLab's
    pagination), or "" on the last page."""
    link = str(headers.get("link", ""))
    for part in link.split(","):
        section = part.strip()
        if not section.startswith("<") or ">" not in section:
            continue
        target, _, params = section[1:].partition(">")
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "rel" and "next" in value.strip().strip('"').split():
                return target
    return ""


def same_origin(url: str, base: str) -> bool:
    """True when ``url`` has the scheme and host[:port] of ``base``: a pagination link is
    followed (with the bearer token) only when it stays on the API we were configured with."""
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme, a.netloc.lower()) == (b.scheme, b.netloc.lower())


def _url_for_log(url: str) -> str:
    """Scheme, host and path only: query strings can carry codes or tokens."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _is_tls_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# -- PKCE, authorization URL -------------------------------------------------------------------


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge): 64 URL-safe characters from ``secrets`` (RFC 7636 §4.1)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def authorization_url(
    endpoint: str,
    *,
    client_id: str,
    redirect_uri: str,
    scopes: Sequence[str],
    state: str,
    extra: Mapping[str, str] | None = None,
) -> str:
    """The authorization request URL; a query already on the endpoint is kept (some
    providers need fixed parameters there)."""
    parts = urlsplit(endpoint)
    query = parse_qsl(parts.query, keep_blank_values=True)
    params: dict[str, str] = {
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "response_type": "code",
        "state": state,
    }
    if scopes:
        params["scope"] = " ".join(scopes)
    params.update(extra or {})
    query.extend(params.items())
    return urlunsplit(
        (parts.scheme, parts.netloc, parts.path, urlencode(query, quote_via=quote), "")
    )


# -- token endpoint ----------------------------------------------------------------------------


class ClientCredentials:
    """Our client id and secret at the upstream, and how the token endpoint wants them.

    ``secret_in_body`` True sends them in the form (client_secret_post, Dex's
    ``basicAuthUnsupported: true``); False uses HTTP Basic; None auto-detects like Dex's
    golang.org/x/oauth2: Basic first, the form when the provider refuses the client with
    Basic, and the style that worked is remembered for this connector.
    """

    def __init__(self, client_id: str, client_secret: str, secret_in_body: bool | None) -> None:
        self.client_id = client_id
        self._secret = client_secret
        self.secret_in_body = secret_in_body

    def __repr__(self) -> str:
        return f"ClientCredentials(client_id={self.client_id!r})"

    def styles(self) -> list[bool]:
        if not self._secret:
            return [True]  # public client: client_id in the body, no secret
        if self.secret_in_body is None:
            return [False, True]
        return [self.secret_in_body]

    def apply(self, in_body: bool, body: dict[str, str], headers: dict[str, str]) -> None:
        if in_body:
            body["client_id"] = self.client_id
            if self._secret:
                body["client_secret"] = self._secret
            return
        # RFC 6749 §2.3.1: form-urlencode both parts before joining them with ":".
        user = quote(self.client_id, safe="")
        password = quote(self._secret, safe="")
        headers["Authorization"] = (
            "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        )


@dataclass(frozen=True)
class TokenResponse:
    access_token: str
    token_type: str
    refresh_token: str
    id_token: str
    raw: Mapping[str, Any]

    def __repr__(self) -> str:  # never print tokens, not even in a traceback's locals
        return f"TokenResponse(token_type={self.token_type!r}, fields={sorted(self.raw)!r})"


async def token_request(
    http: UpstreamHTTP,
    token_url: str,
    credentials: ClientCredentials,
    form: Mapping[str, str],
    *,
    what: str,
) -> TokenResponse:
    """POST to the token endpoint with client authentication; UpstreamError carries the
    upstream's OAuth error code (``invalid_grant`` when a refresh token was refused)."""
    styles = credentials.styles()
    for attempt, in_body in enumerate(styles):
        body = dict(form)
        headers: dict[str, str] = {}
        credentials.apply(in_body, body, headers)
        status, document = await http.request_json(
            "POST", token_url, what=what, data=body, headers=headers
        )
        # GitHub answers a refused code with HTTP 200 and an OAuth error body.
        if status == 200 and "access_token" not in document and "error" in document:
            status = 400
        if status == 200:
            if credentials.secret_in_body is None and len(styles) > 1:
                credentials.secret_in_body = in_body  # remember what this provider accepts
            break
        error = document.get("error")
        client_refused = status == 401 or error in ("invalid_client", "unauthorized_client")
        if client_refused and attempt + 1 < len(styles):
            continue
        code = _printable(error, 64) if isinstance(error, str) and error else f"HTTP {status}"
        description = document.get("error_description")
        detail = f": {_printable(description)}" if isinstance(description, str) else ""
        log.info("upstream %s refused: %s", what, code)
        raise UpstreamError(
            f"the identity provider refused the {what} ({code}{detail})",
            code if isinstance(error, str) else "",
        )
    access_token = document.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise ConnectorError(f"the identity provider's {what} response has no access_token")

    def text(name: str) -> str:
        value = document.get(name, "")
        return value if isinstance(value, str) else ""

    return TokenResponse(
        access_token=access_token,
        token_type=text("token_type") or "Bearer",
        refresh_token=text("refresh_token"),
        id_token=text("id_token"),
        raw=document,
    )


async def exchange_code(
    http: UpstreamHTTP,
    token_url: str,
    credentials: ClientCredentials,
    *,
    code: str,
    redirect_uri: str,
    code_verifier: str = "",
) -> TokenResponse:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    if code_verifier:
        form["code_verifier"] = code_verifier
    return await token_request(http, token_url, credentials, form, what="code exchange")


async def refresh_grant(
    http: UpstreamHTTP, token_url: str, credentials: ClientCredentials, refresh_token: str
) -> TokenResponse:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    return await token_request(http, token_url, credentials, form, what="refresh")


#: An expiring upstream access token is renewed this long before its stated expiry.
EXPIRY_MARGIN_S = 60


def dex_token_data(tokens: TokenResponse, now: float) -> bytes:
    """Connector data in the form Dex's github/gitea/bitbucket-cloud connectors store (so an
    imported Dex session keeps working): ``accessToken``, and when the provider issued them,
    ``refreshToken`` and the access token's ``expiry`` (RFC 3339, UTC)."""
    data = {"accessToken": tokens.access_token}
    if tokens.refresh_token:
        data["refreshToken"] = tokens.refresh_token
    lifetime = tokens.raw.get("expires_in")
    if isinstance(lifetime, int | float) and not isinstance(lifetime, bool):
        expiry = datetime.fromtimestamp(now + lifetime, UTC)
        data["expiry"] = expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
    return encode_state(data)


def dex_token_expired(data: Mapping[str, str], now: float) -> bool:
    """True when the stored access token is past (or within a minute of) its ``expiry``; an
    unreadable expiry counts as expired (renew rather than use a token of unknown age)."""
    expiry = data.get("expiry", "")
    if not expiry:
        return False
    try:
        moment = datetime.fromisoformat(expiry.replace("Z", "+00:00"))
    except ValueError:
        return True
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return now >= moment.timestamp() - EXPIRY_MARGIN_S


def callback_error(params: Mapping[str, str]) -> ConnectorError | None:
    """The upstream's error redirect (RFC 6749 §4.1.2.1) as a user-safe error, else None."""
    error = params.get("error", "")
    if not error:
        return None
    description = params.get("error_description", "")
    detail = f": {_printable(description)}" if description else ""
    return UpstreamError(
        f"the identity provider refused the login ({_printable(error, 64)}{detail})", error
    )


# -- claims ------------------------------------------------------------------------------------


def claim_str(claims: Mapping[str, Any], key: str) -> str | None:
    value = claims.get(key)
    return value if isinstance(value, str) else None


def groups_from_claim(value: Any, key: str) -> list[str]:
    """Group names from a claim value, as Dex reads them: a list of strings or of objects with a
    ``name``; a single string is one group. Anything else is a malformed claim."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise ConnectorError(f'the identity provider sent a malformed "{key}" claim')
    groups: list[str] = []
    for item in value:
        if isinstance(item, str):
            groups.append(item)
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            groups.append(item["name"])
        else:
            raise ConnectorError(f'the identity provider sent a malformed "{key}" claim')
    return groups


def filter_allowed(groups: Sequence[str], allowed: Sequence[str]) -> list[str]:
    """Dex's groups.Filter: the user's groups that are in ``allowed``, in the user's order."""
    wanted = set(allowed)
    return [g for g in groups if g in wanted]


def encode_state(data: Mapping[str, str]) -> bytes:
    """Connector state/data as compact JSON bytes (kept server-side, never in a cookie)."""
    return json.dumps(dict(data), separators=(",", ":"), sort_keys=True).encode()


def decode_state(raw: bytes, what: str) -> dict[str, str]:
    try:
        data = json.loads(raw.decode()) if raw else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        data = None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ConnectorError(f"the stored {what} is unreadable; please log in again")
    return data


class RefreshFlights:
    """Single-flight plus a short result cache, keyed by a hash of the upstream refresh token.

    For providers that rotate refresh tokens: concurrent refreshes presenting the same upstream
    token share one upstream call, and callers arriving within ``REFRESH_RESULT_TTL_S`` after it
    finished get its result instead of replaying the consumed token (which such providers treat
    as theft). The upstream call runs in its own task, so a caller that goes away (client
    disconnect, cancelled request) does not lose the rotated token: the result still lands in
    the cache for the client's retry. Failures reach the callers already waiting and are never
    cached. The coordination is per process (see the oidc module docstring).
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._inflight: dict[str, asyncio.Task[Identity]] = {}
        self._done: OrderedDict[str, tuple[float, Identity]] = OrderedDict()

    async def run(self, token: str, work: Callable[[], Awaitable[Identity]]) -> Identity:
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._done.get(key)
        if cached is not None and self._clock.now() - cached[0] <= REFRESH_RESULT_TTL_S:
            return cached[1]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._lead(key, work))
            task.add_done_callback(_retrieve)
            self._inflight[key] = task
        return await asyncio.shield(task)

    async def _lead(self, key: str, work: Callable[[], Awaitable[Identity]]) -> Identity:
        try:
            result = await work()
            self._remember(key, result)
            return result
        finally:
            self._inflight.pop(key, None)

    def _remember(self, key: str, result: Identity) -> None:
        now = self._clock.now()
        self._done[key] = (now, result)
        self._done.move_to_end(key)
        while self._done and (
            len(self._done) > REFRESH_CACHE_MAX
            or now - next(iter(self._done.values()))[0] > REFRESH_RESULT_TTL_S
        ):
            self._done.popitem(last=False)


def _retrieve(task: asyncio.Task[Identity]) -> None:
    """Mark a flight's failure as seen: every caller may have gone away before it ended."""
    if not task.cancelled():
        task.exception()
