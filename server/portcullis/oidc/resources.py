"""RFC 8707 resource indicators: which protected resource (an MCP server, an API) an access
token is for.

A client names the resource with ``resource`` (an absolute URI without a fragment, repeatable)
at ``/auth``, at the code exchange and at a refresh. The resources granted at ``/auth`` travel
with the auth code into the refresh family; the access token's ``aud`` is the resource set of
the request (the ID token keeps ``aud`` = the client: it is for the client, not the resource).
A client may only name resources it is allowed (``allowedResources`` of a static client, the
registration policy for a dynamically registered one); anything else is ``invalid_target``,
because a token minted with an arbitrary audience would let a client obtain tokens accepted by
resource servers it was never meant to reach. A later request may narrow the granted set, never
widen it (RFC 8707 §2.2).

Repeated ``resource`` values cross the framework boundary joined by ``SEPARATOR`` (the web
layer's form readers refuse every other repeated parameter, RFC 6749 §3.1). A space cannot
appear in a URI; a value smuggling one in reads as two resources, each of which is checked like
any other, so the join grants nothing a client could not ask for openly.
"""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import urlsplit

from portcullis.oidc.errors import OAuthError

#: The one parameter that may repeat.
PARAMETER = "resource"
#: How repeated values are joined into one form value.
SEPARATOR = " "
#: At most this many resources in one request: a token's ``aud`` is not a list to grow freely.
MAX_RESOURCES = 10


def invalid_target(description: str) -> OAuthError:
    """RFC 8707 §2: the requested resource is invalid, unknown or not allowed."""
    return OAuthError("invalid_target", description)


def join(values: Collection[str]) -> str:
    """The form value for repeated ``resource`` parameters (see the module docstring)."""
    return SEPARATOR.join(values)


def check_uri(value: str) -> str:
    """``value`` if it is an absolute URI without a fragment (RFC 8707 §2), else raise
    ValueError saying why."""
    if not value or any(ch.isspace() or ord(ch) < 0x20 for ch in value):
        raise ValueError("a resource must be a URI without spaces or control characters")
    try:
        parts = urlsplit(value)
    except ValueError:
        raise ValueError(f"resource {value!r} is not a URI") from None
    if not parts.scheme or not (parts.netloc or parts.path):
        raise ValueError(f"resource {value!r} is not an absolute URI")
    if "#" in value:
        raise ValueError(f"resource {value!r} must not contain a fragment")
    return value


def parse(value: str) -> tuple[str, ...]:
    """The resources named by a (joined) ``resource`` value, in order, without duplicates.
    Raises OAuthError(invalid_target)."""
    if not value:
        return ()
    items = value.split(SEPARATOR)
    if len(items) > MAX_RESOURCES:
        raise invalid_target(f"at most {MAX_RESOURCES} resource parameters are accepted")
    for item in items:
        try:
            check_uri(item)
        except ValueError as exc:
            raise invalid_target(str(exc)) from None
    return tuple(dict.fromkeys(items))


def check_allowed(requested: tuple[str, ...], allowed: Collection[str]) -> tuple[str, ...]:
    """``requested`` when every resource is in ``allowed`` (exact string match: a resource
    server checks its own URL byte for byte), else raise invalid_target naming the first
    one that is not."""
    for resource in requested:
        if resource not in allowed:
            raise invalid_target(f"resource {resource!r} is not allowed for this client")
    return requested


def narrow(requested: tuple[str, ...], granted: tuple[str, ...]) -> tuple[str, ...]:
    """The resources a later request (code exchange, refresh) gets: the granted set when it
    names none, else its own, which must lie within the granted set."""
    if not requested:
        return granted
    for resource in requested:
        if resource not in granted:
            raise invalid_target(
                f"resource {resource!r} was not granted by the authorization (only narrowing "
                "is allowed)"
            )
    return requested
