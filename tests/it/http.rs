//! HTTP-level behaviour: problem+json errors, body parsing errors, limits, unknown routes,
//! health endpoints, the OpenAPI document, process output and restart persistence.

use crate::common::*;
use serde_json::{Value, json};
use uuid::Uuid;

both_backends!(
    body_parsing_errors,
    payload_too_large,
    bad_path_ids_and_unknown_routes,
    unauthenticated_requests_are_401,
    health_and_readiness,
    openapi_documents_the_contract,
    process_output_and_secrets_not_logged,
    data_survives_restart,
    live_board_is_served,
    json_logs_carry_ids_and_never_secrets,
);

async fn body_parsing_errors(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let u = api.new_user("U").await;
    let tok = Some(u.token());
    let j = Some("application/json");

    let r = api
        .send_raw(
            "POST",
            "/api/v1/teams",
            tok,
            Some(b"{\"name\": ".to_vec()),
            j,
            &[],
        )
        .await;
    r.problem(400, "bad_request");
    let r = api
        .send_raw(
            "POST",
            "/api/v1/teams",
            tok,
            Some(b"not json".to_vec()),
            j,
            &[],
        )
        .await;
    r.problem(400, "bad_request");
    let r = api
        .send_raw(
            "POST",
            "/api/v1/auth/register",
            None,
            Some(b"{,}".to_vec()),
            j,
            &[],
        )
        .await;
    r.problem(400, "bad_request");

    let body = br#"{"name":"x"}"#.to_vec();
    let r = api
        .send_raw("POST", "/api/v1/teams", tok, Some(body.clone()), None, &[])
        .await;
    r.problem(415, "unsupported_media_type");
    let r = api
        .send_raw(
            "POST",
            "/api/v1/teams",
            tok,
            Some(body.clone()),
            Some("text/plain"),
            &[],
        )
        .await;
    r.problem(415, "unsupported_media_type");
    let r = api
        .send_raw(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(body.clone()),
            Some("application/x-www-form-urlencoded"),
            &[],
        )
        .await;
    r.problem(415, "unsupported_media_type");
    // A charset parameter is fine.
    let r = api
        .send_raw(
            "POST",
            "/api/v1/teams",
            tok,
            Some(body),
            Some("application/json; charset=utf-8"),
            &[],
        )
        .await;
    r.ok(201);

    // Well-formed JSON of the wrong shape.
    for bad in [
        json!({}),
        json!([]),
        json!("name"),
        json!({"name": null}),
        json!({"name": ["x"]}),
    ] {
        api.post("/api/v1/teams", u.token(), bad)
            .await
            .problem(422, "validation_failed");
    }
    let r = api
        .post("/api/v1/teams", u.token(), json!({"name": ""}))
        .await;
    r.invalid("name");
    // Invalid UTF-8, even inside a field the server would ignore, is not JSON.
    api.send_raw(
        "POST",
        "/api/v1/teams",
        tok,
        Some(b"{\"name\":\"ok\",\"x\":\"S\x9d2\"}".to_vec()),
        j,
        &[],
    )
    .await
    .problem(400, "bad_request");
    // A struct's fields given as an array are not an object: refused, not read in order.
    api.post(
        "/api/v1/auth/register",
        "",
        json!(["array@example.com", "correct horse battery", "Arr"]),
    )
    .await
    .invalid("body");
    // A number, boolean or null where an enum's string belongs is a wrong shape (422 naming the
    // field), although serde_json calls it a syntax error.
    let team = api.create_team(u.token(), "Enums").await;
    for bad in [json!(3.5), json!(true), json!(["todo"])] {
        api.post(
            &format!("/api/v1/teams/{}/tasks", team.id),
            u.token(),
            json!({"title": "t", "status": bad}),
        )
        .await
        .invalid("status");
    }
    api.post(
        &format!("/api/v1/teams/{}/members", team.id),
        u.token(),
        json!({"email": "nobody@example.com", "role": 1}),
    )
    .await
    .invalid("role");
    // On a PATCH, a null status (not a clearable field) is a wrong shape too.
    let t = api.task(u.token(), team.id, "patched").await;
    api.patch(
        &format!("/api/v1/tasks/{}", t.id),
        u.token(),
        json!({"status": null}),
    )
    .await
    .invalid("status");
    api.delete(&format!("/api/v1/tasks/{}", t.id), u.token())
        .await
        .ok(204);
    // Nothing was created by the failures.
    assert_eq!(api.all_pages(u.token(), "/api/v1/teams").await.len(), 2);
    assert!(
        api.all_pages(u.token(), &format!("/api/v1/teams/{}/tasks", team.id))
            .await
            .is_empty()
    );
}

async fn payload_too_large(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let u = api.new_user("U").await;
    let team = api.create_team(u.token(), "T").await;
    let task = api.task(u.token(), team.id, "t").await;
    let huge = "x".repeat(1024 * 1024 + 16);

    let r = api
        .post("/api/v1/teams", u.token(), json!({"name": huge}))
        .await;
    r.problem(413, "payload_too_large");
    let r = api
        .post(
            &format!("/api/v1/tasks/{}/comments", task.id),
            u.token(),
            json!({"body": huge}),
        )
        .await;
    r.problem(413, "payload_too_large");
    let r = api
        .send(
            "POST",
            "/api/v1/auth/register",
            None,
            Some(&json!({"email": unique_email("big"), "password": huge, "displayName": "x"})),
            &[],
        )
        .await;
    r.problem(413, "payload_too_large");
    // Just under 1 MiB is not rejected for size (it fails validation instead).
    let almost = "y".repeat(1024 * 1024 - 64);
    let r = api
        .post(
            &format!("/api/v1/teams/{}/tasks", team.id),
            u.token(),
            json!({"title": "ok", "description": almost}),
        )
        .await;
    r.invalid("description");
    assert_eq!(api.team_seq(u.token(), team.id).await, 1);
}

async fn bad_path_ids_and_unknown_routes(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let u = api.new_user("U").await;
    let tok = u.token();
    let team = api.create_team(tok, "T").await;
    for (method, path) in [
        ("GET", "/api/v1/teams/abc".to_string()),
        ("PATCH", "/api/v1/teams/abc".to_string()),
        ("GET", "/api/v1/teams/abc/tasks".to_string()),
        ("GET", "/api/v1/teams/abc/activity".to_string()),
        ("GET", "/api/v1/tasks/12345".to_string()),
        ("DELETE", "/api/v1/tasks/not-a-uuid".to_string()),
        ("GET", "/api/v1/tasks/abc/comments".to_string()),
        ("PATCH", "/api/v1/boards/abc".to_string()),
        ("PATCH", "/api/v1/comments/abc".to_string()),
        (
            "DELETE",
            format!("/api/v1/teams/{}/members/not-a-user", team.id),
        ),
    ] {
        let body = (method == "PATCH").then(|| json!({"name": "x", "title": "x", "body": "x"}));
        let r = api.send(method, &path, Some(tok), body.as_ref(), &[]).await;
        r.problem(400, "bad_request");
    }
    for path in [
        "/api/v1/nope",
        "/api/v1/teams/x/y/z",
        "/api/v2/teams",
        "/nothing-here",
    ] {
        let r = api.get(path, tok).await;
        r.problem(404, "not_found");
    }
}

async fn unauthenticated_requests_are_401(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let u = api.new_user("U").await;
    let team = api.create_team(u.token(), "T").await;
    let task = api.task(u.token(), team.id, "t").await;
    let c = api.comment(u.token(), task.id, "c").await;
    let t = team.id;
    let cases = [
        ("GET", "/api/v1/me".to_string()),
        ("GET", "/api/v1/teams".to_string()),
        ("GET", format!("/api/v1/teams/{t}")),
        ("GET", format!("/api/v1/teams/{t}/members")),
        ("GET", format!("/api/v1/teams/{t}/boards")),
        ("GET", format!("/api/v1/teams/{t}/tasks")),
        ("GET", format!("/api/v1/teams/{t}/activity")),
        ("GET", format!("/api/v1/tasks/{}", task.id)),
        ("DELETE", format!("/api/v1/tasks/{}", task.id)),
        ("GET", format!("/api/v1/tasks/{}/comments", task.id)),
        ("DELETE", format!("/api/v1/comments/{}", c.id)),
        (
            "DELETE",
            format!("/api/v1/boards/{}", team.default_board_id),
        ),
        ("DELETE", format!("/api/v1/teams/{t}/members/{}", u.user.id)),
    ];
    for (method, path) in &cases {
        for token in [None, Some("nope"), Some(u.refresh_token.as_str())] {
            let r = api.send(method, path, token, None, &[]).await;
            r.problem(401, "unauthorized");
            assert!(
                r.header("www-authenticate")
                    .is_some_and(|h| h.starts_with("Bearer")),
                "{method} {path}: WWW-Authenticate missing"
            );
        }
    }
    // Nothing was deleted.
    api.get_task(u.token(), task.id).await.ok(200);
}

async fn health_and_readiness(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let r = api.send("GET", "/healthz", None, None, &[]).await;
    r.ok(200);
    let r = api.send("GET", "/readyz", None, None, &[]).await;
    r.ok(200);
}

async fn openapi_documents_the_contract(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let r = api.send("GET", "/openapi.json", None, None, &[]).await;
    let doc = r.ok(200).clone();
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "openapi version: {}",
        doc["openapi"]
    );
    assert_eq!(&doc, srv.spec());

    // Every contract operation is documented (paths may be relative to a server URL).
    let prefix = doc["servers"]
        .as_array()
        .and_then(|s| s.first())
        .and_then(|s| s["url"].as_str())
        .filter(|u| u.starts_with('/'))
        .unwrap_or("")
        .trim_end_matches('/')
        .to_string();
    let norm = |p: &str| -> String {
        let p = p.strip_prefix(prefix.as_str()).unwrap_or(p);
        p.split('/')
            .map(|s| if s.starts_with('{') { "{}" } else { s })
            .collect::<Vec<_>>()
            .join("/")
    };
    let documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, ops)| {
            let np = norm(&format!("{prefix}{p}"));
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_ascii_uppercase(), np.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let required = [
        "POST /api/v1/auth/register",
        "POST /api/v1/auth/login",
        "POST /api/v1/auth/refresh",
        "POST /api/v1/auth/logout",
        "GET /api/v1/me",
        "PATCH /api/v1/me",
        "POST /api/v1/teams",
        "GET /api/v1/teams",
        "GET /api/v1/teams/{}",
        "PATCH /api/v1/teams/{}",
        "GET /api/v1/teams/{}/members",
        "POST /api/v1/teams/{}/members",
        "PATCH /api/v1/teams/{}/members/{}",
        "DELETE /api/v1/teams/{}/members/{}",
        "POST /api/v1/teams/{}/boards",
        "GET /api/v1/teams/{}/boards",
        "PATCH /api/v1/boards/{}",
        "DELETE /api/v1/boards/{}",
        "POST /api/v1/teams/{}/tasks",
        "GET /api/v1/teams/{}/tasks",
        "GET /api/v1/tasks/{}",
        "PATCH /api/v1/tasks/{}",
        "DELETE /api/v1/tasks/{}",
        "POST /api/v1/tasks/{}/comments",
        "GET /api/v1/tasks/{}/comments",
        "PATCH /api/v1/comments/{}",
        "DELETE /api/v1/comments/{}",
        "GET /api/v1/teams/{}/activity",
    ];
    for op in required {
        let (m, p) = op.split_once(' ').unwrap();
        let p = norm(p);
        assert!(
            documented.iter().any(|(dm, dp)| dm == m && *dp == p),
            "{op} is not documented in /openapi.json"
        );
    }

    // The contract's limits are stated as maxLength.
    let mut limits: Vec<(String, u64)> = Vec::new();
    collect_max_lengths(&doc, &mut limits);
    for (field, max) in [
        ("title", 200),
        ("description", 20_000),
        ("body", 10_000),
        ("name", 100),
        ("displayName", 100),
    ] {
        assert!(
            limits.iter().any(|(f, m)| f == field && *m == max),
            "/openapi.json does not state maxLength {max} for `{field}`; found {limits:?}"
        );
    }
}

fn collect_max_lengths(v: &Value, out: &mut Vec<(String, u64)>) {
    match v {
        Value::Object(o) => {
            if let Some(Value::Object(props)) = o.get("properties") {
                for (name, schema) in props {
                    let mut stack = vec![schema];
                    while let Some(s) = stack.pop() {
                        if let Some(m) = s.get("maxLength").and_then(Value::as_u64) {
                            out.push((name.clone(), m));
                        }
                        for k in ["oneOf", "anyOf", "allOf"] {
                            if let Some(Value::Array(a)) = s.get(k) {
                                stack.extend(a.iter());
                            }
                        }
                    }
                }
            }
            for child in o.values() {
                collect_max_lengths(child, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|c| collect_max_lengths(c, out)),
        _ => {}
    }
}

async fn process_output_and_secrets_not_logged(b: Backend) {
    let srv = TestServer::process(b).await;
    let api = srv.client();
    let password = format!("pw-{}", Uuid::new_v4().simple());
    let u = api.register(&unique_email("log"), &password, "Log").await;
    let again: AuthResponse = api.login(&u.user.email, &password).await.parse(200);
    api.refresh(&again.refresh_token).await.ok(200);
    api.login(&u.user.email, "wrong-password-123").await;
    api.get("/api/v1/me", u.token()).await.ok(200);
    api.get("/api/v1/nope", u.token()).await;
    // Let the stderr drain catch up with whatever the requests logged.
    srv.wait_for_log(|_| true, std::time::Duration::from_secs(2))
        .await;
    let logs = srv.stderr_text();
    for (what, secret) in [
        ("password", password.as_str()),
        ("wrong password", "wrong-password-123"),
        ("access token", u.access_token.as_str()),
        ("refresh token", u.refresh_token.as_str()),
        ("refresh token", again.refresh_token.as_str()),
        ("JWT secret", srv.jwt_secret.as_str()),
    ] {
        assert!(!logs.contains(secret), "the {what} appears in the logs");
    }
    let out = srv.stdout_lines();
    assert_eq!(
        out.len(),
        1,
        "stdout carries exactly the ready line, logs go to stderr: {out:?}"
    );
    assert!(out[0].starts_with(READY_PREFIX));
}

async fn data_survives_restart(b: Backend) {
    let mut srv = TestServer::start(b).await;
    let api = srv.client();
    let u = api.new_user("Persist").await;
    let team = api.create_team(u.token(), "Durable").await;
    let task = api.task(u.token(), team.id, "survive").await;
    api.comment(u.token(), task.id, "still here").await;

    srv.restart().await;
    let api = srv.client();
    // The access token (same secret) still works, and so do login and refresh.
    api.get("/api/v1/me", u.token()).await.ok(200);
    let login: AuthResponse = api.login(&u.user.email, PASSWORD).await.parse(200);
    assert_eq!(login.user.id, u.user.id);
    api.refresh(&u.refresh_token).await.ok(200);
    let t: Task = api.get_task(u.token(), task.id).await.parse(200);
    assert_eq!(t.title, "survive");
    let acts = api.activity(u.token(), team.id).await;
    assert_eq!(acts.len(), 2);
    // The seq continues without a gap after the restart.
    api.task(u.token(), team.id, "after restart").await;
    let acts = api.activity(u.token(), team.id).await;
    assert_eq!(acts.iter().map(|a| a.seq).collect::<Vec<_>>(), [1, 2, 3]);
    api.send("GET", "/readyz", None, None, &[]).await.ok(200);
}

fn panics(f: impl FnOnce()) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err()
}

/// The conformance checker itself must be able to fail, or the inline checks prove nothing.
#[tokio::test]
async fn openapi_checker_rejects_mismatches() {
    let srv = TestServer::start(Backend::Sqlite).await;
    let api = srv.client();
    let u = api.new_user("Spec").await;
    let team = api.create_team(u.token(), "S").await;
    let spec = Spec::new(srv.spec().clone());
    let team_path = format!("/api/v1/teams/{}", team.id);
    let real = api.get(&team_path, u.token()).await;
    let real_404 = api
        .get(&format!("/api/v1/teams/{}", Uuid::new_v4()), u.token())
        .await;
    let json = "application/json";
    let problem = "application/problem+json";

    // Real answers pass.
    assert!(!panics(
        || spec.check("GET", &team_path, 200, json, &real.text)
    ));
    assert!(!panics(|| spec.check(
        "GET",
        &team_path,
        404,
        problem,
        &real_404.text
    )));
    // An undocumented route may only be a 404; an undocumented method only a 405 (or 404).
    assert!(!panics(|| spec.check(
        "GET",
        "/api/v1/nope",
        404,
        problem,
        "{}"
    )));
    assert!(panics(|| spec.check(
        "GET",
        "/api/v1/nope",
        200,
        json,
        "[]"
    )));
    assert!(!panics(|| spec.check("PUT", &team_path, 405, problem, "{}")));
    assert!(panics(|| spec.check("PUT", &team_path, 200, json, "{}")));
    // Routes documented elsewhere (the socket, the board, the documents) are let through.
    assert!(!panics(|| spec.check(
        "GET",
        "/assets/board/board.js",
        200,
        "text/javascript",
        ""
    )));

    // A wrong type, a missing required field, an undocumented status: all caught.
    let mut wrong = real.json.clone();
    wrong["id"] = serde_json::json!(5);
    assert!(panics(|| spec.check(
        "GET",
        &team_path,
        200,
        json,
        &wrong.to_string()
    )));
    let mut missing = real.json.clone();
    missing.as_object_mut().unwrap().remove("name");
    assert!(panics(|| spec.check(
        "GET",
        &team_path,
        200,
        json,
        &missing.to_string()
    )));
    assert!(panics(|| spec.check("GET", &team_path, 418, json, "{}")));
    assert!(panics(|| spec.check(
        "GET",
        "/api/v1/teams?limit=1",
        200,
        json,
        r#"{"items":"nope","nextCursor":null}"#
    )));
    let mut bad_problem = real_404.json.clone();
    bad_problem["status"] = serde_json::json!("404");
    assert!(panics(|| spec.check(
        "GET",
        &team_path,
        404,
        problem,
        &bad_problem.to_string()
    )));
}

/// SQLite: the server creates the database file itself.
#[tokio::test]
async fn sqlite_database_file_is_created() {
    let srv = TestServer::start(Backend::Sqlite).await;
    let path = srv
        .db_url
        .strip_prefix("sqlite://")
        .expect("sqlite URL")
        .to_string();
    assert!(
        std::path::Path::new(&path).is_file(),
        "{path} was not created"
    );
    let api = srv.client();
    api.new_user("File").await;
    assert!(std::fs::metadata(&path).unwrap().len() > 0);
}

/// PostgreSQL: /readyz stops answering 200 when the database goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_readyz_fails_without_database() {
    if !postgres_enabled() {
        return;
    }
    let srv = TestServer::start(Backend::Postgres).await;
    let api = srv.client();
    api.send("GET", "/readyz", None, None, &[]).await.ok(200);
    api.send("GET", "/healthz", None, None, &[]).await.ok(200);
    let admin = std::env::var("TASKFORGE_TEST_DATABASE_URL").unwrap();
    let db = srv
        .db_url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap();
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {db} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        let r = api.send("GET", "/readyz", None, None, &[]).await;
        if r.status != 200 || std::time::Instant::now() >= deadline {
            break r.status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(status, 503, "/readyz with the database gone");
    // The process itself is still up.
    api.send("GET", "/healthz", None, None, &[]).await.ok(200);
}

/// The board's page at `/`, with every module it imports (followed through relative `from` paths),
/// strict headers and ETag revalidation; files are GET-only and unknown ones are the API's 404.
async fn live_board_is_served(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let page = api.send_raw("GET", "/", None, None, None, &[]).await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert!(
        page.header("content-type")
            .unwrap_or("")
            .starts_with("text/html")
    );
    let csp = page.header("content-security-policy").unwrap_or("");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert!(page.text.contains(r#"src="/assets/board/board.js""#));

    let etag = page.header("etag").expect("an ETag").to_owned();
    let again = api
        .send_raw(
            "GET",
            "/",
            None,
            None,
            None,
            &[("if-none-match", etag.as_str())],
        )
        .await;
    assert_eq!(again.status, 304);

    // Walk the module graph from the entry point: every import must be embedded.
    let mut todo = vec!["/assets/board/board.js".to_owned(), "/board.css".to_owned()];
    let mut seen = std::collections::HashSet::new();
    while let Some(path) = todo.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let r = api.send_raw("GET", &path, None, None, None, &[]).await;
        assert_eq!(r.status, 200, "GET {path}");
        let ct = r.header("content-type").unwrap_or("");
        if path.ends_with(".js") {
            assert!(ct.starts_with("text/javascript"), "{path}: {ct}");
            let dir = &path[..path.rfind('/').unwrap_or(0)];
            for part in r
                .text
                .split(" from '")
                .skip(1)
                .chain(r.text.split(" from \"").skip(1))
            {
                let Some(spec) = part.split(['\'', '"']).next() else {
                    continue;
                };
                assert!(
                    spec.starts_with('.'),
                    "{path} imports a bare module {spec:?}"
                );
                let mut segs: Vec<&str> = dir.split('/').collect();
                for s in spec.split('/') {
                    match s {
                        "." => {}
                        ".." => {
                            segs.pop();
                        }
                        s => segs.push(s),
                    }
                }
                todo.push(segs.join("/"));
            }
        }
    }
    assert!(
        seen.len() >= 5,
        "the board and the client modules: {seen:?}"
    );

    api.send_raw("GET", "/assets/nope.js", None, None, None, &[])
        .await
        .problem(404, "not_found");
    api.send_raw(
        "POST",
        "/",
        None,
        Some(b"x".to_vec()),
        Some("text/plain"),
        &[],
    )
    .await
    .problem(405, "method_not_allowed");
}

/// With `TASKFORGE_LOG_FORMAT=json` at debug level: every line is a JSON object, each HTTP request
/// has a line with its request id, each socket's connect and close share a connection id, and no
/// password, access or refresh token, or JWT secret appears anywhere, although tokens went over
/// `?token=`, `Authorization` and the `auth` message.
async fn json_logs_carry_ids_and_never_secrets(b: Backend) {
    let srv = TestServer::process_with(
        b,
        &[("TASKFORGE_LOG_FORMAT", "json"), ("TASKFORGE_LOG", "debug")],
    )
    .await;
    let api = srv.client();
    let password = format!("pw-{}", Uuid::new_v4().simple());
    let u = api.register(&unique_email("json"), &password, "Json").await;
    let again: AuthResponse = api.login(&u.user.email, &password).await.parse(200);
    let third: AuthResponse = api.refresh(&again.refresh_token).await.parse(200);
    api.login(&u.user.email, "wrong-password-123").await;
    let team = api.create_team(u.token(), "Logs").await;
    let mut by_query = srv.ws(u.token()).await;
    by_query.subscribe_team(team.id, None).await;
    let mut by_header = srv.ws_header(again.token()).await;
    assert_eq!(by_header.auth(third.token()).await["type"], "authenticated");
    api.task(u.token(), team.id, "logged").await;
    by_query.expect_type("activity").await;
    drop(by_query);
    drop(by_header);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while srv.stderr_text().matches("socket closed").count() < 2
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let logs = srv.stderr_text();
    for (what, secret) in [
        ("password", password.as_str()),
        ("wrong password", "wrong-password-123"),
        ("access token (query)", u.access_token.as_str()),
        ("access token (header)", again.access_token.as_str()),
        ("access token (auth message)", third.access_token.as_str()),
        ("refresh token", u.refresh_token.as_str()),
        ("refresh token", again.refresh_token.as_str()),
        ("refresh token", third.refresh_token.as_str()),
        ("JWT secret", srv.jwt_secret.as_str()),
    ] {
        assert!(!logs.contains(secret), "the {what} appears in the logs");
    }
    assert!(!logs.contains("token="), "a query string was logged");

    let lines: Vec<Value> = logs
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let message = |l: &Value| l["fields"]["message"].as_str().unwrap_or("").to_owned();
    // One line per request, inside the `http` span that carries its id.
    let login_lines: Vec<&Value> = lines
        .iter()
        .filter(|l| l["span"]["path"] == "/api/v1/auth/login" && message(l).contains("finished"))
        .collect();
    assert_eq!(
        login_lines.len(),
        2,
        "one line per login request: {login_lines:?}"
    );
    for l in &login_lines {
        let id = l["span"]["request_id"].as_str().unwrap_or("");
        assert!(Uuid::parse_str(id).is_ok(), "a request id: {l}");
    }
    // Socket lifecycle: connected and closed, with the same connection id.
    let conns = |msg: &str| -> Vec<i64> {
        let mut ids: Vec<i64> = lines
            .iter()
            .filter(|l| message(l) == msg)
            .map(|l| {
                l["fields"]["conn"]
                    .as_i64()
                    .unwrap_or_else(|| panic!("no conn id: {l}"))
            })
            .collect();
        ids.sort_unstable();
        ids
    };
    let connected = conns("socket connected");
    assert_eq!(connected.len(), 2, "{logs}");
    assert_eq!(connected, conns("socket closed"));
}
