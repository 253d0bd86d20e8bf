//! Abuse limits: sign-up and log-in attempts per client address and per email, WebSocket
//! connection attempts per address; 429 `rate_limited` with `Retry-After`, other addresses and
//! other emails unaffected. (The other tests run with these limits off, see the harness.)

use std::net::IpAddr;

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;

both_backends!(
    auth_attempts_are_limited_per_email,
    auth_attempts_are_limited_per_address,
    forwarded_for_is_the_address_only_when_trusted,
    connection_attempts_are_limited_per_address,
);

async fn auth_attempts_are_limited_per_email(b: Backend) {
    let srv = TestServer::start_with(b, &[("TASKFORGE_AUTH_LIMIT_PER_EMAIL", "3")]).await;
    let api = srv.client();
    let email = unique_email("limited");
    api.register(&email, PASSWORD, "Limited").await; // 1
    api.login(&email, PASSWORD).await.ok(200); // 2
    api.login(&email, "wrong-password-1")
        .await
        .problem(401, "unauthorized"); // 3
    // The fourth attempt is refused whatever the password, and the email's case does not help.
    api.login(&email, PASSWORD).await.retry_after();
    api.login(&email.to_uppercase(), PASSWORD)
        .await
        .retry_after();
    // Another account from the same address is not affected.
    let other = unique_email("other");
    api.register(&other, PASSWORD, "Other").await;
    api.login(&other, PASSWORD).await.ok(200);
}

async fn auth_attempts_are_limited_per_address(b: Backend) {
    let srv = TestServer::start_with(b, &[("TASKFORGE_AUTH_LIMIT_PER_IP", "4")]).await;
    let api = srv.client();
    for i in 0..4 {
        api.register(&unique_email(&format!("ip{i}")), PASSWORD, "Ip")
            .await;
    }
    let r = api
        .register_raw(&unique_email("ip-late"), PASSWORD, "Ip")
        .await;
    let wait = r.retry_after();
    assert!(
        wait >= 10,
        "4 per minute: the next token is ~15 s away, got {wait}"
    );
    api.login(&unique_email("ip-login"), PASSWORD)
        .await
        .retry_after();
    // Another loopback address has its own allowance.
    let from_2 = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<IpAddr>().ok())
        .build()
        .expect("client");
    let r = from_2
        .post(format!("{}/api/v1/auth/register", srv.base))
        .json(&json!({"email": unique_email("ip-two"), "password": PASSWORD, "displayName": "Two"}))
        .send()
        .await
        .expect("request from 127.0.0.2");
    assert_eq!(r.status().as_u16(), 201);
    let u: AuthResponse = r.json().await.expect("an AuthResponse");
    // Requests that are not sign-up or log-in are not limited, from the limited address either.
    for _ in 0..10 {
        api.get("/api/v1/me", u.token()).await.ok(200);
    }
    api.refresh(&u.refresh_token).await.ok(200);
}

async fn forwarded_for_is_the_address_only_when_trusted(b: Backend) {
    for trusted in [false, true] {
        let srv = TestServer::start_with(
            b,
            &[
                ("TASKFORGE_AUTH_LIMIT_PER_IP", "2"),
                (
                    "TASKFORGE_TRUST_FORWARDED_FOR",
                    if trusted { "true" } else { "false" },
                ),
            ],
        )
        .await;
        let api = srv.client();
        let login = |email: String, xff: &'static str| {
            let api = api.clone();
            async move {
                let body = json!({"email": email, "password": PASSWORD});
                api.send(
                    "POST",
                    "/api/v1/auth/login",
                    None,
                    Some(&body),
                    &[("x-forwarded-for", xff)],
                )
                .await
            }
        };
        login(unique_email("f1"), "10.0.0.1")
            .await
            .problem(401, "unauthorized");
        login(unique_email("f2"), "10.0.0.1")
            .await
            .problem(401, "unauthorized");
        // A third attempt "from" another address: trusted, it is another client; untrusted, the
        // header is ignored and it is the same loopback peer as before.
        let third = login(unique_email("f3"), "10.0.0.1, 10.0.0.2").await;
        if trusted {
            third.problem(401, "unauthorized");
            // Only the last entry counts: what a client put before it is its own word.
            login(unique_email("f4"), "10.0.0.9, 10.0.0.2")
                .await
                .problem(401, "unauthorized");
            login(unique_email("f5"), "10.0.0.2").await.retry_after();
            login(unique_email("f6"), "10.0.0.1").await.retry_after();
        } else {
            third.retry_after();
        }
    }
}

async fn connection_attempts_are_limited_per_address(b: Backend) {
    let srv = TestServer::start_with(b, &[("TASKFORGE_CONNECT_LIMIT_PER_IP", "3")]).await;
    let api = srv.client();
    let u = api.new_user("Sockets").await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(srv.ws(u.token()).await);
    }
    let (status, body) = match srv.ws_connect(WsAuth::Query(u.token()), None).await {
        Ok(_) => panic!("a fourth connection attempt within the minute was accepted"),
        Err(refused) => refused,
    };
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("rate_limited"), "{body}");
    // The open sockets keep working.
    let team = api.create_team(u.token(), "Still live").await;
    open[0].subscribe_team(team.id, None).await;
    // Another address connects.
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind("127.0.0.2:0".parse().expect("addr"))
        .expect("bind 127.0.0.2");
    let tcp = sock
        .connect(
            srv.base
                .trim_start_matches("http://")
                .parse()
                .expect("addr"),
        )
        .await
        .expect("connect");
    let url = format!("{}?token={}", srv.ws_url(), u.token());
    let (mut ws, resp) = tokio_tungstenite::client_async(url, tcp)
        .await
        .expect("handshake from 127.0.0.2");
    assert_eq!(resp.status().as_u16(), 101);
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        r#"{"type":"ping"}"#,
    ))
    .await
    .expect("send a ping message");
    let first_text = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(frame) = ws.next().await {
            let frame = frame.expect("no error");
            if frame.is_text() {
                return frame.into_text().expect("text").to_string();
            }
        }
        panic!("the socket ended before a text frame");
    })
    .await
    .expect("a text frame within 10 s");
    assert!(first_text.contains("pong"), "{first_text}");
}
