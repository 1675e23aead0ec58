"""Reading Dex's state: its SQL schema (sqlite3, postgres) or a dump of its Kubernetes resources.

What Dex's SQL storage looks like at each level is fixed by ``storage/sql/migrate.go``: a
``migrations`` table holds one row per migration applied *for that database's flavor* (Dex
skips, and does not count, the MySQL-only steps on sqlite3 and postgres). The levels Dex 2.30 to
2.45 can leave on sqlite3 and postgres are listed in ``DEX_LEVELS``; every other level is refused
with the level found, because a newer Dex may have moved data into tables this reader does not
know (2.46 keys sessions by their own id, for example) and an import that silently drops them
would log people out.

Everything is read with ``SELECT *`` and picked by column name, so the columns a level lacks
(``obsolete_token`` before level 9, the password profile columns before 12/13) take Dex's own
defaults. Reading never writes to the Dex database: SQLite is opened read-only and PostgreSQL in
a read-only transaction.
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

#: migrations-table count (per flavor, sqlite3 and postgres alike) -> the Dex releases that
#: leave it. Derived from storage/sql/migrate.go at each tag.
DEX_LEVELS: dict[int, str] = {
    9: "Dex v2.30-v2.32",
    10: "Dex v2.33-v2.34",
    11: "Dex v2.35-v2.44",
    12: "Dex v2.45 (its last migration did not run)",
    13: "Dex v2.45",
}

#: The group of Dex's custom resources (storage/kubernetes).
DEX_API_GROUP = "dex.coreos.com"


class DexSourceError(Exception):
    """The source cannot be read or is not a Dex state this version understands."""


@dataclass(frozen=True)
class DexClaims:
    user_id: str
    username: str
    preferred_username: str
    email: str
    email_verified: bool
    groups: tuple[str, ...]


@dataclass(frozen=True)
class DexClient:
    id: str
    secret: str = field(repr=False)
    redirect_uris: tuple[str, ...]
    trusted_peers: tuple[str, ...]
    public: bool
    name: str
    logo_url: str


@dataclass(frozen=True)
class DexPassword:
    email: str
    hash: str = field(repr=False)
    username: str
    user_id: str
    name: str
    preferred_username: str
    email_verified: bool
    groups: tuple[str, ...]


@dataclass(frozen=True)
class DexRefreshToken:
    id: str
    token: str = field(repr=False)
    client_id: str
    connector_id: str
    scopes: tuple[str, ...]
    nonce: str
    claims: DexClaims
    connector_data: bytes
    created_at: float  # 0: unknown (rows written before Dex tracked it)
    last_used: float


@dataclass(frozen=True)
class DexOfflineSession:
    user_id: str
    connector_id: str
    refresh_ids: tuple[str, ...]
    connector_data: bytes


@dataclass(frozen=True)
class DexConnector:
    id: str
    type: str
    name: str


@dataclass(frozen=True)
class DexKey:
    """A public key as a JWK, and until when tokens it signed may still be presented."""

    jwk: dict[str, Any]
    expiry: float  # for the active key: the time Dex stops signing with it (next rotation)
    active: bool


@dataclass(frozen=True)
class DexState:
    source: str
    version: str  # which Dex releases leave this state
    clients: tuple[DexClient, ...] = ()
    passwords: tuple[DexPassword, ...] = ()
    refresh_tokens: tuple[DexRefreshToken, ...] = ()
    offline_sessions: tuple[DexOfflineSession, ...] = ()
    connectors: tuple[DexConnector, ...] = ()
    keys: tuple[DexKey, ...] = ()


# -- value decoding ---------------------------------------------------------------------------

_GO_TIME = re.compile(
    r"^(\d{4}-\d\d-\d\d)[ T](\d\d:\d\d:\d\d)(?:\.(\d+))?\s*(Z|UTC|[+-]\d\d:?\d\d)?(?:\s+\S+)?$"
)


def parse_time(value: object) -> float:
    """A Dex timestamp as Unix seconds; 0 for Go's zero time (``0001-01-01``), which Dex uses
    as the default of columns added later. Accepts a datetime (postgres), Go's SQLite text form
    (``2006-01-02 15:04:05.999999999-07:00``) and RFC 3339 (JSON, Kubernetes)."""
    if value is None:
        return 0.0
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    else:
        text = value.decode() if isinstance(value, bytes) else str(value)
        match = _GO_TIME.match(text.strip())
        if match is None:
            raise DexSourceError(f"unreadable timestamp {text!r}")
        day, clock, fraction, zone = match.groups()
        micros = (fraction or "0")[:6].ljust(6, "0")
        offset = "+00:00" if zone in (None, "Z", "UTC") else zone
        if len(offset) == 5:
            offset = offset[:3] + ":" + offset[3:]
        if day.startswith("0001-"):
            return 0.0
        moment = datetime.fromisoformat(f"{day}T{clock}.{micros}{offset}")
    if moment.year <= 1:
        return 0.0
    return moment.timestamp()


def _bytes(value: object) -> bytes:
    if value is None:
        return b""
    if isinstance(value, memoryview):
        return value.tobytes()
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def _json(value: object, default: Any) -> Any:
    raw = _bytes(value)
    if not raw.strip():
        return default
    try:
        decoded = json.loads(raw)
    except ValueError as exc:
        raise DexSourceError(f"unreadable JSON column: {exc}") from None
    return default if decoded is None else decoded


def _strings(value: object) -> tuple[str, ...]:
    decoded = value if isinstance(value, list) else _json(value, [])
    if not isinstance(decoded, list):
        raise DexSourceError("expected a JSON array of strings")
    return tuple(str(item) for item in decoded)


def _k8s_bytes(value: object) -> bytes:
    """Go's encoding/json writes []byte as standard base64."""
    if not value:
        return b""
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError:
        raise DexSourceError("a []byte field is not base64") from None


def _keys_from(
    signing_pub: Mapping[str, Any] | None,
    verification: list[Mapping[str, Any]],
    next_rotation: float,
) -> tuple[DexKey, ...]:
    keys: list[DexKey] = []
    if signing_pub:
        keys.append(DexKey(jwk=dict(signing_pub), expiry=next_rotation, active=True))
    for entry in verification:
        public = entry.get("publicKey")
        if isinstance(public, Mapping):
            keys.append(
                DexKey(jwk=dict(public), expiry=parse_time(entry.get("expiry")), active=False)
            )
    return tuple(keys)


# -- SQL --------------------------------------------------------------------------------------


#: The Dex tables read, each with its fixed query (no identifier is ever built from input).
_QUERIES = {
    name: f"SELECT * FROM {name}"  # noqa: S608 - constant table names
    for name in ("client", "password", "refresh_token", "offline_session", "connector", "keys")
}


def _rows(cursor: Any, table: str) -> list[dict[str, Any]]:
    cursor.execute(_QUERIES[table])
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _claims(row: Mapping[str, Any]) -> DexClaims:
    return DexClaims(
        user_id=row["claims_user_id"],
        username=row["claims_username"],
        preferred_username=row.get("claims_preferred_username") or "",
        email=row["claims_email"],
        email_verified=bool(row["claims_email_verified"]),
        groups=_strings(row["claims_groups"]),
    )


def read_sql(cursor: Any, source: str, driver_error: type[Exception]) -> DexState:
    """Dex's state from a DB-API cursor on its database (sqlite3 or psycopg); driver_error is
    the driver's base exception (a missing ``migrations`` table: not a Dex database)."""
    try:
        cursor.execute("SELECT count(*), max(num) FROM migrations")
        count, highest = cursor.fetchone()
    except driver_error as exc:
        raise DexSourceError(f"{source}: no Dex migrations table ({exc})") from None
    level = int(highest or 0)
    if level not in DEX_LEVELS or count != level:
        known = ", ".join(f"{n} ({v})" for n, v in DEX_LEVELS.items())
        raise DexSourceError(
            f"{source}: Dex schema at migration level {level} ({count} migrations recorded) "
            f"is not one this version can import; known levels: {known}"
        )
    clients = tuple(
        DexClient(
            id=r["id"],
            secret=r["secret"],
            redirect_uris=_strings(r["redirect_uris"]),
            trusted_peers=_strings(r["trusted_peers"]),
            public=bool(r["public"]),
            name=r["name"],
            logo_url=r["logo_url"],
        )
        for r in _rows(cursor, "client")
    )
    passwords = tuple(
        DexPassword(
            email=r["email"],
            hash=_bytes(r["hash"]).decode("ascii", "replace"),
            username=r["username"],
            user_id=r["user_id"],
            name=r.get("name") or "",
            preferred_username=r.get("preferred_username") or "",
            # NULL (rows written before the column, or by the API without it): Dex treats
            # password-DB emails as verified.
            email_verified=r.get("email_verified") is None or bool(r["email_verified"]),
            groups=_strings(r.get("groups")),
        )
        for r in _rows(cursor, "password")
    )
    tokens = tuple(
        DexRefreshToken(
            id=r["id"],
            token=r["token"] or "",
            client_id=r["client_id"],
            connector_id=r["connector_id"],
            scopes=_strings(r["scopes"]),
            nonce=r["nonce"],
            claims=_claims(r),
            connector_data=_bytes(r["connector_data"]),
            created_at=parse_time(r["created_at"]),
            last_used=parse_time(r["last_used"]),
        )
        for r in _rows(cursor, "refresh_token")
    )
    sessions = []
    for r in _rows(cursor, "offline_session"):
        refs = _json(r["refresh"], {})
        sessions.append(
            DexOfflineSession(
                user_id=r["user_id"],
                connector_id=r["conn_id"],
                refresh_ids=tuple(
                    str(ref.get("ID", "")) for ref in refs.values() if isinstance(ref, dict)
                ),
                connector_data=_bytes(r.get("connector_data")),
            )
        )
    connectors = tuple(
        DexConnector(id=r["id"], type=r["type"], name=r["name"]) for r in _rows(cursor, "connector")
    )
    keys: tuple[DexKey, ...] = ()
    for r in _rows(cursor, "keys"):
        keys = _keys_from(
            _json(r["signing_key_pub"], None),
            _json(r["verification_keys"], []),
            parse_time(r["next_rotation"]),
        )
    return DexState(
        source=source,
        version=DEX_LEVELS[level],
        clients=clients,
        passwords=passwords,
        refresh_tokens=tokens,
        offline_sessions=tuple(sessions),
        connectors=connectors,
        keys=keys,
    )


@contextmanager
def _sqlite_cursor(path: str) -> Iterator[Any]:
    try:
        # A file: URI (percent-encoded, so any path works) opened read-only: the import must
        # never change Dex's database, and a missing file is an error, not a new empty one.
        conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise DexSourceError(f"sqlite3:{path}: cannot open: {exc}") from None
    with closing(conn):
        yield conn.cursor()


def read_sqlite(path: str) -> DexState:
    with _sqlite_cursor(path) as cursor:
        return read_sql(cursor, f"sqlite3:{path}", sqlite3.Error)


def read_postgres(dsn: str) -> DexState:
    """The DSN is a libpq connection string or URL; it is never echoed (it may hold a
    password)."""
    import psycopg

    try:
        conn = psycopg.connect(dsn, connect_timeout=10)
    except psycopg.Error as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DexSourceError(f"postgres: cannot connect: {reason}") from None
    with conn:
        conn.read_only = True
        with conn.cursor() as cursor:
            return read_sql(cursor, "postgres", psycopg.Error)


# -- Kubernetes custom resources --------------------------------------------------------------


def _k8s_claims(data: Mapping[str, Any]) -> DexClaims:
    return DexClaims(
        user_id=str(data.get("userID", "")),
        username=str(data.get("username", "")),
        preferred_username=str(data.get("preferredUsername", "")),
        email=str(data.get("email", "")),
        email_verified=bool(data.get("emailVerified", False)),
        groups=tuple(str(g) for g in data.get("groups") or ()),
    )


def read_kubernetes_dump(path: str) -> DexState:
    """Dex's resources from ``kubectl get <kinds>.dex.coreos.com -o yaml`` (a ``List``, or
    several YAML documents). The Kubernetes storage keeps no creation times for refresh tokens,
    so imported families start their lifetimes at the import."""
    try:
        with open(path, encoding="utf-8") as handle:
            documents = [d for d in yaml.safe_load_all(handle) if d]
    except (OSError, yaml.YAMLError) as exc:
        raise DexSourceError(f"k8s:{path}: cannot read: {exc}") from None
    items: list[Mapping[str, Any]] = []
    for document in documents:
        if not isinstance(document, Mapping):
            raise DexSourceError(f"k8s:{path}: not a Kubernetes object or List")
        items.extend(document.get("items") or () if "items" in document else [document])
    by_kind: dict[str, list[Mapping[str, Any]]] = {}
    for item in items:
        api_version = str(item.get("apiVersion", ""))
        if not api_version.startswith(DEX_API_GROUP + "/"):
            raise DexSourceError(
                f"k8s:{path}: {item.get('kind')} of {api_version!r} is not a Dex resource "
                f"({DEX_API_GROUP})"
            )
        by_kind.setdefault(str(item.get("kind", "")), []).append(item)
    clients = tuple(
        DexClient(
            id=str(i.get("id", "")),
            secret=str(i.get("secret", "")),
            redirect_uris=tuple(i.get("redirectURIs") or ()),
            trusted_peers=tuple(i.get("trustedPeers") or ()),
            public=bool(i.get("public", False)),
            name=str(i.get("name", "")),
            logo_url=str(i.get("logoURL", "")),
        )
        for i in by_kind.get("OAuth2Client", [])
    )
    passwords = tuple(
        DexPassword(
            email=str(i.get("email", "")),
            hash=_k8s_bytes(i.get("hash")).decode("ascii", "replace"),
            username=str(i.get("username", "")),
            user_id=str(i.get("userID", "")),
            name=str(i.get("name", "")),
            preferred_username=str(i.get("preferredUsername", "")),
            email_verified=i.get("emailVerified") is None or bool(i.get("emailVerified")),
            groups=tuple(i.get("groups") or ()),
        )
        for i in by_kind.get("Password", [])
    )
    tokens = tuple(
        DexRefreshToken(
            id=str((i.get("metadata") or {}).get("name", "")),
            token=str(i.get("token", "")),
            client_id=str(i.get("clientID", "")),
            connector_id=str(i.get("connectorID", "")),
            scopes=tuple(i.get("scopes") or ()),
            nonce=str(i.get("nonce", "")),
            claims=_k8s_claims(i.get("claims") or {}),
            connector_data=_k8s_bytes(i.get("connectorData")),
            created_at=0.0,
            last_used=0.0,
        )
        for i in by_kind.get("RefreshToken", [])
    )
    sessions = tuple(
        DexOfflineSession(
            user_id=str(i.get("userID", "")),
            connector_id=str(i.get("connID", "")),
            refresh_ids=tuple(
                str(ref.get("ID", ""))
                for ref in (i.get("refresh") or {}).values()
                if isinstance(ref, Mapping)
            ),
            connector_data=_k8s_bytes(i.get("connectorData")),
        )
        for i in by_kind.get("OfflineSessions", [])
    )
    connectors = tuple(
        DexConnector(id=str(i.get("id", "")), type=str(i.get("type", "")), name=str(i.get("name")))
        for i in by_kind.get("Connector", [])
    )
    keys: tuple[DexKey, ...] = ()
    for i in by_kind.get("SigningKey", []):
        keys = _keys_from(
            i.get("signingKeyPub"),
            list(i.get("verificationKeys") or ()),
            parse_time(i.get("nextRotation")),
        )
    return DexState(
        source=f"k8s:{path}",
        version="Dex (Kubernetes storage)",
        clients=clients,
        passwords=passwords,
        refresh_tokens=tokens,
        offline_sessions=sessions,
        connectors=connectors,
        keys=keys,
    )


def read_source(spec: str) -> DexState:
    """``sqlite3:PATH``, ``postgres:DSN`` or ``k8s:DUMP.yaml``."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise DexSourceError("--from must be sqlite3:PATH, postgres:DSN or k8s:DUMP.yaml")
    if kind == "sqlite3":
        return read_sqlite(rest)
    if kind == "postgres":
        return read_postgres(rest)
    if kind == "k8s":
        return read_kubernetes_dump(rest)
    raise DexSourceError(f"--from: unknown source type {kind!r} (sqlite3, postgres or k8s)")
