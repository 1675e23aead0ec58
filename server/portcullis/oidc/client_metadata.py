"""OAuth Client ID Metadata Documents: a ``client_id`` that is an https URL, whose JSON document
(served by the client's owner at that URL) says what the client is. MCP clients use them to
log in without registering first.

Fetching a URL a stranger chose is server-side request forgery waiting to happen, so:

* only ``https`` URLs with a path and no userinfo, query, fragment or dot segments;
* the host is resolved once, **every** address must be public (not private, loopback,
  link-local, multicast, reserved, shared or unspecified; IPv4-mapped IPv6 is unwrapped), and
  the connection goes to that checked address (the Host header and TLS server name stay the
  URL's), so a DNS answer that changes between check and connect (rebinding) cannot reach an
  internal service;
* no redirects (a 3xx is a refusal, not followed), a timeout, a size limit read as a stream;
* the document's ``client_id`` must be the URL itself, and it gets the same policy as a
  dynamically registered client (public only, code and refresh grants, the redirect URI
  patterns and resources of ``registration``).

Documents are cached per the response's ``Cache-Control`` (``no-store``/``no-cache``: not
cached; ``max-age``: up to ``maxCacheAge``; none: a short default). The cache is per process:
it is a cache, not state, and a miss only costs a fetch.

A test-only setting trusts a given CA and allows loopback addresses, so the tests can serve a
document from a loopback HTTPS server; nothing else relaxes the address rules.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

from portcullis.clock import Clock
from portcullis.storage.models import Client

log = logging.getLogger("portcullis.client_metadata")

#: Cache lifetime when the response says nothing (seconds).
DEFAULT_CACHE_AGE = 300.0


class MetadataDocumentError(Exception):
    """The client id's document cannot be used; the message says why (no secrets in it)."""


@dataclass(frozen=True)
class MetadataDocumentPolicy:
    enabled: bool
    timeout: float
    max_bytes: int
    max_cache_age: float
    #: Test-only: a CA file to trust; when set, loopback addresses are allowed too.
    test_loopback_ca: str = ""


def is_metadata_document_id(client_id: str) -> bool:
    """Whether a client id names a metadata document (an https URL)."""
    return client_id.startswith("https://")


def check_document_url(url: str) -> SplitResult:
    """The parsed URL, or raise MetadataDocumentError."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a malformed port
    except ValueError:
        raise MetadataDocumentError("the client id is not a valid URL") from None
    if parts.scheme != "https" or not parts.hostname:
        raise MetadataDocumentError("the client id must be an https URL")
    if parts.username or parts.password or "@" in parts.netloc:
        raise MetadataDocumentError("the client id URL must not contain credentials")
    if parts.query or parts.fragment or "#" in url:
        raise MetadataDocumentError("the client id URL must not have a query or fragment")
    segments = parts.path.split("/")
    if parts.path in ("", "/") or "." in segments or ".." in segments:
        raise MetadataDocumentError("the client id URL needs a path without dot segments")
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F or ch == "\\" for ch in url):
        raise MetadataDocumentError("the client id URL contains forbidden characters")
    return parts


def _address_allowed(address: str, allow_loopback: bool) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if allow_loopback and ip.is_loopback:
        return True
    return ip.is_global and not ip.is_multicast


def resolve_public(host: str, port: int, allow_loopback: bool) -> str:
    """One address of ``host`` to connect to; every address it resolves to must be allowed,
    else MetadataDocumentError (a name with one internal address is refused outright)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise MetadataDocumentError("the client id's host does not resolve") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses or not all(_address_allowed(a, allow_loopback) for a in addresses):
        raise MetadataDocumentError(
            "the client id's host resolves to a private or reserved address"
        )
    return addresses[0]


def _cache_age(cache_control: str, ceiling: float) -> float:
    directives = {
        d.strip().split("=", 1)[0].lower(): d.strip().partition("=")[2]
        for d in cache_control.split(",")
        if d.strip()
    }
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    if "max-age" in directives:
        try:
            return max(0.0, min(float(int(directives["max-age"].strip('"'))), ceiling))
        except ValueError:
            return 0.0
    return min(DEFAULT_CACHE_AGE, ceiling)


class MetadataDocumentClients:
    """Resolve metadata-document client ids to clients, fetching and caching the documents.
    ``to_client`` turns a validated document into a Client or raises ValueError (the
    registration policy). Blocking I/O: call from worker threads."""

    def __init__(
        self,
        policy: MetadataDocumentPolicy,
        to_client: Callable[[str, dict[str, Any]], Client],
        clock: Clock,
    ) -> None:
        self.policy = policy
        self._to_client = to_client
        self._clock = clock
        self._cache: dict[str, tuple[float, Client]] = {}
        self._lock = threading.Lock()
        # The system trust store is loaded on the first fetch, not here: most servers never
        # fetch a document, and loading the CA bundle (and importing httpx) is a good part of a
        # cold start's CPU and memory. The test-only CA is loaded at once, so a wrong path
        # still fails at start rather than inside a request.
        self._ssl: ssl.SSLContext | None = None
        if policy.test_loopback_ca:
            self._ssl = ssl.create_default_context(cafile=policy.test_loopback_ca)

    def _ssl_context(self) -> ssl.SSLContext:
        with self._lock:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            return self._ssl

    def get(self, client_id: str) -> Client | None:
        """The client, or None (unknown, disabled or refused: the reason is logged)."""
        if not self.policy.enabled or not is_metadata_document_id(client_id):
            return None
        now = self._clock.now()
        with self._lock:
            cached = self._cache.get(client_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            client, age = self.fetch(client_id)
        except MetadataDocumentError as exc:
            log.info("client metadata document refused: %s", exc)
            return None
        if age > 0:
            with self._lock:
                if len(self._cache) > 1000:
                    self._cache.clear()
                self._cache[client_id] = (now + age, client)
        return client

    def fetch(self, url: str) -> tuple[Client, float]:
        """Fetch and validate the document: (client, cache seconds). Raises
        MetadataDocumentError."""
        import httpx  # only servers that fetch documents pay for importing it

        parts = check_document_url(url)
        host = parts.hostname or ""
        port = parts.port or 443
        address = resolve_public(host, port, allow_loopback=bool(self.policy.test_loopback_ca))
        literal = f"[{address}]" if ":" in address else address
        target = urlunsplit(("https", f"{literal}:{port}", parts.path, "", ""))
        try:
            with (
                httpx.Client(
                    verify=self._ssl_context(),
                    timeout=self.policy.timeout,
                    follow_redirects=False,
                    trust_env=False,
                ) as http,
                http.stream(
                    "GET",
                    target,
                    headers={"Host": parts.netloc, "Accept": "application/json"},
                    extensions={"sni_hostname": host},
                ) as response,
            ):
                if 300 <= response.status_code < 400:
                    raise MetadataDocumentError("the client id URL redirects (not followed)")
                if response.status_code != 200:
                    raise MetadataDocumentError(
                        f"the client id URL answered HTTP {response.status_code}"
                    )
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > self.policy.max_bytes:
                        raise MetadataDocumentError(
                            f"the client metadata document is over {self.policy.max_bytes} bytes"
                        )
                cache_control = response.headers.get("cache-control", "")
        except httpx.HTTPError as exc:
            raise MetadataDocumentError(
                f"the client id URL could not be fetched ({type(exc).__name__})"
            ) from None
        try:
            document = json.loads(bytes(body))
        except (ValueError, UnicodeDecodeError):
            raise MetadataDocumentError("the client metadata document is not JSON") from None
        if not isinstance(document, dict) or document.get("client_id") != url:
            raise MetadataDocumentError("the document's client_id is not its own URL")
        try:
            client = self._to_client(url, document)
        except ValueError as exc:
            raise MetadataDocumentError(f"the client metadata is not acceptable: {exc}") from None
        return client, _cache_age(cache_control, self.policy.max_cache_age)
