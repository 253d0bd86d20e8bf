-- Every task insert and every logged activity took a FOR KEY SHARE lock on its team's row through
-- these foreign keys, while the same transactions update that row's last_seq. Under concurrent
-- writes to one team PostgreSQL then builds a multixact per insert on that one row, which capped a
-- team at about 250 task creations/s on a 2-core machine (about 1,050/s without them). Teams are
-- never deleted and every insert names a team the same transaction checked, so the constraints
-- guarded nothing the code does not already guarantee. (SQLite, with one writer, keeps them.)
ALTER TABLE tasks DROP CONSTRAINT tasks_team_id_fkey;
ALTER TABLE activities DROP CONSTRAINT activities_team_id_fkey;
