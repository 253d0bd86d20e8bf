//! The SQL the server runs for each query kind of the `search` benchmark, with the values inlined,
//! wrapped in the backend's EXPLAIN: the server logs no plans, so `bench/search.sh` runs these
//! through `sqlite3` / `psql` beside the measurements.
//!
//! They mirror the task list and search queries of the server's store (`src/store/`): when those
//! change, change these with them, or the plans printed are not the ones measured.

use std::fmt::Write as _;

use uuid::Uuid;

use crate::search::{Backend, Endpoint, Filter, QueryKind, Sort};
use crate::search_data::{PRIORITIES, TeamShape};

/// The page size the server uses when no `limit` is given, plus the one row it reads to know
/// whether there is a next page.
const LIST_LIMIT: u32 = 51;
const SEARCH_LIMIT: u32 = 20;

fn lit(backend: Backend, id: &Uuid) -> String {
    match backend {
        Backend::Sqlite => format!("X'{}'", id.simple()),
        Backend::Postgres => format!("'{}'::uuid", id.hyphenated()),
    }
}

fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The words of `q` as the server splits them: runs of letters and digits, lower-cased, at most
/// 10, each cut to 50 characters.
pub fn words(q: &str) -> Vec<String> {
    q.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(10)
        .map(|w| w.to_lowercase().chars().take(50).collect())
        .collect()
}

/// FTS5 query: the team's token and every word as a prefix, in the title or the description.
fn fts5_match(team: &Uuid, q: &str) -> String {
    let mut m = format!("team : t{}", team.simple());
    for w in words(q) {
        let _ = write!(m, " AND {{title description}} : \"{w}\" *");
    }
    m
}

/// tsquery: every word as a prefix.
fn tsquery(q: &str) -> String {
    words(q)
        .iter()
        .map(|w| format!("{w}:*"))
        .collect::<Vec<_>>()
        .join(" & ")
}

fn order_by(backend: Backend, sort: Option<(Sort, bool)>) -> String {
    let (sort, desc) = sort.unwrap_or((Sort::CreatedAt, false));
    let dir = if desc { "DESC" } else { "ASC" };
    match sort {
        Sort::CreatedAt => format!("id {dir}"),
        Sort::UpdatedAt => format!("updated_at {dir}, id {dir}"),
        Sort::Priority => format!("priority_rank {dir}, id {dir}"),
        Sort::Position => format!("position {dir}, id {dir}"),
        // Tasks without a due date come last in both directions.
        Sort::DueDate => match backend {
            Backend::Sqlite => format!("due_date IS NULL, due_date {dir}, id {dir}"),
            Backend::Postgres => format!("due_date {dir} NULLS LAST, id {dir}"),
        },
    }
}

/// The WHERE clause of the task list for `f` on `team`.
fn list_where(backend: Backend, team: &TeamShape, f: &Filter) -> String {
    let mut w = format!("team_id = {}", lit(backend, &team.id));
    if let Some(b) = &f.board {
        let _ = write!(w, " AND board_id = {}", lit(backend, b));
    }
    if !f.statuses.is_empty() {
        let list: Vec<String> = f.statuses.iter().map(|s| quoted(s)).collect();
        let _ = write!(w, " AND status IN ({})", list.join(", "));
    }
    if !f.priorities.is_empty() {
        let list: Vec<String> = f
            .priorities
            .iter()
            .filter_map(|p| PRIORITIES.iter().position(|x| x == p))
            .map(|r| r.to_string())
            .collect();
        let _ = write!(w, " AND priority_rank IN ({})", list.join(", "));
    }
    match &f.assignee {
        Some(Some(a)) => {
            let _ = write!(w, " AND assignee_user_id = {}", lit(backend, a));
        }
        Some(None) => w.push_str(" AND assignee_user_id IS NULL"),
        None => {}
    }
    for l in &f.labels {
        let _ = write!(
            w,
            " AND id IN (SELECT task_id FROM task_labels WHERE label_id = {})",
            lit(backend, l)
        );
    }
    if let Some(d) = &f.due_after {
        let _ = write!(w, " AND due_date >= {}", quoted(d));
    }
    if let Some(d) = &f.due_before {
        let _ = write!(w, " AND due_date <= {}", quoted(d));
    }
    if let Some(q) = &f.q {
        match backend {
            Backend::Sqlite => {
                let _ = write!(
                    w,
                    " AND rowid IN (SELECT rowid FROM tasks_fts WHERE tasks_fts MATCH {})",
                    quoted(&fts5_match(&team.id, q))
                );
            }
            Backend::Postgres => {
                let _ = write!(
                    w,
                    " AND search @@ to_tsquery('simple', {})",
                    quoted(&tsquery(q))
                );
            }
        }
    }
    w
}

/// The statement of one query kind (page 1; a page-2 kind adds a key-set bound in the middle of
/// the range, which is how its plan differs).
pub fn statement(backend: Backend, team: &TeamShape, kind: &QueryKind) -> String {
    let f = &kind.filter;
    if kind.endpoint == Endpoint::Search {
        let q = f.q.as_deref().unwrap_or("");
        return match backend {
            Backend::Sqlite => format!(
                "SELECT t.id, bm25(tasks_fts, 0.0, 10.0, 1.0) AS score FROM tasks_fts \
                 JOIN tasks t ON t.rowid = tasks_fts.rowid \
                 WHERE tasks_fts MATCH {} ORDER BY score LIMIT {SEARCH_LIMIT}",
                quoted(&fts5_match(&team.id, q))
            ),
            Backend::Postgres => format!(
                "SELECT id, ts_rank(search, query) AS score FROM tasks, to_tsquery('simple', {}) query \
                 WHERE team_id = {} AND search @@ query ORDER BY score DESC, id LIMIT {SEARCH_LIMIT}",
                quoted(&tsquery(q)),
                lit(backend, &team.id)
            ),
        };
    }
    let mut w = list_where(backend, team, f);
    if kind.page2 {
        // A bound of the same shape as the cursor's: past the first tasks of the sort.
        if let Some((Sort::DueDate, false)) = f.sort {
            w.push_str(" AND (due_date > '2025-01-01' OR (due_date = '2025-01-01' AND id > ");
            w.push_str(&lit(backend, &Uuid::nil()));
            w.push_str("))");
        }
    }
    format!(
        "SELECT id FROM tasks WHERE {w} ORDER BY {} LIMIT {LIST_LIMIT}",
        order_by(backend, f.sort)
    )
}

/// The EXPLAIN block of one query kind for the backend's shell, with a heading line.
pub fn explain(backend: Backend, team: &TeamShape, kind: &QueryKind, count: bool) -> String {
    let sql = statement(backend, team, kind);
    let mut out = String::new();
    match backend {
        Backend::Sqlite => {
            let _ = writeln!(out, "SELECT {};", quoted(&format!("== {}", kind.name)));
            let _ = writeln!(out, "SELECT {};", quoted(&sql));
            if count {
                let _ = writeln!(
                    out,
                    "SELECT 'matching tasks: ' || count(*) FROM ({});",
                    without_limit(&sql)
                );
            }
            let _ = writeln!(out, "EXPLAIN QUERY PLAN {sql};");
        }
        Backend::Postgres => {
            let _ = writeln!(out, "\\echo '== {}'", kind.name.replace('\'', "''"));
            let _ = writeln!(out, "\\echo '{}'", sql.replace('\'', "''"));
            if count {
                let _ = writeln!(
                    out,
                    "SELECT 'matching tasks: ' || count(*) FROM ({}) m;",
                    without_limit(&sql)
                );
            }
            let _ = writeln!(out, "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql};");
        }
    }
    out
}

fn without_limit(sql: &str) -> &str {
    sql.rfind(" LIMIT ").map_or(sql, |i| &sql[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_like_the_server() {
        assert_eq!(words("Dep fai-led, x2"), vec!["dep", "fai", "led", "x2"]);
        assert_eq!(words(&"w ".repeat(20)).len(), 10);
    }

    #[test]
    fn fts5_and_tsquery_take_every_word_as_a_prefix() {
        let team = Uuid::from_u128(0xab);
        assert_eq!(
            fts5_match(&team, "dep fai"),
            format!(
                "team : t{} AND {{title description}} : \"dep\" * AND {{title description}} : \"fai\" *",
                team.simple()
            )
        );
        assert_eq!(tsquery("dep fai"), "dep:* & fai:*");
    }
}
