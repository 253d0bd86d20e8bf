//! Access-token validation: expiry with leeway, forged and tampered tokens.
mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

both_backends!(
    expired_token_is_rejected_after_leeway,
    forged_tokens_are_rejected,
    token_ttl_formats,
);

async fn token_ttl_formats(b: Backend) {
    for (ttl, secs) in [("15m", 900), ("900", 900), ("2s", 2), ("1h", 3600)] {
        let srv = TestServer::start_with(b, &[("TASKFORGE_ACCESS_TOKEN_TTL", ttl)]).await;
        let api = srv.client();
        let u = api.new_user("Ttl").await;
        assert_eq!(u.expires_in, secs, "TASKFORGE_ACCESS_TOKEN_TTL={ttl}");
        let c = claims_of(u.token());
        assert_eq!(
            c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
            secs,
            "exp - iat for TTL {ttl}"
        );
        let r: AuthResponse = api.refresh(&u.refresh_token).await.parse(200);
        assert_eq!(r.expires_in, secs);
    }
}

#[track_caller]
fn assert_401(r: &Resp, what: &str) {
    assert_eq!(
        r.status, 401,
        "{what}: expected 401, got {}: {}",
        r.status, r.text
    );
    r.problem(401, "unauthorized");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")),
        "{what}: 401 without WWW-Authenticate: Bearer"
    );
}

async fn expired_token_is_rejected_after_leeway(b: Backend) {
    let srv = TestServer::start_with(b, &[("TASKFORGE_ACCESS_TOKEN_TTL", "1s")]).await;
    let api = srv.client();
    let issued = Instant::now();
    let u = api.new_user("Short").await;
    assert_eq!(
        u.expires_in, 1,
        "expiresIn reflects TASKFORGE_ACCESS_TOKEN_TTL"
    );
    let c = claims_of(u.token());
    assert_eq!(c["iss"], "taskforge");
    assert_eq!(c["sub"], u.user.id.to_string());
    assert_eq!(
        c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
        1,
        "exp - iat equals the configured TTL"
    );
    api.get("/api/v1/me", u.token()).await.ok(200);

    // Poll until the token is refused; it must survive the 5 s leeway, and die soon after.
    let mut last_ok = Duration::ZERO;
    let rejected = loop {
        let r = api.get("/api/v1/me", u.token()).await;
        let elapsed = issued.elapsed();
        if r.status == 401 {
            assert_401(&r, "expired token");
            break elapsed;
        }
        r.ok(200);
        last_ok = elapsed;
        assert!(
            elapsed < Duration::from_secs(15),
            "a 1 s token was still accepted {elapsed:?} after issuance"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        rejected >= Duration::from_millis(3500),
        "token rejected after {rejected:?}: the 5 s clock leeway was not applied"
    );
    assert!(
        last_ok < Duration::from_secs(8),
        "accepted until {last_ok:?}"
    );

    // A refresh still yields a working token.
    let fresh: AuthResponse = api.refresh(&u.refresh_token).await.parse(200);
    api.get("/api/v1/me", fresh.token()).await.ok(200);
}

async fn forged_tokens_are_rejected(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let u = api.new_user("Forge").await;
    let real = claims_of(u.token());
    let secret = srv.jwt_secret.clone();

    // Positive control: the real claims re-signed with the server's secret are accepted, so every
    // rejection below is caused by the one thing that was changed.
    let mut fresh = real.clone();
    fresh["iat"] = json!(now());
    fresh["exp"] = json!(now() + 600);
    let good = sign(Algorithm::HS256, &fresh, &secret);
    let r = api.get("/api/v1/me", &good).await;
    assert_eq!(r.ok(200)["user"]["id"], u.user.id.to_string());

    let with = |k: &str, v: Value| {
        let mut c = fresh.clone();
        c[k] = v;
        c
    };

    let wrong_iss = sign(Algorithm::HS256, &with("iss", json!("evil")), &secret);
    assert_401(&api.get("/api/v1/me", &wrong_iss).await, "wrong issuer");

    let mut no_iss = fresh.clone();
    no_iss.as_object_mut().unwrap().remove("iss");
    let no_iss = sign(Algorithm::HS256, &no_iss, &secret);
    assert_401(&api.get("/api/v1/me", &no_iss).await, "missing issuer");

    let bad_sig = sign(
        Algorithm::HS256,
        &fresh,
        "some-other-secret-of-enough-length!!",
    );
    assert_401(&api.get("/api/v1/me", &bad_sig).await, "bad signature");

    let hs512 = sign(Algorithm::HS512, &fresh, &secret);
    assert_401(
        &api.get("/api/v1/me", &hs512).await,
        "another algorithm (HS512)",
    );

    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&fresh).unwrap());
    let none = format!("{header}.{payload}.");
    assert_401(&api.get("/api/v1/me", &none).await, "alg none");

    let mut no_exp = fresh.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let no_exp = sign(Algorithm::HS256, &no_exp, &secret);
    assert_401(&api.get("/api/v1/me", &no_exp).await, "no exp");

    let expired = sign(Algorithm::HS256, &with("exp", json!(now() - 3600)), &secret);
    assert_401(
        &api.get("/api/v1/me", &expired).await,
        "expired an hour ago",
    );

    let bad_sub = sign(Algorithm::HS256, &with("sub", json!("not-a-uuid")), &secret);
    assert_401(&api.get("/api/v1/me", &bad_sub).await, "sub not a UUID");

    // Tampering with the payload of a genuine token invalidates its signature.
    let other = api.new_user("Victim").await;
    let parts: Vec<&str> = good.split('.').collect();
    let tampered_payload =
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&with("sub", json!(other.user.id))).unwrap());
    let tampered = format!("{}.{}.{}", parts[0], tampered_payload, parts[2]);
    assert_401(&api.get("/api/v1/me", &tampered).await, "tampered payload");

    // The server's own token keeps working.
    api.get("/api/v1/me", u.token()).await.ok(200);
}
