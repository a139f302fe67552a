-- The audit of plaintext reads of at-rest topics (docs/encryption.md): per topic, version
-- and reader (`token:<name>`, `user:<name>`, `anonymous`), how many reads and when the
-- first and the last were. Recorded in memory on the read paths and written in batches
-- by the audit flusher, like the consumer audit.
CREATE TABLE plaintext_reads (
    topic_id BIGINT NOT NULL REFERENCES topics(id) ON DELETE CASCADE,
    version  BIGINT NOT NULL,
    reader   TEXT NOT NULL,
    reads    BIGINT NOT NULL,
    first_at TIMESTAMPTZ NOT NULL,
    last_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (topic_id, version, reader)
);
