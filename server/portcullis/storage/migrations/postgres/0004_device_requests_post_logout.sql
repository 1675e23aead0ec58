-- Device authorization requests (RFC 8628): one row per device code (keyed by its SHA-256,
-- never the code), found by the verification page through the unique user code. And the
-- registered post-logout redirect URIs of clients (RP-initiated logout).

CREATE TABLE device_requests (
    id TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    user_code TEXT COLLATE "C" NOT NULL,
    client_id TEXT NOT NULL,
    scopes JSONB NOT NULL,
    expiry DOUBLE PRECISION NOT NULL,
    poll_interval DOUBLE PRECISION NOT NULL,
    last_poll DOUBLE PRECISION NOT NULL,
    status TEXT NOT NULL,
    pkce_verifier TEXT NOT NULL,
    identity JSONB,
    connector_data BYTEA,
    connector_id TEXT NOT NULL,
    auth_time DOUBLE PRECISION NOT NULL
);
CREATE UNIQUE INDEX ux_device_requests_user_code ON device_requests (user_code);
CREATE INDEX ix_device_requests_expiry ON device_requests (expiry);

ALTER TABLE clients ADD COLUMN post_logout_redirect_uris JSONB NOT NULL DEFAULT '[]'::jsonb;
