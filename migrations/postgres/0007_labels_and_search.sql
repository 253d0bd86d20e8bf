-- Labels, filters and full-text search (issue: finding work).

-- A team's labels. `name_key` is the name folded to lower case (by the server, Unicode-aware), so
-- names are unique per team whatever their case. No foreign key on the team row (see 0002).
CREATE TABLE labels (
    id         UUID PRIMARY KEY,
    team_id    UUID NOT NULL,
    name       TEXT NOT NULL,
    name_key   TEXT NOT NULL,
    color      TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX labels_team_name ON labels(team_id, name_key);
CREATE INDEX labels_team ON labels(team_id, id);

-- A task's labels are kept twice, in the same transaction: `tasks.label_ids` (the set as the task
-- carries it: comma-separated ids in ascending order, read with the row) and `task_labels` (the
-- same set as rows, so that a label filter is an index lookup).
ALTER TABLE tasks ADD COLUMN label_ids TEXT NOT NULL DEFAULT '';
CREATE TABLE task_labels (
    label_id UUID NOT NULL REFERENCES labels(id) ON DELETE CASCADE,
    task_id  UUID NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    PRIMARY KEY (label_id, task_id)
);
CREATE INDEX task_labels_task ON task_labels(task_id);

-- Priority as a number, so that `sort=priority` walks an index (none 0 … urgent 4).
ALTER TABLE tasks ADD COLUMN priority_rank SMALLINT NOT NULL DEFAULT 0;
UPDATE tasks SET priority_rank = CASE priority
    WHEN 'low' THEN 1 WHEN 'medium' THEN 2 WHEN 'high' THEN 3 WHEN 'urgent' THEN 4 ELSE 0 END;

-- One index per filter and per sort, each led by the team and ended by the id (the tie-break of
-- every sort and the key of every cursor).
CREATE INDEX tasks_team_status ON tasks(team_id, status, id);
CREATE INDEX tasks_team_assignee ON tasks(team_id, assignee_user_id, id);
CREATE INDEX tasks_team_priority ON tasks(team_id, priority_rank, id);
CREATE INDEX tasks_team_due ON tasks(team_id, due_date, id);
CREATE INDEX tasks_team_updated ON tasks(team_id, updated_at, id);
CREATE INDEX tasks_team_position ON tasks(team_id, position, id);
CREATE INDEX tasks_board ON tasks(board_id, id);

-- Full-text search over titles (weight A) and descriptions (weight B), with the `simple`
-- configuration (no stemming, no stop words: the same words match as on SQLite's FTS5).
ALTER TABLE tasks ADD COLUMN search tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector('simple', title), 'A') || setweight(to_tsvector('simple', description), 'B')
) STORED;
CREATE INDEX tasks_search ON tasks USING gin (search);
