//! `/realtime` handshake and authentication: `?token=`, `Authorization: Bearer`, the `auth`
//! message, timeouts, renewal, expiry, tokens kept out of logs, and SIGTERM (close 1001).
//! Renewal and expiry also run on three instances (issued, used and renewed on different ones).

use std::time::{Duration, Instant};

use crate::common::*;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

both_backends!(
    handshake_with_query_token,
    handshake_with_bearer_header,
    handshake_refuses_bad_tokens_with_401,
    auth_message_without_token,
    auth_timeout_closes_4001,
    wrong_first_message_closes_4001,
    auth_message_with_bad_or_expired_token,
    expiry_without_renewal_closes_4001,
    renewal_with_other_users_token_is_refused,
    token_never_written_to_logs,
    sigterm_closes_sockets_with_1001,
    asyncapi_schema_is_enforced,
);

// Renewal with a 6 s TTL: the renewal 2 s before expiry leaves the renewed socket alive about
// 3 s past the first expiry whatever the rounding of whole-second exps, also on instances that
// are processes.
every_topology!(with &[("TASKFORGE_ACCESS_TOKEN_TTL", "6s")] => renewal_keeps_socket_alive_then_expiry_closes);

fn rfc3339_secs(ts: &str) -> i64 {
    time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{ts:?} is not RFC 3339: {e}"))
        .unix_timestamp()
}

/// A socket that is authenticated answers ping and may subscribe to its team.
async fn assert_usable(ws: &mut WsClient, team: uuid::Uuid) {
    ws.expect_pong().await;
    let s = ws.subscribe(Scope::Team(team), None).await;
    assert_eq!(s.seq, 0, "a fresh team has no activity yet: {}", s.frame);
}

async fn handshake_with_query_token(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let u = api.new_user("Query").await;
    let team = api.create_team(u.token(), "Q").await;
    let mut ws = srv.ws(u.token()).await;
    ws.expect_pong().await;
    let s = ws.subscribe(Scope::Team(team.id), None).await;
    assert_eq!(s.seq, api.team_seq(u.token(), team.id).await);
    assert_eq!(s.frame["teamId"], json!(team.id));
}

async fn handshake_with_bearer_header(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let u = api.new_user("Header").await;
    let team = api.create_team(u.token(), "H").await;
    let mut ws = srv.ws_header(u.token()).await;
    ws.expect_pong().await;
    let s = ws.subscribe(Scope::Team(team.id), None).await;
    assert_eq!(s.seq, api.team_seq(u.token(), team.id).await);
}

async fn handshake_refuses_bad_tokens_with_401(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let u = api.new_user("Bad").await;
    let mut claims = claims_of(u.token());
    let forged = sign(
        Algorithm::HS256,
        &claims,
        "not-the-server-secret-not-the-server-secret",
    );
    claims["exp"] = json!(now() - 60);
    claims["iat"] = json!(now() - 120);
    let expired = sign(Algorithm::HS256, &claims, &srv.jwt_secret);
    let mut tampered = u.token().to_string();
    tampered.pop();
    tampered.push(if u.token().ends_with('A') { 'B' } else { 'A' });
    let cases: Vec<(&str, WsAuth)> = vec![
        ("garbage query", WsAuth::Query("garbage")),
        ("empty query", WsAuth::Query("")),
        ("forged signature (query)", WsAuth::Query(&forged)),
        ("expired (query)", WsAuth::Query(&expired)),
        ("tampered (query)", WsAuth::Query(&tampered)),
        ("garbage header", WsAuth::Header("garbage")),
        ("forged signature (header)", WsAuth::Header(&forged)),
        ("expired (header)", WsAuth::Header(&expired)),
    ];
    for (what, auth) in cases {
        match srv.ws_connect(auth, None).await {
            Ok(_) => panic!("{what}: the handshake was upgraded; expected HTTP 401"),
            Err((status, body)) => {
                assert_eq!(status, 401, "{what}: status; body {body}");
                assert!(
                    body.contains("application/problem+json"),
                    "{what}: not problem+json: {body}"
                );
                let json_part = body.split_once("] ").map(|x| x.1).unwrap_or("");
                let j: Value = serde_json::from_str(json_part)
                    .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {body}"));
                assert_eq!(j["code"], "unauthorized", "{what}: {body}");
                assert_eq!(j["status"], 401, "{what}: {body}");
            }
        }
    }
    // The valid token still works afterwards.
    let mut ws = srv.ws(u.token()).await;
    ws.expect_pong().await;
}

async fn auth_message_without_token(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let u = api.new_user("Anon").await;
    let team = api.create_team(u.token(), "A").await;
    let mut ws = srv.ws_anonymous().await;
    let reply = ws.auth(u.token()).await;
    assert_eq!(reply["type"], "authenticated", "{reply}");
    assert_eq!(reply["userId"], json!(u.id()), "{reply}");
    let expires_at = reply["expiresAt"].as_str().expect("expiresAt string");
    assert_ts_millis(expires_at);
    assert_eq!(
        rfc3339_secs(expires_at),
        claims_of(u.token())["exp"].as_i64().unwrap(),
        "expiresAt must be the token's exp: {reply}"
    );
    assert_usable(&mut ws, team.id).await;
}

async fn auth_timeout_closes_4001(b: Backend) {
    let srv = TestServer::start_with(b, &[("TASKFORGE_WS_AUTH_TIMEOUT", "1s")]).await;
    let mut ws = srv.ws_anonymous().await;
    let t0 = Instant::now();
    let seen = ws.expect_close(4001, Duration::from_secs(6)).await;
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(800),
        "closed after {waited:?}, before the 1 s auth timeout"
    );
    assert_eq!(seen.len(), 1, "expected exactly one error frame: {seen:?}");
    assert_eq!(seen[0]["type"], "error", "{seen:?}");
    assert_eq!(seen[0]["code"], "unauthorized", "{seen:?}");
    assert!(seen[0]["message"].is_string(), "{seen:?}");
}

async fn wrong_first_message_closes_4001(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let u = api.new_user("Wrong").await;
    let team = api.create_team(u.token(), "W").await;
    let firsts = vec![
        json!({"type": "ping"}).to_string(),
        json!({"type": "subscribe", "teamId": team.id}).to_string(),
        "not json".to_string(),
        json!({"type": "auth"}).to_string(),
    ];
    for first in firsts {
        let mut ws = srv.ws_anonymous().await;
        ws.send_text(&first).await;
        let seen = ws.expect_close(4001, Duration::from_secs(5)).await;
        assert!(
            seen.iter()
                .any(|f| f["type"] == "error" && f["code"] == "unauthorized"),
            "first message {first}: expected error unauthorized before 4001, got {seen:?}"
        );
        assert!(
            !seen
                .iter()
                .any(|f| f["type"] == "pong" || f["type"] == "subscribed"),
            "first message {first} was served before auth: {seen:?}"
        );
    }
    // A binary first message as well.
    let mut ws = srv.ws_anonymous().await;
    ws.send_binary(b"\x00\x01").await;
    let seen = ws.expect_close(4001, Duration::from_secs(5)).await;
    assert!(
        seen.iter().any(|f| f["code"] == "unauthorized"),
        "binary first message: {seen:?}"
    );
}

async fn auth_message_with_bad_or_expired_token(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let u = api.new_user("BadAuth").await;
    let mut claims = claims_of(u.token());
    claims["exp"] = json!(now() - 60);
    claims["iat"] = json!(now() - 120);
    let expired = sign(Algorithm::HS256, &claims, &srv.jwt_secret);
    let forged = sign(
        Algorithm::HS256,
        &claims_of(u.token()),
        "another-secret-another-secret-another",
    );

    for (what, token, code) in [
        ("garbage", "garbage", "unauthorized"),
        ("forged", forged.as_str(), "unauthorized"),
        ("expired", expired.as_str(), "token_expired"),
    ] {
        let mut ws = srv.ws_anonymous().await;
        ws.send_json(json!({"type": "auth", "token": token})).await;
        let seen = ws.expect_close(4001, Duration::from_secs(5)).await;
        assert_eq!(seen.len(), 1, "{what}: expected one error frame: {seen:?}");
        assert_eq!(seen[0]["type"], "error", "{what}: {seen:?}");
        assert_eq!(seen[0]["code"], code, "{what}: {seen:?}");
    }
}

/// A socket renewed with `auth` before its token expires lives on past the old expiry (in its
/// room, receiving), then closes at the new one; a socket that is not renewed closes at the old
/// one. The token is issued by instance A, the sockets are on B, the renewal comes from C, and C
/// refuses the expired token at the handshake (on one instance, all the same server).
async fn renewal_keeps_socket_alive_then_expiry_closes(d: Deployment) {
    let (api_a, api_c) = (d.client(0), d.client(2));
    let u = api_a.new_user("Renew").await;
    let team = api_a.create_team(u.token(), "R").await;
    let login: AuthResponse = api_a.login(&u.user.email, PASSWORD).await.parse(200);
    assert_eq!(login.expires_in, 6, "expiresIn with a 6 s TTL");
    let old_exp = claims_of(login.token())["exp"].as_i64().unwrap();
    // Two sockets on B with A's token: one is renewed, the other is not.
    let mut renewed = d.ws_labeled(1, login.token(), "renewed").await;
    renewed.subscribe(Scope::Team(team.id), None).await;
    let mut plain = d.ws_labeled(1, login.token(), "plain").await;
    plain.subscribe(Scope::Team(team.id), None).await;

    // 2 s before the first expiry: a fresh token refreshed on C.
    let wait = (old_exp * 1000 - 2000) - now_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
    let fresh: AuthResponse = api_c.refresh(&login.refresh_token).await.parse(200);
    let new_exp = claims_of(fresh.token())["exp"].as_i64().unwrap();
    assert!(new_exp > old_exp, "refreshed token must expire later");
    let reply = renewed.auth(fresh.token()).await;
    assert_eq!(reply["type"], "authenticated", "{reply}");
    assert_eq!(reply["userId"], json!(u.id()), "{reply}");
    assert_eq!(
        rfc3339_secs(reply["expiresAt"].as_str().expect("expiresAt")),
        new_exp,
        "expiresAt must be the new token's exp: {reply}"
    );

    // The plain socket expires at the old exp: token_expired, then 4001.
    let seen = plain.expect_close(4001, Duration::from_secs(8)).await;
    let closed_at = now_ms();
    assert!(
        closed_at >= old_exp * 1000 - 1000,
        "{d}: closed at {closed_at} ms, before exp {old_exp} s"
    );
    assert!(
        closed_at <= old_exp * 1000 + 3000,
        "{d}: closed at {closed_at} ms, long after exp {old_exp} s"
    );
    let errors: Vec<&Value> = seen.iter().filter(|f| f["type"] == "error").collect();
    assert_eq!(errors.len(), 1, "expected one error before 4001: {seen:?}");
    assert_eq!(errors[0]["code"], "token_expired", "{seen:?}");

    // Past the old expiry (+0.7 s), the renewed socket is alive, in its room, and gets what A
    // writes.
    let wait = (old_exp * 1000 + 700) - now_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
    renewed.expect_pong().await;
    let t = api_a.task(fresh.token(), team.id, "after old expiry").await;
    let got = renewed.activities(1, Duration::from_secs(5)).await;
    assert_eq!(got[0]["type"], "task.created");
    assert_eq!(got[0]["taskId"], json!(t.id));

    // At the new expiry: error token_expired, then 4001 (and not much before exp).
    let seen = renewed.expect_close(4001, Duration::from_secs(8)).await;
    let closed_at = now_ms();
    assert!(
        closed_at >= new_exp * 1000 - 1000,
        "{d}: closed at {closed_at} ms, well before the new exp {new_exp} s"
    );
    let errors: Vec<&Value> = seen.iter().filter(|f| f["type"] == "error").collect();
    assert_eq!(errors.len(), 1, "expected one error before 4001: {seen:?}");
    assert_eq!(errors[0]["code"], "token_expired", "{seen:?}");

    // A's token, expired past the 5 s leeway, is refused at the handshake on C.
    tokio::time::sleep(Duration::from_millis(
        u64::try_from((old_exp + 6) * 1000 - now_ms()).unwrap_or(0),
    ))
    .await;
    match d
        .node(2)
        .ws_connect(WsAuth::Query(login.token()), None)
        .await
    {
        Err((status, _)) => assert_eq!(status, 401, "expired token at the handshake"),
        Ok(_) => panic!("{d}: an expired token (past the leeway) was upgraded on C"),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn expiry_without_renewal_closes_4001(b: Backend) {
    let srv = TestServer::start_with(b, &[("TASKFORGE_ACCESS_TOKEN_TTL", "3s")]).await;
    let api = srv.client();
    let u = api.new_user("Expire").await;
    let login: AuthResponse = api.login(&u.user.email, PASSWORD).await.parse(200);
    let exp = claims_of(login.token())["exp"].as_i64().unwrap();
    let mut ws = srv.ws(login.token()).await;
    ws.expect_pong().await;
    let seen = ws.expect_close(4001, Duration::from_secs(8)).await;
    let closed_at = now_ms();
    assert!(
        closed_at >= exp * 1000 - 1000,
        "closed at {closed_at} ms, before exp {exp} s"
    );
    assert!(
        closed_at <= exp * 1000 + 3000,
        "closed at {closed_at} ms, long after exp {exp} s (no leeway on a live socket)"
    );
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["code"], "token_expired", "{seen:?}");

    // A token expired 2 s ago passes the handshake (5 s leeway) but the live socket expires at
    // `exp` exactly: token_expired and 4001 right away.
    let mut claims = claims_of(u.token());
    claims["exp"] = json!(now() - 2);
    claims["iat"] = json!(now() - 60);
    let just_expired = sign(Algorithm::HS256, &claims, &srv.jwt_secret);
    let t0 = Instant::now();
    let mut ws = srv
        .ws_connect(WsAuth::Query(&just_expired), None)
        .await
        .unwrap_or_else(|(s, b)| panic!("within the leeway the handshake must pass: {s} {b}"));
    let seen = ws.expect_close(4001, Duration::from_secs(3)).await;
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "closed after {:?}",
        t0.elapsed()
    );
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["code"], "token_expired", "{seen:?}");
}

async fn renewal_with_other_users_token_is_refused(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let u = api.new_user("Owner").await;
    let other = api.new_user("Other").await;
    let mut ws = srv.ws(u.token()).await;
    ws.expect_pong().await;
    ws.send_json(json!({"type": "auth", "token": other.token()}))
        .await;
    let seen = ws.expect_close(4001, Duration::from_secs(5)).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["type"], "error", "{seen:?}");
    assert_eq!(seen[0]["code"], "unauthorized", "{seen:?}");

    // An expired replacement token: token_expired.
    let mut claims = claims_of(u.token());
    claims["exp"] = json!(now() - 60);
    claims["iat"] = json!(now() - 120);
    let expired = sign(Algorithm::HS256, &claims, &srv.jwt_secret);
    let mut ws = srv.ws(u.token()).await;
    ws.expect_pong().await;
    ws.send_json(json!({"type": "auth", "token": expired}))
        .await;
    let seen = ws.expect_close(4001, Duration::from_secs(5)).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["code"], "token_expired", "{seen:?}");

    // Also with the header flavour and an invalid replacement token.
    let mut ws = srv.ws_header(u.token()).await;
    ws.expect_pong().await;
    ws.send_json(json!({"type": "auth", "token": "garbage"}))
        .await;
    let seen = ws.expect_close(4001, Duration::from_secs(5)).await;
    assert_eq!(seen[0]["code"], "unauthorized", "{seen:?}");
}

async fn token_never_written_to_logs(b: Backend) {
    let srv = TestServer::process_with(b, &[("TASKFORGE_LOG", "debug")]).await;
    let api = srv.client();
    let u = api.new_user("Secret").await;
    let team = api.create_team(u.token(), "S").await;
    let mut ws = srv.ws(u.token()).await;
    ws.subscribe(Scope::Team(team.id), None).await;
    api.task(u.token(), team.id, "logged?").await;
    ws.activities(1, Duration::from_secs(5)).await;
    ws.close().await;
    // A refused handshake with a (well-formed but forged) token in the query as well.
    let forged = sign(
        Algorithm::HS256,
        &claims_of(u.token()),
        "forged-secret-forged-secret-forged-secret",
    );
    assert!(srv.ws_connect(WsAuth::Query(&forged), None).await.is_err());
    assert!(
        srv.wait_for_log(
            |l| l.contains("socket closed") || l.contains("/realtime"),
            Duration::from_secs(5)
        )
        .await
            || !srv.stderr_text().is_empty(),
        "no server log captured at all"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logs = srv.stderr_text();
    assert!(!logs.is_empty(), "captured no stderr");
    for (what, tok) in [
        ("valid token", u.token()),
        ("forged token", forged.as_str()),
    ] {
        let signature = tok.rsplit('.').next().unwrap();
        for line in logs.lines() {
            assert!(
                !line.contains(signature),
                "the {what} (its signature) appears in the server log: {line}"
            );
        }
    }
    assert!(
        logs.contains("realtime") || logs.contains("socket"),
        "the log does not mention the socket at all (is the test looking at the right output?)"
    );
}

async fn sigterm_closes_sockets_with_1001(b: Backend) {
    let mut srv = TestServer::process(b).await;
    let api = srv.client();
    let u = api.new_user("Term").await;
    let team = api.create_team(u.token(), "T").await;
    let mut a = srv.ws(u.token()).await.labeled("subscribed");
    a.subscribe(Scope::Team(team.id), None).await;
    let mut idle = srv.ws_header(u.token()).await.labeled("idle");
    idle.expect_pong().await;
    let status = srv.terminate().await;
    for ws in [&mut a, &mut idle] {
        let (seen, end) = ws.expect_end(Duration::from_secs(10)).await;
        match end {
            Frame::Close(code, _) => assert_eq!(
                code, 1001,
                "{}: close code on SIGTERM; frames before: {seen:?}",
                ws.label
            ),
            other => panic!(
                "{}: expected close 1001 on SIGTERM, the connection ended with {other:?}",
                ws.label
            ),
        }
    }
    let status = status.expect("server did not exit within 20 s of SIGTERM");
    assert!(
        status.success(),
        "server exit status after SIGTERM: {status:?}"
    );
}

/// `/asyncapi.json` exists, is AsyncAPI 3, and its `ServerFrame` really discriminates: real
/// frames pass, malformed ones fail (so the validation inside `recv()` is not vacuous).
async fn asyncapi_schema_is_enforced(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let r = api.send("GET", "/asyncapi.json", None, None, &[]).await;
    let doc = r.ok(200).clone();
    assert_eq!(doc["asyncapi"], "3.0.0", "asyncapi version");
    let schema = FrameSchema::new(&doc);
    for name in ["ServerFrame", "ClientFrame"] {
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "components.schemas.{name} missing"
        );
    }
    let id = uuid::Uuid::new_v4();
    let good = [
        json!({"type": "pong"}),
        json!({"type": "subscribed", "teamId": id, "seq": 3}),
        json!({"type": "subscribed", "taskId": id, "seq": 3,
               "presence": [{"userId": id, "displayName": "A", "state": "viewing"},
                            {"userId": id, "displayName": "B", "state": "typing", "field": "title"}]}),
        json!({"type": "unsubscribed", "boardId": id, "reason": "membership_revoked"}),
        json!({"type": "error", "code": "forbidden", "message": "no", "teamId": id}),
        json!({"type": "authenticated", "userId": id, "expiresAt": "2026-11-25T19:03:04.123Z"}),
        json!({"type": "activity", "activity": {"id": id, "v": 1, "type": "presence.joined",
               "teamId": id, "actorUserId": id, "ts": "2026-11-25T19:03:04.123Z", "taskId": id,
               "data": {"taskId": id, "userId": id, "displayName": "A"}}}),
        json!({"type": "activity", "activity": {"id": id, "v": 1, "type": "presence.updated",
               "teamId": id, "actorUserId": id, "ts": "2026-11-25T19:03:04.123Z", "taskId": id,
               "data": {"taskId": id, "userId": id, "displayName": "A", "state": "editing",
                        "field": "description"}}}),
        json!({"type": "activity", "activity": {"id": id, "v": 1, "type": "board.deleted",
               "teamId": id, "actorUserId": id, "ts": "2026-11-25T19:03:04.123Z", "seq": 9,
               "boardId": id, "data": {"boardId": id}}}),
    ];
    for f in &good {
        let e = schema.errors(f);
        assert!(
            e.is_empty(),
            "a valid frame is rejected by ServerFrame: {f}: {e:?}"
        );
    }
    let bad = [
        json!({"type": "subscribed", "teamId": id}),
        json!({"type": "subscribed", "teamId": id, "seq": "3"}),
        json!({"type": "error", "message": "no code"}),
        json!({"type": "authenticated", "userId": "not-a-uuid-at-all"}),
        json!({"type": "launch"}),
        json!({"type": "activity", "activity": {"type": "task.created"}}),
        json!({"type": "activity"}),
        json!({"type": "subscribed", "taskId": id, "seq": 3,
               "presence": [{"userId": id, "displayName": "A"}]}),
        json!({"type": "activity", "activity": {"id": id, "v": 1, "type": "presence.updated",
               "teamId": id, "actorUserId": id, "ts": "2026-11-25T19:03:04.123Z", "taskId": id,
               "data": {"taskId": id, "userId": id, "displayName": "A", "state": "dancing"}}}),
        json!({"nope": 1}),
    ];
    for f in &bad {
        assert!(
            !schema.errors(f).is_empty(),
            "ServerFrame accepts a malformed frame: {f}"
        );
    }
}
