-- Content-addressed payload URLs (/api/v1/blobs/sha256/{hash}, docs/fairness.md): the live
-- versions holding a payload are found by its SHA-256.
CREATE INDEX versions_sha256_live ON versions (sha256) WHERE purged_at IS NULL;
