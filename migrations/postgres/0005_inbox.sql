-- Notifications (issue: an inbox per user). Each user has one inbox stream whose seq is taken from
-- `users.inbox_seq` in the transaction of the change that notifies them: gapless per user.
ALTER TABLE users ADD COLUMN inbox_seq BIGINT NOT NULL DEFAULT 0;

-- Who follows a task; `following = false` records an explicit unfollow.
CREATE TABLE task_followers (
    task_id   UUID NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    user_id   UUID NOT NULL,
    team_id   UUID NOT NULL,
    following BOOLEAN NOT NULL,
    PRIMARY KEY (task_id, user_id)
);

-- A notification is the creation event of its seq. Copies what its reader saw (title, names,
-- excerpt) so that it reads the same after the task changes. No foreign keys: a task's deletion
-- notifies its followers, and their notifications outlive it.
CREATE TABLE notifications (
    user_id            UUID NOT NULL,
    seq                BIGINT NOT NULL,
    id                 UUID NOT NULL,
    team_id            UUID NOT NULL,
    task_id            UUID NOT NULL,
    board_id           UUID,
    task_title         TEXT NOT NULL,
    activity_type      TEXT NOT NULL,
    reasons            TEXT NOT NULL,
    actor_user_id      UUID NOT NULL,
    actor_display_name TEXT NOT NULL,
    comment_id         UUID,
    excerpt            TEXT,
    created_at         TIMESTAMPTZ NOT NULL,
    read_at            TIMESTAMPTZ,
    PRIMARY KEY (user_id, seq)
);
CREATE UNIQUE INDEX notifications_id ON notifications(user_id, id);
CREATE INDEX notifications_created ON notifications(created_at);
-- The unread count and `?unread=true` read only unread rows.
CREATE INDEX notifications_unread ON notifications(user_id, seq) WHERE read_at IS NULL;

-- A mark-read is an event of the stream too, so that other tabs and a resume learn of it.
CREATE TABLE notification_reads (
    user_id      UUID NOT NULL,
    seq          BIGINT NOT NULL,
    ids          TEXT,
    upto         BIGINT,
    unread_count BIGINT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, seq)
);
CREATE INDEX notification_reads_created ON notification_reads(created_at);
