//! The SQL the server runs for each query kind of the `search` benchmark, with the values inlined,
//! wrapped in the backend's EXPLAIN: the server logs no plans, so `bench/search.sh` runs these
//! through `sqlite3` / `psql` beside the measurements.
//!
//! They are built by the server's own query builder (`taskforge::store::task_query`), as its
//! callers call it (the list reads `limit + 1` = 51 rows, search 20), with the values written in.

use std::fmt::Write as _;

use taskforge::domain::model::{date, timestamp};
use taskforge::domain::search::{
    AssigneeFilter, SortField, SortKey, TaskCursor, TaskFilter, TaskSort,
};
use taskforge::domain::{Priority, TaskStatus, TeamId};
use taskforge::store::task_query::{self, Arg, Dialect, TASK_COLUMNS, TaskPage};
use uuid::Uuid;

use crate::search::{Backend, Endpoint, Filter, QueryKind, Sort};
use crate::search_data::TeamShape;

/// The default page size plus the row that tells whether there is a next page.
const LIST_LIMIT: i64 = 51;
const SEARCH_LIMIT: i64 = 20;

fn lit(backend: Backend, id: &Uuid) -> String {
    match backend {
        Backend::Sqlite => format!("X'{}'", id.simple()),
        Backend::Postgres => format!("'{}'::uuid", id.hyphenated()),
    }
}

fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The words of `q` as the server splits them.
pub fn words(q: &str) -> Vec<String> {
    taskforge::domain::search::words(q).unwrap_or_default()
}

fn dialect(backend: Backend) -> Dialect {
    match backend {
        Backend::Sqlite => Dialect::Sqlite,
        Backend::Postgres => Dialect::Postgres,
    }
}

/// The statement with its arguments written in as literals, for the database's shell.
fn inline(backend: Backend, built: task_query::Built) -> String {
    let mut sql = built.sql;
    // From the last placeholder down, so that `$1` never replaces the start of `$12`.
    for (i, arg) in built.args.iter().enumerate().rev() {
        let value = match arg {
            Arg::Id(u) => lit(backend, u),
            Arg::Text(t) => quoted(t),
            Arg::SmallInt(n) => n.to_string(),
            Arg::Int(n) => n.to_string(),
            Arg::Real(x) => format!("{x:?}"),
            Arg::Date(d) => quoted(&date::format(d)),
            Arg::Time(t) => match backend {
                Backend::Sqlite => quoted(&timestamp::format(t)),
                Backend::Postgres => format!("{}::timestamptz", quoted(&timestamp::format(t))),
            },
        };
        sql = sql.replace(&format!("${}", i + 1), &value);
    }
    sql
}

/// The benchmark's filter as the server's.
fn task_filter(f: &Filter) -> TaskFilter {
    TaskFilter {
        board_id: f.board.map(Into::into),
        statuses: f
            .statuses
            .iter()
            .filter_map(|s| TaskStatus::parse(s))
            .collect(),
        priorities: f
            .priorities
            .iter()
            .filter_map(|p| Priority::parse(p))
            .collect(),
        assignee: f.assignee.map(|a| match a {
            Some(u) => AssigneeFilter::User(u.into()),
            None => AssigneeFilter::Nobody,
        }),
        label_ids: f.labels.iter().map(|l| (*l).into()).collect(),
        due_after: f.due_after.as_deref().and_then(date::parse),
        due_before: f.due_before.as_deref().and_then(date::parse),
        words: f.q.as_deref().map(words).unwrap_or_default(),
    }
}

fn task_sort(sort: Option<(Sort, bool)>) -> TaskSort {
    let (sort, descending) = sort.unwrap_or((Sort::CreatedAt, false));
    let field = match sort {
        Sort::CreatedAt => SortField::CreatedAt,
        Sort::UpdatedAt => SortField::UpdatedAt,
        Sort::DueDate => SortField::DueDate,
        Sort::Priority => SortField::Priority,
        Sort::Position => SortField::Position,
    };
    TaskSort { field, descending }
}

/// The statements of one query kind, built by the server's own query builder, in the order the
/// server runs them (two for a due-date sort). A page-2 kind carries a cursor past the first
/// tasks of its sort (2025-01-01, priority 2, position 100, the nil id).
pub fn statements(backend: Backend, team: &TeamShape, kind: &QueryKind) -> Vec<String> {
    let team_id = TeamId::from(team.id);
    let filter = task_filter(&kind.filter);
    if kind.endpoint == Endpoint::Search {
        let columns = task_query::qualified("tasks", TASK_COLUMNS);
        let built = task_query::search(
            dialect(backend),
            &columns,
            team_id,
            &filter.words,
            SEARCH_LIMIT,
        );
        return vec![inline(backend, built)];
    }
    let sort = task_sort(kind.filter.sort);
    let day =
        time::Date::from_calendar_date(2025, time::Month::January, 1).unwrap_or(time::Date::MIN);
    let key = match sort.field {
        SortField::CreatedAt => SortKey::Id,
        SortField::UpdatedAt => SortKey::UpdatedAt(day.midnight().assume_utc()),
        SortField::DueDate => SortKey::DueDate(Some(day)),
        SortField::Priority => SortKey::Priority(2),
        SortField::Position => SortKey::Position(100.0),
    };
    let cursor = TaskCursor {
        key,
        id: Uuid::nil().into(),
    };
    let after = kind.page2.then_some(&cursor);
    let req = TaskPage {
        team: team_id,
        filter: &filter,
        sort,
        after,
    };
    // Every way the server may read each part (a bounded walk, then the matches if it fell short).
    task_query::parts(sort, after)
        .iter()
        .flat_map(|part| {
            task_query::accesses(dialect(backend), &filter, sort)
                .iter()
                .map(move |access| {
                    inline(
                        backend,
                        task_query::page(
                            dialect(backend),
                            TASK_COLUMNS,
                            req,
                            *part,
                            *access,
                            LIST_LIMIT,
                        ),
                    )
                })
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
                // As the server reads: in a transaction with its planner setting.
                let _ = writeln!(out, "BEGIN;\n{};", task_query::PG_READ_SETTING);
                if count {
                    let _ = writeln!(
                        out,
                        "SELECT 'matching tasks: ' || count(*) FROM ({}) m;",
                        without_limit(sql)
                    );
                }
                let _ = writeln!(out, "EXPLAIN (ANALYZE, BUFFERS) {sql};\nCOMMIT;");
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
    fn arguments_are_written_in_from_the_last() {
        let built = task_query::Built {
            sql: "a = $1 AND b = $10 AND c = $2".into(),
            args: (1..=10).map(|i| Arg::Int(i * 100)).collect(),
        };
        assert_eq!(
            inline(Backend::Sqlite, built),
            "a = 100 AND b = 1000 AND c = 200"
        );
    }
}
