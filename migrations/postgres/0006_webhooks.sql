-- Outgoing webhooks (issue: webhooks from the log). A webhook is a durable subscriber of its
-- team's log: `delivered_seq` is its cursor. One instance at a time delivers it: the one whose
-- lease (`lease_owner` until `lease_until`) is current. No foreign keys on the team row, as for
-- the other tables written beside `append` (0002).
CREATE TABLE webhooks (
    id                    UUID PRIMARY KEY,
    team_id               UUID NOT NULL,
    url                   TEXT NOT NULL,
    description           TEXT NOT NULL,
    events                TEXT NOT NULL,
    enabled               BOOLEAN NOT NULL,
    delivered_seq         BIGINT NOT NULL,
    -- Sealed with the server's webhook key (AES-256-GCM, the row id as associated data): a dump
    -- of the database alone cannot sign.
    secret                BYTEA NOT NULL,
    previous_secret       BYTEA,
    previous_secret_until TIMESTAMPTZ,
    created_by            UUID NOT NULL,
    created_at            TIMESTAMPTZ NOT NULL,
    updated_at            TIMESTAMPTZ NOT NULL,
    failures              INTEGER NOT NULL DEFAULT 0,
    failing_since         TIMESTAMPTZ,
    next_attempt_at       TIMESTAMPTZ,
    disabled_reason       TEXT,
    lease_owner           UUID,
    lease_until           TIMESTAMPTZ
);
CREATE INDEX webhooks_team ON webhooks(team_id, id);
CREATE INDEX webhooks_enabled ON webhooks(id) WHERE enabled;

-- Every attempt, kept for the deliveries list (the most recent ones per webhook).
CREATE TABLE webhook_deliveries (
    webhook_id   UUID NOT NULL,
    id           UUID NOT NULL,
    seq          BIGINT,
    message_id   TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    attempted_at TIMESTAMPTZ NOT NULL,
    status       INTEGER,
    latency_ms   BIGINT NOT NULL,
    ok           BOOLEAN NOT NULL,
    error        TEXT,
    PRIMARY KEY (webhook_id, id)
);
