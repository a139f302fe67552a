-- Which versions point at an object key: registering a key that another topic's version
-- points at is refused (issue 19), and the sweep asks whether a key is in use.
CREATE INDEX versions_object_key ON versions (object_key) WHERE object_key IS NOT NULL;
