-- Object-store snapshots: what each topic's manifest (`snapshots/<topic>.json` in the
-- payload store) says now, so the worker rewrites only manifests whose `*` resolution
-- changed, and a new worker (or a restart) does not rewrite them all.
CREATE TABLE snapshots (
    topic_id   BIGINT PRIMARY KEY REFERENCES topics (id) ON DELETE CASCADE,
    version    BIGINT NOT NULL,
    sha256     TEXT NOT NULL,
    written_at TIMESTAMPTZ NOT NULL
);
