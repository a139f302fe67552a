-- The serving state loads only what resolution needs now: for each (topic, selector)
-- the highest live version scoped to it. This index answers that per topic without
-- reading the topic's whole scope history row by row in version order.
CREATE INDEX scopes_best ON scopes (topic_id, selector_key, version DESC);
