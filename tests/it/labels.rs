//! Labels: create, list, rename, recolor, delete; roles; names unique whatever their case; the
//! per-team cap; `labelIds` on tasks (create, PATCH, `task.updated` changes); deleting a label
//! takes it off its tasks in the same transaction; `label.*` activities reach the team room only.

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};
use uuid::Uuid;

both_backends!(
    label_lifecycle,
    label_roles_and_ids,
    label_validation_and_unique_names,
    label_cap_of_200,
    task_label_ids,
    label_delete_untags_tasks,
    label_delete_races_task_writes,
    label_activities_reach_the_team_room_only,
);

const T: Duration = Duration::from_secs(10);

fn labels_path(team: Uuid) -> String {
    format!("/api/v1/teams/{team}/labels")
}

fn label_path(label: Uuid) -> String {
    format!("/api/v1/labels/{label}")
}

fn ids_of(items: &[Value]) -> Vec<Uuid> {
    items
        .iter()
        .map(|v| v["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

fn uuids(v: &Value) -> Vec<Uuid> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array of ids: {v}"))
        .iter()
        .map(|x| x.as_str().unwrap().parse().unwrap())
        .collect()
}

/// The task's `labelIds` as served by `GET /tasks/{id}` (asserting the field is there).
async fn task_labels(api: &Api, tok: &str, task: Uuid) -> (Vec<Uuid>, Value) {
    let t = api.get_task(tok, task).await.ok(200).clone();
    (uuids(&t["labelIds"]), t)
}

fn sorted(mut v: Vec<Uuid>) -> Vec<Uuid> {
    v.sort();
    v
}

async fn label_lifecycle(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let team = api.create_team(owner.token(), "Labels").await;
    let member = api.member(owner.token(), team.id, "M", "member").await;
    let viewer = api.member(owner.token(), team.id, "V", "viewer").await;
    let path = labels_path(team.id);
    let seq0 = api.team_seq(owner.token(), team.id).await;

    // Name trimmed, color lower-cased.
    let r = api
        .post(
            &path,
            member.token(),
            json!({"name": "  Bug  ", "color": "#FFaa00"}),
        )
        .await;
    let bug: Label = r.parse(201);
    assert_eq!(bug.name, "Bug");
    assert_eq!(bug.color, "#ffaa00");
    assert_eq!(bug.team_id, team.id);
    assert_ts_millis(&bug.created_at);
    let feature = api
        .create_label(owner.token(), team.id, "Feature", "#00ff00")
        .await;
    assert_ne!(feature.id, bug.id);

    // Any member lists them, oldest first, with the team's seq.
    let r = api.get(&path, viewer.token()).await;
    assert_eq!(r.seq(), seq0 + 2);
    let items = r.ok(200)["items"].as_array().unwrap().clone();
    assert_eq!(ids_of(&items), [bug.id, feature.id]);
    let listed: Label = serde_json::from_value(items[0].clone()).unwrap();
    assert_eq!(listed, bug, "the list serves the label as created");
    let paged = api
        .all_pages(viewer.token(), &format!("{path}?limit=1"))
        .await;
    assert_eq!(ids_of(&paged), [bug.id, feature.id], "pages of one");

    // Rename, recolor: the rest stays.
    let renamed: Label = api
        .patch(
            &label_path(bug.id),
            member.token(),
            json!({"name": " Defect "}),
        )
        .await
        .parse(200);
    assert_eq!(
        renamed,
        Label {
            name: "Defect".into(),
            ..bug.clone()
        }
    );
    let recolored: Label = api
        .patch(
            &label_path(bug.id),
            member.token(),
            json!({"color": "#ABCDEF"}),
        )
        .await
        .parse(200);
    assert_eq!(recolored.color, "#abcdef");
    assert_eq!(recolored.name, "Defect");
    assert_eq!(recolored.created_at, bug.created_at);

    // A PATCH that changes nothing answers the label and emits nothing.
    let seq = api.team_seq(owner.token(), team.id).await;
    for body in [
        json!({}),
        json!({"name": "Defect"}),
        json!({"color": "#abcdef"}),
        json!({"color": "#ABCDEF", "name": "  Defect"}),
    ] {
        let same: Label = api
            .patch(&label_path(bug.id), member.token(), body.clone())
            .await
            .parse(200);
        assert_eq!(same, recolored, "no-op PATCH {body}");
    }
    assert_eq!(
        api.team_seq(owner.token(), team.id).await,
        seq,
        "a PATCH that changes nothing emits nothing"
    );
    // Its own name in another case is no clash with itself.
    let upper: Label = api
        .patch(
            &label_path(bug.id),
            owner.token(),
            json!({"name": "DEFECT"}),
        )
        .await
        .parse(200);
    assert_eq!(upper.name, "DEFECT");

    // Delete: 204 with no body, then gone.
    let r = api.delete(&label_path(feature.id), member.token()).await;
    r.ok(204);
    assert!(r.text.is_empty());
    api.delete(&label_path(feature.id), member.token())
        .await
        .problem(404, "not_found");
    api.patch(
        &label_path(feature.id),
        member.token(),
        json!({"name": "zombie"}),
    )
    .await
    .problem(404, "not_found");
    let left = api.all_pages(viewer.token(), &path).await;
    assert_eq!(ids_of(&left), [bug.id]);
    assert_eq!(left[0]["name"], "DEFECT");
    assert_eq!(left[0]["color"], "#abcdef");

    // The log: created x2, updated x3 (the no-ops emitted nothing), deleted.
    let acts = api.activity_since(owner.token(), team.id, seq0).await;
    let kinds: Vec<&str> = acts.iter().map(|a| a.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "label.created",
            "label.created",
            "label.updated",
            "label.updated",
            "label.updated",
            "label.deleted",
        ]
    );
    assert_eq!(acts[0].actor_user_id, member.id());
    assert_eq!(acts[0].data["label"]["id"], json!(bug.id));
    assert_eq!(acts[0].data["label"]["name"], "Bug");
    assert_eq!(acts[0].data["label"]["color"], "#ffaa00");
    assert_eq!(acts[0].data["label"]["teamId"], json!(team.id));
    assert_eq!(acts[1].actor_user_id, owner.id());
    assert_eq!(acts[2].data["label"]["name"], "Defect");
    assert_eq!(acts[3].data["label"]["color"], "#abcdef");
    assert_eq!(acts[4].data["label"]["name"], "DEFECT");
    assert_eq!(acts[5].data, json!({"labelId": feature.id}));
    for a in &acts {
        assert_eq!(a.team_id, team.id);
        assert_eq!(a.board_id, None, "a label belongs to no board: {a:?}");
        assert_eq!(a.task_id, None, "a label belongs to no task: {a:?}");
    }
}

async fn label_roles_and_ids(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let team = api.create_team(owner.token(), "Roles").await;
    let admin = api.member(owner.token(), team.id, "A", "admin").await;
    let member = api.member(owner.token(), team.id, "M", "member").await;
    let viewer = api.member(owner.token(), team.id, "V", "viewer").await;
    let stranger = api.new_user("Stranger").await;
    // A member of another team, who knows the label's id.
    let other = api.create_team(stranger.token(), "Other").await;
    let path = labels_path(team.id);
    let label = api
        .create_label(member.token(), team.id, "Mine", "#112233")
        .await;
    let lp = label_path(label.id);
    let seq = api.team_seq(owner.token(), team.id).await;

    // Viewers read but do not write.
    api.get(&path, viewer.token()).await.ok(200);
    api.post(
        &path,
        viewer.token(),
        json!({"name": "no", "color": "#000000"}),
    )
    .await
    .problem(403, "forbidden");
    api.patch(&lp, viewer.token(), json!({"name": "no"}))
        .await
        .problem(403, "forbidden");
    api.delete(&lp, viewer.token())
        .await
        .problem(403, "forbidden");

    // A non-member gets 404 for all of it, as for an unknown id.
    api.get(&path, stranger.token())
        .await
        .problem(404, "not_found");
    api.post(
        &path,
        stranger.token(),
        json!({"name": "no", "color": "#000000"}),
    )
    .await
    .problem(404, "not_found");
    api.patch(&lp, stranger.token(), json!({"name": "no"}))
        .await
        .problem(404, "not_found");
    api.delete(&lp, stranger.token())
        .await
        .problem(404, "not_found");
    // Not the other team's label either: a task of the other team cannot carry it.
    api.post(
        &format!("/api/v1/teams/{}/tasks", other.id),
        stranger.token(),
        json!({"title": "borrow", "labelIds": [label.id]}),
    )
    .await
    .invalid("labelIds");

    // Unknown and malformed ids.
    let unknown = label_path(Uuid::new_v4());
    api.patch(&unknown, owner.token(), json!({"name": "x"}))
        .await
        .problem(404, "not_found");
    api.delete(&unknown, owner.token())
        .await
        .problem(404, "not_found");
    api.delete("/api/v1/labels/123", owner.token())
        .await
        .problem(400, "bad_request");
    api.get(&labels_path(Uuid::new_v4()), owner.token())
        .await
        .problem(404, "not_found");
    assert_eq!(
        api.team_seq(owner.token(), team.id).await,
        seq,
        "refused writes emit nothing"
    );

    // Members, admins and owners write; the label stays intact for the viewer's reads.
    api.patch(&lp, admin.token(), json!({"name": "Admin's"}))
        .await
        .ok(200);
    api.patch(&lp, owner.token(), json!({"color": "#332211"}))
        .await
        .ok(200);
    let got = api.all_pages(viewer.token(), &path).await;
    assert_eq!(got[0]["name"], "Admin's");
    assert_eq!(got[0]["color"], "#332211");
    api.delete(&lp, admin.token()).await.ok(204);
    assert!(api.all_pages(viewer.token(), &path).await.is_empty());
    assert_eq!(api.team_seq(owner.token(), team.id).await, seq + 3);
}

async fn label_validation_and_unique_names(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let tok = owner.token();
    let team = api.create_team(tok, "Valid").await;
    let path = labels_path(team.id);
    let bug = api.create_label(tok, team.id, "Bug", "#ff0000").await;
    let seq = api.team_seq(tok, team.id).await;

    for name in [
        json!(""),
        json!("   "),
        json!("\t\n"),
        json!("x".repeat(51)),
        json!("ж".repeat(51)),
    ] {
        api.post(&path, tok, json!({"name": name, "color": "#000000"}))
            .await
            .invalid("name");
        api.patch(&label_path(bug.id), tok, json!({"name": name}))
            .await
            .invalid("name");
    }
    for color in [
        "red", "", "#12345", "#1234567", "#ggg000", "123456", "##12345", "#12 345", "#fff",
    ] {
        api.post(&path, tok, json!({"name": "c", "color": color}))
            .await
            .invalid("color");
        api.patch(&label_path(bug.id), tok, json!({"color": color}))
            .await
            .invalid("color");
    }
    // Missing or null fields, wrong types.
    for body in [
        json!({"name": "n"}),
        json!({"color": "#000000"}),
        json!({"name": null, "color": "#000000"}),
        json!({"name": 5, "color": "#000000"}),
    ] {
        api.post(&path, tok, body)
            .await
            .problem(422, "validation_failed");
    }
    for body in [json!({"name": null}), json!({"color": null})] {
        api.patch(&label_path(bug.id), tok, body)
            .await
            .problem(422, "validation_failed");
    }

    // Unique whatever the case (Unicode too), after trimming.
    for clash in ["bug", "BUG", "  bUg ", "Bug"] {
        api.post(&path, tok, json!({"name": clash, "color": "#000000"}))
            .await
            .problem(409, "conflict");
    }
    let anger = api.create_label(tok, team.id, "Ärger", "#00ff00").await;
    api.post(&path, tok, json!({"name": "äRGER", "color": "#000000"}))
        .await
        .problem(409, "conflict");
    api.patch(&label_path(anger.id), tok, json!({"name": "bUG"}))
        .await
        .problem(409, "conflict");
    assert_eq!(
        api.team_seq(tok, team.id).await,
        seq + 1,
        "refused writes emit nothing"
    );
    let labels = api.all_pages(tok, &path).await;
    assert_eq!(ids_of(&labels), [bug.id, anger.id]);
    assert_eq!(
        labels[1]["name"], "Ärger",
        "a refused rename left it as it was"
    );

    // Limits count characters, not bytes.
    let long = api
        .create_label(tok, team.id, &"ж".repeat(50), "#ABCDEF")
        .await;
    assert_eq!(long.name, "ж".repeat(50));
    assert_eq!(long.color, "#abcdef");

    // Another team may use the name; a deleted label's name is free again.
    let other = api.create_team(tok, "Other").await;
    api.create_label(tok, other.id, "bug", "#000000").await;
    api.delete(&label_path(bug.id), tok).await.ok(204);
    let again = api.create_label(tok, team.id, "BUG", "#000000").await;
    assert_ne!(again.id, bug.id);
}

async fn label_cap_of_200(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let team = api.create_team(owner.token(), "Cap").await;
    let path = labels_path(team.id);
    // 196 labels by 8 concurrent writers (kept fast), then the race at the edge.
    let mut handles = Vec::new();
    for w in 0..8 {
        let api = api.clone();
        let tok = owner.token().to_string();
        let team = team.id;
        handles.push(tokio::spawn(async move {
            for i in (w..196).step_by(8) {
                api.create_label(&tok, team, &format!("label {i}"), "#010203")
                    .await;
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    // Eight racing creates for the last four places: exactly four win.
    let mut racers = Vec::new();
    for i in 0..8 {
        let api = api.clone();
        let tok = owner.token().to_string();
        let path = path.clone();
        racers.push(tokio::spawn(async move {
            api.post(
                &path,
                &tok,
                json!({"name": format!("racer {i}"), "color": "#000000"}),
            )
            .await
        }));
    }
    let mut won = 0;
    for r in racers {
        let r = r.await.unwrap();
        if r.status == 201 {
            won += 1;
        } else {
            r.problem(409, "conflict");
        }
    }
    assert_eq!(won, 4, "racing creates must stop at 200 labels");
    let all = api
        .all_pages(owner.token(), &format!("{path}?limit=200"))
        .await;
    assert_eq!(all.len(), 200);
    let seq = api.team_seq(owner.token(), team.id).await;
    api.post(
        &path,
        owner.token(),
        json!({"name": "the 201st", "color": "#000000"}),
    )
    .await
    .problem(409, "conflict");
    assert_eq!(api.team_seq(owner.token(), team.id).await, seq);
    // Renaming at the cap is fine; after a delete there is room for one.
    let first: Uuid = all[0]["id"].as_str().unwrap().parse().unwrap();
    api.patch(
        &label_path(first),
        owner.token(),
        json!({"name": "renamed"}),
    )
    .await
    .ok(200);
    api.delete(&label_path(first), owner.token()).await.ok(204);
    api.create_label(owner.token(), team.id, "the 200th again", "#000000")
        .await;
    api.post(
        &path,
        owner.token(),
        json!({"name": "one too many", "color": "#000000"}),
    )
    .await
    .problem(409, "conflict");
    // The cap is per team.
    let other = api.create_team(owner.token(), "Other").await;
    api.create_label(owner.token(), other.id, "free", "#000000")
        .await;
}

async fn task_label_ids(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let tok = owner.token();
    let team = api.create_team(tok, "Tagged").await;
    let viewer = api.member(tok, team.id, "V", "viewer").await;
    let other = api.create_team(tok, "Other").await;
    let foreign = api.create_label(tok, other.id, "foreign", "#000000").await;
    let mut labels = Vec::new();
    for i in 0..21 {
        labels.push(
            api.create_label(tok, team.id, &format!("l{i}"), "#000000")
                .await
                .id,
        );
    }
    let (l0, l1, l2) = (labels[0], labels[1], labels[2]);
    let tasks = format!("/api/v1/teams/{}/tasks", team.id);

    // Without labelIds: none. With: ascending ids, whatever order they were given in.
    let plain = api.task(tok, team.id, "plain").await;
    assert!(plain.label_ids.is_empty());
    assert_eq!(task_labels(&api, tok, plain.id).await.0, Vec::<Uuid>::new());
    let given = vec![l2, l0];
    let r = api
        .post(&tasks, tok, json!({"title": "tagged", "labelIds": given}))
        .await;
    let t: Task = r.parse(201);
    assert_eq!(uuids(&r.json["labelIds"]), sorted(given.clone()));
    assert_eq!(task_labels(&api, tok, t.id).await.0, sorted(given.clone()));
    // Reversed input, same stored order.
    let rev: Vec<Uuid> = labels[..20].iter().rev().copied().collect();
    let r = api
        .post(&tasks, tok, json!({"title": "twenty", "labelIds": rev}))
        .await;
    assert_eq!(
        uuids(&r.ok(201)["labelIds"]),
        sorted(labels[..20].to_vec()),
        "20 labels are allowed, served ascending"
    );

    // Refused sets on create: nothing is created.
    let seq = api.team_seq(tok, team.id).await;
    for bad in [
        json!([l0, l0]),
        json!(labels),
        json!([l0, foreign.id]),
        json!([Uuid::new_v4()]),
    ] {
        api.post(&tasks, tok, json!({"title": "bad", "labelIds": bad}))
            .await
            .invalid("labelIds");
    }
    for malformed in [json!("x"), json!([1]), json!(["not-a-uuid"]), json!({})] {
        api.post(&tasks, tok, json!({"title": "bad", "labelIds": malformed}))
            .await
            .problem(422, "validation_failed");
    }
    assert_eq!(api.team_seq(tok, team.id).await, seq);

    // PATCH replaces the whole set; task.updated names the change.
    let r = api.patch_task(tok, t.id, json!({"labelIds": [l1]})).await;
    let v2: Task = r.parse(200);
    assert_eq!(uuids(&r.json["labelIds"]), [l1]);
    assert_eq!(v2.version, t.version + 1);
    let r = api
        .patch_task(
            tok,
            t.id,
            json!({"labelIds": [l2, l1, l0], "title": "retitled"}),
        )
        .await;
    let v3: Task = r.parse(200);
    assert_eq!(v3.label_ids, sorted(vec![l0, l1, l2]));
    // The same set in another order is no change.
    let r = api
        .patch_task(tok, t.id, json!({"labelIds": [l1, l0, l2]}))
        .await;
    assert_eq!(
        r.parse::<Task>(200).version,
        v3.version,
        "no change, no new version"
    );
    let r = api.patch_task(tok, t.id, json!({"labelIds": []})).await;
    let v4: Task = r.parse(200);
    assert!(v4.label_ids.is_empty());
    assert_eq!(v4.version, v3.version + 1);

    let acts = api.activity_since(tok, team.id, seq).await;
    let kinds: Vec<&str> = acts.iter().map(|a| a.kind.as_str()).collect();
    assert_eq!(kinds, ["task.updated", "task.updated", "task.updated"]);
    assert_eq!(
        acts[0].data["changes"]["labelIds"],
        json!({"from": sorted(given.clone()), "to": [l1]})
    );
    assert_eq!(acts[0].data["task"]["labelIds"], json!([l1]));
    assert_eq!(
        acts[1].data["changes"]["labelIds"],
        json!({"from": [l1], "to": sorted(vec![l0, l1, l2])})
    );
    assert_eq!(
        acts[1].data["changes"]["title"],
        json!({"from": "tagged", "to": "retitled"})
    );
    assert_eq!(
        acts[2].data["changes"]["labelIds"],
        json!({"from": sorted(vec![l0, l1, l2]), "to": []})
    );
    // task.created carries the labels too.
    let created = api.activity(tok, team.id).await;
    let c = created
        .iter()
        .find(|a| a.kind == "task.created" && a.task_id == Some(t.id))
        .unwrap();
    assert_eq!(c.data["task"]["labelIds"], json!(sorted(given.clone())));
    // A title-only change does not name labels.
    api.patch_task(tok, t.id, json!({"title": "only title"}))
        .await
        .ok(200);
    let last = api.activity_since(tok, team.id, seq + 3).await;
    assert_eq!(last.len(), 1);
    assert!(
        last[0].data["changes"].get("labelIds").is_none(),
        "{:?}",
        last[0]
    );

    // Refused PATCHes change nothing.
    let seq = api.team_seq(tok, team.id).await;
    for bad in [
        json!([l0, l0]),
        json!(labels),
        json!([foreign.id]),
        json!([Uuid::new_v4()]),
    ] {
        api.patch_task(tok, t.id, json!({"labelIds": bad}))
            .await
            .invalid("labelIds");
    }
    api.patch_task(tok, t.id, json!({"labelIds": null}))
        .await
        .problem(422, "validation_failed");
    api.patch_task(viewer.token(), t.id, json!({"labelIds": [l0]}))
        .await
        .problem(403, "forbidden");
    // If-Match as for every field.
    let cur: Task = api.get_task(tok, t.id).await.parse(200);
    let stale = format!("\"{}\"", cur.version - 1);
    api.send(
        "PATCH",
        &format!("/api/v1/tasks/{}", t.id),
        Some(tok),
        Some(&json!({"labelIds": [l0]})),
        &[("if-match", &stale)],
    )
    .await
    .problem(412, "precondition_failed");
    assert_eq!(api.team_seq(tok, team.id).await, seq);
    let (now, _) = task_labels(&api, tok, t.id).await;
    assert!(now.is_empty(), "refused PATCHes left the labels: {now:?}");
    let fresh = format!("\"{}\"", cur.version);
    let r = api
        .send(
            "PATCH",
            &format!("/api/v1/tasks/{}", t.id),
            Some(tok),
            Some(&json!({"labelIds": [l0]})),
            &[("if-match", &fresh)],
        )
        .await;
    assert_eq!(r.parse::<Task>(200).label_ids, [l0]);
}

async fn label_delete_untags_tasks(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let tok = owner.token();
    let team = api.create_team(tok, "Untag").await;
    let a = api.create_label(tok, team.id, "A", "#000001").await.id;
    let bl = api.create_label(tok, team.id, "B", "#000002").await.id;
    let c = api.create_label(tok, team.id, "C", "#000003").await.id;
    let mk = |title: &'static str, labels: Vec<Uuid>| {
        let api = api.clone();
        let tok = tok.to_string();
        async move {
            api.create_task(&tok, team.id, json!({"title": title, "labelIds": labels}))
                .await
        }
    };
    let t1 = mk("abc", vec![a, bl, c]).await;
    let t2 = mk("b", vec![bl]).await;
    let t3 = mk("a", vec![a]).await;
    let t4 = mk("none", vec![]).await;
    // A version past 1 for one of them.
    api.patch_task(tok, t1.id, json!({"title": "abc v2"}))
        .await
        .ok(200);
    let mut before = Vec::new();
    for t in [t1.id, t2.id, t3.id, t4.id] {
        before.push(task_labels(&api, tok, t).await.1);
    }

    let mut team_ws = srv.ws(tok).await.labeled("team");
    team_ws.subscribe(Scope::Team(team.id), None).await;
    let mut rooms_ws = srv.ws(tok).await.labeled("board+task");
    rooms_ws
        .subscribe(Scope::Board(team.default_board_id), None)
        .await;
    rooms_ws.subscribe(Scope::Task(t1.id), None).await;
    rooms_ws.subscribe(Scope::Task(t2.id), None).await;
    let seq = api.team_seq(tok, team.id).await;

    api.delete(&label_path(bl), tok).await.ok(204);

    // Off every task that carried it; versions and updatedAt stay; nothing else changed.
    let mut after = Vec::new();
    for t in [t1.id, t2.id, t3.id, t4.id] {
        after.push(task_labels(&api, tok, t).await.1);
    }
    let want_labels = [sorted(vec![a, c]), vec![], vec![a], vec![]];
    for i in 0..4 {
        assert_eq!(uuids(&after[i]["labelIds"]), want_labels[i], "task {i}");
        let mut x = before[i].clone();
        let mut y = after[i].clone();
        x.as_object_mut().unwrap().remove("labelIds");
        y.as_object_mut().unwrap().remove("labelIds");
        assert_eq!(x, y, "task {i}: only labelIds may change: {}", after[i]);
    }
    // The list agrees with the single reads.
    let listed = api
        .all_pages(tok, &format!("/api/v1/teams/{}/tasks", team.id))
        .await;
    for (i, t) in [t1.id, t2.id, t3.id, t4.id].iter().enumerate() {
        let row = listed
            .iter()
            .find(|x| x["id"] == json!(t))
            .unwrap_or_else(|| panic!("task {t} not listed"));
        assert_eq!(uuids(&row["labelIds"]), want_labels[i], "listed task {i}");
    }

    // One activity: label.deleted, no task.updated.
    let acts = api.activity_since(tok, team.id, seq).await;
    let kinds: Vec<&str> = acts.iter().map(|a| a.kind.as_str()).collect();
    assert_eq!(kinds, ["label.deleted"]);
    assert_eq!(acts[0].data, json!({"labelId": bl}));
    let got = team_ws.activities(1, T).await;
    assert_eq!(got[0]["type"], "label.deleted");
    assert_eq!(got[0]["data"]["labelId"], json!(bl));
    assert_eq!(got[0]["seq"], seq + 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let extra = logged_activities(&team_ws.barrier().await);
    assert!(
        extra.is_empty(),
        "team room: more than label.deleted: {extra:?}"
    );
    let leaked = logged_activities(&rooms_ws.barrier().await);
    assert!(
        leaked.is_empty(),
        "board and task rooms get no label.deleted and no task.updated: {leaked:?}"
    );

    // The tasks' versions still match their ETags: a conditional PATCH at the old version works,
    // and its change starts from the labels without B.
    let v = after[0]["version"].as_i64().unwrap();
    let r = api
        .send(
            "PATCH",
            &format!("/api/v1/tasks/{}", t1.id),
            Some(tok),
            Some(&json!({"labelIds": [c]})),
            &[("if-match", &format!("\"{v}\""))],
        )
        .await;
    r.ok(200);
    let last = api.activity_since(tok, team.id, seq + 1).await;
    assert_eq!(
        last[0].data["changes"]["labelIds"],
        json!({"from": sorted(vec![a, c]), "to": [c]})
    );
    // The deleted label can no longer be given.
    api.patch_task(tok, t3.id, json!({"labelIds": [a, bl]}))
        .await
        .invalid("labelIds");
    // Deleting the last label of a task leaves it with none.
    api.delete(&label_path(a), tok).await.ok(204);
    assert!(task_labels(&api, tok, t3.id).await.0.is_empty());
    assert_eq!(task_labels(&api, tok, t1.id).await.0, [c]);
}

/// A label deleted while tasks are being given it: whatever wins each race, no task is left
/// carrying a label that no longer exists, and every refused write is a 422 on `labelIds`.
async fn label_delete_races_task_writes(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let tok = owner.token().to_string();
    let team = api.create_team(&tok, "Race").await;
    let keep = api.create_label(&tok, team.id, "keep", "#000000").await.id;
    let mut tasks = Vec::new();
    for i in 0..4 {
        tasks.push(api.task(&tok, team.id, &format!("race {i}")).await.id);
    }
    for round in 0..6 {
        let doomed = api
            .create_label(&tok, team.id, &format!("doomed {round}"), "#000000")
            .await
            .id;
        let mut writers = Vec::new();
        for (i, t) in tasks.iter().enumerate() {
            let api = api.clone();
            let tok = tok.clone();
            let t = *t;
            writers.push(tokio::spawn(async move {
                if i % 2 == 0 {
                    api.patch_task(&tok, t, json!({"labelIds": [keep, doomed]}))
                        .await
                } else {
                    api.post(
                        &format!("/api/v1/teams/{}/tasks", team.id),
                        &tok,
                        json!({"title": "born tagged", "labelIds": [doomed, keep]}),
                    )
                    .await
                }
            }));
        }
        let del = {
            let api = api.clone();
            let tok = tok.clone();
            tokio::spawn(async move { api.delete(&label_path(doomed), &tok).await })
        };
        for w in writers {
            let r = w.await.unwrap();
            if r.status != 200 && r.status != 201 {
                r.invalid("labelIds");
            }
        }
        del.await.unwrap().ok(204);
        let all = api
            .all_pages(&tok, &format!("/api/v1/teams/{}/tasks?limit=200", team.id))
            .await;
        for t in &all {
            let ids = uuids(&t["labelIds"]);
            assert!(
                !ids.contains(&doomed),
                "round {round}: task {} still carries the deleted label: {t}",
                t["id"]
            );
            let single = task_labels(&api, &tok, t["id"].as_str().unwrap().parse().unwrap())
                .await
                .0;
            assert_eq!(single, ids, "list and single read agree: {t}");
        }
    }
}

async fn label_activities_reach_the_team_room_only(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let tok = owner.token();
    let team = api.create_team(tok, "Live").await;
    let watcher = api.member(tok, team.id, "W", "member").await;
    let other = api.create_team(tok, "Other").await;
    api.add_member(tok, other.id, &watcher.user.email, "member")
        .await;
    let stranger = api.new_user("Stranger").await;
    let task = api.task(tok, team.id, "x").await;
    let seq0 = api.team_seq(tok, team.id).await;

    let mut team_ws = srv.ws(watcher.token()).await.labeled("team");
    team_ws.subscribe(Scope::Team(team.id), None).await;
    let mut rooms_ws = srv.ws(watcher.token()).await.labeled("board+task");
    rooms_ws
        .subscribe(Scope::Board(team.default_board_id), None)
        .await;
    rooms_ws.subscribe(Scope::Task(task.id), None).await;
    let mut other_ws = srv.ws(watcher.token()).await.labeled("otherTeam");
    other_ws.subscribe(Scope::Team(other.id), None).await;
    other_ws
        .subscribe(Scope::Board(other.default_board_id), None)
        .await;
    let mut stranger_ws = srv.ws(stranger.token()).await.labeled("stranger");
    stranger_ws.expect_pong().await;

    let l = api.create_label(tok, team.id, "Live", "#ABCDEF").await;
    api.patch(&label_path(l.id), tok, json!({"name": "Alive"}))
        .await
        .ok(200);
    api.delete(&label_path(l.id), tok).await.ok(204);
    // The other team's label: never on this team's sockets.
    let ol = api
        .create_label(tok, other.id, "Elsewhere", "#000000")
        .await;

    let got = team_ws.activities(3, T).await;
    let kinds: Vec<&str> = got.iter().map(|a| a["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["label.created", "label.updated", "label.deleted"]);
    assert_eq!(got[0]["data"]["label"]["color"], "#abcdef");
    assert_eq!(got[1]["data"]["label"]["name"], "Alive");
    assert_eq!(got[2]["data"]["labelId"], json!(l.id));
    for (i, a) in got.iter().enumerate() {
        assert_eq!(a["teamId"], json!(team.id));
        assert_eq!(a["seq"], json!(seq0 + 1 + i as i64));
    }
    let got = other_ws.activities(1, T).await;
    assert_eq!(got[0]["type"], "label.created");
    assert_eq!(got[0]["data"]["label"]["id"], json!(ol.id));
    tokio::time::sleep(Duration::from_millis(300)).await;
    for ws in [&mut team_ws, &mut rooms_ws, &mut other_ws, &mut stranger_ws] {
        let extra = logged_activities(&ws.barrier().await);
        assert!(extra.is_empty(), "{}: unexpected {extra:?}", ws.label());
    }

    // A resume of the team room replays them in order.
    let mut late = srv.ws(watcher.token()).await.labeled("late");
    let sub = late.subscribe(Scope::Team(team.id), Some(seq0)).await;
    let mut replay = sub.before.clone();
    replay.extend(logged_activities(&late.barrier().await));
    let kinds: Vec<&str> = replay.iter().map(|a| a["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["label.created", "label.updated", "label.deleted"]);
}
