"""From Dex's records to ours: what an import would write, what it would skip, and why.

The mapping keeps every identifier Dex handed out, because clients and clusters hold them:

* client ids, redirect URIs and secrets (stored as our SHA-256 digest, like any client secret);
* password users unchanged (Dex's bcrypt hashes verify as they are);
* a refresh token becomes one of our refresh *families* with Dex's refresh id as the family id and
  the digest of Dex's token as its current secret, so ``oidc.dex_refresh`` can map a Dex token to
  it; the user id and connector id stay, so ``sub`` (derived from both, Dex's encoding) is the
  same in every token we mint for the session;
* Dex's public keys become verification keys in our ``/keys`` until tokens they signed expire:
  retired ones keep Dex's expiry, the active one lasts until Dex's next rotation plus the
  longest ID-token lifetime of the target config. Dex's private key is never copied.

Connectors live in the config here, not in storage: Dex's stored connectors are reported (with
whether the target config has one of that id) rather than imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from portcullis.config.load import Config
from portcullis.config.model import LOCAL_CONNECTOR_ID
from portcullis.dexmigrate.source import DexRefreshToken, DexState
from portcullis.keys.manager import public_jwk
from portcullis.oidc.clients import hash_client_secret
from portcullis.oidc.refresh import digest
from portcullis.storage.base import NotFoundError, Storage
from portcullis.storage.models import (
    Client,
    Identity,
    ImportBatch,
    ImportResult,
    Password,
    RefreshToken,
    VerificationKey,
)


@dataclass
class ImportPlan:
    """The batch to write plus everything an operator must read before ``--apply``."""

    batch: ImportBatch
    version: str
    already_present: dict[str, int] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> list[str]:
        b = self.batch
        lines = [
            f"source: {self.version}",
            f"clients: {len(b.clients)} ({self.already_present.get('clients', 0)} already present)",
            f"passwords: {len(b.passwords)} "
            f"({self.already_present.get('passwords', 0)} already present)",
            f"refresh tokens (offline sessions): {len(b.refresh_tokens)} "
            f"({self.already_present.get('refresh_tokens', 0)} already present)",
            f"verification keys: {len(b.verification_keys)} "
            f"({self.already_present.get('verification_keys', 0)} already present)",
        ]
        lines += [f"conflict: {c}" for c in self.conflicts]
        lines += [f"skipped: {s}" for s in self.skipped]
        lines += [f"note: {n}" for n in self.notes]
        return lines


def _id_token_horizon(config: Config) -> float:
    """The longest an ID token minted now may live under the target config."""
    lifetimes = [config.raw.expiry.id_tokens]
    lifetimes += [c.id_token_ttl for c in config.clients if c.id_token_ttl]
    return max(lifetimes)


def _family_expiry(
    config: Config, client_lifetime: float | None, created: float, used: float
) -> float:
    policy = config.raw.expiry.refresh_tokens
    limits = []
    absolute = client_lifetime or policy.absolute_lifetime
    if absolute:
        limits.append(created + absolute)
    if policy.valid_if_not_used_for:
        limits.append(used + policy.valid_if_not_used_for)
    return min(limits) if limits else 0.0


def build_plan(state: DexState, config: Config, storage: Storage, now: float) -> ImportPlan:
    """Map state onto our records and compare them with what storage already holds."""
    plan = ImportPlan(batch=ImportBatch(), version=state.version)
    static_ids = {c.id for c in config.clients}
    lifetimes = {c.id: c.refresh_token_lifetime for c in config.clients}

    clients: list[Client] = []
    for c in state.clients:
        if c.public and c.secret:
            plan.notes.append(f"client {c.id!r} is public: its Dex secret is not used")
        record = Client(
            id=c.id,
            secret_hash="" if c.public else hash_client_secret(c.secret),
            redirect_uris=c.redirect_uris,
            trusted_peers=c.trusted_peers,
            public=c.public,
            name=c.name,
            logo_url=c.logo_url,
        )
        if c.id in static_ids:
            plan.conflicts.append(
                f"client {c.id!r} is also a static client of the config; the config's wins "
                "(the stored copy is imported but unused)"
            )
        try:
            existing = storage.get_client(c.id)
        except NotFoundError:
            pass
        else:
            plan.already_present["clients"] = plan.already_present.get("clients", 0) + 1
            if existing != record:
                plan.conflicts.append(f"client {c.id!r} exists with other settings: kept as is")
        clients.append(record)

    passwords: list[Password] = []
    for p in state.passwords:
        record_p = Password(
            email=p.email,
            hash=p.hash,
            username=p.username,
            user_id=p.user_id,
            name=p.name,
            preferred_username=p.preferred_username,
            email_verified=p.email_verified,
            groups=p.groups,
        )
        if any(s.email.lower() == p.email.lower() for s in config.passwords):
            plan.conflicts.append(
                f"password {p.email!r} is also in staticPasswords; the config's wins"
            )
        try:
            existing_p = storage.get_password(p.email)
        except NotFoundError:
            pass
        else:
            plan.already_present["passwords"] = plan.already_present.get("passwords", 0) + 1
            if existing_p != record_p:
                plan.conflicts.append(f"password {p.email!r} exists with other data: kept")
        passwords.append(record_p)
    if state.passwords and not config.raw.enable_password_db:
        plan.notes.append(
            "the target config has enablePasswordDB: false; imported passwords are unused "
            "until it is enabled"
        )

    # Offline sessions carry the newest upstream connector data (Dex writes it there on every
    # refresh); a refresh token without its own takes the session's.
    session_data = {(s.user_id, s.connector_id): s.connector_data for s in state.offline_sessions}
    known_connectors = {c.id for c in config.connectors}
    if config.raw.enable_password_db:
        known_connectors.add(LOCAL_CONNECTOR_ID)
    families: list[RefreshToken] = []
    for t in state.refresh_tokens:
        family = _family(t, config, lifetimes, session_data, now)
        if isinstance(family, str):
            plan.skipped.append(f"refresh token {t.id!r}: {family}")
            continue
        if t.connector_id not in known_connectors:
            plan.conflicts.append(
                f"refresh token {t.id!r} belongs to connector {t.connector_id!r}, which the "
                "config does not define: it will be refused until the connector exists"
            )
        try:
            existing_t = storage.get_refresh_token(t.id)
        except NotFoundError:
            pass
        else:
            plan.already_present["refresh_tokens"] = (
                plan.already_present.get("refresh_tokens", 0) + 1
            )
            if existing_t.token_hash != family.token_hash and not existing_t.obsolete_token_hash:
                # Imported earlier, never used here, and Dex has rotated it since: the client
                # holds Dex's newer token, which the stale import would treat as a replay.
                plan.conflicts.append(
                    f"refresh token {t.id!r} was imported before and Dex has rotated it since; "
                    "the import keeps the older secret (stop Dex's token endpoint, then delete "
                    "the session with the admin API and import again, or let the user log in)"
                )
        families.append(family)

    for connector in state.connectors:
        where = "defined in the config" if connector.id in known_connectors else "NOT in config"
        plan.notes.append(
            f"connector {connector.id!r} ({connector.type}, {connector.name!r}) is stored in Dex; "
            f"Portcullis reads connectors from the config only: {where}"
        )

    present_kids = {k.jwk.get("kid") for k in storage.get_keys().verification_keys}
    keys: list[VerificationKey] = []
    horizon = _id_token_horizon(config)
    for key in state.keys:
        jwk = dict(key.jwk)
        jwk.setdefault("alg", "RS256")
        if "kid" not in jwk or jwk.get("kty") not in ("RSA", "EC"):
            plan.skipped.append("a Dex key without kid or of an unknown type")
            continue
        expiry = max(key.expiry, now) + horizon if key.active else key.expiry
        if expiry <= now:
            plan.skipped.append(f"key {jwk['kid']!r}: expired")
            continue
        if jwk["kid"] in present_kids:
            plan.already_present["verification_keys"] = (
                plan.already_present.get("verification_keys", 0) + 1
            )
        keys.append(VerificationKey(jwk=public_jwk(jwk), expiry=expiry))

    plan.batch = ImportBatch(
        clients=tuple(clients),
        passwords=tuple(passwords),
        refresh_tokens=tuple(families),
        verification_keys=tuple(keys),
    )
    return plan


def _family(
    t: DexRefreshToken,
    config: Config,
    lifetimes: dict[str, float | None],
    session_data: dict[tuple[str, str], bytes],
    now: float,
) -> RefreshToken | str:
    """Our family for a Dex refresh token, or why it is not imported."""
    if not t.token:
        return "no token value (written by a Dex older than 2.x refresh rotation)"
    created = t.created_at or now
    used = t.last_used or created
    expires = _family_expiry(config, lifetimes.get(t.client_id), created, used)
    if expires and expires <= now:
        return "expired under the target config's expiry.refreshTokens"
    connector_data = t.connector_data or session_data.get((t.claims.user_id, t.connector_id), b"")
    return RefreshToken(
        id=t.id,
        token_hash=digest(t.token),
        client_id=t.client_id,
        connector_id=t.connector_id,
        identity=Identity(
            user_id=t.claims.user_id,
            username=t.claims.username,
            preferred_username=t.claims.preferred_username,
            email=t.claims.email,
            email_verified=t.claims.email_verified,
            groups=t.claims.groups,
            connector_data=connector_data,
        ),
        scopes=t.scopes,
        created_at=created,
        last_used=used,
        nonce=t.nonce,
        expires_at=expires,
    )


def apply_plan(plan: ImportPlan, storage: Storage) -> ImportResult:
    """Write the batch in one transaction; records already present are left alone."""
    return storage.import_batch(plan.batch)
