-- TaskForge schema, PostgreSQL dialect.
CREATE TABLE users (
    id            UUID PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    display_name  TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL
);

CREATE TABLE refresh_families (
    id         UUID PRIMARY KEY,
    user_id    UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL,
    revoked_at TIMESTAMPTZ
);

CREATE TABLE refresh_tokens (
    token_hash BYTEA PRIMARY KEY,
    family_id  UUID NOT NULL REFERENCES refresh_families(id) ON DELETE CASCADE,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ
);
CREATE INDEX refresh_tokens_family ON refresh_tokens(family_id);

CREATE TABLE teams (
    id               UUID PRIMARY KEY,
    name             TEXT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    default_board_id UUID NOT NULL,
    last_seq         BIGINT NOT NULL DEFAULT 0
);

-- The relay's published watermark, apart from `teams` so that advancing it never waits on a writer.
CREATE TABLE team_outbox (
    team_id       UUID PRIMARY KEY REFERENCES teams(id) ON DELETE CASCADE,
    published_seq BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE memberships (
    team_id   UUID NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    user_id   UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role      TEXT NOT NULL,
    joined_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX memberships_user ON memberships(user_id, team_id);

CREATE TABLE boards (
    id         UUID PRIMARY KEY,
    team_id    UUID NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX boards_team ON boards(team_id, id);

CREATE TABLE tasks (
    id               UUID PRIMARY KEY,
    team_id          UUID NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    board_id         UUID NOT NULL REFERENCES boards(id),
    title            TEXT NOT NULL,
    description      TEXT NOT NULL,
    status           TEXT NOT NULL,
    priority         TEXT NOT NULL,
    assignee_user_id UUID,
    due_date         DATE,
    position         DOUBLE PRECISION NOT NULL,
    created_by       UUID NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    version          BIGINT NOT NULL
);
CREATE INDEX tasks_team ON tasks(team_id, id);
CREATE INDEX tasks_column ON tasks(board_id, status, position);

CREATE TABLE comments (
    id             UUID PRIMARY KEY,
    task_id        UUID NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    team_id        UUID NOT NULL,
    author_user_id UUID NOT NULL,
    body           TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    edited_at      TIMESTAMPTZ
);
CREATE INDEX comments_task ON comments(task_id, id);

-- The per-team activity log. `payload` is the activity's JSON exactly as clients receive it; the
-- other columns are what the routing table needs, so a replay routes like a live delivery.
CREATE TABLE activities (
    team_id       UUID NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    seq           BIGINT NOT NULL,
    kind          TEXT NOT NULL,
    board_id      UUID,
    prev_board_id UUID,
    task_id       UUID,
    user_id       UUID,
    ts            TIMESTAMPTZ NOT NULL,
    payload       TEXT NOT NULL,
    PRIMARY KEY (team_id, seq)
);
CREATE INDEX activities_ts ON activities(ts);
