-- An OpenFeature binding: OFREP providers evaluate the topic as flag `ofrep_flag_key`
-- (the topic's name unless another key is given; one topic per key). The flag's value is
-- the resolved version's JSON payload, or its top-level field `ofrep_field`.
ALTER TABLE topics ADD COLUMN ofrep_flag_key TEXT;
ALTER TABLE topics ADD COLUMN ofrep_field TEXT;
ALTER TABLE topics ADD CONSTRAINT topics_ofrep_complete CHECK (ofrep_field IS NULL OR ofrep_flag_key IS NOT NULL);
CREATE UNIQUE INDEX topics_ofrep_flag_key ON topics (ofrep_flag_key) WHERE ofrep_flag_key IS NOT NULL;
