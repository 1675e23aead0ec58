-- The deny list of `portcullis revoke`: every JWT issued to a subject (kind 'sub', 'group' or
-- 'client') at or before revoked_at is refused until expiry, when no such JWT can be valid any
-- more (now + the longest token lifetime at revocation time) and GC drops the row.

CREATE TABLE denied_subjects (
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    revoked_at REAL NOT NULL,
    expiry REAL NOT NULL,
    PRIMARY KEY (kind, value)
);
CREATE INDEX ix_denied_subjects_expiry ON denied_subjects (expiry);
