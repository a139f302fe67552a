-- Pin hygiene: a pin may expire; the scheduler removes it then (removed_by 'expiry',
-- removed_at = expires_at, so time travel sees exactly when it stopped applying).
ALTER TABLE pins ADD COLUMN expires_at TIMESTAMPTZ;
ALTER TABLE pins ADD CONSTRAINT pins_expiry_after_creation CHECK (expires_at IS NULL OR expires_at > created_at);
CREATE INDEX pins_expiring ON pins (expires_at) WHERE removed_at IS NULL AND expires_at IS NOT NULL;
