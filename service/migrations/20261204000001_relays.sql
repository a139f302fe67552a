-- Relays (docs/agent.md "Relay mode"): a `relay` token may call the relay endpoints (it
-- grants nothing downstream by itself), and a consumer reported through a relay is marked
-- with the relay's instance.
ALTER TABLE api_tokens DROP CONSTRAINT IF EXISTS api_tokens_kind_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_kind_check
    CHECK (kind IN ('admin', 'publisher', 'consumer', 'relay'));
-- The relay instance the consumer's last report came through; NULL for a direct poll.
ALTER TABLE consumers ADD COLUMN relayed_by TEXT;
