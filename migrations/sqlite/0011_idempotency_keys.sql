-- `Idempotency-Key` on POST: a user's key, the request it was first used with (a hash of its
-- method, path and body) and that request's answer, replayed to retries for 24 hours. `status` is
-- NULL while the first request runs. Keys are per user: another user's key never collides.
CREATE TABLE idempotency_keys (
    user_id     BLOB NOT NULL,
    key         TEXT NOT NULL,
    fingerprint BLOB NOT NULL,
    status      INTEGER,
    headers     TEXT,
    body        BLOB,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys(created_at);
