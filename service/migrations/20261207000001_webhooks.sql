-- Webhooks (docs/webhooks.md): subscriptions, the change events (the outbox, written in
-- the transaction of the change, with one delivery per matching subscription) and the
-- delivery state the worker moves.

CREATE TABLE webhook_subscriptions (
    id                   BIGSERIAL PRIMARY KEY,
    url                  TEXT NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    description          TEXT NOT NULL DEFAULT '' CHECK (length(description) <= 1000),
    -- At most one of topic_id and team: neither is a global subscription (admins only).
    topic_id             BIGINT REFERENCES topics(id) ON DELETE CASCADE,
    team                 TEXT,
    -- A topic subscription made by a non-admin gets the topic's events only while the topic
    -- is owned by the team that owned it then (a topic given to another team, maybe
    -- restricted, stops going to the old team's receiver).
    topic_owner          TEXT,
    by_admin             BOOLEAN NOT NULL DEFAULT false,
    -- Empty: every event type.
    event_types          TEXT[] NOT NULL DEFAULT '{}',
    -- `whsec_<base64>`; the previous one signs too until previous_expires_at (rotation).
    secret               TEXT NOT NULL,
    previous_secret      TEXT,
    previous_expires_at  TIMESTAMPTZ,
    -- Deliveries may go to loopback, private and link-local addresses (set by admins only).
    allow_private        BOOLEAN NOT NULL DEFAULT false,
    enabled              BOOLEAN NOT NULL DEFAULT true,
    created_by           TEXT NOT NULL,
    created_at           TIMESTAMPTZ NOT NULL,
    updated_at           TIMESTAMPTZ NOT NULL,
    CONSTRAINT webhook_subscriptions_one_scope CHECK (topic_id IS NULL OR team IS NULL)
);
CREATE INDEX webhook_subscriptions_topic ON webhook_subscriptions (topic_id) WHERE topic_id IS NOT NULL;

-- One change event; written only when some subscription matched it.
CREATE TABLE webhook_events (
    seq        BIGSERIAL PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    type       TEXT NOT NULL,
    topic      TEXT,
    at         TIMESTAMPTZ NOT NULL,
    data       JSONB NOT NULL
);

CREATE TABLE webhook_deliveries (
    id               BIGSERIAL PRIMARY KEY,
    subscription_id  BIGINT NOT NULL REFERENCES webhook_subscriptions(id) ON DELETE CASCADE,
    event_seq        BIGINT NOT NULL REFERENCES webhook_events(seq) ON DELETE CASCADE,
    state            TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL,
    -- A worker is sending it until then (another one leaves it alone).
    lease_until      TIMESTAMPTZ,
    last_attempt_at  TIMESTAMPTZ,
    last_status      INTEGER,
    last_latency_ms  INTEGER,
    last_response    TEXT,
    last_error       TEXT,
    delivered_at     TIMESTAMPTZ,
    UNIQUE (subscription_id, event_seq)
);
-- The worker's question: the oldest pending delivery of each subscription.
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (subscription_id, event_seq) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (subscription_id, id DESC);
