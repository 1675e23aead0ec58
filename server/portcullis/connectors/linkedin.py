"""LinkedIn upstream (Dex's ``linkedin`` connector type).

Dex's keys and behaviour (connector/linkedin/linkedin.go): ``clientID``, ``clientSecret``,
``redirectURI``; OAuth 2.0 at ``https://www.linkedin.com/oauth/v2/authorization`` and
``.../accessToken`` with the scopes ``r_liteprofile`` and ``r_emailaddress``. The user is the v2
lite profile ``GET https://api.linkedin.com/v2/me`` (user id = ``id``, name =
``localizedFirstName localizedLastName``, the email when both are empty) and the email is read
from ``GET /v2/emailAddress?q=members&projection=(elements*(handle~))`` (the
``handle~.emailAddress`` of the element; LinkedIn only returns the member's primary, verified
address there). LinkedIn has no groups: the identity never carries any, and a client asking for
``groups`` gets none. Nothing is paginated either: both reads answer one member.

Refresh as Dex does it: ``offline_access`` sessions keep LinkedIn's access token (60 days) and a
refresh re-reads the profile and email with it, so a member who revoked the app (LinkedIn then
answers 401) loses the session at the next refresh. Beyond Dex: apps that LinkedIn enabled for
programmatic refresh tokens get one with the code; it is kept, with the access token's expiry
(Dex's ``accessToken`` key plus ``refreshToken``/``expiry``), and an expired access token is
renewed through the shared single-flight before the profile is read. The refreshed profile must
still have the same member id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from portcullis.clock import Clock
from portcullis.connectors.base import (
    Connector,
    ConnectorEnv,
    ConnectorError,
    ConnectorType,
    LoginRedirect,
    Scopes,
)
from portcullis.connectors.oauth2_common import (
    ClientCredentials,
    RefreshFlights,
    UpstreamHTTP,
    http_url,
    raise_for_api_status,
)
from portcullis.connectors.oauth2_user_api import UserAPIConnector
from portcullis.storage.models import Identity

__all__ = [
    "CONNECTOR_TYPE",
    "LinkedInConfig",
    "LinkedInConnector",
    "LinkedInEndpoints",
    "open_linkedin",
]

log = logging.getLogger(__name__)

_STRICT = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

SCOPES = ["r_liteprofile", "r_emailaddress"]
#: The primary-contact projection Dex asks for (the email address behind each handle).
EMAIL_QUERY = "q=members&projection=(elements*(handle~))"


class LinkedInConfig(BaseModel):
    """Dex's ``linkedin`` connector config (connector/linkedin key names)."""

    model_config = _STRICT

    client_id: str = Field(alias="clientID", min_length=1)
    client_secret: SecretStr = Field(alias="clientSecret")
    redirect_uri: str = Field(alias="redirectURI")

    @field_validator("redirect_uri")
    @classmethod
    def _redirect(cls, value: str) -> str:
        return http_url(value, "redirectURI")


@dataclass(frozen=True)
class LinkedInEndpoints:
    """LinkedIn's web (OAuth) and v2 API bases; fixed in production (Dex has no key for
    them), given by tests."""

    web: str = "https://www.linkedin.com"
    api: str = "https://api.linkedin.com/v2"


class LinkedInConnector(UserAPIConnector):
    """Logs members in with LinkedIn (Sign In with LinkedIn, v2 lite profile)."""

    provider = "LinkedIn"

    def __init__(
        self,
        connector_id: str,
        name: str,
        connector_type: str,
        config: LinkedInConfig,
        env: ConnectorEnv,
        endpoints: LinkedInEndpoints | None = None,
    ) -> None:
        super().__init__(connector_id, name, connector_type)
        self._config = config
        self._clock: Clock = env.clock
        self._endpoints = endpoints or LinkedInEndpoints()
        self._token_url = f"{self._endpoints.web}/oauth/v2/accessToken"
        self._http = UpstreamHTTP()
        # LinkedIn documents client_id and client_secret as form parameters of the token call.
        self._credentials = ClientCredentials(
            config.client_id, config.client_secret.get_secret_value(), True
        )
        self._flights = RefreshFlights(env.clock)
        self._redirect_uri = config.redirect_uri

    async def login_url(self, scopes: Scopes, callback_url: str, state: str) -> LoginRedirect:
        return self._login_redirect(
            callback_url, f"{self._endpoints.web}/oauth/v2/authorization", SCOPES, state
        )

    # -- LinkedIn API v2 ---------------------------------------------------------------------

    async def _identity(self, scopes: Scopes, token: str, previous: Identity | None) -> Identity:
        profile = await self._get(f"{self._endpoints.api}/me", token, "profile")
        member_id = profile.get("id")
        if not isinstance(member_id, str) or not member_id:
            raise ConnectorError("LinkedIn's profile response has no member id")
        if previous is not None and member_id != previous.user_id:
            raise ConnectorError("LinkedIn refreshed a different member; please log in again")
        email = await self._email(token)
        first, last = profile.get("localizedFirstName"), profile.get("localizedLastName")
        full = " ".join(p for p in (first, last) if isinstance(p, str)).strip()
        return Identity(
            user_id=member_id,
            username=full or email,
            email=email,
            email_verified=True,
            groups=(),  # LinkedIn has no groups
            connector_data=b"",
        )

    async def _email(self, token: str) -> str:
        body = await self._get(
            f"{self._endpoints.api}/emailAddress?{EMAIL_QUERY}", token, "email address"
        )
        elements = body.get("elements")
        email = ""
        if isinstance(elements, list):
            # As Dex: the last element with an address wins (LinkedIn returns one, the primary).
            for element in elements:
                handle = element.get("handle~") if isinstance(element, dict) else None
                address = handle.get("emailAddress") if isinstance(handle, dict) else None
                if isinstance(address, str) and address:
                    email = address
        if not email:
            raise ConnectorError("LinkedIn returned no email address for your account")
        return email

    async def _get(self, url: str, token: str, what: str) -> dict[str, Any]:
        response = await self._http.fetch(
            url, what=what, headers={"Authorization": f"Bearer {token}"}
        )
        if response.status != 200:
            raise_for_api_status(response, what, self._clock.now())
            raise ConnectorError(f"LinkedIn answered the {what} request with {response.status}")
        if not isinstance(response.body, dict):
            raise ConnectorError(f"LinkedIn's {what} response is not a JSON object")
        return response.body


def open_linkedin(
    connector_id: str, name: str, connector_type: str, config: BaseModel, env: ConnectorEnv
) -> Connector:
    """Build the connector (no network until the first login)."""
    assert isinstance(config, LinkedInConfig)
    return LinkedInConnector(connector_id, name, connector_type, config, env)


CONNECTOR_TYPE = ConnectorType(LinkedInConfig, open_linkedin)
