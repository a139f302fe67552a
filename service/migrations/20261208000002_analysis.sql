-- Prometheus analyses of rollout stages (docs/validation.md): every measurement taken,
-- which is also the analyses' state (how many were taken, when the next is due), so a
-- restart or another replica never measures twice or loses count.
CREATE TABLE analysis_measurements (
    id         BIGSERIAL PRIMARY KEY,
    rollout_id BIGINT NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    -- 0-based index of the stage in the rollout's plan.
    stage      INTEGER NOT NULL,
    analysis   TEXT NOT NULL,
    taken_at   TIMESTAMPTZ NOT NULL,
    -- NULL: no number (no data, Prometheus unreachable); `reason` says why.
    value      DOUBLE PRECISION,
    verdict    TEXT NOT NULL,
    reason     TEXT
);
CREATE INDEX analysis_measurements_run ON analysis_measurements (rollout_id, stage, analysis, taken_at);
