"""The OpenID provider: one object wiring settings, storage, keys, clients and connectors into the
protocol pieces. Built once at start-up.

Public attributes the adapters use: ``authorization`` (the login state machine), ``tokens`` (the
token endpoint and its grant table), ``reader`` (introspection, revocation, userinfo, JWT
verification), ``refresh`` (refresh-token families), ``token_issuer`` (the token response every
user grant shares), ``password_login`` (the throttled password check), ``throttle``,
``settings``, ``storage``, ``connectors``, ``keys``, ``clients``, ``minter``, ``device``
(the device flow's verification side), ``logout`` (RP-initiated logout), ``registration``
(RFC 7591 dynamic client registration, when enabled), ``metadata_documents`` (URL client ids).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from portcullis.clock import Clock
from portcullis.config.load import Config
from portcullis.connectors.base import Connector
from portcullis.keys.manager import KeyManager
from portcullis.oidc.authorize import AuthorizationFlow, PasswordLogin
from portcullis.oidc.client_metadata import MetadataDocumentClients, MetadataDocumentPolicy
from portcullis.oidc.clients import ClientRegistry, hash_client_secret
from portcullis.oidc.device import DeviceFlow
from portcullis.oidc.discovery import discovery_document, render
from portcullis.oidc.grants import (
    AuthorizationCodeGrant,
    ClientCredentialsGrant,
    DeviceCodeGrant,
    PasswordGrant,
    RefreshTokenGrant,
    TokenEndpoint,
    TokenExchangeGrant,
)
from portcullis.oidc.introspection import TokenReader
from portcullis.oidc.issue import TokenIssuer
from portcullis.oidc.logout import RPLogout
from portcullis.oidc.refresh import RefreshStore
from portcullis.oidc.registration import ClientRegistration, RegistrationPolicy
from portcullis.oidc.settings import ProtocolSettings
from portcullis.oidc.throttle import LoginThrottle, ThrottlePolicy
from portcullis.oidc.tokens import TokenMinter
from portcullis.storage.base import Storage
from portcullis.storage.models import Client


def static_clients(config: Config) -> list[Client]:
    return [
        Client(
            id=spec.id,
            secret_hash=hash_client_secret(spec.secret) if spec.secret else "",
            redirect_uris=spec.redirect_uris,
            trusted_peers=spec.trusted_peers,
            public=spec.public,
            name=spec.name,
            logo_url=spec.logo_url,
            grant_types=spec.grant_types,
            response_types=spec.response_types,
            allowed_connectors=spec.allowed_connectors,
            id_token_ttl=spec.id_token_ttl,
            refresh_token_absolute_lifetime=spec.refresh_token_lifetime,
            post_logout_redirect_uris=spec.post_logout_redirect_uris,
            allowed_resources=spec.allowed_resources,
        )
        for spec in config.clients
    ]


class Provider:
    def __init__(
        self,
        config: Config,
        storage: Storage,
        connectors: Mapping[str, Connector],
        clock: Clock,
        *,
        fips_mode: bool = False,
    ) -> None:
        self.config = config
        self.storage = storage
        self.clock = clock
        self.connectors = dict(connectors)
        self.settings = ProtocolSettings.from_config(config, fips_mode=fips_mode)
        self.registration_policy = RegistrationPolicy.from_config(config)
        self.registration = ClientRegistration(
            self.registration_policy, f"{self.settings.issuer}/register", storage, clock
        )
        documents = config.raw.registration.client_id_metadata_documents
        self.metadata_documents = MetadataDocumentClients(
            MetadataDocumentPolicy(
                enabled=documents.enabled,
                timeout=documents.timeout,
                max_bytes=documents.max_bytes,
                max_cache_age=documents.max_cache_age,
                test_loopback_ca=documents.test_only_loopback_ca,
            ),
            self.registration.client_from_document,
            clock,
        )
        self.clients = ClientRegistry(
            storage,
            static_clients(config),
            clock=clock,
            registered_ttl=self.registration_policy.unused_expiry,
            documents=self.metadata_documents.get if documents.enabled else None,
        )
        signer = config.raw.signer.config
        self.keys = KeyManager(
            storage,
            clock,
            algorithm=signer.algorithm,
            rotation_period=config.raw.expiry.signing_keys or signer.keys_rotation_period,
            max_token_lifetime=self.settings.max_token_lifetime(self.clients.all()),
        )
        self.minter = TokenMinter(self.settings.token_issuer, self.keys)
        self.throttle = LoginThrottle(
            storage,
            clock,
            ThrottlePolicy(
                per_user=self.settings.throttle_per_user,
                per_ip=self.settings.throttle_per_ip,
                window=self.settings.throttle_window,
                user_delay=self.settings.throttle_user_delay,
                max_user_delay=self.settings.throttle_max_user_delay,
            ),
        )
        self.password_login = PasswordLogin(self.throttle)
        self.refresh = RefreshStore(self.settings, storage, self.clients, clock)
        self.token_issuer = TokenIssuer(self.settings, self.minter, self.refresh, clock)
        self.authorization = AuthorizationFlow(
            self.settings,
            storage,
            self.clients,
            self.minter,
            clock,
            self.connectors,
            self.password_login,
        )
        self.device = DeviceFlow(self.settings, storage, self.clients, clock)
        self.tokens = TokenEndpoint(
            self.settings,
            self.clients,
            [
                AuthorizationCodeGrant(storage, self.refresh, self.token_issuer, clock),
                RefreshTokenGrant(self.refresh, self.token_issuer, self.connectors),
                PasswordGrant(
                    self.settings.password_connector,
                    self.connectors,
                    self.clients,
                    self.password_login,
                    self.token_issuer,
                    clock,
                ),
                ClientCredentialsGrant(self.settings, self.clients, self.minter, clock),
                DeviceCodeGrant(self.device, self.token_issuer),
                TokenExchangeGrant(
                    self.settings, self.clients, self.connectors, self.minter, clock
                ),
            ],
        )
        self.logout = RPLogout(self.settings.issuer, storage, self.clients, self.keys, self.refresh)
        self.reader = TokenReader(
            self.settings.token_issuer,
            storage,
            self.minter,
            clock,
            self.refresh,
            introspectors=self.settings.introspectors,
        )
        self._discovery: bytes | None = None
        self.discovery_etag = ""

    def start(self) -> None:
        """Make sure a signing key exists (first start, or overdue rotation)."""
        # A rotation loads the new key set itself; parsing an RSA private key (cryptography's
        # consistency check) costs tens of ms, so the key set is not loaded a second time.
        if not self.keys.rotate_if_due(adopt_algorithm=True):
            self.keys.reload()
        algorithms = sorted(
            {self.config.raw.signer.config.algorithm, self.keys.current().algorithm}
        )
        self._discovery = render(
            discovery_document(
                self.settings,
                algorithms,
                registration_endpoint=(
                    self.registration.endpoint if self.registration.enabled else ""
                ),
                metadata_documents=self.metadata_documents.policy.enabled,
            )
        )
        self.discovery_etag = '"' + hashlib.sha256(self._discovery).hexdigest()[:32] + '"'

    @property
    def discovery(self) -> bytes:
        assert self._discovery is not None, "Provider.start() was not called"
        return self._discovery
