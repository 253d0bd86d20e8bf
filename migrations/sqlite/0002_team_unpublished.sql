-- Teams whose log may be ahead of their published watermark: `append` upserts the team's last seq
-- here in the same transaction, and the relay deletes the row once the watermark reaches it. The
-- relay's scan for work a crashed instance left reads this table, not every team.
CREATE TABLE team_unpublished (
    team_id  BLOB PRIMARY KEY NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    upto_seq INTEGER NOT NULL
);

INSERT INTO team_unpublished (team_id, upto_seq)
SELECT t.id, t.last_seq FROM teams t JOIN team_outbox o ON o.team_id = t.id
WHERE t.last_seq > o.published_seq;
