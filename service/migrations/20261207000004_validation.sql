-- Automatic accept or reject of a version (docs/validation.md).
-- A topic's pre-release checks and what a failing rollout gate does: one row per topic
-- that has any (`settings`: {"checks": [...], "on_failure": "pause"|"rollback"}).
CREATE TABLE topic_validation (
    topic_id   BIGINT PRIMARY KEY REFERENCES topics(id) ON DELETE CASCADE,
    settings   JSONB NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

-- Every check's result of a version, as it was published: the results, whether a
-- rejecting result was overridden (`forced_by`, `force_reason`).
CREATE TABLE version_checks (
    topic_id     BIGINT NOT NULL,
    version      BIGINT NOT NULL,
    results      JSONB NOT NULL,
    -- The candidate's record count, when countable: the next publish compares with it.
    records      BIGINT,
    forced_by    TEXT,
    force_reason TEXT,
    PRIMARY KEY (topic_id, version),
    FOREIGN KEY (topic_id, version) REFERENCES versions(topic_id, version) ON DELETE CASCADE
);

-- Bake time: since when the current stage's gate has passed without a break (NULL: not
-- passing now). And why a rollout ended the way it did, when the system ended it (an
-- automatic rollback's evidence).
ALTER TABLE rollouts ADD COLUMN healthy_since TIMESTAMPTZ;
ALTER TABLE rollouts ADD COLUMN end_reason TEXT;

-- A candidate an external validator may download while its publish is checked: by the
-- SHA-256 of a random token (the URL holds the token), until `expires_at`. Deleted when
-- the checks are done; expired rows by the next publish that checks.
CREATE TABLE validation_candidates (
    token_sha256 TEXT PRIMARY KEY,
    topic_id     BIGINT NOT NULL REFERENCES topics(id) ON DELETE CASCADE,
    content_type TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    size         BIGINT NOT NULL,
    inline_data  BYTEA,
    object_key   TEXT,
    expires_at   TIMESTAMPTZ NOT NULL,
    CHECK ((inline_data IS NULL) <> (object_key IS NULL))
);
