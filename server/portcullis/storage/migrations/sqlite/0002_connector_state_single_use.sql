-- Callback connectors keep per-login state (upstream PKCE verifier, nonce, SAML request id)
-- with the auth request; single-use keys back replay caches (SAML assertion ids) across replicas.

ALTER TABLE auth_requests ADD COLUMN connector_state BLOB NOT NULL DEFAULT X'';

CREATE TABLE single_use_keys (
    key TEXT NOT NULL PRIMARY KEY,
    expiry REAL NOT NULL
);
CREATE INDEX ix_single_use_keys_expiry ON single_use_keys (expiry);
