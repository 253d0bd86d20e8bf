//! The SQL the server runs for each query kind of the `search` benchmark, with the values inlined,
//! wrapped in the backend's EXPLAIN: the server logs no plans, so `bench/search.sh` runs these
//! through `sqlite3` / `psql` beside the measurements.
//!
//! They mirror the server's query builder (`src/store/task_query.rs`: `page`, `parts`, `search`,
//! `fts5_match`, `tsquery`) and its callers (the list reads `limit + 1` = 51 rows, search 20):
//! when those change, change these with them, or the plans printed are not the ones measured.

use std::fmt::Write as _;

use uuid::Uuid;

use crate::search::{Backend, Endpoint, Filter, QueryKind, Sort};
use crate::search_data::{PRIORITIES, TeamShape};

/// The default page size plus the row that tells whether there is a next page.
const LIST_LIMIT: u32 = 51;
const SEARCH_LIMIT: u32 = 20;

/// The columns every task query reads (`task_columns!` in the server's store).
const TASK_COLUMNS: &str = "id, team_id, board_id, title, description, status, priority, \
    assignee_user_id, due_date, position, created_by, created_at, updated_at, version, label_ids";

fn lit(backend: Backend, id: &Uuid) -> String {
    match backend {
        Backend::Sqlite => format!("X'{}'", id.simple()),
        Backend::Postgres => format!("'{}'::uuid", id.hyphenated()),
    }
}

fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The words of `q` as the server splits them: runs of letters and digits, lower-cased, repeats
/// dropped, at most 10, each cut to 50 characters.
pub fn words(q: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in q
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let w: String = w.to_lowercase().chars().take(50).collect();
        if !out.contains(&w) {
            out.push(w);
        }
        if out.len() == 10 {
            break;
        }
    }
    out
}

/// FTS5 query: the team's token, and every word as a prefix in the title or the description.
fn fts5_match(team: &Uuid, words: &[String]) -> String {
    let words: Vec<String> = words
        .iter()
        .map(|w| format!("\"{}\" *", w.replace('"', "\"\"")))
        .collect();
    format!(
        "team : \"t{}\" AND {{title description}} : ({})",
        team.simple(),
        words.join(" AND ")
    )
}

/// tsquery: every word as a prefix.
fn tsquery(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("'{}':*", w.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(" & ")
}

fn column(sort: Sort) -> &'static str {
    match sort {
        Sort::CreatedAt => "id",
        Sort::UpdatedAt => "updated_at",
        Sort::DueDate => "due_date",
        Sort::Priority => "priority_rank",
        Sort::Position => "position",
    }
}

/// The filter's conditions, after `WHERE team_id = …`.
fn filter(backend: Backend, team: &TeamShape, f: &Filter) -> String {
    let mut w = String::new();
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
        let words = words(q);
        match backend {
            Backend::Sqlite => {
                let _ = write!(
                    w,
                    " AND rowid IN (SELECT rowid FROM tasks_fts WHERE tasks_fts MATCH {})",
                    quoted(&fts5_match(&team.id, &words))
                );
            }
            Backend::Postgres => {
                let _ = write!(
                    w,
                    " AND search @@ to_tsquery('simple', {})",
                    quoted(&tsquery(&words))
                );
            }
        }
    }
    w
}

/// Which tasks of a due-date sort a statement reads: the server reads the dated ones by the
/// index, then (while the page is not full) the undated ones by id.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    All,
    Dated,
    Undated,
}

/// The statements of one query kind, in the order the server runs them (two for a due-date
/// sort). A page-2 kind carries a cursor past the first tasks of its sort (a due date two years
/// back, the nil id), of the shape the server binds.
pub fn statements(backend: Backend, team: &TeamShape, kind: &QueryKind) -> Vec<String> {
    let f = &kind.filter;
    if kind.endpoint == Endpoint::Search {
        let words = words(f.q.as_deref().unwrap_or(""));
        let columns: Vec<String> = TASK_COLUMNS
            .split(',')
            .map(|c| format!("tasks.{}", c.trim()))
            .collect();
        let columns = columns.join(", ");
        return vec![match backend {
            Backend::Sqlite => format!(
                "SELECT {columns}, -bm25(tasks_fts, 0.0, 4.0, 1.0) AS score \
                 FROM tasks_fts JOIN tasks ON tasks.rowid = tasks_fts.rowid \
                 WHERE tasks_fts MATCH {} \
                 ORDER BY bm25(tasks_fts, 0.0, 4.0, 1.0), tasks.id LIMIT {SEARCH_LIMIT}",
                quoted(&fts5_match(&team.id, &words))
            ),
            Backend::Postgres => format!(
                "SELECT {columns}, ts_rank(search, query)::float8 AS score \
                 FROM tasks, to_tsquery('simple', {}) AS query \
                 WHERE team_id = {} AND search @@ query \
                 ORDER BY score DESC, id LIMIT {SEARCH_LIMIT}",
                quoted(&tsquery(&words)),
                lit(backend, &team.id)
            ),
        }];
    }
    let (sort, desc) = f.sort.unwrap_or((Sort::CreatedAt, false));
    let parts: &[Part] = if sort == Sort::DueDate {
        &[Part::Dated, Part::Undated]
    } else {
        &[Part::All]
    };
    let (cmp, dir) = if desc { ("<", "DESC") } else { (">", "ASC") };
    let col = column(sort);
    let cursor_key = kind.page2.then(|| match sort {
        Sort::CreatedAt => None,
        Sort::UpdatedAt => Some(quoted("2025-01-01T00:00:00.000Z")),
        Sort::DueDate => Some(quoted("2025-01-01")),
        Sort::Priority => Some("2".to_string()),
        Sort::Position => Some("100.0".to_string()),
    });
    parts
        .iter()
        .map(|part| {
            let mut sql = format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE team_id = {}{}",
                lit(backend, &team.id),
                filter(backend, team, f)
            );
            match part {
                Part::Dated => sql.push_str(" AND due_date IS NOT NULL"),
                Part::Undated => sql.push_str(" AND due_date IS NULL"),
                Part::All => {}
            }
            match (&cursor_key, part) {
                (Some(_), Part::Undated) | (None, _) => {}
                (Some(None), _) => {
                    let _ = write!(sql, " AND id {cmp} {}", lit(backend, &Uuid::nil()));
                }
                (Some(Some(k)), _) => {
                    let _ = write!(
                        sql,
                        " AND ({col}, id) {cmp} ({k}, {})",
                        lit(backend, &Uuid::nil())
                    );
                }
            }
            if *part == Part::Undated || sort == Sort::CreatedAt {
                let _ = write!(sql, " ORDER BY id {dir}");
            } else {
                let _ = write!(sql, " ORDER BY {col} {dir}, id {dir}");
            }
            let _ = write!(sql, " LIMIT {LIST_LIMIT}");
            sql
        })
        .collect()
}

/// The EXPLAIN blocks of one query kind for the backend's shell, each after a heading line and
/// the statement.
pub fn explain(backend: Backend, team: &TeamShape, kind: &QueryKind, count: bool) -> String {
    let mut out = String::new();
    let statements = statements(backend, team, kind);
    let n = statements.len();
    for (i, sql) in statements.iter().enumerate() {
        let heading = if n > 1 {
            format!("== {} (statement {} of {n})", kind.name, i + 1)
        } else {
            format!("== {}", kind.name)
        };
        match backend {
            Backend::Sqlite => {
                let _ = writeln!(out, "SELECT {};", quoted(&heading));
                let _ = writeln!(out, "SELECT {};", quoted(sql));
                if count {
                    let _ = writeln!(
                        out,
                        "SELECT 'matching tasks: ' || count(*) FROM ({});",
                        without_limit(sql)
                    );
                }
                let _ = writeln!(out, "EXPLAIN QUERY PLAN {sql};");
            }
            Backend::Postgres => {
                let _ = writeln!(out, "SELECT {};", quoted(&heading));
                let _ = writeln!(out, "SELECT {};", quoted(sql));
                if count {
                    let _ = writeln!(
                        out,
                        "SELECT 'matching tasks: ' || count(*) FROM ({}) m;",
                        without_limit(sql)
                    );
                }
                let _ = writeln!(out, "EXPLAIN (ANALYZE, BUFFERS) {sql};");
            }
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
        assert_eq!(words("a A b"), vec!["a", "b"]);
        let many: String = (0..20).map(|i| format!("w{i} ")).collect();
        assert_eq!(words(&many).len(), 10);
    }

    #[test]
    fn fts5_and_tsquery_take_every_word_as_a_prefix() {
        // The server's own test of the same strings (src/store/task_query.rs).
        let team = Uuid::from_u128(0xab);
        assert_eq!(
            fts5_match(&team, &["dep".into(), "x\"y".into()]),
            "team : \"t000000000000000000000000000000ab\" AND {title description} : (\"dep\" * AND \"x\"\"y\" *)"
        );
        assert_eq!(tsquery(&["dep".into(), "o'k".into()]), "'dep':* & 'o''k':*");
    }
}
