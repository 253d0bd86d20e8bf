-- Outgoing webhooks (issue: webhooks from the log). A webhook is a durable subscriber of its
-- team's log: `delivered_seq` is its cursor. One instance at a time delivers it: the one whose
-- lease (`lease_owner` until `lease_until`) is current. No foreign keys on the team row, as for
-- the other tables written beside `append` (PostgreSQL).
CREATE TABLE webhooks (
    id                    BLOB PRIMARY KEY NOT NULL,
    team_id               BLOB NOT NULL,
    url                   TEXT NOT NULL,
    description           TEXT NOT NULL,
    events                TEXT NOT NULL,
    enabled               INTEGER NOT NULL,
    delivered_seq         INTEGER NOT NULL,
    -- Sealed with the server's webhook key (AES-256-GCM, the row id as associated data): a dump
    -- of the database alone cannot sign.
    secret                BLOB NOT NULL,
    previous_secret       BLOB,
    previous_secret_until TEXT,
    created_by            BLOB NOT NULL,
    created_at            TEXT NOT NULL,
    updated_at            TEXT NOT NULL,
    failures              INTEGER NOT NULL DEFAULT 0,
    failing_since         TEXT,
    next_attempt_at       TEXT,
    disabled_reason       TEXT,
    lease_owner           BLOB,
    lease_until           TEXT
);
CREATE INDEX webhooks_team ON webhooks(team_id, id);
CREATE INDEX webhooks_enabled ON webhooks(id) WHERE enabled;

-- Every attempt, kept for the deliveries list (the most recent ones per webhook).
CREATE TABLE webhook_deliveries (
    webhook_id   BLOB NOT NULL,
    id           BLOB NOT NULL,
    seq          INTEGER,
    message_id   TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    attempted_at TEXT NOT NULL,
    status       INTEGER,
    latency_ms   INTEGER NOT NULL,
    ok           INTEGER NOT NULL,
    error        TEXT,
    PRIMARY KEY (webhook_id, id)
);
