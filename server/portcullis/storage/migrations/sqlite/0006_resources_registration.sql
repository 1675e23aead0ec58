-- RFC 8707 resource indicators and RFC 7591 dynamic client registration (issue 16): the
-- resources a client may name, and the resources an authorization request asked for, its code
-- carries and its refresh family keeps (a refresh may narrow them, never widen); a registered
-- client's registration access token (its SHA-256), registration time and expiry when unused
-- (0 = never; garbage collection deletes it past that).

ALTER TABLE clients ADD COLUMN allowed_resources TEXT NOT NULL DEFAULT '[]';
ALTER TABLE auth_requests ADD COLUMN resources TEXT NOT NULL DEFAULT '[]';
ALTER TABLE auth_codes ADD COLUMN resources TEXT NOT NULL DEFAULT '[]';
ALTER TABLE refresh_tokens ADD COLUMN resources TEXT NOT NULL DEFAULT '[]';
ALTER TABLE clients ADD COLUMN registration_token_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE clients ADD COLUMN registered_at REAL NOT NULL DEFAULT 0;
ALTER TABLE clients ADD COLUMN expires_at REAL NOT NULL DEFAULT 0;
CREATE INDEX ix_clients_expires_at ON clients (expires_at);
