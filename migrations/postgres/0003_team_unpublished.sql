-- Teams whose log may be ahead of their published watermark: `append` upserts the team's last seq
-- here in the same transaction, and the relay deletes the row once the watermark reaches it. The
-- relay's scan for work a crashed instance left reads this table, not every team.
-- No foreign key to `teams`: the upsert runs in the transactions that update the team's row, and
-- a key would take FOR KEY SHARE on it (see 0002).
CREATE TABLE team_unpublished (
    team_id  UUID PRIMARY KEY,
    upto_seq BIGINT NOT NULL
);

INSERT INTO team_unpublished (team_id, upto_seq)
SELECT t.id, t.last_seq FROM teams t JOIN team_outbox o ON o.team_id = t.id
WHERE t.last_seq > o.published_seq;
