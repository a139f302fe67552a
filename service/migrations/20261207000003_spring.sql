-- A Spring Cloud Config binding: unchanged Spring Cloud Config clients read the topic as a
-- property source of application `spring_application` (`application`: every application,
-- like Spring's application.yml), for profile `spring_profile` (NULL: every profile, like
-- {application}.yml). One topic per (application, profile).
ALTER TABLE topics ADD COLUMN spring_application TEXT;
ALTER TABLE topics ADD COLUMN spring_profile TEXT;
ALTER TABLE topics ADD CONSTRAINT topics_spring_complete
    CHECK (spring_profile IS NULL OR spring_application IS NOT NULL);
CREATE UNIQUE INDEX topics_spring_binding ON topics (spring_application, COALESCE(spring_profile, ''))
    WHERE spring_application IS NOT NULL;
