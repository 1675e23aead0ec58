"""Table definitions shared by every SQL backend (SQLite, PostgreSQL).

These objects describe the schema the *queries* expect; the schema itself is created and evolved
only by the numbered migrations in ``portcullis/storage/migrations/<dialect>/``. A test compares
the migrated database against these tables so the two cannot drift apart silently.

Portable types only: ``Text``, ``Double``, ``Boolean``, ``LargeBinary``, ``JSON``. Tuples, group
lists, identities and JWKs live in JSON columns; an identity's ``connector_data`` is opaque bytes,
so it gets a binary column of its own.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# A JSON column whose Python ``None`` is SQL NULL (not the JSON text "null").
NullableJSON = sa.JSON(none_as_null=True)

schema_migrations = sa.Table(
    "schema_migrations",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("applied_at", sa.Double, nullable=False),
)

clients = sa.Table(
    "clients",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("secret_hash", sa.Text, nullable=False),
    sa.Column("redirect_uris", sa.JSON, nullable=False),
    sa.Column("trusted_peers", sa.JSON, nullable=False),
    sa.Column("public", sa.Boolean, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("logo_url", sa.Text, nullable=False),
    sa.Column("grant_types", sa.JSON, nullable=False),
    sa.Column("response_types", sa.JSON, nullable=False),
    sa.Column("allowed_connectors", sa.JSON, nullable=False),
    sa.Column("id_token_ttl", sa.Double, nullable=True),
    sa.Column("refresh_token_absolute_lifetime", sa.Double, nullable=True),
    sa.Column("post_logout_redirect_uris", sa.JSON, nullable=False),
    sa.Column("allowed_resources", sa.JSON, nullable=False),
    sa.Column("registration_token_hash", sa.Text, nullable=False),
    sa.Column("registered_at", sa.Double, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),
    sa.Index("ix_clients_expires_at", "expires_at"),
)

auth_requests = sa.Table(
    "auth_requests",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("client_id", sa.Text, nullable=False),
    sa.Column("response_types", sa.JSON, nullable=False),
    sa.Column("scopes", sa.JSON, nullable=False),
    sa.Column("redirect_uri", sa.Text, nullable=False),
    sa.Column("expiry", sa.Double, nullable=False),
    sa.Column("nonce", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("force_approval_prompt", sa.Boolean, nullable=False),
    sa.Column("logged_in", sa.Boolean, nullable=False),
    sa.Column("identity", NullableJSON, nullable=True),
    sa.Column("connector_data", sa.LargeBinary, nullable=True),
    sa.Column("connector_id", sa.Text, nullable=False),
    sa.Column("code_challenge", sa.Text, nullable=False),
    sa.Column("code_challenge_method", sa.Text, nullable=False),
    sa.Column("auth_time", sa.Double, nullable=False),
    sa.Column("browser_binding", sa.Text, nullable=False),
    sa.Column("connector_state", sa.LargeBinary, nullable=False),
    sa.Column("response_mode", sa.Text, nullable=False),
    sa.Column("resources", sa.JSON, nullable=False),
    sa.Index("ix_auth_requests_expiry", "expiry"),
)

auth_codes = sa.Table(
    "auth_codes",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("client_id", sa.Text, nullable=False),
    sa.Column("redirect_uri", sa.Text, nullable=False),
    sa.Column("scopes", sa.JSON, nullable=False),
    sa.Column("identity", sa.JSON, nullable=False),
    sa.Column("connector_data", sa.LargeBinary, nullable=False),
    sa.Column("connector_id", sa.Text, nullable=False),
    sa.Column("expiry", sa.Double, nullable=False),
    sa.Column("nonce", sa.Text, nullable=False),
    sa.Column("code_challenge", sa.Text, nullable=False),
    sa.Column("code_challenge_method", sa.Text, nullable=False),
    sa.Column("auth_time", sa.Double, nullable=False),
    sa.Column("used_at", sa.Double, nullable=False),
    sa.Column("resources", sa.JSON, nullable=False),
    sa.Index("ix_auth_codes_expiry", "expiry"),
)

refresh_tokens = sa.Table(
    "refresh_tokens",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("token_hash", sa.Text, nullable=False),
    sa.Column("obsolete_token_hash", sa.Text, nullable=False),
    sa.Column("successor_sealed", sa.Text, nullable=False),
    sa.Column("client_id", sa.Text, nullable=False),
    sa.Column("connector_id", sa.Text, nullable=False),
    # Denormalised from identity so "all sessions of this user" is an indexed query.
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("identity", sa.JSON, nullable=False),
    sa.Column("connector_data", sa.LargeBinary, nullable=False),
    sa.Column("scopes", sa.JSON, nullable=False),
    sa.Column("nonce", sa.Text, nullable=False),
    sa.Column("auth_time", sa.Double, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("last_used", sa.Double, nullable=False),
    sa.Column("issued_by_code", sa.Text, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),
    sa.Column("resources", sa.JSON, nullable=False),
    sa.Index("ix_refresh_tokens_user", "user_id", "connector_id"),
    sa.Index("ix_refresh_tokens_issued_by_code", "issued_by_code"),
    sa.Index("ix_refresh_tokens_expires_at", "expires_at"),
)

passwords = sa.Table(
    "passwords",
    metadata,
    # Lower-cased email: the lookup key (Dex matches emails case-insensitively).
    sa.Column("email_key", sa.Text, primary_key=True),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("username", sa.Text, nullable=False),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("preferred_username", sa.Text, nullable=False),
    sa.Column("email_verified", sa.Boolean, nullable=False),
    sa.Column("groups", sa.JSON, nullable=False),
)

# One row (id = 1), created by the first migration, so a write transaction always has a row to
# lock (SELECT ... FOR UPDATE on PostgreSQL) when it rotates keys.
signing_keys = sa.Table(
    "signing_keys",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("signing_key", NullableJSON, nullable=True),
    sa.Column("verification_keys", sa.JSON, nullable=False),
    sa.Column("next_rotation", sa.Double, nullable=False),
)
KEYS_ROW_ID = 1

denied_subjects = sa.Table(
    "denied_subjects",
    metadata,
    sa.Column("kind", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, primary_key=True),
    sa.Column("revoked_at", sa.Double, nullable=False),
    sa.Column("expiry", sa.Double, nullable=False),
    sa.Index("ix_denied_subjects_expiry", "expiry"),
)

revoked_tokens = sa.Table(
    "revoked_tokens",
    metadata,
    sa.Column("jti", sa.Text, primary_key=True),
    sa.Column("expiry", sa.Double, nullable=False),
    sa.Index("ix_revoked_tokens_expiry", "expiry"),
)

login_attempts = sa.Table(
    "login_attempts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("throttle_key", sa.Text, nullable=False),
    sa.Column("at", sa.Double, nullable=False),
    sa.Index("ix_login_attempts_key_at", "throttle_key", "at"),
    sa.Index("ix_login_attempts_at", "at"),
)

single_use_keys = sa.Table(
    "single_use_keys",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("expiry", sa.Double, nullable=False),
    sa.Index("ix_single_use_keys_expiry", "expiry"),
)

device_requests = sa.Table(
    "device_requests",
    metadata,
    # SHA-256 of the device code: the code itself is never stored.
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("user_code", sa.Text, nullable=False),
    sa.Column("client_id", sa.Text, nullable=False),
    sa.Column("scopes", sa.JSON, nullable=False),
    sa.Column("expiry", sa.Double, nullable=False),
    sa.Column("poll_interval", sa.Double, nullable=False),
    sa.Column("last_poll", sa.Double, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("pkce_verifier", sa.Text, nullable=False),
    sa.Column("identity", NullableJSON, nullable=True),
    sa.Column("connector_data", sa.LargeBinary, nullable=True),
    sa.Column("connector_id", sa.Text, nullable=False),
    sa.Column("auth_time", sa.Double, nullable=False),
    # Unique: the verification page finds a request by the code a person typed.
    sa.Index("ux_device_requests_user_code", "user_code", unique=True),
    sa.Index("ix_device_requests_expiry", "expiry"),
)
