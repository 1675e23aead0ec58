-- Device authorization requests (RFC 8628): one row per device code (keyed by its SHA-256,
-- never the code), found by the verification page through the unique user code. And the
-- registered post-logout redirect URIs of clients (RP-initiated logout).

CREATE TABLE device_requests (
    id TEXT NOT NULL PRIMARY KEY,
    user_code TEXT NOT NULL,
    client_id TEXT NOT NULL,
    scopes TEXT NOT NULL,
    expiry REAL NOT NULL,
    poll_interval REAL NOT NULL,
    last_poll REAL NOT NULL,
    status TEXT NOT NULL,
    pkce_verifier TEXT NOT NULL,
    identity TEXT,
    connector_data BLOB,
    connector_id TEXT NOT NULL,
    auth_time REAL NOT NULL
);
CREATE UNIQUE INDEX ux_device_requests_user_code ON device_requests (user_code);
CREATE INDEX ix_device_requests_expiry ON device_requests (expiry);

ALTER TABLE clients ADD COLUMN post_logout_redirect_uris TEXT NOT NULL DEFAULT '[]';
