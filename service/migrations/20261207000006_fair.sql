-- Content-addressed payload URLs (/api/v1/blobs/sha256/{hash}, docs/fairness.md): the versions
-- holding a payload are found by its SHA-256. Not a partial index on `purged_at IS NULL`: the
-- planner would then scan live versions through it, in hash order, where other queries
-- (the janitor's) rely on the table's order.
CREATE INDEX versions_sha256 ON versions (sha256);
