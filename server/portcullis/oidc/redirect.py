"""Redirect-URI matching: exact string match, with RFC 8252 §7.3 loopback port flexibility for
public (native) clients only."""

from __future__ import annotations

from urllib.parse import urlsplit

LOOPBACK_HOSTS = ("127.0.0.1", "[::1]", "::1")


def _is_loopback_http(uri: str) -> bool:
    parts = urlsplit(uri)
    return parts.scheme == "http" and (parts.hostname or "") in ("127.0.0.1", "::1")


def _without_port(uri: str) -> tuple[str, str, str, str, str]:
    parts = urlsplit(uri)
    host = parts.hostname or ""
    return (parts.scheme, host, parts.path or "/", parts.query, parts.fragment)


def redirect_uri_allowed(requested: str, registered: tuple[str, ...], *, public: bool) -> bool:
    if requested in registered:
        return True
    if not public:
        return False
    if urlsplit(requested).fragment:
        return False
    if not _is_loopback_http(requested):
        # Dex lets public clients without registered URIs use the out-of-band URN.
        return not registered and requested == "urn:ietf:wg:oauth:2.0:oob"
    if not registered:
        # A public client with no registered URIs accepts any loopback redirect (kubelogin).
        return True
    wanted = _without_port(requested)
    return any(_is_loopback_http(r) and _without_port(r) == wanted for r in registered)
