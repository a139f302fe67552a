-- Envelope encryption at rest (docs/encryption.md, "At rest"): which stored payload bytes
-- are sealed (the at_rest format: a header with the wrapped data key, then AES-256-GCM
-- chunks). The flag belongs to the bytes, not to the topic: a topic's setting can change
-- and its older versions stay as they were stored. `size` and `sha256` stay the
-- plaintext's (what clients download and verify).
ALTER TABLE versions ADD COLUMN sealed BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE validation_candidates ADD COLUMN sealed BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE drafts ADD COLUMN sealed BOOLEAN NOT NULL DEFAULT false;
-- `keys rotate --rewrap` walks the sealed versions.
CREATE INDEX versions_sealed ON versions (topic_id, version) WHERE sealed AND purged_at IS NULL;
