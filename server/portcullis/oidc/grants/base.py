"""What a token-endpoint grant is: the ``Grant`` protocol the dispatcher looks grants up by.

A grant declares its ``grant_type``, the form ``parameters`` it reads (the dispatcher hands it
only those, as node-oidc-provider does, so a grant cannot start depending on a parameter by
accident), and whether public clients may use it. The dispatcher does what every grant shares:
client authentication, the server's and the client's grant lists. A grant does the rest and
returns the JSON response body, or raises OAuthError.

Threading (the token endpoint is the hot path): ``handle`` runs on the event loop. A grant hands
anything that may wait on storage, and signing together with it, to a worker thread
(``anyio.to_thread``), so a slow database or a row lock held by another replica never stalls
the loop that also answers the liveness probe; work that touches no storage stays on the loop,
because a thread hand-off costs about as much as the rest of a client_credentials request.
Connector calls (upstream I/O) are awaited on the loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from portcullis.storage.models import Client


@dataclass(frozen=True)
class TokenRequest:
    """One authenticated token request, as a grant sees it."""

    client: Client
    #: Only the parameters the grant declared (absent ones are missing, never "").
    form: Mapping[str, str]
    #: The caller's address as the web layer resolved it (throttling keys on it).
    client_ip: str


class Grant(Protocol):
    @property
    def grant_type(self) -> str:
        """The ``grant_type`` value this grant serves."""
        ...

    @property
    def parameters(self) -> tuple[str, ...]:
        """The form parameters ``handle`` reads."""
        ...

    @property
    def allow_public(self) -> bool:
        """Whether public clients (no secret) may use this grant."""
        ...

    async def handle(self, request: TokenRequest) -> dict[str, Any]:
        """The token response body (RFC 6749 §5.1); raise OAuthError to refuse."""
        ...
