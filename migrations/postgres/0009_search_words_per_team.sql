-- Search words scoped to their team, as on SQLite: each word is indexed as
-- `t<team id in hex>x<word>`, so that the GIN index answers a search from its team's postings
-- only (the team's rows are not intersected with every team's matches of the word), and the
-- planner's statistics of a word are the team's.
DROP INDEX tasks_search;
ALTER TABLE tasks DROP COLUMN search;
ALTER TABLE tasks ADD COLUMN search tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector('simple', regexp_replace(
        ' ' || regexp_replace(title, '[^[:alnum:]]+', ' ', 'g'),
        ' ([[:alnum:]])', ' t' || replace(team_id::text, '-', '') || 'x\1', 'g'
    )), 'A')
    || setweight(to_tsvector('simple', regexp_replace(
        ' ' || regexp_replace(description, '[^[:alnum:]]+', ' ', 'g'),
        ' ([[:alnum:]])', ' t' || replace(team_id::text, '-', '') || 'x\1', 'g'
    )), 'B')
) STORED;
CREATE INDEX tasks_search ON tasks USING gin (search);
