-- Sessions end when their user's password changes: a console session remembers the
-- user's session epoch at sign-in and is refused once the epoch has moved on (every
-- password change moves it).
ALTER TABLE users ADD COLUMN session_epoch BIGINT NOT NULL DEFAULT 0;
