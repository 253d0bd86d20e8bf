//! Every filter, sort and search of a task list is an index lookup, never a scan of the team:
//! the queries `task_query` builds, explained by each real database after the migrations.
//!
//! SQLite's planner uses an index wherever one fits, so its plans are asserted as they come.
//! PostgreSQL rightly prefers a sequential scan of the few rows a test holds, so its plans are
//! taken with `enable_seqscan = off`: what is asserted there is that an index can serve every
//! query. The plans on 100,000 tasks a team are in the search benchmark's output.

use sqlx::Connection;
use uuid::Uuid;

use super::sql::bind_all;
use super::task_query::{self, Dialect, TaskPage};
use crate::domain::search::{AssigneeFilter, SortKey, TaskCursor, TaskFilter, TaskSort, words};
use crate::domain::*;

/// Each filter alone, a combination, and the word searches.
fn filters() -> Vec<(&'static str, TaskFilter)> {
    let id = |n| Uuid::from_u128(n);
    let day = time::Date::from_calendar_date(2026, time::Month::March, 1).expect("a date");
    let none = TaskFilter::default();
    vec![
        ("no filter", none.clone()),
        (
            "boardId",
            TaskFilter {
                board_id: Some(id(2).into()),
                ..none.clone()
            },
        ),
        (
            "status",
            TaskFilter {
                statuses: vec![TaskStatus::Done],
                ..none.clone()
            },
        ),
        (
            "two statuses",
            TaskFilter {
                statuses: vec![TaskStatus::Todo, TaskStatus::Done],
                ..none.clone()
            },
        ),
        (
            "priority",
            TaskFilter {
                priorities: vec![Priority::High],
                ..none.clone()
            },
        ),
        (
            "assigneeUserId",
            TaskFilter {
                assignee: Some(AssigneeFilter::User(id(3).into())),
                ..none.clone()
            },
        ),
        (
            "assigneeUserId=none",
            TaskFilter {
                assignee: Some(AssigneeFilter::Nobody),
                ..none.clone()
            },
        ),
        (
            "labelId",
            TaskFilter {
                label_ids: vec![id(4).into()],
                ..none.clone()
            },
        ),
        (
            "two labelIds",
            TaskFilter {
                label_ids: vec![id(4).into(), id(5).into()],
                ..none.clone()
            },
        ),
        (
            "dueAfter",
            TaskFilter {
                due_after: Some(day),
                ..none.clone()
            },
        ),
        (
            "dueBefore",
            TaskFilter {
                due_before: Some(day),
                ..none.clone()
            },
        ),
        (
            "q",
            TaskFilter {
                words: words("deploy fai").expect("words"),
                ..none.clone()
            },
        ),
        (
            "status + labelId + q",
            TaskFilter {
                statuses: vec![TaskStatus::Todo],
                label_ids: vec![id(4).into()],
                words: words("deploy").expect("words"),
                ..none
            },
        ),
    ]
}

fn sorts() -> Vec<TaskSort> {
    TaskSort::FIELDS
        .iter()
        .flat_map(|(name, _)| [name.to_string(), format!("-{name}")])
        .map(|s| TaskSort::parse(&s).expect("a sort"))
        .collect()
}

/// A cursor in the middle of `sort`.
fn cursor(sort: TaskSort) -> TaskCursor {
    let key = match sort.key_of(&sample()) {
        SortKey::DueDate(_) => SortKey::DueDate(Some(
            time::Date::from_calendar_date(2026, time::Month::March, 1).expect("a date"),
        )),
        k => k,
    };
    TaskCursor {
        key,
        id: Uuid::from_u128(9).into(),
    }
}

fn sample() -> Task {
    let at = time::OffsetDateTime::UNIX_EPOCH;
    Task {
        id: Uuid::from_u128(9).into(),
        team_id: Uuid::from_u128(1).into(),
        board_id: Uuid::from_u128(2).into(),
        title: String::new(),
        description: String::new(),
        status: TaskStatus::Todo,
        priority: Priority::Low,
        assignee_user_id: None,
        due_date: None,
        position: 1.0,
        created_by: Uuid::from_u128(3).into(),
        created_at: at,
        updated_at: at,
        version: 1,
        label_ids: Vec::new(),
    }
}

/// What a filter alone in the default sort must be found by on SQLite: its own index, not a
/// walk of the team's.
fn own_index(filter: &str) -> Option<&'static str> {
    Some(match filter {
        "boardId" => "INDEX tasks_board ",
        "status" => "INDEX tasks_team_status ",
        "priority" => "INDEX tasks_team_priority ",
        "assigneeUserId" | "assigneeUserId=none" => "INDEX tasks_team_assignee ",
        "labelId" | "two labelIds" => "SEARCH task_labels USING PRIMARY KEY",
        "dueAfter" | "dueBefore" => "INDEX tasks_team_due ",
        "q" => "SCAN task_words VIRTUAL TABLE",
        _ => return None,
    })
}

/// Every query the store can build for a page, with its name.
fn queries(dialect: Dialect) -> Vec<(String, task_query::Built)> {
    let team = TeamId::from(Uuid::from_u128(1));
    let mut out = Vec::new();
    let filters = filters();
    for (name, filter) in &filters {
        for sort in sorts() {
            let after = cursor(sort);
            for after in [None, Some(&after)] {
                for part in task_query::parts(sort, after) {
                    for access in task_query::accesses(dialect, filter, sort) {
                        let req = TaskPage {
                            team,
                            filter,
                            sort,
                            after,
                        };
                        let what = format!(
                            "{name}, sort {sort:?}, after {}, {part:?}, {access:?}",
                            after.is_some()
                        );
                        out.push((
                            what,
                            task_query::page(dialect, "id", req, *part, *access, 51),
                        ));
                    }
                }
            }
        }
    }
    let w = words("deploy fai").expect("words");
    out.push((
        "search".into(),
        task_query::search(dialect, "tasks.id", team, &w, 20),
    ));
    out
}

/// The plan lines that read `tasks` without an index, if any.
fn scans(plan: &[String]) -> Vec<String> {
    plan.iter()
        .filter(|l| {
            let l = l.trim_start_matches(['-', '>', ' ']);
            // SQLite: `SCAN tasks` (with or without a covering index: a whole-team walk).
            // PostgreSQL: `Seq Scan on tasks`.
            l == "SCAN tasks" || l.starts_with("SCAN tasks ") || l.starts_with("Seq Scan on tasks")
        })
        .cloned()
        .collect()
}

#[tokio::test]
async fn sqlite_answers_every_filter_and_sort_from_an_index() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("plans.db").display()
    );
    super::SqliteStore::open(&url, 64)
        .await
        .expect("opens and migrates");
    let mut conn = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("connects");
    let mut bad = Vec::new();
    for (what, built) in queries(Dialect::Sqlite) {
        let sql = format!("EXPLAIN QUERY PLAN {}", built.sql);
        let rows: Vec<(i64, i64, i64, String)> =
            bind_all(sqlx::query_as(sqlx::AssertSqlSafe(sql)), built.args)
                .fetch_all(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}\n{}", built.sql));
        let plan: Vec<String> = rows.into_iter().map(|r| r.3).collect();
        // A walk reads the sort's index by design; the filter's own index is for the others.
        let default_sort =
            what.contains("CreatedAt, descending: false }, after false") && !what.contains("Walk(");
        let filter = what.split(',').next().unwrap_or_default();
        if let Some(index) = own_index(filter).filter(|_| default_sort)
            && !plan.iter().any(|l| l.contains(index))
        {
            bad.push(format!("{what}: not by {index}:\n  {}", plan.join("\n  ")));
        }
        if !scans(&plan).is_empty() {
            bad.push(format!("{what}:\n  {}\n  {}", built.sql, plan.join("\n  ")));
        }
    }
    assert!(
        bad.is_empty(),
        "queries that scan tasks:\n{}",
        bad.join("\n")
    );
}

#[tokio::test]
async fn postgres_can_answer_every_filter_and_sort_from_an_index() {
    let Some(db) = super::scratch_tests::ScratchPg::create().await else {
        return;
    };
    let url = db.url.clone();
    let outcome = async {
        let store = super::PgStore::open(&url, &crate::store::PgOptions::pool(2), 64)
            .await
            .expect("opens and migrates");
        drop(store);
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("connects");
        sqlx::query("SET enable_seqscan = off")
            .execute(&mut conn)
            .await
            .expect("sets");
        let mut bad = Vec::new();
        for (what, built) in queries(Dialect::Postgres) {
            let sql = format!("EXPLAIN {}", built.sql);
            let rows: Vec<(String,)> =
                bind_all(sqlx::query_as(sqlx::AssertSqlSafe(sql)), built.args)
                    .fetch_all(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {e}\n{}", built.sql));
            let plan: Vec<String> = rows.into_iter().map(|r| r.0).collect();
            if !scans(&plan).is_empty() {
                bad.push(format!("{what}:\n  {}\n  {}", built.sql, plan.join("\n  ")));
            }
        }
        conn.close().await.ok();
        bad
    }
    .await;
    db.drop_database().await;
    assert!(
        outcome.is_empty(),
        "queries that scan tasks:\n{}",
        outcome.join("\n")
    );
}
