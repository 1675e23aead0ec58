-- Initial schema. Must match portcullis/storage/sql_schema.py (a test compares them).
-- JSON columns are declared TEXT so SQLite never applies numeric affinity to them.

CREATE TABLE clients (
    id TEXT NOT NULL PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    redirect_uris TEXT NOT NULL,
    trusted_peers TEXT NOT NULL,
    public INTEGER NOT NULL,
    name TEXT NOT NULL,
    logo_url TEXT NOT NULL,
    grant_types TEXT NOT NULL,
    response_types TEXT NOT NULL,
    allowed_connectors TEXT NOT NULL,
    id_token_ttl REAL,
    refresh_token_absolute_lifetime REAL
);

CREATE TABLE auth_requests (
    id TEXT NOT NULL PRIMARY KEY,
    client_id TEXT NOT NULL,
    response_types TEXT NOT NULL,
    scopes TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    expiry REAL NOT NULL,
    nonce TEXT NOT NULL,
    state TEXT NOT NULL,
    force_approval_prompt INTEGER NOT NULL,
    logged_in INTEGER NOT NULL,
    identity TEXT,
    connector_data BLOB,
    connector_id TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    code_challenge_method TEXT NOT NULL,
    auth_time REAL NOT NULL,
    browser_binding TEXT NOT NULL
);
CREATE INDEX ix_auth_requests_expiry ON auth_requests (expiry);

CREATE TABLE auth_codes (
    id TEXT NOT NULL PRIMARY KEY,
    client_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    scopes TEXT NOT NULL,
    identity TEXT NOT NULL,
    connector_data BLOB NOT NULL,
    connector_id TEXT NOT NULL,
    expiry REAL NOT NULL,
    nonce TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    code_challenge_method TEXT NOT NULL,
    auth_time REAL NOT NULL,
    used_at REAL NOT NULL
);
CREATE INDEX ix_auth_codes_expiry ON auth_codes (expiry);

CREATE TABLE refresh_tokens (
    id TEXT NOT NULL PRIMARY KEY,
    token_hash TEXT NOT NULL,
    obsolete_token_hash TEXT NOT NULL,
    successor_sealed TEXT NOT NULL,
    client_id TEXT NOT NULL,
    connector_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    identity TEXT NOT NULL,
    connector_data BLOB NOT NULL,
    scopes TEXT NOT NULL,
    nonce TEXT NOT NULL,
    auth_time REAL NOT NULL,
    created_at REAL NOT NULL,
    last_used REAL NOT NULL,
    issued_by_code TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX ix_refresh_tokens_user ON refresh_tokens (user_id, connector_id);
CREATE INDEX ix_refresh_tokens_issued_by_code ON refresh_tokens (issued_by_code);
CREATE INDEX ix_refresh_tokens_expires_at ON refresh_tokens (expires_at);

CREATE TABLE passwords (
    email_key TEXT NOT NULL PRIMARY KEY,
    email TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    username TEXT NOT NULL,
    user_id TEXT NOT NULL,
    name TEXT NOT NULL,
    preferred_username TEXT NOT NULL,
    email_verified INTEGER NOT NULL,
    groups TEXT NOT NULL
);

CREATE TABLE signing_keys (
    id INTEGER NOT NULL PRIMARY KEY,
    signing_key TEXT,
    verification_keys TEXT NOT NULL,
    next_rotation REAL NOT NULL
);
INSERT INTO signing_keys (id, signing_key, verification_keys, next_rotation) VALUES (1, NULL, '[]', 0);

CREATE TABLE revoked_tokens (
    jti TEXT NOT NULL PRIMARY KEY,
    expiry REAL NOT NULL
);
CREATE INDEX ix_revoked_tokens_expiry ON revoked_tokens (expiry);

CREATE TABLE login_attempts (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    throttle_key TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX ix_login_attempts_key_at ON login_attempts (throttle_key, at);
CREATE INDEX ix_login_attempts_at ON login_attempts (at);
