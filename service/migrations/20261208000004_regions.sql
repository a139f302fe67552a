-- Several object stores, one per region (docs/regions.md). The first configured region
-- (`default` with IMPRINT_OBJECT_STORE) is the home region: publishes stream there, and
-- every other region gets a copy, tracked here.

-- A topic may narrow the configured regions (NULL: all of them) and say how many of
-- them must hold an object before a version commits (NULL: all of the topic's regions).
ALTER TABLE topics ADD COLUMN regions TEXT[];
ALTER TABLE topics ADD COLUMN min_regions INTEGER CONSTRAINT topics_min_regions CHECK (min_regions >= 1);

-- One row per (object version, region) that should hold its object: `done` once the
-- region holds it (the home region's row is `done` at commit), `pending` while the worker
-- still has to copy it (retried with backoff until done; `attempts`, `last_error` say how
-- it goes). The key is the object's key inside that region's store.
CREATE TABLE object_copies (
    topic_id      BIGINT NOT NULL,
    version       BIGINT NOT NULL,
    region        TEXT NOT NULL,
    key           TEXT NOT NULL,
    state         TEXT NOT NULL CONSTRAINT object_copies_state CHECK (state IN ('pending', 'done')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    next_attempt  TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    CONSTRAINT object_copies_pkey PRIMARY KEY (topic_id, version, region),
    CONSTRAINT object_copies_version_fkey FOREIGN KEY (topic_id, version)
        REFERENCES versions (topic_id, version) ON DELETE CASCADE
);
CREATE INDEX object_copies_due ON object_copies (next_attempt) WHERE state = 'pending';

-- Stray objects are per region now: a purged version's copies are queued in every
-- region that may hold one, and a region that is down keeps its rows until it is back.
-- '' is the home region (the rows written before this migration).
ALTER TABLE stray_objects ADD COLUMN region TEXT NOT NULL DEFAULT '';
ALTER TABLE stray_objects DROP CONSTRAINT stray_objects_pkey;
ALTER TABLE stray_objects ADD CONSTRAINT stray_objects_pkey PRIMARY KEY (region, key);
