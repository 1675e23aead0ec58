"""The assembly: the one place the issuer's parts are wired together.

From a loaded config it opens storage, opens the connectors, builds the protocol core
(:class:`~portcullis.oidc.provider.Provider`), mounts the adapters (web's public app with kube's
kubeconfig page beside it, kube's TokenReview webhook, admin's gRPC server) and runs the
background loops (signing-key rotation, garbage collection). The adapters never import each
other: what one needs from another (the kubeconfig page rendering through web's templates) is
handed over here.

It also reads the config the way this build does: :func:`load_config` and :func:`parse_config`
hand the config loader the model of every connector type in the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from starlette.applications import Starlette

from portcullis.clock import Clock, SystemClock
from portcullis.config import load as config_load
from portcullis.config.load import Config, ConfigError
from portcullis.config.model import LOCAL_CONNECTOR_ID
from portcullis.connectors.base import Connector, ConnectorEnv
from portcullis.connectors.local import LOCAL_CONNECTOR_TYPE, LocalConfig
from portcullis.connectors.registry import CONNECTOR_MODELS, build_connector
from portcullis.kube.page import (
    cluster_callback_url,
    foreign_clusters,
    foreign_scopes,
    page_routes,
    register_page_client,
)
from portcullis.oidc.provider import Provider
from portcullis.storage.base import Storage, StorageError
from portcullis.storage.factory import open_storage
from portcullis.storage.gc import run_gc_loop
from portcullis.storage.memory import MemoryStorage
from portcullis.storage.models import Password
from portcullis.telemetry import Metrics, telemetry_app
from portcullis.web.app import client_ip_resolver, secure_cookies, web_app
from portcullis.web.hot_paths import StaticAnswers
from portcullis.web.pages import Pages

if TYPE_CHECKING:
    import grpc

    from portcullis.connectors.oidc import OIDCConnector

log = logging.getLogger("portcullis")

KEY_CHECK_INTERVAL = 30.0
KEY_REFRESH_INTERVAL = 5.0
GC_INTERVAL = 300.0


# -- config, as this build reads it ---------------------------------------------------------


def connector_models() -> Mapping[str, type[BaseModel]]:
    """Connector type name -> config model, for the config loader; a connector's module is
    imported only when the config names its type (see ``connectors.registry``)."""
    return CONNECTOR_MODELS


def parse_config(
    text: str,
    source: str = "<config>",
    environ: Mapping[str, str] | None = None,
    *,
    fips_mode: bool = False,
) -> Config:
    """:func:`portcullis.config.load.parse_config` with every connector type this build has."""
    return config_load.parse_config(
        text, source, environ, connector_models=connector_models(), fips_mode=fips_mode
    )


def load_config(
    path: str | os.PathLike[str],
    environ: Mapping[str, str] | None = None,
    *,
    fips_mode: bool = False,
) -> Config:
    """:func:`portcullis.config.load.load_config` with every connector type this build has."""
    return config_load.load_config(
        path, environ, connector_models=connector_models(), fips_mode=fips_mode
    )


# -- the running issuer ---------------------------------------------------------------------


@dataclass
class Issuer:
    """The running issuer: the main app, the telemetry app and what they share."""

    config: Config
    provider: Provider
    app: Starlette
    telemetry: Starlette
    metrics: Metrics
    fips_status: dict[str, Any] = field(default_factory=dict)
    # The TokenReview webhook, served on its own listener (kubernetes.tokenReview.addr).
    webhook: Starlette | None = None
    fips_mode: bool = False

    @property
    def static_answers(self) -> StaticAnswers | None:
        """The main app's precomputed discovery and JWKS answers, for the HTTP protocol
        (web.connection) to answer exact-match GETs before an ASGI request cycle exists."""
        found = getattr(self.app.state, "static_answers", None)
        return found if isinstance(found, StaticAnswers) else None

    def readiness(self) -> dict[str, Any]:
        checks: dict[str, Any] = {}
        try:
            self.provider.storage.ping()
            checks["storage"] = "ok"
        except StorageError as exc:
            checks["storage"] = f"unavailable: {type(exc).__name__}"
        try:
            checks["signing_key"] = self.provider.keys.cached().signing_kid and "ok"
        except Exception as exc:
            checks["signing_key"] = f"missing: {type(exc).__name__}"
        ready = all(v == "ok" for v in checks.values())
        report: dict[str, Any] = {"ready": ready, "checks": checks}
        if self.fips_status:
            report["fips"] = self.fips_status
        return report

    def start_admin_server(self) -> grpc.Server | None:
        """Start the gRPC admin API on grpc.addr (None when not configured); raises
        portcullis.admin.server.AdminListenError when it cannot listen."""
        if not self.config.raw.grpc.addr:
            return None
        # Imported here so a process without grpc.addr never loads grpcio.
        from portcullis.admin.server import start_admin_server

        return start_admin_server(self.config.raw.grpc, self.provider, fips_mode=self.fips_mode)

    def close(self) -> None:
        self.provider.storage.close()


def connector_env(config: Config, storage: Storage, clock: Clock, fips_mode: bool) -> ConnectorEnv:
    return ConnectorEnv(
        storage=storage,
        clock=clock,
        issuer=config.issuer,
        fips_mode=fips_mode,
        trusted_proxies=tuple(config.raw.web.client_remote_ip.trusted_proxies),
    )


def page_relying_parties(config: Config, env: ConnectorEnv) -> dict[str, OIDCConnector]:
    """The kubeconfig page's logins at the issuers of clusters that trust another issuer: the
    upstream ``oidc`` connector (one verification path for upstream ID tokens), with the
    cluster's issuer, client, secret and CA, PKCE always (S256), the cluster's scopes, and the
    page's per-cluster callback as its redirect URI. No network I/O here. A cluster's values
    that the connector refuses are a ConfigError naming the cluster's keys."""
    parties: dict[str, OIDCConnector] = {}
    problems: list[str] = []
    foreign = {c.name for c in foreign_clusters(config)}
    if not foreign:
        return parties
    # Imported here: the OIDC client stack (httpx, the oidc connector) costs every worker start-up
    # time and memory, and a config without foreign clusters or oidc connectors never uses it.
    from portcullis.connectors.oidc import OIDCConfig, OIDCConnector

    for index, cluster in enumerate(config.raw.kubernetes.kubeconfig_page.clusters):
        if cluster.name not in foreign:
            continue
        ca = cluster.issuer_certificate_authority_data
        try:
            spec = OIDCConfig.model_validate(
                {
                    "issuer": cluster.issuer,
                    "clientID": cluster.client_id,
                    "clientSecret": cluster.client_secret,
                    "redirectURI": cluster_callback_url(config, cluster.name),
                    "rootCAs": [ca] if ca else [],
                    "scopes": list(foreign_scopes(cluster)),
                    "pkceChallenge": "S256",
                }
            )
            parties[cluster.name] = OIDCConnector(
                f"kubeconfig/{cluster.name}", cluster.name, "oidc", spec, env
            )
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            problems.append(f"kubernetes.kubeconfigPage.clusters[{index}]: {exc}")
    if problems:
        raise ConfigError(problems)
    return parties


def build_connectors(config: Config, env: ConnectorEnv) -> dict[str, Connector]:
    """Open every configured connector, and the password database when enabled.

    Opening does no network I/O (connectors reach upstream at the first login), so this is
    also how ``check-config`` proves the connectors open. What a connector refuses only when
    opened (an unreadable CA file, a FIPS refusal) is a ValueError naming its key; it becomes
    a ConfigError at ``connectors[i].config``, reported like any other config mistake."""
    connectors: dict[str, Connector] = {}
    problems: list[str] = []
    for index, spec in enumerate(config.connectors):
        assert spec.config is not None
        try:
            connector = build_connector(spec.id, spec.name, spec.type, spec.config, env)
        except ValueError as exc:
            problems.append(f"connectors[{index}].config: {exc} (connector {spec.id!r})")
            continue
        connectors[spec.id] = connector
    if config.raw.enable_password_db:
        static = tuple(
            Password(
                email=p.email,
                hash=p.hash,
                username=p.username,
                user_id=p.user_id,
                name=p.name,
                preferred_username=p.preferred_username,
                email_verified=p.email_verified,
                groups=p.groups,
            )
            for p in config.passwords
        )
        connectors[LOCAL_CONNECTOR_ID] = LOCAL_CONNECTOR_TYPE.open(
            LOCAL_CONNECTOR_ID, "Email", "local", LocalConfig(static_passwords=static), env
        )
    if problems:
        raise ConfigError(problems)
    return connectors


def check_connectors(config: Config, *, fips_mode: bool) -> None:
    """Open every connector against throwaway memory storage, as ``serve`` would (no network:
    opening does none); raises ConfigError listing each one that cannot be opened.

    The development-only warning is logged here, once per process that checks (``serve``
    before it forks, ``check-config``), not by every worker that opens the connectors."""
    env = connector_env(config, MemoryStorage(), SystemClock(), fips_mode)
    for connector_id, connector in build_connectors(config, env).items():
        if connector.dev_only:
            log.warning(
                "connector %r (%s) is for development only: anyone can log in through it",
                connector_id,
                connector.type,
            )
    page_relying_parties(config, env)


def create_issuer(
    config: Config,
    *,
    storage: Storage | None = None,
    clock: Clock | None = None,
    fips_mode: bool = False,
    fips_status: dict[str, Any] | None = None,
    metrics_dir: str | None = None,
) -> Issuer:
    """Assemble the issuer. Raises StorageError when storage cannot be opened and
    kube.callers.CallerCheckError when the TokenReview webhook cannot read its Kubernetes
    API access. ``metrics_dir``: the directory every worker of one server shares its metric
    values through (several workers only)."""
    clock = clock or SystemClock()
    config = register_page_client(config)
    storage = storage or open_storage(config)
    env = connector_env(config, storage, clock, fips_mode)
    provider = Provider(config, storage, build_connectors(config, env), clock, fips_mode=fips_mode)
    provider.start()

    pages = Pages(config.raw.frontend, config.issuer_path)
    ip_resolver = client_ip_resolver(config)
    kube_pages = page_routes(
        config,
        provider,
        pages,
        ip_resolver.resolve,
        secure_cookies=secure_cookies(config),
        relying_parties=page_relying_parties(config, env),
    )
    metrics = Metrics(metrics_dir)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(_key_loop(provider, stop)),
            asyncio.create_task(run_gc_loop(storage, clock, GC_INTERVAL, stop, log)),
        ]
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)

    app = web_app(
        config,
        provider,
        pages=pages,
        ip_resolver=ip_resolver,
        metrics=metrics,
        readiness=lambda: issuer.readiness(),
        extra_routes=kube_pages,
        lifespan=lifespan,
    )
    review = config.raw.kubernetes.token_review
    webhook = None
    if review.enabled:
        # Imported here: a server without the TokenReview webhook never loads it.
        from portcullis.kube.webhook import webhook_app

        webhook = webhook_app(review, provider.reader.verified_claims, metrics)
    issuer = Issuer(
        config=config,
        provider=provider,
        app=app,
        telemetry=telemetry_app(metrics, lambda: issuer.readiness()),
        metrics=metrics,
        fips_status=fips_status or {},
        webhook=webhook,
        fips_mode=fips_mode,
    )
    return issuer


async def _key_loop(provider: Provider, stop: asyncio.Event) -> None:
    """Every worker checks the schedule; the storage transaction makes one of them win. In
    between, the cached key set is refreshed so another replica's rotation shows up in /keys
    within KEY_REFRESH_INTERVAL, without /keys ever waiting on storage."""
    since_check = 0.0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=KEY_REFRESH_INTERVAL)
        if stop.is_set():
            return
        since_check += KEY_REFRESH_INTERVAL
        try:
            if since_check >= KEY_CHECK_INTERVAL:
                since_check = 0.0
                if await asyncio.to_thread(provider.keys.rotate_if_due):
                    log.info("rotated the signing key")
            await asyncio.to_thread(provider.keys.current)
        except StorageError as exc:
            # The database being away is an operational condition with its own clear message
            # (and readiness turns false); a traceback every few seconds would bury it.
            log.warning("signing-key maintenance: storage unavailable, will retry: %s", exc)
        except Exception:
            log.exception("signing-key maintenance failed; will retry")
