-- Word queries always name their team. With the words' GIN index alone, a rare word was found
-- by ANDing its postings (1,394 rows of all teams) with a bitmap of the team's 100,000 rows
-- (16 of the 18 ms, measured on 11 teams of 100,000 tasks); led by the team (`btree_gin`), the
-- index finds the team's 130 matches alone (2 ms).
--
-- `btree_gin` is a contrib extension shipped with PostgreSQL (a separate contrib package on some
-- distributions) and trusted since 13: a role with CREATE on the database may create it. Where
-- it cannot be created, the words keep their index without the team (slower for rare words,
-- otherwise the same) and the migration says so instead of failing.
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS btree_gin;
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'btree_gin could not be created (%): the search index stays without the team', SQLERRM;
END $$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'btree_gin') THEN
        CREATE INDEX tasks_team_search ON tasks USING gin (team_id, search);
        DROP INDEX tasks_search;
    END IF;
END $$;
