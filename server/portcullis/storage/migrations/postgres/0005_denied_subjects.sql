-- The deny list of `portcullis revoke`: every JWT issued to a subject (kind 'sub', 'group' or
-- 'client') at or before revoked_at is refused until expiry, when no such JWT can be valid any
-- more (now + the longest token lifetime at revocation time) and GC drops the row.

CREATE TABLE denied_subjects (
    kind TEXT COLLATE "C" NOT NULL,
    value TEXT COLLATE "C" NOT NULL,
    revoked_at DOUBLE PRECISION NOT NULL,
    expiry DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (kind, value)
);
CREATE INDEX ix_denied_subjects_expiry ON denied_subjects (expiry);
