-- The index's tokenizer splits only where the server does. `unicode61` also split inside words the
-- server keeps whole (circled letters, some vowel signs, letters newer than Unicode 6.1), so a
-- query word could shrink to the bare team prefix and match every task of the team. The server
-- already splits, lower-cases and joins the words with spaces: `ascii` keeps every non-ASCII
-- character inside a token and splits on ASCII separators only, which is exactly that.
DROP TABLE task_words;
CREATE VIRTUAL TABLE task_words USING fts5(
    title, description,
    content = '', contentless_delete = 1, tokenize = 'ascii'
);
UPDATE tasks SET search_key = NULL;
-- A task deleted by any path (a cascade, a statement of an operator) leaves no words behind, so
-- that its key, if handed out again, starts empty.
CREATE TRIGGER task_words_delete AFTER DELETE ON tasks WHEN old.search_key IS NOT NULL BEGIN
    DELETE FROM task_words WHERE rowid = old.search_key;
END;
