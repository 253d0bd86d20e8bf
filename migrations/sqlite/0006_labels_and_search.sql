-- Labels, filters and full-text search (issue: finding work).

-- A team's labels. `name_key` is the name folded to lower case (by the server, Unicode-aware), so
-- names are unique per team whatever their case.
CREATE TABLE labels (
    id         BLOB PRIMARY KEY NOT NULL,
    team_id    BLOB NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    name_key   TEXT NOT NULL,
    color      TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE UNIQUE INDEX labels_team_name ON labels(team_id, name_key);
CREATE INDEX labels_team ON labels(team_id, id);

-- A task's labels are kept twice, in the same transaction: `tasks.label_ids` (the set as the task
-- carries it: comma-separated ids in ascending order, read with the row) and `task_labels` (the
-- same set as rows, so that a label filter is an index lookup).
ALTER TABLE tasks ADD COLUMN label_ids TEXT NOT NULL DEFAULT '';
CREATE TABLE task_labels (
    label_id BLOB NOT NULL REFERENCES labels(id) ON DELETE CASCADE,
    task_id  BLOB NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    PRIMARY KEY (label_id, task_id)
) WITHOUT ROWID;
CREATE INDEX task_labels_task ON task_labels(task_id);

-- Priority as a number, so that `sort=priority` walks an index (none 0 … urgent 4).
ALTER TABLE tasks ADD COLUMN priority_rank INTEGER NOT NULL DEFAULT 0;
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

-- Full-text search over titles and descriptions. Contentless (the text stays in `tasks` only);
-- the triggers keep it in step inside the writing transaction. `team` holds one token per row,
-- `t` and the team id in hex, so that a search intersects the team's rows inside the index
-- instead of reading every team's matches. Diacritics are kept, as PostgreSQL's `simple`
-- configuration keeps them: the same words match on both backends.
CREATE VIRTUAL TABLE tasks_fts USING fts5(
    team, title, description,
    content = '', prefix = '2 3', tokenize = 'unicode61 remove_diacritics 0'
);
INSERT INTO tasks_fts (rowid, team, title, description)
    SELECT rowid, 't' || lower(hex(team_id)), title, description FROM tasks;
CREATE TRIGGER tasks_fts_insert AFTER INSERT ON tasks BEGIN
    INSERT INTO tasks_fts (rowid, team, title, description)
    VALUES (new.rowid, 't' || lower(hex(new.team_id)), new.title, new.description);
END;
CREATE TRIGGER tasks_fts_delete AFTER DELETE ON tasks BEGIN
    INSERT INTO tasks_fts (tasks_fts, rowid, team, title, description)
    VALUES ('delete', old.rowid, 't' || lower(hex(old.team_id)), old.title, old.description);
END;
CREATE TRIGGER tasks_fts_update AFTER UPDATE OF title, description ON tasks
WHEN old.title IS NOT new.title OR old.description IS NOT new.description BEGIN
    INSERT INTO tasks_fts (tasks_fts, rowid, team, title, description)
    VALUES ('delete', old.rowid, 't' || lower(hex(old.team_id)), old.title, old.description);
    INSERT INTO tasks_fts (rowid, team, title, description)
    VALUES (new.rowid, 't' || lower(hex(new.team_id)), new.title, new.description);
END;

-- `sort=updatedAt` compares the text: every row in one fixed-width form (milliseconds, `Z`), as
-- the server now writes it.
UPDATE tasks SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', updated_at);
