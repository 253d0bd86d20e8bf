//! Store correctness: a delete racing a move names the board the task was last on.
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use futures_util::future::join_all;
use serde_json::json;
use uuid::Uuid;

both_backends!(a_delete_racing_a_move_names_the_board_the_task_was_on,);

// ---------------------------------------------------------------------------------------------
// 1. A DELETE racing a move of the same task
// ---------------------------------------------------------------------------------------------

/// Rounds of tasks created on the default board, each then moved to another board and deleted
/// at the same moment. Whatever order the two commit in, the `task.deleted` must name the board
/// the task was on at its last `task.created` / `task.updated`, or the room of the board it
/// really left never hears of the delete. On PostgreSQL (READ COMMITTED) the delete used to read
/// the task, wait on the move's row lock and log the board it had read.
async fn a_delete_racing_a_move_names_the_board_the_task_was_on(b: Backend) {
    const PAIRS: usize = 8;
    const ROUNDS: usize = 40;
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Racer").await;
    let tok = owner.token();
    let team = api.create_team(tok, "Race").await;
    let from = team.default_board_id;
    let to = api.create_board(tok, team.id, "Elsewhere").await.id;

    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut rounds, mut both_succeeded) = (0, 0);
    while rounds < ROUNDS && Instant::now() < deadline {
        rounds += 1;
        let tasks =
            join_all((0..PAIRS).map(|i| {
                api.create_task(tok, team.id, json!({"title": format!("r{rounds} t{i}")}))
            }))
            .await;
        let outcomes = join_all(tasks.iter().map(|t| {
            let api = api.clone();
            let path = format!("/api/v1/tasks/{}", t.id);
            async move {
                let (moved, deleted) = tokio::join!(
                    api.patch(&path, tok, json!({"boardId": to})),
                    api.delete(&path, tok)
                );
                (moved.status, deleted.status)
            }
        }))
        .await;
        for (moved, deleted) in outcomes {
            assert_eq!(deleted, 204, "the delete always succeeds");
            assert!(
                moved == 200 || moved == 404,
                "the move succeeds or finds the task gone: {moved}"
            );
            if moved == 200 {
                both_succeeded += 1;
            }
        }
    }
    eprintln!("{rounds} rounds of {PAIRS}; {both_succeeded} moves committed before their delete");

    let mut board_of: HashMap<Uuid, Uuid> = HashMap::new();
    let mut wrong = Vec::new();
    let mut deletes = 0;
    for a in api.activity(tok, team.id).await {
        let Some(task) = a.task_id else { continue };
        match a.kind.as_str() {
            "task.created" | "task.updated" => {
                let board: Uuid = a.data["task"]["boardId"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .expect("task.boardId");
                board_of.insert(task, board);
            }
            "task.deleted" => {
                deletes += 1;
                let logged: Uuid = a.data["boardId"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .expect("data.boardId");
                assert_eq!(a.board_id, Some(logged), "routing board and data agree");
                let last = board_of
                    .get(&task)
                    .copied()
                    .expect("created before deleted");
                assert!(last == from || last == to);
                if logged != last {
                    wrong.push((a.seq, task, logged, last));
                }
            }
            _ => {}
        }
    }
    assert_eq!(deletes, rounds * PAIRS, "one task.deleted per task");
    assert!(
        wrong.is_empty(),
        "{} of {deletes} task.deleted name a board the task had left; the first (seq, task, logged, last): {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
}
