//! SQLite's search index survives rowids being renumbered (as VACUUM may do to a table without an
//! INTEGER PRIMARY KEY, and a dump and restore does): it is keyed by `search_key`.

use sqlx::Connection;
use uuid::Uuid;

use super::{SqliteStore, Store};
use crate::domain::*;

fn task(team: TeamId, board: BoardId, title: &str) -> Task {
    let at = crate::domain::model::timestamp::truncate(time::OffsetDateTime::now_utc());
    Task {
        id: TaskId::from(Uuid::now_v7()),
        team_id: team,
        board_id: board,
        title: title.into(),
        description: String::new(),
        status: TaskStatus::Todo,
        priority: Priority::None,
        assignee_user_id: None,
        due_date: None,
        position: 1.0,
        created_by: UserId::from(Uuid::now_v7()),
        created_at: at,
        updated_at: at,
        version: 1,
        label_ids: Vec::new(),
    }
}

async fn found(store: &SqliteStore, team: TeamId, word: &str) -> Vec<String> {
    let mut tx = store.read().await.expect("begins");
    let words = crate::domain::search::words(word).expect("words");
    let mut titles: Vec<String> = tx
        .search_tasks(team, &words, 50)
        .await
        .expect("searches")
        .into_iter()
        .map(|(t, _)| t.title)
        .collect();
    titles.sort();
    titles
}

/// A fresh database at `url` holding one team, its board and tasks of these titles.
async fn store_with(url: &str, titles: &[&str]) -> (SqliteStore, TeamId, BoardId, Vec<Task>) {
    let store = SqliteStore::open(url, 64)
        .await
        .expect("opens and migrates");
    let team = TeamId::from(Uuid::now_v7());
    let board = BoardId::from(Uuid::now_v7());
    let tasks: Vec<Task> = titles.iter().map(|t| task(team, board, t)).collect();
    let at = crate::domain::model::timestamp::truncate(time::OffsetDateTime::now_utc());
    let mut tx = store.write().await.expect("begins");
    tx.insert_team(&Team {
        id: team,
        name: "t".into(),
        created_at: at,
        default_board_id: board,
    })
    .await
    .expect("team");
    tx.insert_board(&Board {
        id: board,
        team_id: team,
        name: "b".into(),
        created_at: at,
    })
    .await
    .expect("board");
    for t in &tasks {
        tx.insert_task(t, None).await.expect("a task");
    }
    tx.commit().await.expect("commits");
    (store, team, board, tasks)
}

#[tokio::test]
async fn search_survives_renumbered_rowids() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("keys.db").display());
    let (store, team, board, tasks) = store_with(&url, &["alpha one", "beta two"]).await;
    let (a, b) = (tasks[0].clone(), tasks[1].clone());

    // Renumber the rows the other way round, as a rebuild of the table may.
    let mut raw = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("connects");
    sqlx::query("UPDATE tasks SET rowid = 1000 - rowid")
        .execute(&mut raw)
        .await
        .expect("renumbers");
    raw.close().await.ok();

    assert_eq!(found(&store, team, "alpha").await, ["alpha one"]);
    assert_eq!(found(&store, team, "beta").await, ["beta two"]);
    // A new task, an edit and a delete keep the index right.
    let c = task(team, board, "gamma three");
    let mut tx = store.write().await.expect("begins");
    tx.insert_task(&c, None).await.expect("c");
    let renamed = Task {
        title: "alpha renamed".into(),
        version: 2,
        ..a.clone()
    };
    tx.update_task(&renamed, true).await.expect("renames");
    tx.delete_task(b.id).await.expect("deletes");
    tx.commit().await.expect("commits");
    assert_eq!(found(&store, team, "gamma").await, ["gamma three"]);
    // Words the server keeps whole stay whole in the index: a query word never shrinks to the
    // team's bare prefix (which would match every task of the team).
    let circled = task(team, board, "ⓐⓑⓒ कि");
    let mut tx = store.write().await.expect("begins");
    tx.insert_task(&circled, None).await.expect("circled");
    tx.commit().await.expect("commits");
    assert_eq!(found(&store, team, "ⓧ").await, Vec::<String>::new());
    assert_eq!(found(&store, team, "ⓐⓑ").await, ["ⓐⓑⓒ कि"]);
    assert_eq!(found(&store, team, "कि").await, ["ⓐⓑⓒ कि"]);
    assert_eq!(found(&store, team, "कु").await, Vec::<String>::new());
    assert_eq!(found(&store, team, "alpha").await, ["alpha renamed"]);
    assert_eq!(found(&store, team, "one").await, Vec::<String>::new());
    assert_eq!(found(&store, team, "beta").await, Vec::<String>::new());
}

#[tokio::test]
async fn tasks_without_a_search_key_are_indexed_when_the_database_opens() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("pending.db").display()
    );
    let (store, team, _, _) = store_with(&url, &["delta four"]).await;
    drop(store);

    // As if written by other means (an import by SQL): no key, no words.
    let mut raw = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("connects");
    sqlx::query("DELETE FROM task_words")
        .execute(&mut raw)
        .await
        .expect("empties the index");
    sqlx::query("UPDATE tasks SET search_key = NULL")
        .execute(&mut raw)
        .await
        .expect("clears the keys");
    raw.close().await.ok();

    let store = SqliteStore::open(&url, 64).await.expect("reopens");
    assert_eq!(found(&store, team, "delta").await, ["delta four"]);
}
