"""Dex databases as Dex itself leaves them, for the import tests.

Facts from Dex's ``storage/sql/migrate.go`` (v2.30 to v2.45.1), restated here: Dex creates a
``migrations(num, at)`` table and applies its numbered steps in order, counting only those of the
database's flavor. For sqlite3 and postgres the steps are:

 1. client, auth_request, auth_code, refresh_token, password, keys
 2. refresh_token: token, created_at, last_used
 3. offline_session (user_id, conn_id, refresh)
 4. connector (id, type, name, resource_version, config)
 5. claims_preferred_username on auth_code, auth_request, refresh_token
 6. offline_session.connector_data
 7. device_request, device_token
 8. PKCE columns on auth_request and auth_code
 9. refresh_token.obsolete_token
10. PKCE columns on device_token
11. auth_request.hmac_key
12. password.preferred_username, password.groups
13. password.name, password.email_verified

so v2.30-v2.32 leave 9, v2.33-v2.34 leave 10, v2.35-v2.44 leave 11 and v2.45 leaves 13.
Timestamps: Go's sqlite driver writes ``2006-01-02 15:04:05.999999999-07:00`` text; postgres
columns are ``timestamptz``. JSON columns are bytea/blob holding JSON text.

The records written are those a running Dex would hold after a password login with an offline
session: a confidential and a public client, a password user, a refresh token with its offline
session, a stored connector, and the key set (private signing key, its public half, one retired
verification key).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import bcrypt
from joserfc.jwk import RSAKey

_TS = "timestamptz"

# The statements of each step (sqlite3 and postgres share them except step 12's default).
_STEPS: dict[int, list[str]] = {
    1: [
        "create table client (id text not null primary key, secret text not null, "
        "redirect_uris bytea not null, trusted_peers bytea not null, public boolean not null, "
        "name text not null, logo_url text not null)",
        "create table auth_request (id text not null primary key, client_id text not null, "
        "response_types bytea not null, scopes bytea not null, redirect_uri text not null, "
        "nonce text not null, state text not null, force_approval_prompt boolean not null, "
        "logged_in boolean not null, claims_user_id text not null, claims_username text not "
        "null, claims_email text not null, claims_email_verified boolean not null, "
        "claims_groups bytea not null, connector_id text not null, connector_data bytea, "
        f"expiry {_TS} not null)",
        "create table auth_code (id text not null primary key, client_id text not null, "
        "scopes bytea not null, nonce text not null, redirect_uri text not null, "
        "claims_user_id text not null, claims_username text not null, claims_email text not "
        "null, claims_email_verified boolean not null, claims_groups bytea not null, "
        f"connector_id text not null, connector_data bytea, expiry {_TS} not null)",
        "create table refresh_token (id text not null primary key, client_id text not null, "
        "scopes bytea not null, nonce text not null, claims_user_id text not null, "
        "claims_username text not null, claims_email text not null, claims_email_verified "
        "boolean not null, claims_groups bytea not null, connector_id text not null, "
        "connector_data bytea)",
        "create table password (email text not null primary key, hash bytea not null, "
        "username text not null, user_id text not null)",
        "create table keys (id text not null primary key, verification_keys bytea not null, "
        f"signing_key bytea not null, signing_key_pub bytea not null, next_rotation {_TS} "
        "not null)",
    ],
    2: [
        "alter table refresh_token add column token text not null default ''",
        f"alter table refresh_token add column created_at {_TS} not null "
        "default '0001-01-01 00:00:00 UTC'",
        f"alter table refresh_token add column last_used {_TS} not null "
        "default '0001-01-01 00:00:00 UTC'",
    ],
    3: [
        "create table offline_session (user_id text not null, conn_id text not null, "
        "refresh bytea not null, PRIMARY KEY (user_id, conn_id))"
    ],
    4: [
        "create table connector (id text not null primary key, type text not null, "
        "name text not null, resource_version text not null, config bytea)"
    ],
    5: [
        f"alter table {t} add column claims_preferred_username text not null default ''"
        for t in ("auth_code", "auth_request", "refresh_token")
    ],
    6: ["alter table offline_session add column connector_data bytea"],
    7: [
        "create table device_request (user_code text not null primary key, device_code text "
        "not null, client_id text not null, client_secret text, scopes bytea not null, "
        f"expiry {_TS} not null)",
        "create table device_token (device_code text not null primary key, status text not "
        f"null, token bytea, expiry {_TS} not null, last_request {_TS} not null, "
        "poll_interval integer not null)",
    ],
    8: [
        f"alter table {t} add column {c} text not null default ''"
        for t in ("auth_request", "auth_code")
        for c in ("code_challenge", "code_challenge_method")
    ],
    9: ["alter table refresh_token add column obsolete_token text default ''"],
    10: [
        f"alter table device_token add column {c} text not null default ''"
        for c in ("code_challenge", "code_challenge_method")
    ],
    11: ["alter table auth_request add column hmac_key bytea"],
    12: ["alter table password add column preferred_username text not null default ''"],
    13: [
        "alter table password add column name text not null default ''",
        "alter table password add column email_verified boolean",
    ],
}
_PASSWORD_GROUPS = {
    "sqlite3": "alter table password add column groups bytea not null default '[]'",
    "postgres": "alter table password add column groups bytea not null "
    "default convert_to('[]', 'UTF8')",
}

#: Each Dex release range and the level it leaves (see the module docstring).
LEVELS = {"v2.31": 9, "v2.33": 10, "v2.44": 11, "v2.45": 13}


def statements(level: int, flavor: str) -> list[str]:
    out: list[str] = [
        "create table if not exists migrations (num integer not null, at timestamptz not null)"
    ]
    for step in range(1, level + 1):
        out += _STEPS[step]
        if step == 12:
            out.append(_PASSWORD_GROUPS[flavor])
    return out


def go_time(moment: float, flavor: str) -> Any:
    """A timestamp as the flavor's driver stores it (Go's sqlite text, a datetime for pg)."""
    value = datetime.fromtimestamp(moment, UTC)
    if flavor == "postgres":
        return value
    return value.strftime("%Y-%m-%d %H:%M:%S.%f") + "123+00:00"  # nanosecond precision


@dataclass
class DexData:
    """What the Dex database holds; the private signing key stays here for the tests to sign
    ID tokens with, as Dex would."""

    now: float
    issuer: str = ""
    password: str = "dex-user-password"
    email: str = "jane@example.com"
    user_id: str = "jane-0001"
    client_secret: str = "dex-app-secret-value-0123456789"
    refresh_id: str = "dexrefreshid0123456789abcd"
    refresh_token: str = "dexrefreshtoken0123456789a"
    signing_key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048))
    retired_key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048))

    def __post_init__(self) -> None:
        self.hash = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=10)).decode()

    def jwk(self, key: RSAKey, kid: str, *, private: bool) -> dict[str, Any]:
        data = dict(key.as_dict(private=private))
        data.update(kid=kid, alg="RS256", use="sig")
        return data


def populate(cursor: Any, level: int, flavor: str, data: DexData) -> None:
    """Create Dex's schema at level and fill it; cursor is a DB-API cursor (sqlite3/psycopg)."""
    mark = "?" if flavor == "sqlite3" else "%s"

    def insert(table: str, row: dict[str, Any]) -> None:
        names = ", ".join(row)
        marks = ", ".join([mark] * len(row))
        statement = f"insert into {table} ({names}) values ({marks})"  # noqa: S608 - fixture constants
        cursor.execute(statement, list(row.values()))

    def blob(value: Any) -> bytes:
        return json.dumps(value).encode()

    for statement in statements(level, flavor):
        cursor.execute(statement)
    for number in range(1, level + 1):
        insert("migrations", {"num": number, "at": go_time(data.now, flavor)})
    insert(
        "client",
        {
            "id": "dex-app",
            "secret": data.client_secret,
            "redirect_uris": blob(["http://127.0.0.1:5555/dex-app/callback"]),
            "trusted_peers": blob([]),
            "public": False,
            "name": "Dex App",
            "logo_url": "",
        },
    )
    insert(
        "client",
        {
            "id": "dex-cli",
            "secret": "unused-secret-of-a-public-client",
            "redirect_uris": blob(["http://127.0.0.1:8000"]),
            "trusted_peers": blob([]),
            "public": True,
            "name": "Dex CLI",
            "logo_url": "",
        },
    )
    password: dict[str, Any] = {
        "email": data.email,
        "hash": data.hash.encode(),
        "username": "jane",
        "user_id": data.user_id,
    }
    if level >= 12:
        password.update(preferred_username="jane.doe", groups=blob(["platform"]))
    if level >= 13:
        password.update(name="Jane Doe", email_verified=True)
    insert("password", password)
    refresh: dict[str, Any] = {
        "id": data.refresh_id,
        "client_id": "dex-app",
        "scopes": blob(["openid", "email", "groups", "offline_access"]),
        "nonce": "",
        "claims_user_id": data.user_id,
        "claims_username": "jane",
        "claims_email": data.email,
        "claims_email_verified": True,
        "claims_groups": blob(["platform"]),
        "connector_id": "local",
        "connector_data": None,
        "token": data.refresh_token,
        "created_at": go_time(data.now - 3600, flavor),
        "last_used": go_time(data.now - 600, flavor),
        "claims_preferred_username": "jane.doe",
        "obsolete_token": "",
    }
    insert("refresh_token", refresh)
    session_refs = {
        "dex-app": {
            "ID": data.refresh_id,
            "ClientID": "dex-app",
            "CreatedAt": "2026-01-01T00:00:00Z",
            "LastUsed": "2026-01-01T00:00:00Z",
        }
    }
    insert(
        "offline_session",
        {
            "user_id": data.user_id,
            "conn_id": "local",
            "refresh": blob(session_refs),
            "connector_data": None,
        },
    )
    insert(
        "connector",
        {
            "id": "corp-ldap",
            "type": "ldap",
            "name": "Corporate LDAP",
            "resource_version": "",
            "config": blob({"host": "ldap.example.com:636"}),
        },
    )
    retired_expiry = datetime.fromtimestamp(data.now + 7200, UTC).isoformat().replace("+00:00", "Z")
    insert(
        "keys",
        {
            "id": "keys",
            "verification_keys": blob(
                [
                    {
                        "publicKey": data.jwk(data.retired_key, "dex-retired", private=False),
                        "expiry": retired_expiry,
                    }
                ]
            ),
            "signing_key": blob(data.jwk(data.signing_key, "dex-active", private=True)),
            "signing_key_pub": blob(data.jwk(data.signing_key, "dex-active", private=False)),
            "next_rotation": go_time(data.now + 3 * 3600, flavor),
        },
    )


def build_sqlite(path: str, level: int, data: DexData) -> None:
    conn = sqlite3.connect(path)
    try:
        populate(conn.cursor(), level, "sqlite3", data)
        conn.commit()
    finally:
        conn.close()


def kubernetes_dump(data: DexData) -> dict[str, Any]:
    """The same state as ``kubectl get <kinds>.dex.coreos.com -o yaml`` prints it (a List)."""
    import base64

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    def obj(kind: str, object_name: str, **fields: Any) -> dict[str, Any]:
        return {
            "apiVersion": "dex.coreos.com/v1",
            "kind": kind,
            "metadata": {"name": object_name, "namespace": "dex"},
            **fields,
        }

    next_rotation = datetime.fromtimestamp(data.now + 3 * 3600, UTC).isoformat()
    retired_expiry = datetime.fromtimestamp(data.now + 7200, UTC).isoformat()
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            obj(
                "OAuth2Client",
                "mrqxeltbobya",
                id="dex-app",
                secret=data.client_secret,
                redirectURIs=["http://127.0.0.1:5555/dex-app/callback"],
                name="Dex App",
                public=False,
            ),
            obj(
                "Password",
                "njqw4zlamv4gc3lqnrss4y3pnxf7fhheqqrcgji",
                email=data.email,
                hash=b64(data.hash.encode()),
                username="jane",
                userID=data.user_id,
                groups=["platform"],
            ),
            obj(
                "RefreshToken",
                data.refresh_id,
                clientID="dex-app",
                scopes=["openid", "email", "groups", "offline_access"],
                token=data.refresh_token,
                claims={
                    "userID": data.user_id,
                    "username": "jane",
                    "email": data.email,
                    "emailVerified": True,
                    "groups": ["platform"],
                },
                connectorID="local",
            ),
            obj(
                "OfflineSessions",
                "offline-session-jane",
                userID=data.user_id,
                connID="local",
                refresh={"dex-app": {"ID": data.refresh_id, "ClientID": "dex-app"}},
            ),
            obj("Connector", "corp-ldap", id="corp-ldap", type="ldap", name="Corporate LDAP"),
            obj(
                "SigningKey",
                "openid-connect-keys",
                signingKey=data.jwk(data.signing_key, "dex-active", private=True),
                signingKeyPub=data.jwk(data.signing_key, "dex-active", private=False),
                verificationKeys=[
                    {
                        "publicKey": data.jwk(data.retired_key, "dex-retired", private=False),
                        "expiry": retired_expiry,
                    }
                ],
                nextRotation=next_rotation,
            ),
        ],
    }
