//! A page read by a bounded walk of the sort (`task_query::Access::Walk`) is the page the matches
//! give whenever the walk fills it, and the matches (`Access::Matches`) are the model's page, on
//! both backends: random tasks, every filter mix and sort, pages after a cursor, walks shorter
//! and longer than the page. (The server's walk is 5,000 tasks long; the tests' teams are small,
//! so the short walks here are what exercises a walk that stops before the matches run out.)

use sqlx::Connection;
use uuid::Uuid;

use super::sql::bind_all;
use super::task_query::{self, Access, Dialect, TaskPage};
use super::{PgStore, SqliteStore, Store};
use crate::domain::search::{AssigneeFilter, TaskCursor, TaskFilter, TaskSort};
use crate::domain::*;

/// SplitMix64: the tests' data is the same on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

const WORDS: &[&str] = &["deploy", "failed", "login", "page", "error", "build"];
const STATUSES: &[TaskStatus] = &[TaskStatus::Todo, TaskStatus::InProgress, TaskStatus::Done];
const PRIORITIES: &[Priority] = &[
    Priority::None,
    Priority::Low,
    Priority::Medium,
    Priority::High,
    Priority::Urgent,
];

struct Data {
    team: TeamId,
    boards: Vec<BoardId>,
    users: Vec<UserId>,
    labels: Vec<LabelId>,
    tasks: Vec<Task>,
}

/// 160 tasks of one team (and 20 of another, which no page may return), spread over boards,
/// statuses, priorities, assignees, due dates (a third undated, many sharing a day), positions,
/// labels and words.
async fn seed(store: &dyn Store, rng: &mut Rng) -> Data {
    let base = crate::domain::model::timestamp::truncate(time::OffsetDateTime::now_utc());
    let day = time::Date::from_calendar_date(2026, time::Month::March, 1).expect("a date");
    let mut tx = store.write().await.expect("begins");
    let mut data = None;
    for (n, count) in [(0, 160), (1, 20)] {
        let team = TeamId::from(Uuid::now_v7());
        let boards: Vec<BoardId> = (0..3).map(|_| BoardId::from(Uuid::now_v7())).collect();
        tx.insert_team(&Team {
            id: team,
            name: format!("t{n}"),
            created_at: base,
            default_board_id: boards[0],
        })
        .await
        .expect("team");
        for b in &boards {
            tx.insert_board(&Board {
                id: *b,
                team_id: team,
                name: "b".into(),
                created_at: base,
            })
            .await
            .expect("board");
        }
        let labels: Vec<LabelId> = (0..4).map(|_| LabelId::from(Uuid::now_v7())).collect();
        for (i, l) in labels.iter().enumerate() {
            tx.insert_label(&Label {
                id: *l,
                team_id: team,
                name: format!("l{i}"),
                color: "#00ff00".into(),
                created_at: base,
            })
            .await
            .expect("label");
        }
        let users: Vec<UserId> = (0..3).map(|_| UserId::from(Uuid::now_v7())).collect();
        let mut tasks = Vec::new();
        for _ in 0..count {
            let mut label_ids: Vec<LabelId> = labels
                .iter()
                .copied()
                .filter(|_| rng.below(3) == 0)
                .collect();
            label_ids.sort();
            let title = format!("{} {}", rng.pick(WORDS), rng.pick(WORDS));
            let t = Task {
                id: TaskId::from(Uuid::now_v7()),
                team_id: team,
                board_id: rng.pick(&boards),
                title,
                description: rng.pick(WORDS).to_string(),
                status: rng.pick(STATUSES),
                priority: rng.pick(PRIORITIES),
                assignee_user_id: if rng.below(4) == 0 {
                    None
                } else {
                    Some(rng.pick(&users))
                },
                due_date: if rng.below(3) == 0 {
                    None
                } else {
                    Some(day + time::Duration::days(rng.below(12) as i64))
                },
                position: rng.below(40) as f64,
                created_by: users[0],
                created_at: base,
                updated_at: base + time::Duration::seconds(rng.below(30) as i64),
                version: 1,
                label_ids,
            };
            tx.insert_task(&t, None).await.expect("a task");
            tasks.push(t);
        }
        if n == 0 {
            data = Some(Data {
                team,
                boards,
                users,
                labels,
                tasks,
            });
        }
    }
    tx.commit().await.expect("commits");
    data.expect("the first team")
}

/// A random mix of one to three filters (labels and words included).
fn random_filter(rng: &mut Rng, d: &Data) -> TaskFilter {
    let mut f = TaskFilter::default();
    let kinds = 1 + rng.below(3);
    for _ in 0..kinds {
        match rng.below(7) {
            0 => f.board_id = Some(rng.pick(&d.boards)),
            1 => f.statuses = vec![rng.pick(STATUSES), rng.pick(STATUSES)],
            2 => f.priorities = vec![rng.pick(PRIORITIES), rng.pick(PRIORITIES)],
            3 => {
                f.assignee = Some(if rng.below(3) == 0 {
                    AssigneeFilter::Nobody
                } else {
                    AssigneeFilter::User(rng.pick(&d.users))
                })
            }
            4 => f.label_ids = vec![rng.pick(&d.labels)],
            5 => {
                let day = time::Date::from_calendar_date(2026, time::Month::March, 1)
                    .expect("a date")
                    + time::Duration::days(rng.below(12) as i64);
                f.due_after = Some(day);
            }
            _ => f.words = vec![rng.pick(WORDS)[..3].to_string()],
        }
    }
    f.statuses.sort_by_key(|s| s.as_str());
    f.statuses.dedup();
    f.priorities.sort_by_key(|p| p.rank());
    f.priorities.dedup();
    f
}

/// Runs a built page on `conn` and returns the ids.
macro_rules! ids_of {
    ($conn:expr, $built:expr) => {{
        let built = $built;
        let rows: Vec<(Uuid,)> = bind_all(
            sqlx::query_as(sqlx::AssertSqlSafe(built.sql.clone())),
            built.args,
        )
        .fetch_all(&mut $conn)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", built.sql));
        rows.into_iter().map(|r| r.0).collect::<Vec<Uuid>>()
    }};
}

macro_rules! check_walks {
    ($conn:expr, $dialect:expr, $data:expr) => {{
        let d = $data;
        let mut rng = Rng(7);
        let sorts: Vec<TaskSort> = TaskSort::FIELDS
            .iter()
            .flat_map(|(name, _)| [name.to_string(), format!("-{name}")])
            .map(|s| TaskSort::parse(&s).expect("a sort"))
            .collect();
        let mut full_walks = 0;
        let mut short_walks = 0;
        for round in 0..60 {
            let filter = random_filter(&mut rng, d);
            let sort = sorts[round % sorts.len()];
            let mut model: Vec<&Task> = d.tasks.iter().filter(|t| filter.matches(t)).collect();
            model.sort_by(|a, b| sort.compare(a, b));
            // From the start, and after a task somewhere in the team's order.
            let mut all: Vec<&Task> = d.tasks.iter().collect();
            all.sort_by(|a, b| sort.compare(a, b));
            let middle = all[rng.below(all.len() as u64) as usize];
            for after in [None, Some(TaskCursor::of(sort, middle))] {
                let expected: Vec<Uuid> = model
                    .iter()
                    .filter(|t| {
                        after.is_none() || sort.compare(t, middle) == std::cmp::Ordering::Greater
                    })
                    .map(|t| t.id.into())
                    .collect();
                for limit in [1_i64, 4, 25] {
                    // What the store answers: each part in turn, the walk then the matches.
                    let req = TaskPage {
                        team: d.team,
                        filter: &filter,
                        sort,
                        after: after.as_ref(),
                    };
                    let mut matched = Vec::new();
                    for part in task_query::parts(sort, after.as_ref()) {
                        let left = limit - matched.len() as i64;
                        if left <= 0 {
                            break;
                        }
                        let page = task_query::page($dialect, "id", req, *part, Access::Matches, left);
                        let part_ids = ids_of!($conn, page);
                        for walk in [1_i64, 3, 10, 40, 400] {
                            let page = task_query::page(
                                $dialect,
                                "id",
                                req,
                                *part,
                                Access::Walk(walk),
                                left,
                            );
                            let walked = ids_of!($conn, page);
                            if walked.len() as i64 == left {
                                full_walks += 1;
                                assert_eq!(
                                    walked, part_ids,
                                    "a full walk of {walk} is the page: {filter:?}, {sort:?}, after {after:?}, {part:?}, limit {left}"
                                );
                            } else {
                                short_walks += 1;
                                assert!(walked.len() as i64 <= left);
                                assert_eq!(walked[..], part_ids[..walked.len()], "a short walk is a start of the page");
                            }
                        }
                        matched.extend(part_ids);
                    }
                    let want: Vec<Uuid> = expected.iter().take(limit as usize).copied().collect();
                    assert_eq!(
                        matched, want,
                        "the matches are the model's page: {filter:?}, {sort:?}, after {after:?}, limit {limit}"
                    );
                }
            }
        }
        // Both branches of the store's choice were taken many times.
        assert!(full_walks > 100 && short_walks > 100, "{full_walks} full, {short_walks} short");
    }};
}

#[tokio::test]
async fn sqlite_walks_give_the_matches_page() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("walk.db").display());
    let store = SqliteStore::open(&url, 64)
        .await
        .expect("opens and migrates");
    let data = seed(&store, &mut Rng(1)).await;
    let mut conn = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("connects");
    check_walks!(conn, Dialect::Sqlite, &data);
}

#[tokio::test]
async fn postgres_walks_give_the_matches_page() {
    let Some(db) = super::scratch_tests::ScratchPg::create().await else {
        return;
    };
    let url = db.url.clone();
    // In a task of its own, so that the scratch database is dropped whatever the outcome.
    let outcome = tokio::spawn(async move {
        let store = PgStore::open(&url, &crate::store::PgOptions::pool(2), 64)
            .await
            .expect("opens and migrates");
        let data = seed(&store, &mut Rng(1)).await;
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("connects");
        check_walks!(conn, Dialect::Postgres, &data);
    })
    .await;
    db.drop_database().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
