"""The authorization_code grant (RFC 6749 §4.1.3, PKCE RFC 7636 §4.6): exchange a code from
``/auth`` for tokens.

Codes are single use. Storage marks a code used atomically; a second presentation means the code
leaked (an attacker or the client raced the legitimate exchange), so everything issued from it
is revoked (RFC 6749 §4.1.2) before the refusal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from anyio import to_thread

from portcullis.clock import Clock
from portcullis.oidc import pkce, resources
from portcullis.oidc.errors import invalid_grant, invalid_request
from portcullis.oidc.grants.base import TokenRequest
from portcullis.oidc.issue import TokenIssuer
from portcullis.oidc.refresh import RefreshStore
from portcullis.storage.base import (
    CodeClientMismatchError,
    CodeReplayedError,
    NotFoundError,
    Storage,
)
from portcullis.storage.models import AuthCode, Client, RefreshToken


class AuthorizationCodeGrant:
    grant_type = "authorization_code"
    parameters = ("code", "redirect_uri", "code_verifier", resources.PARAMETER)
    allow_public = True

    def __init__(
        self, storage: Storage, refresh: RefreshStore, issuer: TokenIssuer, clock: Clock
    ) -> None:
        self._storage = storage
        self._refresh = refresh
        self._issuer = issuer
        self._clock = clock

    async def handle(self, request: TokenRequest) -> dict[str, Any]:
        """On the event loop: the storage call is awaited (on SQLite it joins the group commit
        without a worker thread of its own) and the JWTs are signed here; only the rare
        replay handling runs in a worker thread."""
        start_family, checked, code_value, now = self._exchange_steps(request)
        try:
            code, _ = await self._storage.exchange_auth_code_async(
                code_value, now, request.client.id, start_family
            )
        except CodeReplayedError as replay:
            await to_thread.run_sync(self._refresh_after_replay, replay)
        except (NotFoundError, CodeClientMismatchError) as exc:
            self._refuse(exc)
        return self._respond(request.client, code, checked[0])

    def _exchange_steps(
        self, request: TokenRequest
    ) -> tuple[Callable[[AuthCode], RefreshToken | None], list[_Checked], str, float]:
        """What the storage call needs: the family builder (which runs the checks), the list
        it leaves its result in, the code and the time."""
        client, form = request.client, request.form
        code_value = form.get("code", "")
        if not code_value:
            raise invalid_request("the code parameter is missing")
        now = self._clock.now()
        checked: list[_Checked] = []

        def start_family(code: AuthCode) -> RefreshToken | None:
            # Runs inside storage's write (see Storage.exchange_auth_code): checks and builds,
            # nothing else. A refused exchange starts no family; the code stays used anyway.
            resources_ = self._check(code, form, client, now)
            family: tuple[RefreshToken, str] | None = None
            if self._issuer.starts_family(client, code.scopes):
                family = self._refresh.new_family(
                    client,
                    identity=code.identity,
                    connector_id=code.connector_id,
                    granted=code.scopes,
                    nonce=code.nonce,
                    auth_time=code.auth_time,
                    issued_by_code=code.id,
                    resources=resources_[0],
                )
            checked.append(_Checked(resources_[1], family))
            return None if family is None else family[0]

        # The client condition is checked in the consuming transaction: a code presented by
        # another client is refused without being burnt for the client it belongs to.
        # Consuming it and starting its refresh family are one storage call: on SQLite one
        # commit to wait for instead of two.
        return start_family, checked, code_value, now

    @staticmethod
    def _refuse(exc: Exception) -> NoReturn:
        if isinstance(exc, CodeClientMismatchError):
            raise invalid_grant("the authorization code was issued to another client") from None
        raise invalid_grant("the authorization code is invalid or expired") from None

    def _refresh_after_replay(self, replay: CodeReplayedError) -> NoReturn:
        self._refresh.revoke_code_issue(replay.code.id)
        raise invalid_grant(
            "the authorization code was already used; tokens issued from it are revoked"
        ) from None

    def _respond(self, client: Client, code: AuthCode, checked: _Checked) -> dict[str, Any]:
        token_resources, family = checked.token_resources, checked.family
        return self._issuer.response(
            client,
            identity=code.identity,
            connector_id=code.connector_id,
            granted=code.scopes,
            nonce=code.nonce,
            auth_time=code.auth_time,
            # JWT ids derived from the code let a replay revoke them without a lookup table.
            jti_seed=code.id,
            family_id=family[0].id if family else "",
            refresh_token=family[1] if family else "",
            resources=token_resources,
        )

    @staticmethod
    def _check(
        code: AuthCode, form: Mapping[str, str], client: Client, now: float
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The checks of a consumed code against the request (OAuthError when one fails):
        returns the resources the family keeps and those this access token is for."""
        if code.expiry < now:
            raise invalid_grant("the authorization code has expired")
        if form.get("redirect_uri", "") != code.redirect_uri:
            raise invalid_grant("redirect_uri does not match the authorization request")
        verifier = form.get("code_verifier", "")
        if code.pkce.code_challenge:
            if not verifier:
                raise invalid_grant("code_verifier is required (PKCE)")
            if not pkce.verify(verifier, code.pkce.code_challenge, code.pkce.code_challenge_method):
                raise invalid_grant("code_verifier does not match the code_challenge")
        elif verifier:
            raise invalid_grant("code_verifier sent but no code_challenge was registered")
        # RFC 8707: the exchange may narrow what /auth granted. A code granted no resource
        # may still name allowed ones here (the client may not have sent them at /auth); the
        # family then keeps those, so a refresh cannot go beyond them.
        requested = resources.parse(form.get(resources.PARAMETER, ""))
        if code.resources:
            return code.resources, resources.narrow(requested, code.resources)
        granted_resources = resources.check_allowed(requested, client.allowed_resources)
        return granted_resources, granted_resources


@dataclass(frozen=True)
class _Checked:
    """What the checks inside the exchange decided: the access token's resources and the
    family started (its record and refresh token string), if any."""

    token_resources: tuple[str, ...]
    family: tuple[RefreshToken, str] | None
