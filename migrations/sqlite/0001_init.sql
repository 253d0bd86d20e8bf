-- TaskForge schema, SQLite dialect. Ids are 16-byte UUID blobs, timestamps RFC 3339 text.
CREATE TABLE users (
    id            BLOB PRIMARY KEY NOT NULL,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    display_name  TEXT NOT NULL,
    created_at    TEXT NOT NULL
);

CREATE TABLE refresh_families (
    id         BLOB PRIMARY KEY NOT NULL,
    user_id    BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);

CREATE TABLE refresh_tokens (
    token_hash BLOB PRIMARY KEY NOT NULL,
    family_id  BLOB NOT NULL REFERENCES refresh_families(id) ON DELETE CASCADE,
    expires_at TEXT NOT NULL,
    used_at    TEXT
);
CREATE INDEX refresh_tokens_family ON refresh_tokens(family_id);

CREATE TABLE teams (
    id               BLOB PRIMARY KEY NOT NULL,
    name             TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    default_board_id BLOB NOT NULL,
    last_seq         INTEGER NOT NULL DEFAULT 0
);

-- The relay's published watermark, apart from `teams` so that advancing it never waits on a writer.
CREATE TABLE team_outbox (
    team_id       BLOB PRIMARY KEY NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    published_seq INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE memberships (
    team_id   BLOB NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    user_id   BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role      TEXT NOT NULL,
    joined_at TEXT NOT NULL,
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX memberships_user ON memberships(user_id, team_id);

CREATE TABLE boards (
    id         BLOB PRIMARY KEY NOT NULL,
    team_id    BLOB NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX boards_team ON boards(team_id, id);

CREATE TABLE tasks (
    id               BLOB PRIMARY KEY NOT NULL,
    team_id          BLOB NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    board_id         BLOB NOT NULL REFERENCES boards(id),
    title            TEXT NOT NULL,
    description      TEXT NOT NULL,
    status           TEXT NOT NULL,
    priority         TEXT NOT NULL,
    assignee_user_id BLOB,
    due_date         TEXT,
    position         REAL NOT NULL,
    created_by       BLOB NOT NULL,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    version          INTEGER NOT NULL
);
CREATE INDEX tasks_team ON tasks(team_id, id);
CREATE INDEX tasks_column ON tasks(board_id, status, position);

CREATE TABLE comments (
    id             BLOB PRIMARY KEY NOT NULL,
    task_id        BLOB NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    team_id        BLOB NOT NULL,
    author_user_id BLOB NOT NULL,
    body           TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    edited_at      TEXT
);
CREATE INDEX comments_task ON comments(task_id, id);

-- The per-team activity log. `payload` is the activity's JSON exactly as clients receive it; the
-- other columns are what the routing table needs, so a replay routes like a live delivery.
CREATE TABLE activities (
    team_id       BLOB NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    seq           INTEGER NOT NULL,
    kind          TEXT NOT NULL,
    board_id      BLOB,
    prev_board_id BLOB,
    task_id       BLOB,
    user_id       BLOB,
    ts            TEXT NOT NULL,
    payload       TEXT NOT NULL,
    PRIMARY KEY (team_id, seq)
);
CREATE INDEX activities_ts ON activities(ts);
