-- Console users (argon2id password hashes), teams that own topics, and the operator
-- audit log: who did what, when, and what changed. The audit log is append-only.

CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE CHECK (username ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
    -- PHC string of an argon2id hash (salt and parameters included)
    password_hash TEXT NOT NULL,
    is_admin      BOOLEAN NOT NULL DEFAULT false,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by    TEXT NOT NULL,
    -- a disabled user cannot sign in and its sessions stop working; the row stays for history
    disabled_at   TIMESTAMPTZ
);

-- Team names are what topics.owner and api_tokens.team hold.
CREATE TABLE teams (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9._-]{1,64}$'),
    description TEXT NOT NULL DEFAULT '',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by  TEXT NOT NULL DEFAULT 'system'
);

CREATE TABLE team_members (
    team_id  BIGINT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    user_id  BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    added_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX team_members_user ON team_members (user_id);

-- Every operator action, written in the transaction of the change it records, so a
-- rejected request leaves no row and a committed change always has one.
CREATE TABLE audit_log (
    id      BIGSERIAL PRIMARY KEY,
    at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Caller::who(): `user:<name>`, `token:<name>`, `system`, `anonymous`
    actor   TEXT NOT NULL,
    -- `<object>.<verb>`, e.g. `pin.set`; filters match prefixes (`pin.`)
    action  TEXT NOT NULL,
    topic   TEXT,
    details JSONB NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_topic ON audit_log (topic, id DESC);
CREATE INDEX audit_log_actor ON audit_log (actor, id DESC);
-- text_pattern_ops: the action filter is a prefix (LIKE 'pin.%'), whatever the collation.
CREATE INDEX audit_log_action ON audit_log (action text_pattern_ops, id DESC);

-- Append-only at the database level: history cannot be rewritten, not even by a bug.
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
