"""The ``openshift`` connector: log in through an OpenShift cluster's built-in OAuth server.

Dex-compatible (``connector/openshift/openshift.go``), with Dex's keys: ``issuer`` (the
cluster's API server URL), ``clientID``/``clientSecret`` (an ``OAuthClient`` object),
``redirectURI``, ``groups`` (only members of one of these may log in), and the TLS settings
``insecureCA`` (no verification) and ``rootCA`` (a PEM file). The conversation:

* ``GET {issuer}/.well-known/oauth-authorization-server`` (RFC 8414 metadata the API server
  serves) names the authorization and token endpoints of the OAuth server;
* the authorization code flow with scope ``user:info`` (all the connector needs: reading the
  user's own ``User`` object);
* ``GET {issuer}/apis/user.openshift.io/v1/users/~`` with the access token: the user's
  ``metadata.uid`` (user ID), ``metadata.name`` (username and preferred username) and
  ``groups`` (the groups claim, as in Dex).

Where Portcullis differs from Dex, on purpose:

* Opening the connector does no network I/O: Dex fetches the metadata when it starts (and
  refuses to start while the cluster is down); here it is fetched at the first login, and a
  failure is a clear login error. The result is kept for the process's lifetime.
* Refresh re-reads the user with the stored access token (OpenShift issues no refresh tokens;
  access tokens live 24 hours by default): a user removed from every allowed group, deleted, or
  whose token expired or was revoked loses the session. Connector data uses the
  ``accessToken``/``expiry`` form of Portcullis's other REST connectors; sessions imported from
  Dex (which stores an ``oauth2.Token``) log in again.
* ``insecureCA`` is refused in FIPS mode and logged as a warning otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

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
    check_root_cas,
    filter_allowed,
    http_url,
    raise_for_api_status,
)
from portcullis.connectors.oauth2_user_api import UserAPIConnector
from portcullis.storage.models import Identity

__all__ = ["CONNECTOR_TYPE", "OpenShiftConfig", "OpenShiftConnector", "open_openshift"]

log = logging.getLogger(__name__)

#: The one scope the connector needs: read the user's own User object (users/~).
SCOPES = ("user:info",)


class OpenShiftConfig(BaseModel):
    """Dex's ``openshift`` connector config (connector/openshift/openshift.go key names)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    issuer: str = Field(min_length=1)
    client_id: str = Field(alias="clientID", min_length=1)
    client_secret: SecretStr = Field(alias="clientSecret")
    redirect_uri: str = Field(alias="redirectURI")
    groups: tuple[str, ...] = ()
    insecure_ca: bool = Field(False, alias="insecureCA")
    root_ca: str = Field("", alias="rootCA")

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        return http_url(value, "issuer").rstrip("/")

    @field_validator("redirect_uri")
    @classmethod
    def _redirect(cls, value: str) -> str:
        return http_url(value, "redirectURI")

    @field_validator("root_ca")
    @classmethod
    def _root_ca(cls, value: str) -> str:
        if value:
            if not Path(value).is_file():
                raise ValueError(f"no such file: {value}")
            try:
                check_root_cas([value])
            except ValueError:
                raise ValueError(f"{value} holds no usable PEM certificate") from None
        return value

    @field_validator("groups")
    @classmethod
    def _groups(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not name for name in value):
            raise ValueError("group names must not be empty")
        return value

    @model_validator(mode="after")
    def _tls(self) -> OpenShiftConfig:
        if self.insecure_ca and self.root_ca:
            raise ValueError("set insecureCA or rootCA, not both (insecureCA ignores rootCA)")
        return self


class OpenShiftConnector(UserAPIConnector):
    """Logs users in with an OpenShift cluster's OAuth server; the User object's groups."""

    provider = "OpenShift"

    def __init__(
        self,
        connector_id: str,
        name: str,
        connector_type: str,
        config: OpenShiftConfig,
        env: ConnectorEnv,
    ) -> None:
        super().__init__(connector_id, name, connector_type)
        if config.insecure_ca:
            if env.fips_mode:
                raise ValueError("insecureCA: refused in FIPS mode")
            log.warning(
                "connector %s: insecureCA is set, TLS certificates of %s are NOT verified; "
                "anyone on the network path can impersonate the cluster",
                connector_id,
                config.issuer,
            )
        self._config = config
        self._clock: Clock = env.clock
        self._http = UpstreamHTTP(
            root_cas=[config.root_ca] if config.root_ca else [],
            insecure_skip_verify=config.insecure_ca,
        )
        self._credentials = ClientCredentials(
            config.client_id, config.client_secret.get_secret_value(), None
        )
        self._flights = RefreshFlights(env.clock)
        self._redirect_uri = config.redirect_uri
        self._authorize_url = ""
        self._token_url = ""

    async def _discover(self) -> None:
        """The OAuth server's endpoints, fetched once (at the first login, not at start)."""
        if self._token_url:
            return
        url = f"{self._config.issuer}/.well-known/oauth-authorization-server"
        response = await self._http.fetch(url, what="OAuth server metadata")
        raise_for_api_status(response, "OAuth server metadata", self._clock.now())
        metadata = response.body if isinstance(response.body, dict) else {}
        endpoints: list[str] = []
        for key in ("authorization_endpoint", "token_endpoint"):
            value = metadata.get(key)
            try:
                endpoints.append(http_url(value if isinstance(value, str) else "", key))
            except ValueError:
                log.warning("openshift metadata at %s has no usable %s", url, key)
                raise ConnectorError(
                    f"OpenShift's OAuth server metadata has no usable {key}"
                ) from None
        self._authorize_url, self._token_url = endpoints

    async def login_url(self, scopes: Scopes, callback_url: str, state: str) -> LoginRedirect:
        self._check_callback(callback_url)  # before any network call
        await self._discover()
        return self._login_redirect(callback_url, self._authorize_url, SCOPES, state)

    async def handle_callback(
        self, scopes: Scopes, params: Mapping[str, str], connector_state: bytes
    ) -> Identity:
        await self._discover()  # another worker may have sent the user to OpenShift
        return await super().handle_callback(scopes, params, connector_state)

    async def refresh(self, scopes: Scopes, identity: Identity) -> Identity:
        await self._discover()
        return await super().refresh(scopes, identity)

    async def _identity(self, scopes: Scopes, token: str, previous: Identity | None) -> Identity:
        response = await self._http.fetch(
            f"{self._config.issuer}/apis/user.openshift.io/v1/users/~",
            what="user",
            headers={"Authorization": f"Bearer {token}"},
        )
        raise_for_api_status(response, "user", self._clock.now())
        user = response.body if isinstance(response.body, dict) else {}
        metadata = user.get("metadata")
        uid = metadata.get("uid") if isinstance(metadata, dict) else None
        name = metadata.get("name") if isinstance(metadata, dict) else None
        if user.get("kind") != "User" or not isinstance(uid, str) or not isinstance(name, str):
            raise ConnectorError("OpenShift's user response is not a User with uid and name")
        if not uid or not name:
            raise ConnectorError("OpenShift's user response has an empty uid or name")
        if previous is not None and uid != previous.user_id:
            raise ConnectorError("OpenShift refreshed a different user; please log in again")
        raw_groups = user.get("groups") or []
        if not isinstance(raw_groups, list) or not all(isinstance(g, str) for g in raw_groups):
            raise ConnectorError("OpenShift's user response has a malformed groups list")
        groups = tuple(dict.fromkeys(raw_groups))
        if self._config.groups and not filter_allowed(groups, self._config.groups):
            log.info("openshift: user %s is in none of the configured groups", name)
            raise ConnectorError("you are not a member of the OpenShift groups allowed here")
        return Identity(
            user_id=uid,
            username=name,
            preferred_username=name,
            groups=groups,
        )


def open_openshift(
    connector_id: str, name: str, connector_type: str, config: BaseModel, env: ConnectorEnv
) -> Connector:
    """Build the connector (no network until the first login)."""
    if not isinstance(config, OpenShiftConfig):
        raise TypeError(f"expected OpenShiftConfig, got {type(config).__name__}")
    return OpenShiftConnector(connector_id, name, connector_type, config, env)


CONNECTOR_TYPE = ConnectorType(OpenShiftConfig, open_openshift)
