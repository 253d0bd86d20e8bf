//! Teams: create, list, get, rename, and the default board.

use crate::common::*;
use serde_json::json;
use uuid::Uuid;

both_backends!(
    create_team_has_default_board_and_no_activity,
    list_teams_only_mine_and_paginated,
    rename_team_roles_and_activity,
    team_validation_and_unknown_ids,
);

async fn create_team_has_default_board_and_no_activity(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let u = api.new_user("Owner").await;
    let tok = u.token();

    let r = api
        .post("/api/v1/teams", tok, json!({"name": "Rocket"}))
        .await;
    let team: Team = r.parse(201);
    assert_eq!(team.name, "Rocket");
    assert_ts_millis(&team.created_at);

    let r = api.get(&format!("/api/v1/teams/{}", team.id), tok).await;
    let got: Team = r.parse(200);
    assert_eq!(got.id, team.id);
    assert_eq!(got.default_board_id, team.default_board_id);
    assert_eq!(r.seq(), 0, "POST /teams emits no activity");

    let boards = api
        .get(&format!("/api/v1/teams/{}/boards", team.id), tok)
        .await;
    assert_eq!(boards.seq(), 0);
    let items = boards.ok(200)["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1, "{}", boards.text);
    assert_eq!(items[0]["id"], team.default_board_id.to_string());
    assert_eq!(items[0]["name"], "General");
    assert_eq!(items[0]["teamId"], team.id.to_string());
    assert!(boards.json["nextCursor"].is_null());

    let members = api
        .get(&format!("/api/v1/teams/{}/members", team.id), tok)
        .await;
    assert_eq!(members.seq(), 0);
    let items = members.ok(200)["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["user"]["id"], u.user.id.to_string());
    assert_eq!(items[0]["role"], "owner");
    assert_eq!(items[0]["teamId"], team.id.to_string());

    assert!(api.activity(tok, team.id).await.is_empty());
}

async fn list_teams_only_mine_and_paginated(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let a = api.new_user("A").await;
    let other = api.new_user("B").await;
    let mut mine = Vec::new();
    for i in 0..3 {
        mine.push(api.create_team(a.token(), &format!("A{i}")).await.id);
    }
    let theirs = api.create_team(other.token(), "B0").await;
    // Membership (not ownership) also lists the team.
    api.add_member(other.token(), theirs.id, &a.user.email, "viewer")
        .await;
    mine.push(theirs.id);
    let lonely = api.create_team(other.token(), "B1").await;

    let r = api.get("/api/v1/teams?limit=2", a.token()).await;
    let page = r.ok(200);
    assert_eq!(page["items"].as_array().unwrap().len(), 2, "{}", r.text);
    assert!(page["nextCursor"].is_string(), "{}", r.text);

    let all = api.all_pages(a.token(), "/api/v1/teams?limit=2").await;
    let mut ids: Vec<Uuid> = all
        .iter()
        .map(|t| t["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        !ids.contains(&lonely.id),
        "lists a team the caller is not in"
    );
    ids.sort();
    mine.sort();
    assert_eq!(ids, mine, "every team of the caller exactly once");

    let theirs_list = api.all_pages(other.token(), "/api/v1/teams").await;
    assert_eq!(theirs_list.len(), 2);
}

async fn rename_team_roles_and_activity(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let team = api.create_team(owner.token(), "Old").await;
    let admin = api.member(owner.token(), team.id, "Admin", "admin").await;
    let member = api.member(owner.token(), team.id, "Member", "member").await;
    let viewer = api.member(owner.token(), team.id, "Viewer", "viewer").await;
    let outsider = api.new_user("Out").await;
    let path = format!("/api/v1/teams/{}", team.id);

    let t: Team = api
        .patch(&path, owner.token(), json!({"name": "New"}))
        .await
        .parse(200);
    assert_eq!(t.name, "New");
    assert_eq!(t.default_board_id, team.default_board_id);
    let t: Team = api
        .patch(&path, admin.token(), json!({"name": "Newer"}))
        .await
        .parse(200);
    assert_eq!(t.name, "Newer");
    api.patch(&path, member.token(), json!({"name": "M"}))
        .await
        .problem(403, "forbidden");
    api.patch(&path, viewer.token(), json!({"name": "V"}))
        .await
        .problem(403, "forbidden");
    api.patch(&path, outsider.token(), json!({"name": "O"}))
        .await
        .problem(404, "not_found");
    api.get(&path, outsider.token())
        .await
        .problem(404, "not_found");

    let got: Team = api.get(&path, viewer.token()).await.parse(200);
    assert_eq!(got.name, "Newer");

    let acts = api.activity(owner.token(), team.id).await;
    let kinds: Vec<&str> = acts.iter().map(|a| a.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "member.added",
            "member.added",
            "member.added",
            "team.updated",
            "team.updated"
        ]
    );
    let upd = &acts[3];
    assert_eq!(upd.actor_user_id, owner.user.id);
    assert_eq!(upd.data["team"]["name"], "New");
    assert_eq!(upd.data["team"]["id"], team.id.to_string());
    assert_eq!(acts[4].actor_user_id, admin.user.id);
    assert_eq!(acts[4].data["team"]["name"], "Newer");
    assert_eq!(api.team_seq(viewer.token(), team.id).await, 5);
}

async fn team_validation_and_unknown_ids(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let u = api.new_user("V").await;
    let tok = u.token();
    api.post("/api/v1/teams", tok, json!({"name": ""}))
        .await
        .invalid("name");
    api.post("/api/v1/teams", tok, json!({"name": "n".repeat(101)}))
        .await
        .invalid("name");
    api.post("/api/v1/teams", tok, json!({}))
        .await
        .problem(422, "validation_failed");
    api.post("/api/v1/teams", tok, json!({"name": 7}))
        .await
        .problem(422, "validation_failed");
    let emoji = "🚀".repeat(100);
    let t = api.create_team(tok, &emoji).await;
    assert_eq!(t.name, emoji);
    let path = format!("/api/v1/teams/{}", t.id);
    api.patch(&path, tok, json!({"name": "🚀".repeat(101)}))
        .await
        .invalid("name");
    api.patch(&path, tok, json!({"name": ""}))
        .await
        .invalid("name");
    // Nothing was emitted by the failed renames.
    assert_eq!(api.team_seq(tok, t.id).await, 0);

    api.get(&format!("/api/v1/teams/{}", Uuid::new_v4()), tok)
        .await
        .problem(404, "not_found");
    api.patch(
        &format!("/api/v1/teams/{}", Uuid::new_v4()),
        tok,
        json!({"name": "x"}),
    )
    .await
    .problem(404, "not_found");
    api.get("/api/v1/teams/not-a-uuid", tok)
        .await
        .problem(400, "bad_request");
}
