"""Redirect-URI matching: exact string match, with RFC 8252 §7.3 loopback port flexibility for
public (native) clients only.

The loopback rule is where open redirects hide: a parser that normalises
``http://evil.com\\@127.0.0.1:8000/`` to host 127.0.0.1 says "loopback" while a browser may go
elsewhere, and the raw string is what gets stored and redirected to. So a loopback URI is only
accepted when it is *canonical* — scheme ``http``, host ``127.0.0.1`` or ``[::1]``, an optional
decimal port 1-65535 without leading zeros, no userinfo, no backslash, no whitespace or control
character, no fragment — and is then the registered URI with nothing but the port changed. The
comparison is on the exact string the issuer will redirect to; no parser's opinion is involved.
"""

from __future__ import annotations

import re

LOOPBACK_HOSTS = ("127.0.0.1", "[::1]", "::1")

# http://<127.0.0.1|[::1]>[:port]<rest>, rest empty or starting with / or ?; anything else
# (userinfo, other hosts, "127.0.0.1.evil.com") fails to match.
_LOOPBACK = re.compile(r"http://(127\.0\.0\.1|\[::1\])(?::([1-9][0-9]{0,4}))?([/?].*)?", re.S)
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f\\#@]")


def _loopback_parts(uri: str) -> tuple[str, str] | None:
    """(host, rest) of a canonical http loopback URI, else None; rest is path and query."""
    if _FORBIDDEN.search(uri):
        return None
    match = _LOOPBACK.fullmatch(uri)
    if match is None:
        return None
    host, port, rest = match.groups()
    if port is not None and int(port) > 65535:
        return None
    return host, rest or "/"


def redirect_uri_allowed(requested: str, registered: tuple[str, ...], *, public: bool) -> bool:
    if requested in registered:
        return True
    if not public:
        return False
    wanted = _loopback_parts(requested)
    if wanted is None:
        # Dex lets public clients without registered URIs use the out-of-band URN.
        return not registered and requested == "urn:ietf:wg:oauth:2.0:oob"
    if not registered:
        # A public client with no registered URIs accepts any loopback redirect (kubelogin).
        return True
    return any(_loopback_parts(r) == wanted for r in registered)


def is_canonical_loopback(uri: str) -> bool:
    """Whether ``uri`` is a canonical http loopback redirect URI (see the module docstring):
    what dynamic registration accepts by default (RFC 8252 §7.3; ``localhost`` is not
    accepted, RFC 8252 §8.3: it may resolve elsewhere)."""
    return _loopback_parts(uri) is not None
