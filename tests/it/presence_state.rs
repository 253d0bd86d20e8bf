//! Presence state: a socket in a task room says what its user does there (`presence`: viewing,
//! editing or typing a field); the room's other users are told (`presence.updated`) when what
//! they are shown, the most active state of the user's sockets on every instance, changes.
//!
//! Every test runs on one instance and on three (the actor on A, the observer on B, a third
//! party on C), except the one that kills an instance (slow set).

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};
use uuid::Uuid;

// A state outlives these tests unless a test sets a short one: an expiry in the middle of a test
// would be an update it does not expect.
every_topology!(with &[("TASKFORGE_PRESENCE_STATE_TTL", "60s")] =>
    a_state_reaches_others_in_the_room_and_not_the_sender,
    two_tabs_show_the_most_active_state_and_only_changes_are_announced,
    repeating_the_same_state_does_not_announce_again,
    leaving_the_room_removes_the_state,
    not_subscribed_or_malformed_is_a_bad_request,
    a_burst_is_coalesced_and_the_last_state_wins,
);
every_topology!(with &[("TASKFORGE_PRESENCE_STATE_TTL", "2s")] =>
    a_state_expires_back_to_viewing_after_the_ttl,
);

const T: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A team with a task, its owner X and two members Y and Z.
struct Fixture {
    team: Team,
    task: Task,
    room: Scope,
    x: AuthResponse,
    y: AuthResponse,
    z: AuthResponse,
}

async fn fixture(d: &Deployment) -> Fixture {
    let api = d.client(0);
    let x = api.new_user("Xavier").await;
    let team = api.create_team(x.token(), "States").await;
    let y = api.member(x.token(), team.id, "Yvonne", "member").await;
    let z = api.member(x.token(), team.id, "Zed", "member").await;
    let task = api.task(x.token(), team.id, "worked on together").await;
    let room = Scope::Task(task.id);
    Fixture {
        team,
        task,
        room,
        x,
        y,
        z,
    }
}

/// A socket of `who` on instance `i`, subscribed to the task room.
async fn enter(d: &Deployment, i: usize, who: &AuthResponse, label: &str, room: Scope) -> WsClient {
    let mut ws = d.ws_labeled(i, who.token(), label).await;
    ws.subscribe(room, None).await;
    ws
}

/// X on A and Y on B in the room, each knowing the other is there.
async fn pair(d: &Deployment, f: &Fixture) -> (WsClient, WsClient) {
    let mut wx = enter(d, 0, &f.x, "X", f.room).await;
    let mut wy = d.ws_labeled(1, f.y.token(), "Y").await;
    let s = wy.subscribe(f.room, None).await;
    wy.presence_settled(&s.frame, &[f.x.id(), f.y.id()]).await;
    joined(&mut wx, &f.y).await;
    (wx, wy)
}

/// Waits for the `presence.joined` of `who`.
async fn joined(ws: &mut WsClient, who: &AuthResponse) {
    let f = next_about(ws, who.id(), "presence.joined").await;
    assert_eq!(
        f["activity"]["type"], "presence.joined",
        "{}: {f}",
        ws.label
    );
}

fn about(f: &Value, user: Uuid) -> bool {
    is_presence(f) && f["activity"]["data"]["userId"] == json!(user)
}

/// The next presence frame about `user`, whatever its kind.
async fn next_about(ws: &mut WsClient, user: Uuid, what: &str) -> Value {
    ws.wait_for(&format!("{what} about {user}"), T, |f| about(f, user))
        .await
        .0
}

/// The presence frames about `user` among `frames`.
fn frames_about(frames: &[Value], user: Uuid) -> Vec<Value> {
    frames.iter().filter(|f| about(f, user)).cloned().collect()
}

async fn send(ws: &mut WsClient, task: Uuid, state: &str, field: Option<&str>) {
    let mut m = json!({"type": "presence", "taskId": task, "state": state});
    if let Some(f) = field {
        m["field"] = json!(f);
    }
    ws.send_json(m).await;
}

/// Asserts `f` is the `presence.updated` of `user` in the fixture's task, showing `state` (and
/// `field`), shaped as the contract says.
fn check_updated(f: &Value, fx: &Fixture, user: &AuthResponse, state: &str, field: Option<&str>) {
    let a = &f["activity"];
    assert_eq!(a["type"], "presence.updated", "{f}");
    assert_eq!(a["v"], 1, "{f}");
    assert_eq!(a["teamId"], json!(fx.team.id), "{f}");
    assert_eq!(a["taskId"], json!(fx.task.id), "{f}");
    assert_eq!(a["actorUserId"], json!(user.id()), "{f}");
    assert!(a.get("seq").is_none(), "presence has no seq: {f}");
    let mut data = json!({
        "taskId": fx.task.id,
        "userId": user.id(),
        "displayName": user.user.display_name,
        "state": state,
    });
    if let Some(field) = field {
        data["field"] = json!(field);
    }
    assert_eq!(a["data"], data, "{f}");
    assert_ts_millis(a["ts"].as_str().unwrap_or(""));
}

/// Waits for the next presence frame about `user` on `ws` and checks it is this update.
async fn expect_update(
    ws: &mut WsClient,
    fx: &Fixture,
    user: &AuthResponse,
    state: &str,
    field: Option<&str>,
) {
    let what = format!("presence.updated {state} {field:?}");
    let f = next_about(ws, user.id(), &what).await;
    check_updated(&f, fx, user, state, field);
}

/// The `presence` entry of `user` in a `subscribed` frame.
fn entry(subscribed: &Value, user: &AuthResponse) -> Value {
    subscribed["presence"]
        .as_array()
        .unwrap_or_else(|| panic!("no presence in {subscribed}"))
        .iter()
        .find(|e| e["userId"] == json!(user.id()))
        .cloned()
        .unwrap_or_else(|| panic!("{} is not listed in {subscribed}", user.user.display_name))
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// X's state reaches Y (in the room), and neither X's own socket nor Z (in the team room only);
/// a newcomer's snapshot lists it. Y's state reaches X, not Y.
async fn a_state_reaches_others_in_the_room_and_not_the_sender(d: Deployment) {
    let fx = fixture(&d).await;
    let mut wz = d.ws_labeled(2, fx.z.token(), "Z").await;
    wz.subscribe(Scope::Team(fx.team.id), None).await;
    let (mut wx, mut wy) = pair(&d, &fx).await;

    send(&mut wx, fx.task.id, "editing", Some("title")).await;
    expect_update(&mut wy, &fx, &fx.x, "editing", Some("title")).await;
    // Y's own change travels after X's on every path: once X hears of it, anything about X
    // would have reached X before.
    send(&mut wy, fx.task.id, "typing", Some("comment")).await;
    let (f, before) = wx.wait_for("Y's update", T, |f| about(f, fx.y.id())).await;
    check_updated(&f, &fx, &fx.y, "typing", Some("comment"));
    assert!(
        frames_about(&before, fx.x.id()).is_empty(),
        "X heard of its own state: {before:?}"
    );
    // And the other way round for Y.
    send(&mut wx, fx.task.id, "viewing", None).await;
    let (f, before) = wy.wait_for("X's update", T, |f| about(f, fx.x.id())).await;
    check_updated(&f, &fx, &fx.x, "viewing", None);
    assert!(
        frames_about(&before, fx.y.id()).is_empty(),
        "Y heard of its own state: {before:?}"
    );

    // Z, in the team room only, heard nothing of it; in the task room it sees Y typing.
    let outside = wz.barrier().await;
    assert!(
        !outside.iter().any(is_presence),
        "presence outside the task room: {outside:?}"
    );
    let s = wz.subscribe(fx.room, None).await;
    let y_entry = entry(&s.frame, &fx.y);
    let x_entry = entry(&s.frame, &fx.x);
    assert_eq!(
        y_entry,
        json!({"userId": fx.y.id(), "displayName": "Yvonne", "state": "typing", "field": "comment"}),
        "{}",
        s.frame
    );
    assert_eq!(
        x_entry,
        json!({"userId": fx.x.id(), "displayName": "Xavier", "state": "viewing"}),
        "{}",
        s.frame
    );
    assert_eq!(entry(&s.frame, &fx.z)["state"], "viewing", "{}", s.frame);

    // In the end, no socket heard of its own user's state.
    for ws in [&mut wx, &mut wy] {
        ws.barrier().await;
    }
    let own_x: Vec<Value> = frames_about(&wx.frames, fx.x.id());
    assert!(own_x.is_empty(), "X: {own_x:?}");
    let own_y: Vec<Value> = frames_about(&wy.frames, fx.y.id());
    assert!(own_y.is_empty(), "Y: {own_y:?}");
}

/// X has a tab on A and one on C: Y is shown the most active of the two (the latest of equally
/// active ones), told only when that changes; one tab leaving shows the other's state, the last
/// one leaving is `presence.left`.
async fn two_tabs_show_the_most_active_state_and_only_changes_are_announced(d: Deployment) {
    let fx = fixture(&d).await;
    let (mut x1, mut wy) = pair(&d, &fx).await;
    let mut x2 = enter(&d, 2, &fx.x, "X2", fx.room).await;
    let start = wy.frames.len();

    send(&mut x1, fx.task.id, "editing", Some("title")).await;
    expect_update(&mut wy, &fx, &fx.x, "editing", Some("title")).await;
    send(&mut x2, fx.task.id, "typing", Some("comment")).await;
    expect_update(&mut wy, &fx, &fx.x, "typing", Some("comment")).await;
    // The typing tab goes back to viewing: the other one is still editing.
    send(&mut x2, fx.task.id, "viewing", None).await;
    expect_update(&mut wy, &fx, &fx.x, "editing", Some("title")).await;
    // Repeats are no change; then the second tab edits another field, later: that one shows.
    for _ in 0..3 {
        send(&mut x1, fx.task.id, "editing", Some("title")).await;
    }
    x1.barrier().await;
    send(&mut x2, fx.task.id, "editing", Some("description")).await;
    expect_update(&mut wy, &fx, &fx.x, "editing", Some("description")).await;
    // That tab leaves: X is still there, editing the title.
    x2.unsubscribe(fx.room).await;
    expect_update(&mut wy, &fx, &fx.x, "editing", Some("title")).await;
    // The last tab closes: X left.
    x1.close().await;
    let f = next_about(&mut wy, fx.x.id(), "presence.left").await;
    assert_eq!(f["activity"]["type"], "presence.left", "{f}");
    assert!(
        f["activity"]["data"].get("state").is_none(),
        "presence.left carries no state: {f}"
    );

    // Exactly those, in that order: nothing was announced twice or in between.
    wy.barrier().await;
    let seen: Vec<(String, Value, Value)> = frames_about(&wy.frames[start..], fx.x.id())
        .iter()
        .map(|f| {
            let a = &f["activity"];
            (
                a["type"].as_str().unwrap_or("").to_owned(),
                a["data"]["state"].clone(),
                a["data"]["field"].clone(),
            )
        })
        .collect();
    let upd = |s: &str, f: &str| ("presence.updated".to_owned(), json!(s), json!(f));
    assert_eq!(
        seen,
        vec![
            upd("editing", "title"),
            upd("typing", "comment"),
            upd("editing", "title"),
            upd("editing", "description"),
            upd("editing", "title"),
            ("presence.left".to_owned(), Value::Null, Value::Null),
        ],
        "Y's presence frames about X"
    );
    x2.barrier().await;
    let own = frames_about(&x2.frames, fx.x.id());
    assert!(own.is_empty(), "X's tab heard of X: {own:?}");
}

/// Sending the state in effect again (as clients do every ~2 s) announces nothing.
async fn repeating_the_same_state_does_not_announce_again(d: Deployment) {
    let fx = fixture(&d).await;
    let (mut wx, mut wy) = pair(&d, &fx).await;
    send(&mut wx, fx.task.id, "editing", Some("description")).await;
    expect_update(&mut wy, &fx, &fx.x, "editing", Some("description")).await;
    for _ in 0..5 {
        send(&mut wx, fx.task.id, "editing", Some("description")).await;
    }
    // A different state last: it is the next thing Y hears about X.
    send(&mut wx, fx.task.id, "typing", Some("description")).await;
    expect_update(&mut wy, &fx, &fx.x, "typing", Some("description")).await;
    for _ in 0..5 {
        send(&mut wx, fx.task.id, "typing", Some("description")).await;
    }
    send(&mut wx, fx.task.id, "viewing", None).await;
    expect_update(&mut wy, &fx, &fx.x, "viewing", None).await;
    // Viewing again, with a field it ignores: nothing either.
    send(&mut wx, fx.task.id, "viewing", Some("title")).await;
    send(&mut wx, fx.task.id, "editing", Some("comment")).await;
    expect_update(&mut wy, &fx, &fx.x, "editing", Some("comment")).await;
    let replies = wx.barrier().await;
    assert!(
        !replies.iter().any(|f| f["type"] == "error"),
        "valid messages answered with an error: {replies:?}"
    );
}

/// Editing and typing fall back to viewing after the TTL (2 s here) without a repeat; repeated,
/// they hold.
async fn a_state_expires_back_to_viewing_after_the_ttl(d: Deployment) {
    let fx = fixture(&d).await;
    let (mut wx, mut wy) = pair(&d, &fx).await;
    send(&mut wx, fx.task.id, "typing", Some("comment")).await;
    expect_update(&mut wy, &fx, &fx.x, "typing", Some("comment")).await;
    // Repeated every 250 ms for twice the TTL: it holds.
    let mut seen = Vec::new();
    for _ in 0..16 {
        send(&mut wx, fx.task.id, "typing", Some("comment")).await;
        seen.extend(wy.collect_for(Duration::from_millis(250)).await);
    }
    let meanwhile = frames_about(&seen, fx.x.id());
    assert!(
        meanwhile.is_empty(),
        "a repeated state changed (TASKFORGE_PRESENCE_STATE_TTL=2s, repeated every 250 ms): \
         {meanwhile:?}"
    );
    // No more repeats: back to viewing.
    expect_update(&mut wy, &fx, &fx.x, "viewing", None).await;
    // The next state is announced as usual.
    send(&mut wx, fx.task.id, "editing", Some("title")).await;
    expect_update(&mut wy, &fx, &fx.x, "editing", Some("title")).await;
    expect_update(&mut wy, &fx, &fx.x, "viewing", None).await;
}

/// Leaving the room (unsubscribing, or closing the socket) ends the state: `presence.left`, and
/// coming back starts from viewing.
async fn leaving_the_room_removes_the_state(d: Deployment) {
    let fx = fixture(&d).await;
    let (mut wx, mut wy) = pair(&d, &fx).await;
    send(&mut wx, fx.task.id, "typing", Some("title")).await;
    expect_update(&mut wy, &fx, &fx.x, "typing", Some("title")).await;
    wx.unsubscribe(fx.room).await;
    let f = next_about(&mut wy, fx.x.id(), "presence.left").await;
    assert_eq!(f["activity"]["type"], "presence.left", "{f}");

    // Back in the room: viewing, in its own snapshot and in a newcomer's.
    let s = wx.subscribe(fx.room, None).await;
    assert_eq!(
        entry(&s.frame, &fx.x),
        json!({"userId": fx.x.id(), "displayName": "Xavier", "state": "viewing"}),
        "{}",
        s.frame
    );
    let f = next_about(&mut wy, fx.x.id(), "presence.joined").await;
    assert_eq!(f["activity"]["type"], "presence.joined", "{f}");
    let mut wz = d.ws_labeled(2, fx.z.token(), "Z").await;
    let s = wz.subscribe(fx.room, None).await;
    let known = wz.presence_settled(&s.frame, &[fx.x.id(), fx.y.id()]).await;
    assert_eq!(known.len(), 3, "{}", s.frame);
    if let Some(e) = s.frame["presence"]
        .as_array()
        .and_then(|p| p.iter().find(|e| e["userId"] == json!(fx.x.id())))
    {
        assert_eq!(e["state"], "viewing", "{}", s.frame);
    }

    // Editing, then the socket closes: gone for both.
    send(&mut wx, fx.task.id, "editing", Some("description")).await;
    expect_update(&mut wy, &fx, &fx.x, "editing", Some("description")).await;
    expect_update(&mut wz, &fx, &fx.x, "editing", Some("description")).await;
    wx.close().await;
    for ws in [&mut wy, &mut wz] {
        let f = next_about(ws, fx.x.id(), "presence.left").await;
        assert_eq!(f["activity"]["type"], "presence.left", "{}: {f}", ws.label);
    }
    // A newcomer does not list X.
    let api = d.client(0);
    let w = api
        .member(fx.x.token(), fx.team.id, "Wanda", "viewer")
        .await;
    let mut ww = d.ws_labeled(1, w.token(), "W").await;
    let s = ww.subscribe(fx.room, None).await;
    let listed: Vec<Value> = s.frame["presence"].as_array().cloned().unwrap_or_default();
    assert!(
        !listed.iter().any(|e| e["userId"] == json!(fx.x.id())),
        "{}",
        s.frame
    );
}

/// A `presence` for a room the socket is not in, or with a bad state or field, is a
/// `bad_request` naming the task; the socket stays open and nobody hears of it.
async fn not_subscribed_or_malformed_is_a_bad_request(d: Deployment) {
    let fx = fixture(&d).await;
    let api = d.client(0);
    let other = api.task(fx.x.token(), fx.team.id, "not watched").await;
    let (mut wx, mut wy) = pair(&d, &fx).await;
    let start = wy.frames.len();
    let task = fx.task.id;

    let bad = |m: Value, task: Option<Uuid>| (m, task);
    let cases = [
        bad(
            json!({"type": "presence", "taskId": other.id, "state": "viewing"}),
            Some(other.id),
        ),
        bad(
            json!({"type": "presence", "taskId": task, "state": "editing"}),
            Some(task),
        ),
        bad(
            json!({"type": "presence", "taskId": task, "state": "typing", "field": null}),
            Some(task),
        ),
        bad(
            json!({"type": "presence", "taskId": task, "state": "dancing"}),
            Some(task),
        ),
        bad(
            json!({"type": "presence", "taskId": task, "state": 3, "field": "title"}),
            Some(task),
        ),
        bad(json!({"type": "presence", "taskId": task}), Some(task)),
        bad(
            json!({"type": "presence", "taskId": task, "state": "typing", "field": "body"}),
            Some(task),
        ),
        bad(
            json!({"type": "presence", "taskId": "not-a-uuid", "state": "viewing"}),
            None,
        ),
        bad(json!({"type": "presence", "state": "viewing"}), None),
    ];
    for (m, task) in &cases {
        wx.send_json(m.clone()).await;
        let reply = wx
            .wait_for("the error", T, |f| f["type"] == "error")
            .await
            .0;
        assert_eq!(reply["code"], "bad_request", "{m} -> {reply}");
        match task {
            Some(t) => assert_eq!(reply["taskId"], json!(t), "{m} -> {reply}"),
            None => assert!(reply.get("taskId").is_none(), "{m} -> {reply}"),
        }
        assert!(
            reply["message"].as_str().is_some_and(|s| !s.is_empty()),
            "{reply}"
        );
    }
    // Out of the room again: refused too.
    wx.unsubscribe(fx.room).await;
    let f = next_about(&mut wy, fx.x.id(), "presence.left").await;
    assert_eq!(f["activity"]["type"], "presence.left", "{f}");
    send(&mut wx, task, "editing", Some("title")).await;
    let reply = wx
        .wait_for("the error", T, |f| f["type"] == "error")
        .await
        .0;
    assert_eq!(reply["code"], "bad_request", "{reply}");
    assert_eq!(reply["taskId"], json!(task), "{reply}");
    wx.expect_pong().await;

    // Y heard nothing but the leave; a valid state after all this still reaches it.
    wx.subscribe(fx.room, None).await;
    send(&mut wx, task, "typing", Some("comment")).await;
    let f = next_about(&mut wy, fx.x.id(), "presence.joined").await;
    assert_eq!(f["activity"]["type"], "presence.joined", "{f}");
    expect_update(&mut wy, &fx, &fx.x, "typing", Some("comment")).await;
    let about_x: Vec<String> = frames_about(&wy.frames[start..], fx.x.id())
        .iter()
        .map(|f| f["activity"]["type"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        about_x,
        ["presence.left", "presence.joined", "presence.updated"],
        "{:?}",
        wy.frames
    );
}

/// 50 changes sent at once: others see far fewer, and the last one is what stays.
async fn a_burst_is_coalesced_and_the_last_state_wins(d: Deployment) {
    let fx = fixture(&d).await;
    let (mut wx, mut wy) = pair(&d, &fx).await;
    let cycle = [
        ("editing", "title"),
        ("typing", "title"),
        ("editing", "description"),
        ("typing", "description"),
        ("editing", "comment"),
    ];
    for i in 0..49 {
        let (s, f) = cycle[i % cycle.len()];
        send(&mut wx, fx.task.id, s, Some(f)).await;
    }
    // The last one, and the only one of its kind.
    send(&mut wx, fx.task.id, "typing", Some("comment")).await;
    let replies = wx.barrier().await;
    assert!(
        !replies.iter().any(|f| f["type"] == "error"),
        "the burst was refused: {replies:?}"
    );

    let (last, before) = wy
        .wait_for("the burst's last state", T, |f| {
            about(f, fx.x.id())
                && f["activity"]["data"]["state"] == "typing"
                && f["activity"]["data"]["field"] == "comment"
        })
        .await;
    check_updated(&last, &fx, &fx.x, "typing", Some("comment"));
    let updates = frames_about(&before, fx.x.id()).len() + 1;
    eprintln!("{d}: 50 changes in a burst, {updates} presence.updated seen");
    assert!(
        updates <= 10,
        "{updates} updates for a burst of 50: {before:?}"
    );
    // Nothing of the burst comes after its last state: the next thing Y hears about X is X's
    // next change.
    send(&mut wx, fx.task.id, "viewing", None).await;
    expect_update(&mut wy, &fx, &fx.x, "viewing", None).await;
}

/// Three instances; X views the task on A (typing) and on B, W only on A (editing). A is killed:
/// the observer on C hears W leave and X's state fall back to B's (viewing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow set: cargo test -- --ignored"]
async fn an_instance_killed_mid_edit_takes_its_states_with_it() {
    let Some(mut cluster) = Cluster::start(3, &[("TASKFORGE_PRESENCE_STATE_TTL", "60s")]).await
    else {
        return;
    };
    // HTTP through C: it survives.
    let api = cluster.node(2).client();
    let x = api.new_user("Xavier").await;
    let team = api.create_team(x.token(), "Crash").await;
    let w = api.member(x.token(), team.id, "Wanda", "member").await;
    let y = api.member(x.token(), team.id, "Yvonne", "member").await;
    let task = api.task(x.token(), team.id, "edited when A dies").await;
    let room = Scope::Task(task.id);
    let fx = Fixture {
        team,
        task,
        room,
        x,
        y,
        z: w,
    };
    let w = &fx.z;

    let mut wy = cluster.node(2).ws(fx.y.token()).await.labeled("Y@C");
    wy.subscribe(room, None).await;
    let mut xa = cluster.node(0).ws(fx.x.token()).await.labeled("X@A");
    xa.subscribe(room, None).await;
    joined(&mut wy, &fx.x).await;
    let mut wa = cluster.node(0).ws(w.token()).await.labeled("W@A");
    wa.subscribe(room, None).await;
    joined(&mut wy, w).await;
    let mut xb = cluster.node(1).ws(fx.x.token()).await.labeled("X@B");
    xb.subscribe(room, None).await;

    send(&mut xa, fx.task.id, "typing", Some("comment")).await;
    expect_update(&mut wy, &fx, &fx.x, "typing", Some("comment")).await;
    send(&mut wa, fx.task.id, "editing", Some("title")).await;
    expect_update(&mut wy, &fx, w, "editing", Some("title")).await;

    cluster.nodes[0].stop().await;
    // Both, in either order (the sweep script removes them in one go).
    let mut heard = Vec::new();
    while heard.len() < 2 {
        let (f, _) = wy
            .wait_for("W left and X updated after A died", T, |f| {
                about(f, w.id()) || about(f, fx.x.id())
            })
            .await;
        heard.push(f);
    }
    heard.sort_by_key(|f| f["activity"]["data"]["userId"] != json!(w.id()));
    assert_eq!(heard[0]["activity"]["type"], "presence.left", "{heard:?}");
    check_updated(&heard[1], &fx, &fx.x, "viewing", None);

    // A newcomer on B sees X viewing (on B), Y, itself; not W.
    let z = api.member(fx.x.token(), fx.team.id, "Zed", "member").await;
    let mut wz = cluster.node(1).ws(z.token()).await.labeled("Z@B");
    let s = wz.subscribe(room, None).await;
    let mut listed: Vec<(String, String)> = s.frame["presence"]
        .as_array()
        .unwrap_or_else(|| panic!("no presence in {}", s.frame))
        .iter()
        .map(|e| {
            (
                e["userId"].as_str().unwrap_or("").to_owned(),
                e["state"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    listed.sort();
    let mut want: Vec<(String, String)> = [fx.x.id(), fx.y.id(), z.id()]
        .iter()
        .map(|u| (u.to_string(), "viewing".to_owned()))
        .collect();
    want.sort();
    assert_eq!(listed, want, "{}", s.frame);
    // Nothing more about X or W reached Y.
    wy.barrier().await;
    let after: Vec<Value> = frames_about(&wy.frames, w.id());
    assert_eq!(after.len(), 3, "W: joined, updated, left: {after:?}");
}
