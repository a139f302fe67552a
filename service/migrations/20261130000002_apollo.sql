-- An Apollo binding: unchanged Apollo clients read the topic as namespace `apollo_namespace`
-- of app `apollo_app_id` (a pair bound to one topic at most). The secret signs their
-- requests (HMAC, as Apollo's access keys): it is kept as given, because verifying a
-- signature needs it, and it is never returned by the API.
ALTER TABLE topics ADD COLUMN apollo_app_id TEXT;
ALTER TABLE topics ADD COLUMN apollo_namespace TEXT;
ALTER TABLE topics ADD COLUMN apollo_secret TEXT;
ALTER TABLE topics ADD CONSTRAINT topics_apollo_complete
    CHECK ((apollo_app_id IS NULL) = (apollo_namespace IS NULL) AND (apollo_secret IS NULL OR apollo_app_id IS NOT NULL));
CREATE UNIQUE INDEX topics_apollo_binding ON topics (apollo_app_id, lower(apollo_namespace))
    WHERE apollo_app_id IS NOT NULL;
