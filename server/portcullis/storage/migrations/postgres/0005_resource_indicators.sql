-- RFC 8707 resource indicators (issue 16): the resources a client may name, and the resources
-- an authorization request asked for, its code carries and its refresh family keeps (a refresh
-- may narrow them, never widen).

ALTER TABLE clients ADD COLUMN allowed_resources JSONB NOT NULL DEFAULT '[]'::jsonb;
ALTER TABLE auth_requests ADD COLUMN resources JSONB NOT NULL DEFAULT '[]'::jsonb;
ALTER TABLE auth_codes ADD COLUMN resources JSONB NOT NULL DEFAULT '[]'::jsonb;
ALTER TABLE refresh_tokens ADD COLUMN resources JSONB NOT NULL DEFAULT '[]'::jsonb;
