-- Imprint foundation schema: topics, immutable versions, append-only scopes, pins, API tokens.
-- Migrations are never edited once applied; add a new file instead.

CREATE TABLE topics (
    id                     BIGSERIAL PRIMARY KEY,
    name                   TEXT NOT NULL UNIQUE,
    description            TEXT NOT NULL DEFAULT '',
    owner                  TEXT NOT NULL DEFAULT '',
    retention_max_versions INTEGER CHECK (retention_max_versions IS NULL OR retention_max_versions >= 1),
    retention_max_age_days INTEGER CHECK (retention_max_age_days IS NULL OR retention_max_age_days >= 1),
    inline_limit_bytes     BIGINT NOT NULL DEFAULT 1048576 CHECK (inline_limit_bytes >= 1),
    content_type           TEXT,
    json_schema            JSONB,
    -- Highest committed version number. Publishing increments it inside the publish
    -- transaction: the row lock serialises concurrent publishers and a rollback undoes
    -- the increment, so numbers are strictly increasing and gap-free.
    latest_version         BIGINT NOT NULL DEFAULT 0,
    last_published_at      TIMESTAMPTZ,
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by             TEXT NOT NULL,
    updated_at             TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE versions (
    topic_id     BIGINT NOT NULL REFERENCES topics(id) ON DELETE CASCADE,
    version      BIGINT NOT NULL CHECK (version >= 1),
    created_at   TIMESTAMPTZ NOT NULL,
    created_by   TEXT NOT NULL,
    message      TEXT NOT NULL DEFAULT '',
    metadata     JSONB NOT NULL DEFAULT '{}'::jsonb,
    content_type TEXT NOT NULL,
    size         BIGINT NOT NULL CHECK (size >= 0),
    sha256       TEXT NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    storage      TEXT NOT NULL CHECK (storage IN ('inline', 'object')),
    inline_data  BYTEA,
    object_key   TEXT,
    purged_at    TIMESTAMPTZ,
    PRIMARY KEY (topic_id, version),
    CHECK (purged_at IS NOT NULL OR (storage = 'inline') = (inline_data IS NOT NULL))
);

-- Append-only: a scope, once added, is never removed.
CREATE TABLE scopes (
    topic_id     BIGINT NOT NULL,
    version      BIGINT NOT NULL,
    selector     JSONB NOT NULL,
    -- canonical string form (sorted keys, `*` for everyone): the identity of a selector
    selector_key TEXT NOT NULL,
    added_at     TIMESTAMPTZ NOT NULL,
    added_by     TEXT NOT NULL,
    PRIMARY KEY (topic_id, version, selector_key),
    FOREIGN KEY (topic_id, version) REFERENCES versions(topic_id, version) ON DELETE CASCADE
);

CREATE TABLE pins (
    id           BIGSERIAL PRIMARY KEY,
    topic_id     BIGINT NOT NULL REFERENCES topics(id) ON DELETE CASCADE,
    selector     JSONB NOT NULL,
    selector_key TEXT NOT NULL,
    version      BIGINT NOT NULL,
    reason       TEXT NOT NULL DEFAULT '',
    created_at   TIMESTAMPTZ NOT NULL,
    created_by   TEXT NOT NULL,
    removed_at   TIMESTAMPTZ,
    removed_by   TEXT,
    FOREIGN KEY (topic_id, version) REFERENCES versions(topic_id, version)
);
-- At most one active pin per (topic, selector).
CREATE UNIQUE INDEX pins_one_active ON pins (topic_id, selector_key) WHERE removed_at IS NULL;
CREATE INDEX pins_topic ON pins (topic_id);

CREATE TABLE api_tokens (
    id           BIGSERIAL PRIMARY KEY,
    name         TEXT NOT NULL,
    -- SHA-256 of the token: tokens are 256-bit random strings, so a fast hash is enough
    -- (argon2 is for low-entropy passwords).
    token_hash   TEXT NOT NULL UNIQUE,
    is_admin     BOOLEAN NOT NULL DEFAULT false,
    -- non-admin tokens act on topics owned by this team
    team         TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by   TEXT NOT NULL DEFAULT 'system',
    revoked_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ
);
CREATE UNIQUE INDEX api_tokens_active_name ON api_tokens (name) WHERE revoked_at IS NULL;
