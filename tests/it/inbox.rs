//! Notifications: who is notified and why, following, the inbox over HTTP, and its live stream
//! on every instance with resume. Changes go through instance A; the inbox is read on B and C
//! (on one instance, the same server).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::common::*;

every_topology!(
    who_is_notified_and_why,
    the_inbox_is_live_on_every_socket_and_resumes,
    a_removed_member_is_no_longer_served_that_teams_notifications,
);

both_backends!(
    inbox_pages_and_marks,
    inbox_input_is_checked,
    notifications_are_kept_for_the_log_retention,
    a_long_stream_is_sent_and_replayed_in_batches,
    closing_a_socket_as_its_inbox_subscribe_ends_leaves_the_store_usable,
    concurrent_changes_give_every_inbox_a_gapless_stream,
);

fn mention(u: &AuthResponse) -> String {
    format!("@[{}](user:{})", u.user.display_name, u.id())
}

/// The reasons of each of a user's notifications, oldest first, with their activity type.
async fn reasons(api: &Api, user: &AuthResponse) -> Vec<(String, Vec<String>)> {
    let mut items = api.all_notifications(user.token()).await;
    items.reverse();
    items
        .iter()
        .map(|n| {
            let reasons = n["reasons"]
                .as_array()
                .expect("reasons")
                .iter()
                .map(|r| r.as_str().expect("a reason").to_owned())
                .collect();
            (
                n["activityType"].as_str().expect("activityType").to_owned(),
                reasons,
            )
        })
        .collect()
}

fn r(kind: &str, reasons: &[&str]) -> (String, Vec<String>) {
    (
        kind.to_owned(),
        reasons.iter().map(|s| (*s).to_owned()).collect(),
    )
}

async fn following(api: &Api, user: &AuthResponse, task: Uuid) -> bool {
    api.get_task(user.token(), task).await.ok(200)["following"]
        .as_bool()
        .expect("GET /tasks/{id} says whether the caller follows")
}

async fn who_is_notified_and_why(d: Deployment) {
    let (a, b) = (d.client(0), d.client(1));
    let owner = a.new_user("Owner").await;
    let team = a.create_team(owner.token(), "T").await;
    let ann = a.member(owner.token(), team.id, "Ann", "member").await;
    let bob = a.member(owner.token(), team.id, "Bob", "member").await;
    let cid = a.member(owner.token(), team.id, "Cid", "member").await;
    let stranger = a.new_user("Stranger").await;

    // Created assigned to Ann, mentioning Bob and a non-member: one notification each.
    let task = a
        .create_task(
            owner.token(),
            team.id,
            json!({
                "title": "Ship it",
                "assigneeUserId": ann.id(),
                "description": format!("{} please review; {} cannot see this", mention(&bob), mention(&stranger)),
            }),
        )
        .await;
    assert_eq!(reasons(&b, &ann).await, [r("task.created", &["assigned"])]);
    assert_eq!(reasons(&b, &bob).await, [r("task.created", &["mentioned"])]);
    assert!(reasons(&b, &owner).await.is_empty(), "never the actor");
    assert!(
        reasons(&b, &stranger).await.is_empty(),
        "never a non-member"
    );
    assert!(following(&b, &owner, task.id).await, "the creator follows");
    assert!(following(&b, &ann, task.id).await, "the assignee follows");
    assert!(following(&b, &bob, task.id).await, "the mentioned follow");
    assert!(!following(&b, &cid, task.id).await);

    // Cid comments, mentioning Bob: followers hear of it, Bob once with both reasons.
    a.comment(
        cid.token(),
        task.id,
        &format!("{} look, and {}", mention(&bob), mention(&stranger)),
    )
    .await;
    assert_eq!(
        reasons(&b, &bob).await.last(),
        Some(&r("comment.created", &["mentioned", "commented"]))
    );
    assert_eq!(
        reasons(&b, &ann).await.last(),
        Some(&r("comment.created", &["commented"]))
    );
    assert_eq!(
        reasons(&b, &owner).await,
        [r("comment.created", &["commented"])]
    );
    assert!(reasons(&b, &cid).await.is_empty());
    assert!(following(&b, &cid, task.id).await, "commenters follow");

    // Ann unfollows: a status change reaches the others only.
    b.follow(ann.token(), task.id, false).await;
    assert!(!following(&b, &ann, task.id).await);
    a.patch_task(owner.token(), task.id, json!({"status": "in_progress"}))
        .await
        .ok(200);
    assert_eq!(reasons(&b, &ann).await.len(), 2, "unfollowed");
    for u in [&bob, &cid] {
        assert_eq!(
            reasons(&b, u).await.last(),
            Some(&r("task.updated", &["status_changed"])),
            "{}",
            u.user.display_name
        );
    }
    // A title change notifies nobody.
    let before: usize = reasons(&b, &bob).await.len();
    a.patch_task(owner.token(), task.id, json!({"title": "Ship it now"}))
        .await
        .ok(200);
    assert_eq!(reasons(&b, &bob).await.len(), before);

    // A mention still reaches Ann, and does not make her follow again; commenting does.
    a.comment(owner.token(), task.id, &format!("{} ping", mention(&ann)))
        .await;
    assert_eq!(
        reasons(&b, &ann).await.last(),
        Some(&r("comment.created", &["mentioned"]))
    );
    assert!(!following(&b, &ann, task.id).await);
    a.comment(ann.token(), task.id, "on it").await;
    assert!(following(&b, &ann, task.id).await);

    // Editing a comment notifies only whom it newly mentions.
    let c = a
        .comment(cid.token(), task.id, &format!("cc {}", mention(&bob)))
        .await;
    let bob_before = reasons(&b, &bob).await.len();
    let owner_before = reasons(&b, &owner).await.len();
    a.patch(
        &format!("/api/v1/comments/{}", c.id),
        cid.token(),
        json!({"body": format!("cc {} and {}", mention(&bob), mention(&owner))}),
    )
    .await
    .ok(200);
    assert_eq!(reasons(&b, &bob).await.len(), bob_before);
    assert_eq!(
        reasons(&b, &owner).await[owner_before..],
        [r("comment.updated", &["mentioned"])]
    );

    // Reassigning notifies the new assignee as `assigned`.
    a.patch_task(owner.token(), task.id, json!({"assigneeUserId": bob.id()}))
        .await
        .ok(200);
    assert_eq!(
        reasons(&b, &bob).await.last(),
        Some(&r("task.assigned", &["assigned"]))
    );

    // Deleting tells every follower but the actor.
    a.delete(&format!("/api/v1/tasks/{}", task.id), owner.token())
        .await
        .ok(204);
    for u in [&ann, &bob, &cid] {
        assert_eq!(
            reasons(&b, u).await.last(),
            Some(&r("task.deleted", &["task_deleted"])),
            "{}",
            u.user.display_name
        );
    }

    // What a notification carries.
    let n = &b.all_notifications(bob.token()).await[0];
    assert_eq!(n["teamId"], team.id.to_string());
    assert_eq!(n["taskId"], task.id.to_string());
    assert_eq!(n["taskTitle"], "Ship it now");
    assert_eq!(n["actorUserId"], owner.id().to_string());
    assert_eq!(n["actorDisplayName"], "Owner");
    assert!(n["readAt"].is_null());
    assert!(n.get("excerpt").is_none(), "a deletion quotes nothing: {n}");
    let first = b.all_notifications(bob.token()).await;
    let mentioned = first
        .iter()
        .rev()
        .find(|n| n["activityType"] == "comment.created")
        .expect("the comment mentioning Bob");
    assert_eq!(
        mentioned["excerpt"], "@Bob look, and @Stranger",
        "mentions are shown by name"
    );
    // The unread count in GET /me is the inbox's.
    let me = b.get("/api/v1/me", bob.token()).await.ok(200).clone();
    assert_eq!(me["unreadNotifications"], json!(first.len()));
    assert!(me["inboxSeq"].as_i64().expect("inboxSeq") >= first.len() as i64);
}

/// The seqs of inbox frames, and each one's type.
fn stream(frames: &[Value]) -> Vec<(i64, String)> {
    frames
        .iter()
        .map(|f| {
            (
                f["seq"].as_i64().expect("an inbox frame has a seq"),
                f["type"].as_str().expect("type").to_owned(),
            )
        })
        .collect()
}

async fn the_inbox_is_live_on_every_socket_and_resumes(d: Deployment) {
    let a = d.client(0);
    let owner = a.new_user("Owner").await;
    let team = a.create_team(owner.token(), "T").await;
    let bob = a.member(owner.token(), team.id, "Bob", "member").await;
    let task = a.task(bob.token(), team.id, "Bob's task").await;

    // Two tabs of Bob, on B and C, and a third that leaves.
    let mut tab1 = d.ws_labeled(1, bob.token(), "tab1").await;
    let mut tab2 = d.ws_labeled(2, bob.token(), "tab2").await;
    let (s1, replayed) = tab1.subscribe_inbox(None).await;
    assert!(replayed.is_empty());
    assert_eq!(s1["seq"], 0);
    assert_eq!(s1["unreadCount"], 0);
    tab2.subscribe_inbox(Some(0)).await;
    // No room is needed: Bob's sockets are in none.
    for i in 0..3 {
        a.comment(owner.token(), task.id, &format!("comment {i}"))
            .await;
    }
    let got1 = tab1.inbox_frames(3, WS_RECV_TIMEOUT).await;
    let got2 = tab2.inbox_frames(3, WS_RECV_TIMEOUT).await;
    let want: Vec<(i64, String)> = (1..=3)
        .map(|s| (s, "notification.created".to_owned()))
        .collect();
    assert_eq!(stream(&got1), want, "in seq order");
    assert_eq!(stream(&got2), want);
    assert_eq!(got1[0]["notification"]["reasons"], json!(["commented"]));
    assert_eq!(got1[2]["notification"]["excerpt"], "comment 2");
    assert_eq!(got1, got2, "the same frames on every instance");

    // Marking read in one place updates every tab.
    let id = got1[0]["notification"]["id"].clone();
    let marked = d
        .client(2)
        .mark_read(bob.token(), json!({"ids": [id]}))
        .await;
    assert_eq!(marked["seq"], 4);
    assert_eq!(marked["unreadCount"], 2);
    for tab in [&mut tab1, &mut tab2] {
        let f = tab.inbox_frames(1, WS_RECV_TIMEOUT).await;
        assert_eq!(f[0]["type"], "notification.read");
        assert_eq!(f[0]["seq"], 4);
        assert_eq!(f[0]["ids"], json!([id]));
        assert_eq!(f[0]["unreadCount"], 2);
    }
    // Marking what is already read changes nothing and sends nothing.
    let again = a.mark_read(bob.token(), json!({"ids": [id]})).await;
    assert_eq!(again["seq"], 4);

    // tab2 drops; while it is gone: a comment, a mark up to a seq, another comment.
    tab2.close().await;
    a.comment(owner.token(), task.id, "while away").await;
    let upto = a.mark_read(bob.token(), json!({"upto": 5})).await;
    assert_eq!(upto["seq"], 6);
    assert_eq!(upto["unreadCount"], 0);
    a.comment(owner.token(), task.id, "still away").await;
    let live = tab1.inbox_frames(3, WS_RECV_TIMEOUT).await;
    assert_eq!(
        stream(&live),
        [
            (5, "notification.created".to_owned()),
            (6, "notification.read".to_owned()),
            (7, "notification.created".to_owned()),
        ]
    );
    assert_eq!(live[1]["upto"], 5);
    assert!(live[1]["ids"].is_null());

    // Back on another instance: resuming from the last seq seen replays exactly what was missed,
    // then `subscribed` at the stream's seq, then live delivery.
    let mut back = d.ws_labeled(0, bob.token(), "tab2-back").await;
    let (s, replayed) = back.subscribe_inbox(Some(4)).await;
    assert_eq!(stream(&replayed), stream(&live));
    // The same notifications; a replay shows each as it stands now (5 is read by then).
    let ids = |fs: &[Value]| -> Vec<Value> {
        fs.iter().map(|f| f["notification"]["id"].clone()).collect()
    };
    assert_eq!(ids(&replayed), ids(&live));
    assert!(replayed[0]["notification"]["readAt"].is_string());
    assert_eq!(s["seq"], 7);
    assert_eq!(s["unreadCount"], 1);
    a.comment(owner.token(), task.id, "welcome back").await;
    let next = back.inbox_frames(1, WS_RECV_TIMEOUT).await;
    assert_eq!(stream(&next), [(8, "notification.created".to_owned())]);
    assert_eq!(
        stream(&tab1.inbox_frames(1, WS_RECV_TIMEOUT).await),
        stream(&next)
    );

    // Unsubscribing stops it; the socket stays usable.
    back.send_json(json!({"type": "unsubscribe", "inbox": true}))
        .await;
    let (u, _) = back
        .wait_for("inbox unsubscribed", WS_RECV_TIMEOUT, |v| {
            v["type"] == "unsubscribed"
        })
        .await;
    assert_eq!(u["inbox"], true);
    a.comment(owner.token(), task.id, "not for back").await;
    tab1.inbox_frames(1, WS_RECV_TIMEOUT).await;
    let extra = back.barrier().await;
    assert!(
        extra.iter().all(|f| f["type"] != "notification.created"),
        "{extra:?}"
    );
    // A socket that never subscribed gets none.
    let mut quiet = d.ws_labeled(1, bob.token(), "quiet").await;
    a.comment(owner.token(), task.id, "quiet?").await;
    tab1.inbox_frames(1, WS_RECV_TIMEOUT).await;
    assert!(quiet.barrier().await.is_empty());
}

async fn a_removed_member_is_no_longer_served_that_teams_notifications(d: Deployment) {
    let a = d.client(0);
    let owner = a.new_user("Owner").await;
    let kept = a.create_team(owner.token(), "Kept").await;
    let left = a.create_team(owner.token(), "Left").await;
    let bob = a.new_user("Bob").await;
    for t in [kept.id, left.id] {
        a.add_member(owner.token(), t, &bob.user.email, "member")
            .await;
    }
    let kept_task = a
        .create_task(
            owner.token(),
            kept.id,
            json!({"title": "k", "assigneeUserId": bob.id()}),
        )
        .await;
    let left_task = a
        .create_task(
            owner.token(),
            left.id,
            json!({"title": "l", "assigneeUserId": bob.id()}),
        )
        .await;
    let mut tab = d.ws_labeled(2, bob.token(), "bob").await;
    let (s, _) = tab.subscribe_inbox(None).await;
    assert_eq!(s["unreadCount"], 2);

    a.delete(
        &format!("/api/v1/teams/{}/members/{}", left.id, bob.id()),
        owner.token(),
    )
    .await
    .ok(204);
    // Gone from the list and the count; a comment in the team left reaches Bob no more.
    let items = d.client(1).all_notifications(bob.token()).await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["taskId"], kept_task.id.to_string());
    let me = d
        .client(1)
        .get("/api/v1/me", bob.token())
        .await
        .ok(200)
        .clone();
    assert_eq!(me["unreadNotifications"], 1);
    a.comment(owner.token(), left_task.id, "Bob left").await;
    a.comment(owner.token(), kept_task.id, "Bob stayed").await;
    let live = tab.inbox_frames(1, WS_RECV_TIMEOUT).await;
    assert_eq!(live[0]["notification"]["taskId"], kept_task.id.to_string());
    // A resume from the start leaves out the team Bob left.
    let mut again = d.ws_labeled(1, bob.token(), "bob-again").await;
    let (_, replayed) = again.subscribe_inbox(Some(0)).await;
    let tasks: Vec<&Value> = replayed
        .iter()
        .map(|f| &f["notification"]["taskId"])
        .collect();
    assert_eq!(
        tasks,
        [
            &json!(kept_task.id.to_string()),
            &json!(kept_task.id.to_string())
        ]
    );
    // Marking everything read cannot touch what Bob may not see; added back, it is there again.
    a.mark_read(bob.token(), json!({"upto": 1000})).await;
    a.add_member(owner.token(), left.id, &bob.user.email, "member")
        .await;
    let back = d.client(1).all_notifications(bob.token()).await;
    let unread: BTreeMap<String, bool> = back
        .iter()
        .map(|n| {
            (
                n["taskId"].as_str().unwrap_or_default().to_owned(),
                n["readAt"].is_null(),
            )
        })
        .collect();
    assert_eq!(unread.get(&left_task.id.to_string()), Some(&true));
    assert_eq!(unread.get(&kept_task.id.to_string()), Some(&false));
}

async fn inbox_pages_and_marks(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let team = api.create_team(owner.token(), "T").await;
    let bob = api.member(owner.token(), team.id, "Bob", "member").await;
    let task = api.task(bob.token(), team.id, "t").await;
    for i in 0..7 {
        api.comment(owner.token(), task.id, &format!("c{i}")).await;
    }
    // Newest first, in pages, each page with the stream's seq and the unread count.
    let p1 = api.inbox(bob.token(), "?limit=3").await;
    let seqs = |p: &Value| -> Vec<i64> {
        p["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|n| n["seq"].as_i64().expect("seq"))
            .collect()
    };
    assert_eq!(seqs(&p1), [7, 6, 5]);
    assert_eq!(p1["seq"], 7);
    assert_eq!(p1["unreadCount"], 7);
    let cursor = p1["nextCursor"].as_str().expect("a next page");
    let p2 = api
        .inbox(
            bob.token(),
            &format!("?limit=3&cursor={}", urlencode(cursor)),
        )
        .await;
    assert_eq!(seqs(&p2), [4, 3, 2]);
    let all = api.all_notifications(bob.token()).await;
    assert_eq!(all.len(), 7);
    // since and unread filter.
    assert_eq!(seqs(&api.inbox(bob.token(), "?since=5").await), [7, 6]);
    let ids: Vec<Value> = all[..2].iter().map(|n| n["id"].clone()).collect();
    let marked = api.mark_read(bob.token(), json!({"ids": ids})).await;
    assert_eq!(marked, json!({"seq": 8, "unreadCount": 5}));
    let unread = api.inbox(bob.token(), "?unread=true").await;
    assert_eq!(seqs(&unread), [5, 4, 3, 2, 1]);
    assert_eq!(unread["seq"], 8, "a mark-read takes a seq of the stream");
    let read = api.inbox(bob.token(), "?since=5").await;
    for n in read["items"].as_array().expect("items") {
        assert_ts_millis(n["readAt"].as_str().expect("read"));
    }
    // Someone else's ids, unknown ids: nothing changes.
    let owner_task = api.task(owner.token(), team.id, "o").await;
    api.comment(bob.token(), owner_task.id, "for owner").await;
    let owners = api.all_notifications(owner.token()).await;
    let not_mine = api
        .mark_read(
            bob.token(),
            json!({"ids": [owners[0]["id"], Uuid::new_v4()]}),
        )
        .await;
    assert_eq!(not_mine, json!({"seq": 8, "unreadCount": 5}));
    assert!(api.all_notifications(owner.token()).await[0]["readAt"].is_null());
    let all_read = api.mark_read(bob.token(), json!({"upto": 8})).await;
    assert_eq!(all_read, json!({"seq": 9, "unreadCount": 0}));
}

async fn inbox_input_is_checked(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let team = api.create_team(owner.token(), "T").await;
    let task = api.task(owner.token(), team.id, "t").await;
    let read = "/api/v1/me/notifications/read";
    api.post(read, owner.token(), json!({}))
        .await
        .invalid("ids");
    api.post(read, owner.token(), json!({"ids": [], "upto": 1}))
        .await
        .invalid("ids");
    api.post(read, owner.token(), json!({"ids": []}))
        .await
        .invalid("ids");
    let many: Vec<Uuid> = (0..201).map(|_| Uuid::new_v4()).collect();
    api.post(read, owner.token(), json!({"ids": many}))
        .await
        .invalid("ids");
    api.post(read, owner.token(), json!({"upto": -1}))
        .await
        .invalid("upto");
    api.get("/api/v1/me/notifications?since=-1", owner.token())
        .await
        .invalid("since");
    api.get("/api/v1/me/notifications?cursor=nope", owner.token())
        .await
        .invalid("cursor");
    // Following needs access to the task.
    let other = api.new_user("Other").await;
    api.put(&format!("/api/v1/tasks/{}/follow", task.id), other.token())
        .await
        .problem(404, "not_found");
    api.put(
        &format!("/api/v1/tasks/{}/follow", Uuid::new_v4()),
        owner.token(),
    )
    .await
    .problem(404, "not_found");
    // At most 50 distinct users in one text.
    let fifty_one: String = (0..51)
        .map(|i| format!("@[u{i}](user:{}) ", Uuid::new_v4()))
        .collect();
    api.post(
        &format!("/api/v1/tasks/{}/comments", task.id),
        owner.token(),
        json!({"body": fifty_one}),
    )
    .await
    .invalid("body");
    api.patch_task(owner.token(), task.id, json!({"description": fifty_one}))
        .await
        .invalid("description");
    let fifty: String = (0..50)
        .map(|i| format!("@[u{i}](user:{}) ", Uuid::new_v4()))
        .collect();
    api.comment(owner.token(), task.id, &fifty).await;

    // The socket side: naming a room too, a negative since, a since past the stream.
    let mut ws = srv.ws(owner.token()).await;
    for (msg, code) in [
        (
            json!({"type": "subscribe", "inbox": true, "teamId": team.id}),
            "bad_request",
        ),
        (
            json!({"type": "subscribe", "inbox": true, "since": -1}),
            "bad_request",
        ),
        (
            json!({"type": "subscribe", "inbox": true, "since": 99}),
            "resume_unavailable",
        ),
    ] {
        ws.send_json(msg.clone()).await;
        let (e, _) = ws
            .wait_for("error", Duration::from_secs(10), |v| v["type"] == "error")
            .await;
        assert_eq!(e["code"], code, "{msg}");
        assert_eq!(e["inbox"], true, "{msg}: the error names the inbox");
    }
    ws.expect_pong().await;
}

async fn notifications_are_kept_for_the_log_retention(b: Backend) {
    let srv = TestServer::start_with(b, &[("TASKFORGE_LOG_RETENTION", "1s")]).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let team = api.create_team(owner.token(), "T").await;
    let bob = api.member(owner.token(), team.id, "Bob", "member").await;
    let task = api.task(bob.token(), team.id, "t").await;
    api.comment(owner.token(), task.id, "old").await;
    let ids = api.mark_read(bob.token(), json!({"upto": 1})).await;
    assert_eq!(ids["seq"], 2);
    // Pruned within the retention and a housekeeping round (bounded to 15 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !api.all_notifications(bob.token()).await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "a notification older than the 1 s retention is still served after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // What is newer is there, at the stream's next seq; a resume from before replays what is left.
    api.comment(owner.token(), task.id, "new").await;
    let items = api.all_notifications(bob.token()).await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["seq"], 3);
    // The mark-read (seq 2) is pruned by the same rule, maybe a round later.
    let mut ws = srv.ws(bob.token()).await;
    loop {
        let (s, replayed) = ws.subscribe_inbox(Some(0)).await;
        assert_eq!(s["seq"], 3);
        if stream(&replayed) == [(3, "notification.created".to_owned())] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline + Duration::from_secs(5),
            "a mark-read older than the retention is still replayed: {replayed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// More events than one read of the stream returns: the live feed and a replay both send every
/// one, in order, once.
async fn a_long_stream_is_sent_and_replayed_in_batches(b: Backend) {
    const N: i64 = 450;
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let team = api.create_team(owner.token(), "T").await;
    let bob = api.member(owner.token(), team.id, "Bob", "member").await;
    let task = api.task(bob.token(), team.id, "t").await;
    let mut live = srv.ws(bob.token()).await.labeled("live");
    live.subscribe_inbox(None).await;
    for i in 0..N {
        if i == N / 2 {
            api.mark_read(bob.token(), json!({"upto": N / 2})).await;
        } else {
            api.comment(owner.token(), task.id, &format!("c{i}")).await;
        }
    }
    let want: Vec<i64> = (1..=N).collect();
    let got = live.inbox_frames(N as usize, Duration::from_secs(30)).await;
    let seqs: Vec<i64> = stream(&got).into_iter().map(|(s, _)| s).collect();
    assert_eq!(seqs, want);
    let mut resumed = srv.ws(bob.token()).await.labeled("resumed");
    let (s, replayed) = resumed.subscribe_inbox(Some(0)).await;
    assert_eq!(s["seq"], N);
    assert_eq!(stream(&replayed), stream(&got));
    assert_eq!(replayed[(N / 2) as usize]["type"], "notification.read");
}

/// A socket that goes away while its inbox subscribe is still reading the store (a tab closed
/// at once) cancels that read. Later requests of anyone must not notice: on a small pool, every
/// write after such closes succeeds. The socket ends at staggered moments after its subscribe,
/// so that some land while a read is beginning its transaction.
async fn closing_a_socket_as_its_inbox_subscribe_ends_leaves_the_store_usable(b: Backend) {
    const ROUNDS: usize = 300;
    let srv = TestServer::start_with(b, &[("TASKFORGE_DATABASE_POOL_SIZE", "2")]).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let team = api.create_team(owner.token(), "T").await;
    let bob = api.member(owner.token(), team.id, "Bob", "member").await;
    let task = api.task(bob.token(), team.id, "t").await;
    // Something to replay: the subscribe reads the store a few times.
    for i in 0..5 {
        api.comment(owner.token(), task.id, &format!("c{i}")).await;
    }
    let mut failed = Vec::new();
    for i in 0..ROUNDS {
        let mut ws = srv.ws(bob.token()).await;
        ws.send_json(json!({"type": "subscribe", "inbox": true, "since": 0}))
            .await;
        // 0 to ~1.5 ms: a busy wait, finer than the timer.
        let until = std::time::Instant::now() + Duration::from_micros((i as u64 * 10) % 1500);
        while std::time::Instant::now() < until {
            std::hint::spin_loop();
        }
        drop(ws);
        let r = api
            .post(
                &format!("/api/v1/tasks/{}/comments", task.id),
                bob.token(),
                json!({"body": format!("after close {i}")}),
            )
            .await;
        if r.status != 201 {
            failed.push((i, format!("{} {}", r.status, r.text)));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {ROUNDS} writes failed after sockets went away during their inbox subscribe \
         (rounds {:?}); the first: {}",
        failed.len(),
        failed.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        failed[0].1
    );
}

/// Comments in two teams at once, each notifying the same six users (in whatever order the
/// requests land): every request succeeds (no deadlock between the inbox rows on PostgreSQL), and
/// every user's stream is gapless, one notification per comment that owed them one.
async fn concurrent_changes_give_every_inbox_a_gapless_stream(b: Backend) {
    const USERS: usize = 6;
    const ROUNDS: usize = 8;
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let teams = [
        api.create_team(owner.token(), "T1").await,
        api.create_team(owner.token(), "T2").await,
    ];
    let mut users = Vec::new();
    for i in 0..USERS {
        let u = api.new_user(&format!("U{i}")).await;
        for t in &teams {
            api.add_member(owner.token(), t.id, &u.user.email, "member")
                .await;
        }
        users.push(u);
    }
    // One task per team, followed by every user.
    let mut tasks = Vec::new();
    for t in &teams {
        let task = api.task(owner.token(), t.id, "busy").await;
        for u in &users {
            api.follow(u.token(), task.id, true).await;
        }
        tasks.push(task);
    }
    // Every round: each user comments on both tasks at once (notifying the five others and the
    // owner), so the requests take the same inbox rows concurrently.
    for round in 0..ROUNDS {
        let mut pending = Vec::new();
        for u in &users {
            for task in &tasks {
                let api = api.clone();
                let token = u.token().to_owned();
                let task = task.id;
                pending.push(tokio::spawn(async move {
                    api.post(
                        &format!("/api/v1/tasks/{task}/comments"),
                        &token,
                        json!({"body": format!("round {round}")}),
                    )
                    .await
                    .status
                }));
            }
        }
        for p in pending {
            assert_eq!(p.await.expect("the request task"), 201);
        }
    }
    let per_user = (USERS - 1) * tasks.len() * ROUNDS;
    for u in &users {
        let items = api.all_notifications(u.token()).await;
        let mut seqs: Vec<i64> = items
            .iter()
            .map(|n| n["seq"].as_i64().expect("seq"))
            .collect();
        seqs.sort_unstable();
        let want: Vec<i64> = (1..=per_user as i64).collect();
        assert_eq!(
            seqs, want,
            "{}: one notification per comment of the others, gapless",
            u.user.display_name
        );
    }
    let owners = api.all_notifications(owner.token()).await;
    assert_eq!(owners.len(), USERS * tasks.len() * ROUNDS);
}
