-- A keyed request's change marks its key `applied` in the change's own transaction: a key whose
-- request was applied but whose answer was never kept (the process died in between) is not run
-- again once stale; a retry is told the answer is lost instead.
ALTER TABLE idempotency_keys ADD COLUMN applied boolean NOT NULL DEFAULT false;
