-- Refresh-token families remember the JWTs minted from them (jti, exp), so ending a family
-- (logout, revocation, reuse detection) also revokes its still-valid access and ID tokens.
ALTER TABLE refresh_tokens ADD COLUMN access_tokens TEXT NOT NULL DEFAULT '[]';
