-- Same step as sqlite/0002: refresh-token families remember the JWTs minted from them
-- (jti, exp), so ending a family also revokes its still-valid access and ID tokens.
ALTER TABLE refresh_tokens ADD COLUMN access_tokens JSONB NOT NULL DEFAULT '[]';
