//! `/metrics`: Prometheus text from the `metrics` recorder, and its counters follow the traffic.

use crate::common::*;
use serde_json::json;

both_backends!(metrics_follow_the_traffic);

async fn metrics_follow_the_traffic(b: Backend) {
    let srv = TestServer::process(b).await;
    let api = srv.client();
    let before = api.send_raw("GET", "/metrics", None, None, None, &[]).await;
    assert_eq!(before.status, 200);
    assert!(
        before
            .header("content-type")
            .unwrap_or("")
            .starts_with("text/plain")
    );
    let s0 = Metrics::parse(&before.text);

    let u = api.new_user("Metric").await;
    let team = api.create_team(u.token(), "M").await;
    let mut ws = srv.ws(u.token()).await;
    ws.subscribe_team(team.id, None).await;
    let mut ws2 = srv.ws(u.token()).await;
    ws2.subscribe_board(team.default_board_id, None).await;
    for i in 0..3 {
        api.create_task(u.token(), team.id, json!({"title": format!("t{i}")}))
            .await;
    }
    for _ in 0..3 {
        ws.expect_type("activity").await;
        ws2.expect_type("activity").await;
    }
    // A resume that replays the three tasks.
    let mut late = srv.ws(u.token()).await;
    let since = team_seq_before_tasks(&api, u.token(), team.id).await;
    late.subscribe_team(team.id, Some(since)).await;
    api.get("/api/v1/nope", u.token())
        .await
        .problem(404, "not_found");

    let after = api.send_raw("GET", "/metrics", None, None, None, &[]).await;
    let s1 = Metrics::parse(&after.text);
    let moved = |name: &str, labels: &[&str]| s1.get(name, labels) - s0.get(name, labels);

    assert_eq!(
        s1.get("taskforge_ws_connections", &[]),
        3.0,
        "{}",
        after.text
    );
    assert_eq!(
        s1.get("taskforge_ws_subscriptions", &["scope=\"team\""]),
        2.0
    );
    assert_eq!(
        s1.get("taskforge_ws_subscriptions", &["scope=\"board\""]),
        1.0
    );
    assert_eq!(
        s1.get("taskforge_ws_subscriptions", &["scope=\"task\""]),
        0.0
    );
    // team creation (team.created is not logged: the team has no log before) + 3 tasks
    assert!(
        moved("taskforge_activities_committed_total", &[]) >= 3.0,
        "{}",
        after.text
    );
    assert!(moved("taskforge_activities_published_total", &[]) >= 3.0);
    assert!(moved("taskforge_activities_dispatched_total", &[]) >= 3.0);
    // 3 tasks x 2 sockets, live
    assert!(moved("taskforge_deliveries_total", &[]) >= 6.0);
    assert_eq!(moved("taskforge_replayed_activities_total", &[]), 3.0);
    assert!(moved("taskforge_activity_delivery_latency_seconds_count", &[]) >= 3.0);
    assert_eq!(
        moved(
            "taskforge_http_requests_total",
            &[
                "method=\"POST\"",
                "route=\"/api/v1/teams/{teamId}/tasks\"",
                "status=\"201\""
            ]
        ),
        3.0
    );
    assert_eq!(
        moved(
            "taskforge_http_requests_total",
            &["method=\"GET\"", "route=\"unmatched\"", "status=\"404\""]
        ),
        1.0
    );
    assert!(
        moved(
            "taskforge_http_request_duration_seconds_count",
            &["method=\"POST\"", "route=\"/api/v1/teams/{teamId}/tasks\""]
        ) >= 3.0
    );
    // The binary's allocator reports its heap: some live bytes, all of them in active pages.
    let allocated = s1.get("taskforge_allocator_bytes", &["kind=\"allocated\""]);
    let active = s1.get("taskforge_allocator_bytes", &["kind=\"active\""]);
    assert!(allocated > 0.0, "{}", after.text);
    assert!(
        active >= allocated,
        "active {active} < allocated {allocated}"
    );
    // No id of any kind in a label: routes are templates.
    assert!(!after.text.contains(&team.id.to_string()));

    drop(ws);
    drop(ws2);
    drop(late);
    let mut conns = f64::NAN;
    for _ in 0..100 {
        conns = api.metrics().await.get("taskforge_ws_connections", &[]);
        if conns == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(conns, 0.0, "connections gauge after the sockets closed");
}

/// The team's seq before its first task: the activity log's first task.created seq minus one.
async fn team_seq_before_tasks(api: &Api, token: &str, team: uuid::Uuid) -> i64 {
    let log = api.activity(token, team).await;
    let first = log
        .iter()
        .find(|a| a.kind == "task.created")
        .expect("a task.created in the log");
    first.seq - 1
}

/// A background task that dies is not silent: `/readyz` answers 503 naming it, `/metrics` counts
/// it, and the rest of the server keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_background_task_fails_readiness() {
    let srv = TestServer::process_with(
        Backend::Sqlite,
        &[("TASKFORGE_FAULT", "background-task-panic")],
    )
    .await;
    let api = srv.client();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let ready = loop {
        let r = api.send("GET", "/readyz", None, None, &[]).await;
        if r.status == 503 || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(ready.status, 503, "{}", ready.text);
    let body: serde_json::Value = serde_json::from_str(&ready.text).expect("json");
    assert_eq!(body["tasks"], "down");
    assert_eq!(body["failedTasks"], json!(["fault injection"]));
    let m = api.metrics().await;
    assert_eq!(
        m.get(
            "taskforge_background_task_failures_total",
            &["task=\"fault injection\""]
        ),
        1.0
    );
    // Everything else still works.
    let u = api.new_user("Still").await;
    api.create_team(u.token(), "T").await;
}
