"""RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0) at ``{issuer}/logout``, Dex's
path: what a logout request may do, decided here; the web layer only renders and redirects.

Portcullis keeps no browser session (every login is a fresh trip to the connector), so the
session a relying party can end is its refresh-token family: the ``sid`` claim of an ID token
names it (``portcullis.oidc.refresh.session_id``). A verified ``id_token_hint`` (our signature
and issuer; an expired one is fine, as §2 allows) therefore ends that client's family for that
user, which also revokes every JWT carrying the ``sid``. Without a valid hint nothing is ended
and the person is asked to confirm (§2: the OP asks when no hint was given), so a link on
another site cannot bounce browsers through the issuer.

``post_logout_redirect_uri`` must be registered for the client (``postLogoutRedirectURIs``,
exact string match): the client comes from the hint (``azp``, else a single ``aud``) or from
``client_id``, and the two must agree. Anything else is an error page, never a redirect, so
``/logout`` is not an open redirector. ``state`` is echoed on the redirect (§3).

Methods read and write storage: run them in worker threads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from joserfc.errors import JoseError

from portcullis.keys.manager import KeyManager
from portcullis.oidc.claims import decode_subject
from portcullis.oidc.clients import ClientRegistry
from portcullis.oidc.refresh import RefreshStore, session_id
from portcullis.storage.base import Storage


class LogoutError(Exception):
    """The logout request is invalid; the message is safe to show to the person."""


@dataclass(frozen=True)
class LogoutPlan:
    #: The client the request speaks for ("" when neither a hint nor client_id names one).
    client_id: str
    #: A registered post-logout redirect URI, or "" to show the signed-out page.
    redirect_uri: str
    state: str
    #: The refresh-token family the hint's ``sid`` names ("" when none is live).
    family_id: str
    #: A valid id_token_hint came with the request (no confirmation needed).
    hinted: bool


class RPLogout:
    def __init__(
        self,
        issuer: str,
        storage: Storage,
        clients: ClientRegistry,
        keys: KeyManager,
        refresh: RefreshStore,
    ) -> None:
        self._issuer = issuer
        self._storage = storage
        self._clients = clients
        self._keys = keys
        self._refresh = refresh

    def _hint_claims(self, hint: str) -> dict[str, Any]:
        if hint.count(".") != 2:
            raise LogoutError("id_token_hint is not an ID token issued here.")
        try:
            claims = self._keys.verify(hint)
        except (JoseError, ValueError):
            raise LogoutError("id_token_hint is not an ID token issued here.") from None
        if claims.get("iss") != self._issuer:
            raise LogoutError("id_token_hint is not an ID token issued here.")
        return claims

    @staticmethod
    def _hint_client(claims: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
        """(the client the token was issued to, its audiences)."""
        aud = claims.get("aud")
        audiences = (
            (aud,) if isinstance(aud, str) else tuple(a for a in aud or () if isinstance(a, str))
        )
        azp = claims.get("azp")
        if isinstance(azp, str) and azp:
            return azp, audiences
        return (audiences[0] if len(audiences) == 1 else ""), audiences

    def plan(self, params: Mapping[str, str]) -> LogoutPlan:
        """Validate a logout request. Raises LogoutError."""
        hint = params.get("id_token_hint", "")
        client_id = params.get("client_id", "")
        redirect_uri = params.get("post_logout_redirect_uri", "")
        family_id = ""
        if hint:
            claims = self._hint_claims(hint)
            hint_client, audiences = self._hint_client(claims)
            if client_id and client_id != hint_client and client_id not in audiences:
                raise LogoutError("client_id does not match the id_token_hint.")
            client_id = client_id or hint_client
            family_id = self._family_of(claims, hint_client)
        if redirect_uri:
            if not client_id:
                raise LogoutError("post_logout_redirect_uri needs an id_token_hint or a client_id.")
            client = self._clients.get(client_id)
            if client is None:
                raise LogoutError("The client of this logout request is unknown.")
            if redirect_uri not in client.post_logout_redirect_uris:
                raise LogoutError("post_logout_redirect_uri is not registered for this client.")
        return LogoutPlan(
            client_id=client_id,
            redirect_uri=redirect_uri,
            state=params.get("state", ""),
            family_id=family_id,
            hinted=bool(hint),
        )

    def _family_of(self, claims: Mapping[str, Any], client_id: str) -> str:
        sid = claims.get("sid")
        sub = claims.get("sub")
        if not isinstance(sid, str) or not isinstance(sub, str) or not client_id:
            return ""
        try:
            user_id, connector_id = decode_subject(sub)
        except (ValueError, UnicodeDecodeError):
            return ""
        for family in self._storage.list_refresh_tokens(user_id, connector_id):
            if family.client_id == client_id and session_id(family.id) == sid:
                return family.id
        return ""

    def end(self, plan: LogoutPlan) -> None:
        """End the session the plan names (idempotent: a second logout finds nothing)."""
        if plan.family_id:
            self._refresh.end_family(plan.family_id)
