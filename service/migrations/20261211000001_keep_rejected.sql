-- keep_rejected (docs/validation.md): a publish the topic's checks reject may be stored
-- unreleased, marked rejected, so its owner can look at it. A rejected version is never
-- released: it gets no scope, no pin and no rollout (refused by the service with
-- 409 `version_rejected`; these triggers are the second line), it is never served or
-- resolved, and it is not the topic's `latest_version` (the next publish takes the
-- number after it all the same).
ALTER TABLE versions ADD COLUMN rejected BOOLEAN NOT NULL DEFAULT false;

CREATE FUNCTION refuse_rejected_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM versions v WHERE v.topic_id = NEW.topic_id AND v.version = NEW.version AND v.rejected) THEN
        RAISE EXCEPTION 'version % was rejected by its topic''s checks', NEW.version
            USING ERRCODE = 'check_violation', CONSTRAINT = 'versions_not_rejected';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER scopes_not_rejected BEFORE INSERT ON scopes
    FOR EACH ROW EXECUTE FUNCTION refuse_rejected_version();
CREATE TRIGGER pins_not_rejected BEFORE INSERT ON pins
    FOR EACH ROW EXECUTE FUNCTION refuse_rejected_version();
CREATE TRIGGER rollouts_not_rejected BEFORE INSERT ON rollouts
    FOR EACH ROW EXECUTE FUNCTION refuse_rejected_version();
