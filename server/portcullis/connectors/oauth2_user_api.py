"""The login and refresh that OAuth2 providers whose user comes from a REST API share (GitHub,
Gitea, Bitbucket Cloud): one implementation, so a fix to the flow reaches every such connector.

Login: the callback's code is exchanged for tokens and the user (with groups) is read with the
access token; the upstream tokens are kept, in Dex's format, only for offline sessions — a
session that never refreshes needs none of them. Refresh: an upstream access token that has
expired is renewed once per upstream refresh token (single flight, so two concurrent refreshes
of one session cannot burn a rotating provider's token) and the user is read again, so a user
removed from an allowed org or group loses the session; a session without an upstream refresh
token re-reads the user with its stored access token, and fails closed when that is refused.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import replace

from portcullis.clock import Clock
from portcullis.connectors.base import (
    CallbackConnector,
    ConnectorError,
    LoginRedirect,
    RefreshConnector,
    Scopes,
)
from portcullis.connectors.oauth2_common import (
    ClientCredentials,
    RefreshFlights,
    UpstreamHTTP,
    authorization_url,
    callback_error,
    decode_state,
    dex_token_data,
    dex_token_expired,
    exchange_code,
    refresh_grant,
)
from portcullis.storage.models import Identity


class UserAPIConnector(CallbackConnector, RefreshConnector):
    """Subclasses set the attributes below in ``__init__`` and implement :meth:`_identity`."""

    #: The provider's name in messages people see ("GitHub").
    provider = "the identity provider"
    _http: UpstreamHTTP
    _token_url: str
    _credentials: ClientCredentials
    _clock: Clock
    _flights: RefreshFlights
    _redirect_uri: str

    @abstractmethod
    async def _identity(self, scopes: Scopes, token: str, previous: Identity | None) -> Identity:
        """The user behind ``token``; with ``previous`` (a refresh) the same user or
        ConnectorError, and ConnectorError when the user may no longer log in."""

    def _check_callback(self, callback_url: str) -> None:
        if callback_url != self._redirect_uri:
            raise ConnectorError(
                f"the callback URL {callback_url} does not match this connector's redirectURI"
            )

    def _login_redirect(
        self, callback_url: str, authorize_url: str, scopes: Sequence[str], state: str
    ) -> LoginRedirect:
        """The redirect to the provider's authorization endpoint. Only the callback URL this
        connector is registered with is accepted: the provider would refuse another one, but
        only after the person signed in there."""
        self._check_callback(callback_url)
        url = authorization_url(
            authorize_url,
            client_id=self._credentials.client_id,
            redirect_uri=self._redirect_uri,
            scopes=scopes,
            state=state,
        )
        return LoginRedirect(url)

    async def handle_callback(
        self, scopes: Scopes, params: Mapping[str, str], connector_state: bytes
    ) -> Identity:
        error = callback_error(params)
        if error is not None:
            raise error
        code = params.get("code", "")
        if not code:
            raise ConnectorError(f"{self.provider} sent no authorization code")
        tokens = await exchange_code(
            self._http,
            self._token_url,
            self._credentials,
            code=code,
            redirect_uri=self._redirect_uri,
        )
        identity = await self._identity(scopes, tokens.access_token, previous=None)
        if scopes.offline_access:
            identity = replace(identity, connector_data=dex_token_data(tokens, self._clock.now()))
        return identity

    async def refresh(self, scopes: Scopes, identity: Identity) -> Identity:
        data = decode_state(identity.connector_data, "session data")
        token, refresh_token = data.get("accessToken", ""), data.get("refreshToken", "")
        if refresh_token and (not token or dex_token_expired(data, self._clock.now())):

            async def work() -> Identity:
                tokens = await refresh_grant(
                    self._http, self._token_url, self._credentials, refresh_token
                )
                fresh = await self._identity(scopes, tokens.access_token, previous=identity)
                if not tokens.refresh_token:
                    tokens = replace(tokens, refresh_token=refresh_token)
                return replace(fresh, connector_data=dex_token_data(tokens, self._clock.now()))

            return await self._flights.run(refresh_token, work)
        if not token:
            raise ConnectorError("this session cannot be refreshed; please log in again")
        fresh = await self._identity(scopes, token, previous=identity)
        return replace(fresh, connector_data=identity.connector_data)
