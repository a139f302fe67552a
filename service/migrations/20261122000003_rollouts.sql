-- Incremental rollouts. One row per rollout holds the whole state machine record (see
-- imprint_domain::RolloutRecord): due times are absolute, so a restart resumes exactly
-- where it was, and schedulers claim rows with FOR UPDATE SKIP LOCKED.
CREATE TABLE rollouts (
    id           BIGSERIAL PRIMARY KEY,
    topic_id     BIGINT NOT NULL,
    version      BIGINT NOT NULL,
    plan         JSONB NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('running', 'paused', 'completed', 'cancelled', 'superseded')),
    reached_at   TIMESTAMPTZ[] NOT NULL,
    next_due     TIMESTAMPTZ,
    remaining_ms BIGINT,
    pause_reason TEXT,
    ended_at     TIMESTAMPTZ,
    rolled_back  BOOLEAN NOT NULL DEFAULT false,
    created_by   TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    FOREIGN KEY (topic_id, version) REFERENCES versions(topic_id, version) ON DELETE CASCADE
);
CREATE INDEX rollouts_topic ON rollouts (topic_id, id DESC);
CREATE INDEX rollouts_running ON rollouts (next_due) WHERE state = 'running';
-- At most one active (running or paused) rollout per topic.
CREATE UNIQUE INDEX rollouts_one_active ON rollouts (topic_id) WHERE state IN ('running', 'paused');

-- Named plans of a topic ({"name": {"stages": [...]}}) and the one a publish uses by default.
ALTER TABLE topics ADD COLUMN plans JSONB NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE topics ADD COLUMN default_plan TEXT;
