-- Change control (docs/change-control.md): drafts, reviewed and scheduled change requests,
-- the topics' review rules and change-freeze windows.

-- A payload stored, checksummed and validated like a version, released to nobody, with no
-- version number. Drafts are stored inline (at most the topic's inline limit): no object of
-- the store is ever a draft's, so retention and the janitor's sweep have nothing to keep or
-- delete for them. A discarded or released draft keeps its row (the history) without payload.
CREATE TABLE drafts (
    id               BIGSERIAL PRIMARY KEY,
    topic_id         BIGINT NOT NULL REFERENCES topics(id) ON DELETE CASCADE,
    state            TEXT NOT NULL DEFAULT 'open',
    created_at       TIMESTAMPTZ NOT NULL,
    created_by       TEXT NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    message          TEXT NOT NULL,
    metadata         JSONB NOT NULL,
    content_type     TEXT NOT NULL,
    size             BIGINT NOT NULL,
    sha256           TEXT NOT NULL,
    data             BYTEA,
    released_version BIGINT,
    CONSTRAINT drafts_state CHECK (state IN ('open', 'released', 'discarded'))
);
CREATE INDEX drafts_open ON drafts (topic_id) WHERE state = 'open';

-- A topic's review rule: releases need `required_approvals` approvals by members of
-- `approver_team` or by the users named in `approver_users` (never the author).
CREATE TABLE topic_reviews (
    topic_id           BIGINT PRIMARY KEY REFERENCES topics(id) ON DELETE CASCADE,
    required_approvals INTEGER NOT NULL,
    approver_team      TEXT,
    approver_users     TEXT[] NOT NULL DEFAULT '{}',
    updated_at         TIMESTAMPTZ NOT NULL,
    updated_by         TEXT NOT NULL,
    CONSTRAINT topic_reviews_approvals CHECK (required_approvals BETWEEN 1 AND 10)
);

-- A change waiting for approvals or for its time. `kind` release: draft_id's payload
-- released to `change.scopes` (with `change.rollout`).
CREATE TABLE change_requests (
    id                 BIGSERIAL PRIMARY KEY,
    topic_id           BIGINT NOT NULL REFERENCES topics(id) ON DELETE CASCADE,
    kind               TEXT NOT NULL,
    draft_id           BIGINT REFERENCES drafts(id) ON DELETE CASCADE,
    change             JSONB NOT NULL,
    author             TEXT NOT NULL,
    author_admin       BOOLEAN NOT NULL DEFAULT false,
    message            TEXT NOT NULL DEFAULT '',
    required_approvals INTEGER NOT NULL,
    -- pending (approvals missing), approved (complete; waits for `at` if given), applied,
    -- rejected, withdrawn, expired (`at` came first), failed (applying it was refused).
    state              TEXT NOT NULL,
    at                 TIMESTAMPTZ,
    created_at         TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL,
    reason             TEXT,
    applied_version    BIGINT,
    CONSTRAINT change_requests_kind CHECK (kind IN ('release')),
    CONSTRAINT change_requests_state CHECK (state IN ('pending', 'approved', 'applied', 'rejected', 'withdrawn', 'expired', 'failed'))
);
CREATE INDEX change_requests_open ON change_requests (topic_id) WHERE state IN ('pending', 'approved');
CREATE INDEX change_requests_due ON change_requests (at) WHERE state IN ('pending', 'approved') AND at IS NOT NULL;

CREATE TABLE change_approvals (
    request_id  BIGINT NOT NULL REFERENCES change_requests(id) ON DELETE CASCADE,
    approver    TEXT NOT NULL,
    approved_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (request_id, approver)
);

-- A change-freeze window: global (neither team nor topic), a team's topics, or one topic.
-- One-off (starts_at, ends_at) or weekly (days, local from/to, time zone).
CREATE TABLE freezes (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL,
    team        TEXT,
    topic_id    BIGINT REFERENCES topics(id) ON DELETE CASCADE,
    starts_at   TIMESTAMPTZ,
    ends_at     TIMESTAMPTZ,
    days        TEXT[],
    local_from  TEXT,
    local_to    TEXT,
    tz          TEXT,
    created_at  TIMESTAMPTZ NOT NULL,
    created_by  TEXT NOT NULL,
    CONSTRAINT freezes_one_scope CHECK (team IS NULL OR topic_id IS NULL)
);
