-- Trust on the consumer path: token kinds (consumer tokens may be bound to labels and to
-- topics), restricted topics, whose consumer reports count for health gates.
ALTER TABLE api_tokens ADD COLUMN kind TEXT NOT NULL DEFAULT 'publisher'
    CHECK (kind IN ('admin', 'publisher', 'consumer'));
UPDATE api_tokens SET kind = 'admin' WHERE is_admin;
-- consumer tokens: the labels every poll with the token must claim (`{}`: none)
ALTER TABLE api_tokens ADD COLUMN labels JSONB NOT NULL DEFAULT '{}'::jsonb;
-- consumer tokens: restricted topics they may read besides their team's (exact names or
-- `prefix.*` patterns)
ALTER TABLE api_tokens ADD COLUMN topics TEXT[] NOT NULL DEFAULT '{}';

-- A restricted topic is read and polled only with a token (or user) allowed on it.
ALTER TABLE topics ADD COLUMN restricted BOOLEAN NOT NULL DEFAULT false;
-- Health gates count reports from authenticated consumers only, unless this is set.
ALTER TABLE topics ADD COLUMN anonymous_reports BOOLEAN NOT NULL DEFAULT false;

-- Who reported: `token:<name>` for an authenticated consumer, NULL for an anonymous one.
-- An anonymous poll never overwrites a row an authenticated consumer holds.
ALTER TABLE consumers ADD COLUMN principal TEXT;
