//! Registration, login, refresh-token rotation and reuse detection, logout, /me.

use crate::common::*;
use serde_json::json;
use uuid::Uuid;

both_backends!(
    register_normalises_and_returns_auth_response,
    register_validation,
    register_duplicate_email_conflicts,
    login_success_and_identical_failures,
    refresh_rotates_and_reuse_revokes_family,
    logout_revokes_family,
    me_requires_bearer_token,
    me_get_and_patch,
);

async fn register_normalises_and_returns_auth_response(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let local = format!("Alice.{}", Uuid::new_v4().simple());
    let raw = format!("  {local}@Example.COM ");
    let auth = api.register(&raw, PASSWORD, "Alice").await;
    let expected = format!("{}@example.com", local.to_lowercase());
    assert_eq!(auth.user.email, expected, "email trimmed and lowercased");
    assert_eq!(auth.user.display_name, "Alice");
    assert_ts_millis(&auth.user.created_at);
    assert_eq!(auth.expires_in, 900, "default access token lifetime");
    assert!(!auth.access_token.is_empty() && !auth.refresh_token.is_empty());
    assert_ne!(auth.access_token, auth.refresh_token);
    assert_eq!(
        auth.access_token.split('.').count(),
        3,
        "access token is a JWT"
    );

    let me = api.get("/api/v1/me", auth.token()).await;
    let me = me.ok(200);
    assert_eq!(me["user"]["id"], auth.id().to_string());
    assert_eq!(me["user"]["email"], expected);
    assert_eq!(
        me["teams"],
        json!([]),
        "a new user has no teams (plain array)"
    );

    // The normalised email logs in.
    let login: AuthResponse = api.login(&expected, PASSWORD).await.parse(200);
    assert_eq!(login.user.id, auth.user.id);
    assert_eq!(login.expires_in, 900);
}

async fn register_validation(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();

    for bad in [
        "nope",
        "",
        "   ",
        "@example.com",
        "alice@",
        "a b@example.com",
    ] {
        api.register_raw(bad, PASSWORD, "X").await.invalid("email");
    }
    // password: 8..=1024 characters
    api.register_raw(&unique_email("p"), "1234567", "X")
        .await
        .invalid("password");
    api.register_raw(&unique_email("p"), &"p".repeat(1025), "X")
        .await
        .invalid("password");
    api.register_raw(&unique_email("p"), "12345678", "X")
        .await
        .ok(201);
    api.register_raw(&unique_email("p"), &"p".repeat(1024), "X")
        .await
        .ok(201);

    // displayName: 1..=100 Unicode scalar values
    api.register_raw(&unique_email("d"), PASSWORD, "")
        .await
        .invalid("displayName");
    api.register_raw(&unique_email("d"), PASSWORD, &"a".repeat(101))
        .await
        .invalid("displayName");
    api.register_raw(&unique_email("d"), PASSWORD, &"é".repeat(101))
        .await
        .invalid("displayName");
    let emoji = "🦀".repeat(100);
    let u = api.register(&unique_email("d"), PASSWORD, &emoji).await;
    assert_eq!(u.user.display_name, emoji);

    // Missing fields and wrong types are 422; the account is not created.
    let email = unique_email("m");
    let r = api
        .send(
            "POST",
            "/api/v1/auth/register",
            None,
            Some(&json!({"email": email, "password": PASSWORD})),
            &[],
        )
        .await;
    r.problem(422, "validation_failed");
    let r = api
        .send(
            "POST",
            "/api/v1/auth/register",
            None,
            Some(&json!({"email": email, "password": 12345678, "displayName": "X"})),
            &[],
        )
        .await;
    r.problem(422, "validation_failed");
    api.login(&email, PASSWORD)
        .await
        .problem(401, "unauthorized");
}

async fn register_duplicate_email_conflicts(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let email = unique_email("dup");
    let first = api.register(&email, PASSWORD, "First").await;
    api.register_raw(&email, "another password", "Second")
        .await
        .problem(409, "conflict");
    api.register_raw(&email.to_uppercase(), PASSWORD, "Third")
        .await
        .problem(409, "conflict");
    api.register_raw(&format!(" {} ", email), PASSWORD, "Fourth")
        .await
        .problem(409, "conflict");
    // The original account is untouched.
    let login: AuthResponse = api.login(&email, PASSWORD).await.parse(200);
    assert_eq!(login.user.id, first.user.id);
    assert_eq!(login.user.display_name, "First");
}

async fn login_success_and_identical_failures(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let u = api.new_user("Bob").await;
    let ok: AuthResponse = api.login(&u.user.email, PASSWORD).await.parse(200);
    assert_eq!(ok.user.id, u.user.id);
    assert_ne!(
        ok.refresh_token, u.refresh_token,
        "each login gets its own refresh token"
    );
    assert!(api.get("/api/v1/me", ok.token()).await.status == 200);

    let wrong_pw = api.login(&u.user.email, "wrong password!").await;
    let no_user = api.login(&unique_email("ghost"), "wrong password!").await;
    wrong_pw.problem(401, "unauthorized");
    no_user.problem(401, "unauthorized");
    assert_eq!(
        wrong_pw.json, no_user.json,
        "wrong password and unknown email must answer identically"
    );
    assert_eq!(
        wrong_pw.header("content-type"),
        no_user.header("content-type")
    );

    // Malformed login bodies.
    api.send(
        "POST",
        "/api/v1/auth/login",
        None,
        Some(&json!({"email": u.user.email})),
        &[],
    )
    .await
    .problem(422, "validation_failed");
}

async fn refresh_rotates_and_reuse_revokes_family(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let u = api.new_user("Rot").await;

    let r1 = u.refresh_token.clone();
    let second: AuthResponse = api.refresh(&r1).await.parse(200);
    assert_eq!(second.user.id, u.user.id);
    assert_ne!(second.refresh_token, r1, "refresh tokens rotate");
    assert_eq!(second.expires_in, 900);
    api.get("/api/v1/me", second.token()).await.ok(200);

    let r2 = second.refresh_token.clone();
    let third: AuthResponse = api.refresh(&r2).await.parse(200);
    let r3 = third.refresh_token.clone();
    assert!(r3 != r2 && r3 != r1);

    // Reusing an already rotated token is rejected and revokes the whole family.
    api.refresh(&r1).await.problem(401, "unauthorized");
    api.refresh(&r3).await.problem(401, "unauthorized");
    api.refresh(&r2).await.problem(401, "unauthorized");

    // Another family (a separate login) is not affected.
    let other: AuthResponse = api.login(&u.user.email, PASSWORD).await.parse(200);
    let other2: AuthResponse = api.refresh(&other.refresh_token).await.parse(200);
    api.refresh(&other2.refresh_token).await.ok(200);

    // Garbage and empty tokens.
    api.refresh("not-a-token")
        .await
        .problem(401, "unauthorized");
    api.refresh("").await.status_is_one_of(&[401, 422]);
    // An access token is not a refresh token.
    api.refresh(u.token()).await.problem(401, "unauthorized");
}

trait StatusIsOneOf {
    fn status_is_one_of(&self, allowed: &[u16]);
}
impl StatusIsOneOf for Resp {
    #[track_caller]
    fn status_is_one_of(&self, allowed: &[u16]) {
        assert!(
            allowed.contains(&self.status),
            "{} {}: expected one of {allowed:?}, got {}: {}",
            self.method,
            self.path,
            self.status,
            self.text
        );
        let code = if self.status == 401 {
            "unauthorized"
        } else {
            "validation_failed"
        };
        self.problem(self.status, code);
    }
}

async fn logout_revokes_family(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let u = api.new_user("Out").await;
    let rotated: AuthResponse = api.refresh(&u.refresh_token).await.parse(200);
    let keep: AuthResponse = api.login(&u.user.email, PASSWORD).await.parse(200);

    let r = api.logout(&rotated.refresh_token).await;
    r.ok(204);
    assert!(r.text.is_empty(), "204 has no body: {:?}", r.text);
    api.refresh(&rotated.refresh_token)
        .await
        .problem(401, "unauthorized");
    // The earlier (rotated-away) token of the same family stays dead too.
    api.refresh(&u.refresh_token)
        .await
        .problem(401, "unauthorized");
    // Logging out twice and logging out an unknown token are both 204.
    api.logout(&rotated.refresh_token).await.ok(204);
    api.logout("definitely-not-a-token").await.ok(204);
    // The other session's family is untouched.
    api.refresh(&keep.refresh_token).await.ok(200);
}

async fn me_requires_bearer_token(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let u = api.new_user("Me").await;

    let check = |r: Resp| {
        r.problem(401, "unauthorized");
        let www = r
            .header("www-authenticate")
            .unwrap_or_else(|| panic!("401 without WWW-Authenticate: {} {}", r.method, r.path));
        assert!(www.starts_with("Bearer"), "WWW-Authenticate: {www}");
    };
    check(api.send("GET", "/api/v1/me", None, None, &[]).await);
    check(api.get("/api/v1/me", "garbage").await);
    check(api.get("/api/v1/me", "").await);
    check(api.get("/api/v1/me", &u.refresh_token).await);
    check(
        api.send(
            "GET",
            "/api/v1/me",
            None,
            None,
            &[("authorization", &format!("Basic {}", u.token()))],
        )
        .await,
    );
    check(
        api.send(
            "PATCH",
            "/api/v1/me",
            None,
            Some(&json!({"displayName": "x"})),
            &[],
        )
        .await,
    );
    check(api.send("GET", "/api/v1/teams", None, None, &[]).await);
    check(
        api.send(
            "POST",
            "/api/v1/teams",
            None,
            Some(&json!({"name": "x"})),
            &[],
        )
        .await,
    );
}

async fn me_get_and_patch(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let u = api.new_user("Carol").await;
    let tok = u.token();

    let user: User = api
        .patch("/api/v1/me", tok, json!({"displayName": "Caroline"}))
        .await
        .parse(200);
    assert_eq!(user.display_name, "Caroline");
    assert_eq!(user.id, u.user.id);
    assert_eq!(user.email, u.user.email);
    let me = api.get("/api/v1/me", tok).await;
    assert_eq!(me.ok(200)["user"]["displayName"], "Caroline");

    api.patch("/api/v1/me", tok, json!({"displayName": ""}))
        .await
        .invalid("displayName");
    api.patch("/api/v1/me", tok, json!({"displayName": "x".repeat(101)}))
        .await
        .invalid("displayName");
    api.patch("/api/v1/me", tok, json!({"displayName": 42}))
        .await
        .problem(422, "validation_failed");
    let emoji = "😀".repeat(100);
    let user: User = api
        .patch("/api/v1/me", tok, json!({"displayName": emoji}))
        .await
        .parse(200);
    assert_eq!(user.display_name, emoji);

    // /me lists teams with the caller's role.
    let team = api.create_team(tok, "Mine").await;
    let other = api.new_user("Owner2").await;
    let t2 = api.create_team(other.token(), "Theirs").await;
    api.add_member(other.token(), t2.id, &u.user.email, "viewer")
        .await;
    let me = api.get("/api/v1/me", tok).await;
    let teams = me.ok(200)["teams"].as_array().expect("teams array").clone();
    assert_eq!(teams.len(), 2, "{}", me.text);
    let role_of = |id: Uuid| {
        teams
            .iter()
            .find(|t| t["team"]["id"] == id.to_string())
            .unwrap_or_else(|| panic!("team {id} missing from /me: {}", me.text))["role"]
            .clone()
    };
    assert_eq!(role_of(team.id), "owner");
    assert_eq!(role_of(t2.id), "viewer");
}
