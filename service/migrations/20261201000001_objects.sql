-- Datasets of any size: payloads in an object store, a size limit per topic, registered
-- (not Imprint-written) objects, and the objects waiting to be deleted.

-- Beyond this a publish is refused (413); the default is 10 GiB.
ALTER TABLE topics ADD COLUMN max_size_bytes BIGINT NOT NULL DEFAULT 10737418240
    CHECK (max_size_bytes >= 1);

-- Imprint deletes only the objects it wrote; a registered object (a pointer published
-- to an existing object) is never deleted, not even by retention.
ALTER TABLE versions ADD COLUMN object_owned BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE versions ADD CONSTRAINT versions_object_key
    CHECK (purged_at IS NOT NULL OR (storage = 'object') = (object_key IS NOT NULL));

-- Objects that must go unless a committed version claims them first: an upload is
-- recorded here before its first byte is written and claimed by the version's commit
-- (same transaction), so an interrupted publish leaves a row the sweep acts on after
-- `delete_after`. Purged objects are queued here too (with `delete_after` = now), so a
-- store that is down when the janitor runs loses nothing: the sweep retries.
CREATE TABLE stray_objects (
    key          TEXT PRIMARY KEY,
    delete_after TIMESTAMPTZ NOT NULL,
    reason       TEXT NOT NULL
);
CREATE INDEX stray_objects_due ON stray_objects (delete_after);

-- The janitor looks for topics with a policy and for their oldest live versions.
CREATE INDEX versions_live ON versions (topic_id, version) WHERE purged_at IS NULL;
