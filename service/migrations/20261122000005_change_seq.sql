-- Every change to a topic bumps its change_seq in the changing transaction. A server
-- installs a reloaded topic only if its change_seq is not older than what it holds, so a
-- slow reload that started before a newer change can never overwrite that change.
ALTER TABLE topics ADD COLUMN change_seq BIGINT NOT NULL DEFAULT 0;
