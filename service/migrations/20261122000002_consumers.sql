-- Consumer audit: per (topic, instance), what a node holds, should hold, and how its last
-- apply went. Written in batches by each server's audit flusher (never once per poll).
CREATE TABLE consumers (
    topic_id             BIGINT NOT NULL REFERENCES topics(id) ON DELETE CASCADE,
    instance             TEXT NOT NULL,
    labels               JSONB NOT NULL DEFAULT '{}'::jsonb,
    version              BIGINT,
    -- when the instance started holding `version` (for lag and propagation)
    version_since        TIMESTAMPTZ,
    expected_version     BIGINT,
    first_seen           TIMESTAMPTZ NOT NULL,
    last_seen            TIMESTAMPTZ NOT NULL,
    last_applied_version BIGINT,
    last_applied_ok      BOOLEAN,
    last_error           TEXT,
    last_applied_at      TIMESTAMPTZ,
    PRIMARY KEY (topic_id, instance)
);
CREATE INDEX consumers_last_seen ON consumers (last_seen);

ALTER TABLE topics ADD COLUMN last_polled_at TIMESTAMPTZ;
