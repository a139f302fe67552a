-- The region whose copy served a consumer's last applied download, as its poll's
-- `applied` report says (docs/regions.md). NULL: an inline payload, one region, a failed
-- version, or a client that does not report it.
ALTER TABLE consumers ADD COLUMN served_region TEXT;
