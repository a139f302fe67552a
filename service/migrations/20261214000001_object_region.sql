-- A topic's regions may leave out the home region (docs/regions.md): its publishes stream to
-- the first of its regions instead, so a version's object (and a candidate's, while external
-- checks look at it) may live in another region's store. The region its object_key is in;
-- NULL: the home region (every row written before this migration).
ALTER TABLE versions ADD COLUMN object_region TEXT;
ALTER TABLE validation_candidates ADD COLUMN object_region TEXT;
