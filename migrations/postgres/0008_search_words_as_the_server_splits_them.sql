-- Words for search split as the server splits them (runs of letters and digits), not by the text
-- search parser's own rules: the parser keeps `3.14`, `bob@example.com`, `src/main.rs` or
-- `v1.2.3` as single tokens, so `q=14` or `q=example` found them on SQLite but not here. Every
-- run of other characters becomes a space before the parser sees the text. Needs a UTF-8 LC_CTYPE
-- for letters outside ASCII to count as letters (`[:alnum:]`), as the `simple` dictionary needs
-- it to fold their case.
DROP INDEX tasks_search;
ALTER TABLE tasks DROP COLUMN search;
ALTER TABLE tasks ADD COLUMN search tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector('simple', regexp_replace(title, '[^[:alnum:]]+', ' ', 'g')), 'A')
    || setweight(to_tsvector('simple', regexp_replace(description, '[^[:alnum:]]+', ' ', 'g')), 'B')
) STORED;
CREATE INDEX tasks_search ON tasks USING gin (search);
