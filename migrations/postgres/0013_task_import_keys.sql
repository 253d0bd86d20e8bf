-- A task made by a bulk import under a key its importer chose (one per row of the source file):
-- importing the same key into the team again finds this task instead of making a second one, so
-- an interrupted import can simply be run again. Deleting the task frees its key. No foreign key
-- to `teams` (as 0002 dropped them): each would take a share lock on the team row, which every
-- write of the team updates for its seq.
CREATE TABLE task_import_keys (
    team_id uuid NOT NULL,
    key     text NOT NULL,
    task_id uuid NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    PRIMARY KEY (team_id, key)
);
CREATE INDEX task_import_keys_task ON task_import_keys(task_id);
