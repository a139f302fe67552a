-- Change requests of scope adds, rollout starts, pins and (scheduled) unpins besides
-- releases of drafts (docs/change-control.md). Their change is in `change`; draft_id is
-- NULL for them.
ALTER TABLE change_requests DROP CONSTRAINT change_requests_kind;
ALTER TABLE change_requests ADD CONSTRAINT change_requests_kind
    CHECK (kind IN ('release', 'scope', 'rollout', 'pin', 'unpin'));
