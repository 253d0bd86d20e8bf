-- Work that one instance at a time does (pruning the activity log): who holds it, and until when.
-- An instance takes a lease that is free or expired and renews its own; a holder that dies leaves
-- it to expire. A row, not an advisory lock: a transaction pooler keeps no session for a lock.
CREATE TABLE leases (
    name   text PRIMARY KEY,
    holder text NOT NULL,
    until  timestamptz NOT NULL
);
