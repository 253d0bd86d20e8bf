//! Bulk import, `POST /teams/{teamId}/tasks:batch` (docs/contract-extensions.md): a batch is
//! checked whole and written whole, under one `task.imported` activity; import keys make a
//! second run find the rows of the first; a watching socket gets the batch as one frame.

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};
use uuid::Uuid;

both_backends!(
    a_batch_creates_its_tasks_and_comments_in_order,
    one_invalid_row_refuses_the_whole_batch,
    importing_again_finds_the_rows_imported_before,
    racing_imports_of_one_key_create_one_task,
    a_watching_socket_gets_a_large_batch_as_one_frame,
);

const T: Duration = Duration::from_secs(20);

fn batch_path(team: Uuid) -> String {
    format!("/api/v1/teams/{team}/tasks:batch")
}

async fn all_tasks(api: &Api, tok: &str, team: Uuid) -> Vec<Value> {
    api.all_pages(tok, &format!("/api/v1/teams/{team}/tasks?limit=200"))
        .await
}

async fn a_batch_creates_its_tasks_and_comments_in_order(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let tok = owner.token();
    let team = api.create_team(tok, "Import").await;
    let board = team.default_board_id;
    let dev = api.member(tok, team.id, "Dev", "member").await;
    let bug = api.create_label(tok, team.id, "bug", "#ff0000").await;
    let before = api.task(tok, team.id, "already there").await;
    let seq_before = api.team_seq(tok, team.id).await;

    let body = json!({
        "boardId": board,
        "tasks": [
            { "title": "first imported", "description": "migrated from zanzibar",
              "priority": "high", "assigneeUserId": dev.id(), "dueDate": "2027-01-31",
              "labelIds": [bug.id],
              "comments": [{ "body": "old comment one" }, { "body": "old comment two" }] },
            { "title": "second imported", "status": "done" },
            { "title": "third imported" },
        ]
    });
    let resp = api.post(&batch_path(team.id), tok, body).await;
    let answer = resp.ok(201).clone();
    let ids: Vec<Value> = answer["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["taskId"].clone())
        .collect();
    assert_eq!(ids.len(), 3, "{answer}");
    assert!(
        answer["items"]
            .as_array()
            .is_some_and(|i| i.iter().all(|i| i["created"] == true)),
        "{answer}"
    );
    let mut items = Vec::new();
    for id in &ids {
        let id = id.as_str().expect("taskId");
        items.push(
            api.get_task(tok, id.parse().expect("uuid"))
                .await
                .ok(200)
                .clone(),
        );
    }
    let titles: Vec<&str> = items
        .iter()
        .map(|t| t["title"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        titles,
        ["first imported", "second imported", "third imported"]
    );
    let first = &items[0];
    assert_eq!(first["priority"], "high");
    assert_eq!(first["assigneeUserId"], json!(dev.id()));
    assert_eq!(first["dueDate"], "2027-01-31");
    assert_eq!(first["labelIds"], json!([bug.id]));
    assert_eq!(first["boardId"], json!(board));
    assert_eq!(first["version"], 1);
    assert_eq!(items[1]["status"], "done");
    // Each at the end of its column: after the task already in `todo`, in the batch's order.
    let pos = |i: usize| items[i]["position"].as_f64().unwrap_or(f64::NAN);
    assert!(pos(0) > before.position, "{answer}");
    assert!(pos(2) > pos(0), "{answer}");

    // Written: the tasks, their comments, and the word index.
    assert_eq!(all_tasks(&api, tok, team.id).await.len(), 4);
    let first_id = first["id"].as_str().expect("id").to_owned();
    let comments = api
        .get(&format!("/api/v1/tasks/{first_id}/comments"), tok)
        .await
        .ok(200)["items"]
        .clone();
    let bodies: Vec<&str> = comments
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["body"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(bodies, ["old comment one", "old comment two"]);
    let found = api
        .get(&format!("/api/v1/teams/{}/tasks?q=zanzibar", team.id), tok)
        .await
        .ok(200)["items"]
        .clone();
    assert_eq!(found[0]["id"], json!(first_id), "{found}");
    let labelled = api
        .get(
            &format!("/api/v1/teams/{}/tasks?labelId={}", team.id, bug.id),
            tok,
        )
        .await
        .ok(200)["items"]
        .clone();
    assert_eq!(labelled.as_array().map(Vec::len), Some(1), "{labelled}");
    assert_eq!(labelled[0]["id"], json!(first_id));
    let ranked = api
        .get(&format!("/api/v1/teams/{}/search?q=migrated", team.id), tok)
        .await
        .ok(200)["items"]
        .clone();
    assert_eq!(ranked.as_array().map(Vec::len), Some(1), "{ranked}");

    // One activity for the batch, naming the tasks in order.
    let log = api.activity_since(tok, team.id, seq_before).await;
    assert_eq!(log.len(), 1, "{log:?}");
    let a = &log[0];
    assert_eq!(a.kind, "task.imported", "{a:?}");
    assert_eq!(a.board_id, Some(board));
    assert_eq!(a.task_id, None);
    assert_eq!(a.data["taskIds"], json!(ids));
    assert_eq!(a.data["commentCount"], 2);
    assert_eq!(a.data["boardId"], json!(board));
}

async fn one_invalid_row_refuses_the_whole_batch(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let tok = owner.token();
    let team = api.create_team(tok, "Strict").await;
    let other = api.create_team(tok, "Elsewhere").await;
    let foreign_label = api.create_label(tok, other.id, "theirs", "#00ff00").await;
    let outsider = api.new_user("Outsider").await;
    let board = team.default_board_id;
    let seq_before = api.team_seq(tok, team.id).await;

    let resp = api
        .post(
            &batch_path(team.id),
            tok,
            json!({ "boardId": board, "tasks": [
                { "title": "fine" },
                { "title": "" },
                { "title": "fine", "assigneeUserId": outsider.id() },
                { "title": "fine", "labelIds": [foreign_label.id] },
            ]}),
        )
        .await;
    resp.invalid("tasks[1].title");
    // References are checked only once every field is valid: a second request names them.
    let resp = api
        .post(
            &batch_path(team.id),
            tok,
            json!({ "boardId": board, "tasks": [
                { "title": "fine" },
                { "title": "fine", "assigneeUserId": outsider.id() },
                { "title": "fine", "labelIds": [foreign_label.id] },
            ]}),
        )
        .await;
    resp.invalid("tasks[1].assigneeUserId");
    resp.invalid("tasks[2].labelIds");
    // Another team's board, a malformed body, an empty batch.
    api.post(
        &batch_path(team.id),
        tok,
        json!({ "boardId": other.default_board_id, "tasks": [{ "title": "x" }] }),
    )
    .await
    .invalid("boardId");
    api.post(
        &batch_path(team.id),
        tok,
        json!({ "boardId": board, "tasks": [] }),
    )
    .await
    .invalid("tasks");
    let resp = api
        .post(&batch_path(team.id), tok, json!({ "tasks": "no" }))
        .await;
    assert_eq!(resp.status, 422, "{}", resp.text);
    assert!(
        all_tasks(&api, tok, team.id).await.is_empty(),
        "nothing written"
    );
    assert_eq!(
        api.team_seq(tok, team.id).await,
        seq_before,
        "nothing logged"
    );

    // Viewers may not import; non-members are told the team does not exist.
    let viewer = api.member(tok, team.id, "Viewer", "viewer").await;
    let one = json!({ "boardId": board, "tasks": [{ "title": "x" }] });
    api.post(&batch_path(team.id), viewer.token(), one.clone())
        .await
        .problem(403, "forbidden");
    api.post(&batch_path(team.id), outsider.token(), one)
        .await
        .problem(404, "not_found");
}

async fn importing_again_finds_the_rows_imported_before(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let tok = owner.token();
    let team = api.create_team(tok, "Resume").await;
    let board = team.default_board_id;
    let row = |k: &str| json!({ "importKey": k, "title": format!("row {k}") });

    let first = api
        .post(
            &batch_path(team.id),
            tok,
            json!({ "boardId": board, "tasks": [row("r1"), row("r2")] }),
        )
        .await
        .ok(201)
        .clone();
    let seq_after_first = api.team_seq(tok, team.id).await;
    // The run is interrupted and started again from the top, with one more row.
    let second = api
        .post(
            &batch_path(team.id),
            tok,
            json!({ "boardId": board, "tasks": [row("r1"), row("r2"), row("r3")] }),
        )
        .await
        .ok(201)
        .clone();
    let created: Vec<bool> = second["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["created"] == true)
        .collect();
    assert_eq!(created, [false, false, true], "{second}");
    assert_eq!(second["items"][0]["taskId"], first["items"][0]["taskId"]);
    assert_eq!(second["items"][1]["taskId"], first["items"][1]["taskId"]);
    let log = api.activity_since(tok, team.id, seq_after_first).await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(
        log[0].data["taskIds"],
        json!([second["items"][2]["taskId"]])
    );

    // All seen before: 200, nothing written, nothing logged.
    let seq = api.team_seq(tok, team.id).await;
    let again = api
        .post(
            &batch_path(team.id),
            tok,
            json!({ "boardId": board, "tasks": [row("r1"), row("r3")] }),
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(api.team_seq(tok, team.id).await, seq);
    assert_eq!(all_tasks(&api, tok, team.id).await.len(), 3);

    // Keys are the team's: the same key in another team is another row.
    let other = api.create_team(tok, "Other").await;
    api.post(
        &batch_path(other.id),
        tok,
        json!({ "boardId": other.default_board_id, "tasks": [row("r1")] }),
    )
    .await
    .ok(201);
    // Deleting a task frees its key.
    let r1 = first["items"][0]["taskId"].as_str().expect("id").to_owned();
    let gone = api.delete(&format!("/api/v1/tasks/{r1}"), tok).await;
    assert_eq!(gone.status, 204, "{}", gone.text);
    let back = api
        .post(
            &batch_path(team.id),
            tok,
            json!({ "boardId": board, "tasks": [row("r1")] }),
        )
        .await
        .ok(201)
        .clone();
    assert_eq!(back["items"][0]["created"], true);
    assert_ne!(back["items"][0]["taskId"], json!(r1));
}

/// Imports of the same keys at the same instant: one creates the tasks, the others find them
/// (SQLite: its one writer orders them) or get 409 (PostgreSQL: the key's unique index), never a
/// second task and never a 500.
async fn racing_imports_of_one_key_create_one_task(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let tok = owner.token();
    let team = api.create_team(tok, "Race").await;
    let body = json!({ "boardId": team.default_board_id, "tasks": [
        { "importKey": "same-1", "title": "one" },
        { "importKey": "same-2", "title": "two" },
    ]});
    for round in 0..5 {
        let path = batch_path(team.id);
        let racers = (0..4).map(|_| api.post(&path, tok, body.clone()));
        let answers = futures_util::future::join_all(racers).await;
        let mut statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
        statuses.sort_unstable();
        for r in &answers {
            assert!(
                [200, 201, 409].contains(&r.status),
                "round {round}: {} {}",
                r.status,
                r.text
            );
        }
        if round == 0 {
            assert_eq!(
                statuses.iter().filter(|s| **s == 201).count(),
                1,
                "{statuses:?}"
            );
        } else {
            assert!(!statuses.contains(&201), "{statuses:?}");
        }
        assert_eq!(
            all_tasks(&api, tok, team.id).await.len(),
            2,
            "round {round}"
        );
    }
}

/// A thousand tasks with a comment each, watched by a socket allowed only 64 queued frames: it
/// gets one `task.imported` naming them all, stays open, and the log serves the tasks.
async fn a_watching_socket_gets_a_large_batch_as_one_frame(b: Backend) {
    let srv = TestServer::start_with(b, &[("TASKFORGE_WS_QUEUE_LIMIT", "64")]).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let tok = owner.token();
    let team = api.create_team(tok, "Burst").await;
    let board = team.default_board_id;
    let mut ws = srv.ws(tok).await.labeled("watcher");
    ws.subscribe_team(team.id, None).await;
    ws.subscribe_board(board, None).await;

    let tasks: Vec<Value> = (0..1000)
        .map(|i| {
            json!({ "title": format!("imported {i}"), "importKey": format!("row-{i}"),
                         "comments": [{ "body": format!("note {i}") }] })
        })
        .collect();
    let answer = api
        .post(
            &batch_path(team.id),
            tok,
            json!({ "boardId": board, "tasks": tasks }),
        )
        .await
        .ok(201)
        .clone();
    let got = ws.activities(1, T).await;
    assert_eq!(got[0]["type"], "task.imported");
    let ids = got[0]["data"]["taskIds"].as_array().expect("taskIds");
    assert_eq!(ids.len(), 1000);
    assert_eq!(ids[999], answer["items"][999]["taskId"]);
    assert_eq!(got[0]["data"]["commentCount"], 1000);
    // Still open, and nothing else came: one frame for the batch (the team and board rooms
    // deliver it once).
    let rest = ws.barrier().await;
    assert!(
        rest.iter()
            .all(|f| f["type"] != "activity" && f["type"] != "error"),
        "{rest:?}"
    );
    assert_eq!(all_tasks(&api, tok, team.id).await.len(), 1000);
}
