"""The refresh_token grant (RFC 6749 §6): a new token set for a live refresh family.

First the common case: a current secret of a family whose connector needs no upstream
re-check rotates in one awaited storage statement. Otherwise three steps: look the family up
(an awaited read; a replayed or expired token ends the family, in a worker thread), re-check
the user with the connector when it can refresh (upstream I/O; a refusal ends the family, so
upstream removals and group changes bite; skipped for a retry with the previous secret, which
repeats the last rotation), then rotate (an awaited compare-and-swap; a family overtaken since
the lookup is decided under a lock in a worker thread). The JWTs are signed on the event loop.
Every step is awaited on the loop and only the rare branches hand off to a worker thread: the
hand-offs were about a fifth of a refresh's CPU under load.
The rotation rules themselves live in ``portcullis.oidc.refresh``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from anyio import to_thread

from portcullis.connectors.base import Connector, ConnectorError, RefreshConnector
from portcullis.oidc import resources, scopes
from portcullis.oidc.errors import invalid_grant, invalid_request, invalid_scope
from portcullis.oidc.grants.base import TokenRequest
from portcullis.oidc.issue import TokenIssuer
from portcullis.oidc.refresh import (
    FamilyRead,
    Presented,
    RefreshStore,
    RefreshTokenError,
    Rotated,
    SecretMatch,
    format_refresh_token,
)
from portcullis.storage.models import Client, Identity
from portcullis.storage.sealing import is_sealed

log = logging.getLogger("portcullis.token")


class RefreshTokenGrant:
    grant_type = "refresh_token"
    parameters = ("refresh_token", "scope", resources.PARAMETER)
    allow_public = True

    def __init__(
        self, refresh: RefreshStore, issuer: TokenIssuer, connectors: Mapping[str, Connector]
    ) -> None:
        self._refresh = refresh
        self._issuer = issuer
        self._connectors = connectors
        # Families of these connectors need no upstream re-check before the rotation, so the
        # grant can rotate them in one statement (see _rotate_current).
        self._local_connectors = tuple(
            cid for cid, c in connectors.items() if not isinstance(c, RefreshConnector)
        )

    async def handle(self, request: TokenRequest) -> dict[str, Any]:
        try:
            fast = await self._rotate_current(request)
            if isinstance(fast, dict):
                return fast
            presented, granted = await self._lookup(request, fast)
            # RFC 8707 §2.2: a refresh may narrow the family's resources, never widen them.
            # Checked before the upstream re-check and the rotation: a refused request must
            # not spend the refresh token.
            token_resources = resources.narrow(
                resources.parse(request.form.get(resources.PARAMETER, "")),
                presented.family.resources,
            )
            identity = await self._current_identity(presented, granted)
            return await self._rotate(request.client, presented, granted, identity, token_resources)
        except RefreshTokenError as exc:
            raise invalid_grant(exc.description) from None

    async def _rotate_current(self, request: TokenRequest) -> dict[str, Any] | FamilyRead | None:
        """The common refresh in one storage statement; otherwise the family as that statement
        found it (or None) for the general path below.

        Runs on the event loop: the statement is awaited (on SQLite it joins the group commit
        without a worker thread of its own; the hand-off to and from a worker thread was about
        a fifth of a refresh's CPU under load), and the two JWTs are signed here, as
        client_credentials signs its one.

        Taken only when the request keeps the granted scopes (no ``scope`` parameter: checking
        a narrowing needs the family first, and the token must not rotate if it is refused),
        and only for families of connectors that do not refresh upstream (the statement names
        them; a family of a connector that does needs its identity re-checked before the
        rotation, so the general path then rotates it with one compare-and-swap). The
        statement's WHERE leaves every other case (retry, replay, expiry, another client's
        token, a removed or refreshing connector, a family older than a live denial) untouched
        for the general path.
        """
        value = request.form.get("refresh_token", "")
        if not value or request.form.get("scope", ""):
            return None
        if not self._local_connectors:
            return None
        rotated = await self._refresh.rotate_current_async(
            value, request.client, self._local_connectors
        )
        if not isinstance(rotated, tuple):
            return rotated
        family, outcome = rotated
        return self._issuer.response(
            request.client,
            identity=family.identity,
            connector_id=family.connector_id,
            granted=family.scopes,
            nonce=family.nonce,
            auth_time=family.auth_time,
            jti_seed="",
            family_id=family.id,
            refresh_token=format_refresh_token(family.id, outcome.secret),
        )

    async def _lookup(
        self, request: TokenRequest, read: FamilyRead | None
    ) -> tuple[Presented, tuple[str, ...]]:
        value = request.form.get("refresh_token", "")
        if not value:
            raise invalid_request("the refresh_token parameter is missing")
        presented = await self._refresh.lookup_for_grant_async(value, request.client, read)
        granted = presented.family.scopes
        # A refresh may narrow the scopes (RFC 6749 §6), never widen them.
        requested = scopes.parse_scopes(request.form.get("scope", ""))
        if requested:
            extra = [s for s in requested if s not in granted]
            if extra:
                raise invalid_scope(f"scope {extra[0]!r} was not granted originally")
        return presented, requested or granted

    async def _current_identity(self, presented: Presented, granted: tuple[str, ...]) -> Identity:
        family = presented.family
        connector = self._connectors.get(family.connector_id)
        if connector is None:
            await to_thread.run_sync(self._refresh.end_family, family.id)
            raise invalid_grant("the login method of this session no longer exists")
        if not isinstance(connector, RefreshConnector):
            return family.identity
        if presented.match is SecretMatch.PREVIOUS:
            # A retry of the last rotation (inside reuseInterval, else rotate() calls it
            # reuse): it gets the successor already issued and the identity as refreshed
            # then. Asking upstream again would spend the upstream refresh token stored with
            # the family on a rotating upstream, and the next real refresh would fail.
            return family.identity
        if is_sealed(family.identity.connector_data):
            # Storage could not open the session's upstream tokens (it logged why: a sealing
            # key that is not configured, or a value altered or moved between rows). This
            # session alone cannot be refreshed; the connector never sees the sealed bytes.
            log.warning(
                "refresh refused for client %s (connector %s): the session's upstream tokens "
                "are sealed with a storage sealing key this server cannot use; see "
                "storageSealing in the configuration",
                family.client_id,
                family.connector_id,
            )
            raise invalid_grant(
                "the upstream session cannot be resumed on this server; please log in again"
            )
        try:
            return await connector.refresh(scopes.connector_scopes(granted), family.identity)
        except ConnectorError as exc:
            await to_thread.run_sync(self._refresh.end_family, family.id)
            raise invalid_grant(
                f"the upstream identity provider refused the refresh: {exc}"
            ) from None

    async def _rotate(
        self,
        client: Client,
        presented: Presented,
        granted: tuple[str, ...],
        identity: Identity,
        token_resources: tuple[str, ...],
    ) -> dict[str, Any]:
        outcome = await self._refresh.rotate_async(client, presented, identity)
        if not isinstance(outcome, Rotated):
            # Reused after the interval, or overtaken by concurrent rotations: either way an
            # old generation is being replayed.
            await to_thread.run_sync(self._refresh.reuse_detected, presented.family.id, client.id)
        family = presented.family
        return self._issuer.response(
            client,
            identity=identity,
            connector_id=family.connector_id,
            granted=granted,
            nonce=family.nonce,
            auth_time=family.auth_time,
            jti_seed="",
            family_id=family.id,
            refresh_token=format_refresh_token(family.id, outcome.secret),
            resources=token_resources,
        )
