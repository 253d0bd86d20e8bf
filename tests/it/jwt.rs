//! Access-token validation: expiry with leeway, forged and tampered tokens, not-yet-valid tokens
//! and algorithm confusion, over HTTP and on a live socket.

use std::time::{Duration, Instant};

use crate::common::*;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

both_backends!(
    expired_token_is_rejected_after_leeway,
    forged_tokens_are_rejected,
    token_ttl_formats,
    not_yet_valid_and_algorithm_confusion_are_rejected,
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

/// HMAC-SHA256 (RFC 2104), to forge what an attacker would: a token whose header names another
/// algorithm but whose signature is an HMAC with the server's secret (HS/RS confusion).
fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

fn hmac_signed(header: &Value, claims: &Value, secret: &str) -> String {
    let h = URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap());
    let p = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
    let sig = URL_SAFE_NO_PAD.encode(hmac_sha256(
        secret.as_bytes(),
        format!("{h}.{p}").as_bytes(),
    ));
    format!("{h}.{p}.{sig}")
}

async fn not_yet_valid_and_algorithm_confusion_are_rejected(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let u = api.new_user("Confused").await;
    let secret = srv.jwt_secret.clone();
    let mut fresh = claims_of(u.token());
    fresh["iat"] = json!(now());
    fresh["exp"] = json!(now() + 600);

    // Positive control: the hand-made HMAC equals jsonwebtoken's, so the header is the only change.
    let control = hmac_signed(&json!({"alg": "HS256", "typ": "JWT"}), &fresh, &secret);
    api.get("/api/v1/me", &control).await.ok(200);

    let mut early = fresh.clone();
    early["nbf"] = json!(now() + 120);
    let not_yet = sign(Algorithm::HS256, &early, &secret);
    assert_401(
        &api.get("/api/v1/me", &not_yet).await,
        "nbf two minutes ahead",
    );
    // Within the 5 s leeway a future nbf is accepted (clock skew), as with exp.
    let mut skewed = fresh.clone();
    skewed["nbf"] = json!(now() + 2);
    api.get("/api/v1/me", &sign(Algorithm::HS256, &skewed, &secret))
        .await
        .ok(200);

    let mut forged = Vec::new();
    for alg in ["RS256", "ES256", "PS256", "EdDSA", "HS384", "none", "hs256"] {
        let t = hmac_signed(&json!({"alg": alg, "typ": "JWT"}), &fresh, &secret);
        assert_401(
            &api.get("/api/v1/me", &t).await,
            &format!("header alg {alg}, HMAC signature"),
        );
        forged.push((alg, t));
    }

    // The same tokens on the socket: at the handshake (HTTP 401), and as a replacement token on
    // a live socket (error `unauthorized`, close 4001).
    for (alg, t) in forged
        .iter()
        .take(2)
        .chain([("nbf ahead", not_yet.clone())].iter())
    {
        match srv.ws_connect(WsAuth::Query(t), None).await {
            Ok(_) => panic!("{alg}: the handshake was accepted"),
            Err((status, _)) => assert_eq!(status, 401, "{alg}"),
        }
        let mut ws = srv.ws(u.token()).await;
        ws.expect_pong().await;
        ws.send_json(json!({"type": "auth", "token": t})).await;
        let seen = ws.expect_close(4001, Duration::from_secs(5)).await;
        assert_eq!(seen.len(), 1, "{alg}: {seen:?}");
        assert_eq!(seen[0]["code"], "unauthorized", "{alg}: {seen:?}");
    }
}
