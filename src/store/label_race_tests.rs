//! A label deleted while a task write is under way stays deleted (PostgreSQL, READ COMMITTED:
//! the one backend where the two can interleave; SQLite's single writer runs them one after the
//! other).

use uuid::Uuid;

use super::scratch_tests::ScratchPg;
use super::{PgStore, Store};
use crate::domain::*;

fn at() -> time::OffsetDateTime {
    crate::domain::model::timestamp::truncate(time::OffsetDateTime::now_utc())
}

#[tokio::test]
async fn a_task_write_that_read_a_label_before_its_deletion_does_not_bring_it_back() {
    let Some(db) = ScratchPg::create().await else {
        return;
    };
    let store = PgStore::open(&db.url, &crate::store::PgOptions::pool(4), 64)
        .await
        .expect("opens and migrates");
    let team = TeamId::from(Uuid::now_v7());
    let board = BoardId::from(Uuid::now_v7());
    let label = Label {
        id: LabelId::from(Uuid::now_v7()),
        team_id: team,
        name: "bug".into(),
        color: "#ff0000".into(),
        created_at: at(),
    };
    let task = Task {
        id: TaskId::from(Uuid::now_v7()),
        team_id: team,
        board_id: board,
        title: "before".into(),
        description: String::new(),
        status: TaskStatus::Todo,
        priority: Priority::None,
        assignee_user_id: None,
        due_date: None,
        position: 1.0,
        created_by: UserId::from(Uuid::now_v7()),
        created_at: at(),
        updated_at: at(),
        version: 1,
        label_ids: vec![label.id],
    };
    let mut setup = store.write().await.expect("begins");
    setup
        .insert_team(&Team {
            id: team,
            name: "t".into(),
            created_at: at(),
            default_board_id: board,
        })
        .await
        .expect("team");
    setup
        .insert_board(&Board {
            id: board,
            team_id: team,
            name: "b".into(),
            created_at: at(),
        })
        .await
        .expect("board");
    setup.insert_label(&label).await.expect("label");
    setup.insert_task(&task, None).await.expect("task");
    setup.commit().await.expect("commits");

    // A title edit reads the task (with its label)...
    let mut edit = store.write().await.expect("begins");
    let read = edit.task(task.id).await.expect("reads").expect("found");
    assert_eq!(read.label_ids, vec![label.id]);
    // ...the label is deleted and committed meanwhile...
    let mut delete = store.write().await.expect("begins");
    assert!(delete.delete_label(label.id).await.expect("deletes"));
    delete.commit().await.expect("commits");
    // ...and the edit, writing what it read plus its change, keeps the deletion.
    let next = Task {
        title: "after".into(),
        version: read.version + 1,
        ..read
    };
    let stored = edit.update_task(&next, true).await.expect("updates");
    assert_eq!(stored, Vec::<LabelId>::new(), "the labels the task has now");
    edit.commit().await.expect("commits");
    let mut check = store.read().await.expect("begins");
    let now = check.task(task.id).await.expect("reads").expect("found");
    assert_eq!(now.title, "after");
    assert!(
        now.label_ids.is_empty(),
        "a deleted label came back: {:?}",
        now.label_ids
    );
    drop(check);
    drop(store);
    db.drop_database().await;
}
