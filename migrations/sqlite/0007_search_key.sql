-- The search index was keyed by `tasks.rowid`, which SQLite may renumber (VACUUM on a table
-- without an INTEGER PRIMARY KEY, a dump and restore): the index would then name other tasks, and
-- its contentless 'delete' would remove words it never held. It is keyed by `search_key` now, a
-- number given once when the task is created and never changed.
ALTER TABLE tasks ADD COLUMN search_key INTEGER;
UPDATE tasks SET search_key = rowid;
CREATE UNIQUE INDEX tasks_search_key ON tasks(search_key);

DROP TRIGGER tasks_fts_insert;
DROP TRIGGER tasks_fts_delete;
DROP TRIGGER tasks_fts_update;
-- The next key after the largest (an index lookup), not the new rowid: after a renumbering a new
-- rowid may be a key an older task holds.
CREATE TRIGGER tasks_fts_insert AFTER INSERT ON tasks BEGIN
    UPDATE tasks SET search_key = (SELECT COALESCE(MAX(search_key), 0) + 1 FROM tasks)
    WHERE rowid = new.rowid;
    INSERT INTO tasks_fts (rowid, team, title, description)
    SELECT search_key, 't' || lower(hex(new.team_id)), new.title, new.description
    FROM tasks WHERE rowid = new.rowid;
END;
CREATE TRIGGER tasks_fts_delete AFTER DELETE ON tasks BEGIN
    INSERT INTO tasks_fts (tasks_fts, rowid, team, title, description)
    VALUES ('delete', old.search_key, 't' || lower(hex(old.team_id)), old.title, old.description);
END;
CREATE TRIGGER tasks_fts_update AFTER UPDATE OF title, description ON tasks
WHEN old.title IS NOT new.title OR old.description IS NOT new.description BEGIN
    INSERT INTO tasks_fts (tasks_fts, rowid, team, title, description)
    VALUES ('delete', old.search_key, 't' || lower(hex(old.team_id)), old.title, old.description);
    INSERT INTO tasks_fts (rowid, team, title, description)
    VALUES (new.search_key, 't' || lower(hex(new.team_id)), new.title, new.description);
END;
