-- The response_mode an authorization request asked for ('' = the response type's default), so
-- response_mode=fragment on the code flow returns the code in the fragment (issue 9).

ALTER TABLE auth_requests ADD COLUMN response_mode TEXT NOT NULL DEFAULT '';
