-- Work that one instance at a time does (pruning the activity log): who holds it, and until when.
-- An instance takes a lease that is free or expired and renews its own; a holder that dies leaves
-- it to expire.
CREATE TABLE leases (
    name   TEXT PRIMARY KEY NOT NULL,
    holder TEXT NOT NULL,
    until  TEXT NOT NULL
);
