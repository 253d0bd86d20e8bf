//! Team membership: add, list, change role, remove, and the role rules around them.

use crate::common::*;
use serde_json::json;
use uuid::Uuid;

both_backends!(
    add_members_by_email_and_user_id,
    add_member_failures,
    change_roles,
    remove_members,
    non_members_get_404,
);

async fn add_members_by_email_and_user_id(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let team = api.create_team(owner.token(), "T").await;
    let m = api.new_user("Mem").await;
    let v = api.new_user("View").await;
    let members = format!("/api/v1/teams/{}/members", team.id);

    let r = api
        .post(
            &members,
            owner.token(),
            json!({"email": m.user.email, "role": "member"}),
        )
        .await;
    let added: Member = r.parse(201);
    assert_eq!(added.team_id, team.id);
    assert_eq!(added.user.id, m.user.id);
    assert_eq!(added.user.email, m.user.email);
    assert_eq!(added.role, "member");
    assert_ts_millis(&added.joined_at);

    let added: Member = api
        .post(
            &members,
            owner.token(),
            json!({"userId": v.user.id, "role": "viewer"}),
        )
        .await
        .parse(201);
    assert_eq!(added.user.id, v.user.id);
    assert_eq!(added.role, "viewer");

    // Every member can list the members; the list carries the seq.
    let r = api.get(&members, v.token()).await;
    assert_eq!(r.seq(), 2);
    let items = r.ok(200)["items"].as_array().unwrap().clone();
    let role = |id: Uuid| {
        items
            .iter()
            .find(|i| i["user"]["id"] == id.to_string())
            .map(|i| i["role"].as_str().unwrap().to_string())
    };
    assert_eq!(items.len(), 3);
    assert_eq!(role(owner.user.id).as_deref(), Some("owner"));
    assert_eq!(role(m.user.id).as_deref(), Some("member"));
    assert_eq!(role(v.user.id).as_deref(), Some("viewer"));

    // Paginated.
    let all = api
        .all_pages(m.token(), &format!("{members}?limit=1"))
        .await;
    assert_eq!(all.len(), 3);

    let acts = api.activity(owner.token(), team.id).await;
    assert_eq!(acts.len(), 2);
    for (a, (user, role)) in acts.iter().zip([(&m, "member"), (&v, "viewer")]) {
        assert_eq!(a.kind, "member.added");
        assert_eq!(a.actor_user_id, owner.user.id);
        assert_eq!(a.data["member"]["user"]["id"], user.user.id.to_string());
        assert_eq!(a.data["member"]["role"], role);
        assert_eq!(a.data["member"]["teamId"], team.id.to_string());
    }

    // The new member sees the team.
    api.get(&format!("/api/v1/teams/{}", team.id), m.token())
        .await
        .ok(200);
}

async fn add_member_failures(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let team = api.create_team(owner.token(), "T").await;
    let admin = api.member(owner.token(), team.id, "Admin", "admin").await;
    let member = api.member(owner.token(), team.id, "Member", "member").await;
    let viewer = api.member(owner.token(), team.id, "Viewer", "viewer").await;
    let newbie = api.new_user("New").await;
    let members = format!("/api/v1/teams/{}/members", team.id);
    let seq_before = api.team_seq(owner.token(), team.id).await;
    assert_eq!(seq_before, 3);

    let add = |role: &str| json!({"email": newbie.user.email, "role": role});
    api.post(&members, member.token(), add("member"))
        .await
        .problem(403, "forbidden");
    api.post(&members, viewer.token(), add("viewer"))
        .await
        .problem(403, "forbidden");
    api.post(&members, owner.token(), add("owner"))
        .await
        .invalid("role");
    api.post(&members, owner.token(), add("boss"))
        .await
        .invalid("role");
    api.post(&members, owner.token(), json!({"email": newbie.user.email}))
        .await
        .problem(422, "validation_failed");
    api.post(
        &members,
        owner.token(),
        json!({"email": unique_email("ghost"), "role": "member"}),
    )
    .await
    .problem(422, "validation_failed");
    api.post(
        &members,
        owner.token(),
        json!({"userId": Uuid::new_v4(), "role": "member"}),
    )
    .await
    .problem(422, "validation_failed");
    api.post(
        &members,
        owner.token(),
        json!({"email": member.user.email, "role": "viewer"}),
    )
    .await
    .problem(409, "conflict");
    api.post(
        &members,
        admin.token(),
        json!({"userId": owner.user.id, "role": "member"}),
    )
    .await
    .problem(409, "conflict");
    assert_eq!(
        api.team_seq(owner.token(), team.id).await,
        seq_before,
        "failed adds emit nothing"
    );

    // An admin may add.
    let m: Member = api
        .post(&members, admin.token(), add("admin"))
        .await
        .parse(201);
    assert_eq!(m.role, "admin");
    assert_eq!(api.team_seq(owner.token(), team.id).await, seq_before + 1);
}

async fn change_roles(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let team = api.create_team(owner.token(), "T").await;
    let admin = api.member(owner.token(), team.id, "Admin", "admin").await;
    let member = api.member(owner.token(), team.id, "Member", "member").await;
    let viewer = api.member(owner.token(), team.id, "Viewer", "viewer").await;
    let outsider = api.new_user("Out").await;
    let p = |u: Uuid| format!("/api/v1/teams/{}/members/{u}", team.id);

    // owner promotes the viewer to member
    let m: Member = api
        .patch(&p(viewer.user.id), owner.token(), json!({"role": "member"}))
        .await
        .parse(200);
    assert_eq!(m.role, "member");
    assert_eq!(m.user.id, viewer.user.id);
    // admin demotes them again
    let m: Member = api
        .patch(&p(viewer.user.id), admin.token(), json!({"role": "viewer"}))
        .await
        .parse(200);
    assert_eq!(m.role, "viewer");

    // members and viewers may not change roles
    api.patch(&p(viewer.user.id), member.token(), json!({"role": "admin"}))
        .await
        .problem(403, "forbidden");
    api.patch(&p(member.user.id), viewer.token(), json!({"role": "admin"}))
        .await
        .problem(403, "forbidden");
    api.patch(&p(member.user.id), member.token(), json!({"role": "admin"}))
        .await
        .problem(403, "forbidden");
    // the owner's membership cannot change
    api.patch(&p(owner.user.id), admin.token(), json!({"role": "member"}))
        .await
        .problem(409, "conflict");
    api.patch(&p(owner.user.id), owner.token(), json!({"role": "admin"}))
        .await
        .problem(409, "conflict");
    // no promotion to owner, no unknown roles
    api.patch(&p(member.user.id), owner.token(), json!({"role": "owner"}))
        .await
        .invalid("role");
    api.patch(&p(member.user.id), owner.token(), json!({"role": "king"}))
        .await
        .invalid("role");
    api.patch(&p(member.user.id), owner.token(), json!({}))
        .await
        .problem(422, "validation_failed");
    // not a member of this team
    api.patch(
        &p(outsider.user.id),
        owner.token(),
        json!({"role": "member"}),
    )
    .await
    .problem(404, "not_found");
    api.patch(&p(Uuid::new_v4()), owner.token(), json!({"role": "member"}))
        .await
        .problem(404, "not_found");

    let acts = api.activity(owner.token(), team.id).await;
    let updated: Vec<_> = acts.iter().filter(|a| a.kind == "member.updated").collect();
    assert_eq!(acts.len(), 5, "3 member.added + 2 member.updated");
    assert_eq!(updated.len(), 2);
    assert_eq!(updated[0].actor_user_id, owner.user.id);
    assert_eq!(updated[0].data["member"]["role"], "member");
    assert_eq!(updated[1].actor_user_id, admin.user.id);
    assert_eq!(updated[1].data["member"]["role"], "viewer");
    assert_eq!(
        updated[1].data["member"]["user"]["id"],
        viewer.user.id.to_string()
    );

    // the new role takes effect: the (now) member-turned-admin can add people
    api.patch(&p(member.user.id), owner.token(), json!({"role": "admin"}))
        .await
        .ok(200);
    let x = api.new_user("X").await;
    api.add_member(member.token(), team.id, &x.user.email, "viewer")
        .await;
}

async fn remove_members(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let team = api.create_team(owner.token(), "T").await;
    let admin = api.member(owner.token(), team.id, "Admin", "admin").await;
    let m1 = api.member(owner.token(), team.id, "M1", "member").await;
    let m2 = api.member(owner.token(), team.id, "M2", "member").await;
    let viewer = api.member(owner.token(), team.id, "Viewer", "viewer").await;
    let p = |u: Uuid| format!("/api/v1/teams/{}/members/{u}", team.id);

    // A task assigned to m2 stays assigned after m2 leaves.
    let task = api
        .create_task(
            owner.token(),
            team.id,
            json!({"title": "keep", "assigneeUserId": m2.user.id}),
        )
        .await;
    let seq0 = api.team_seq(owner.token(), team.id).await;

    api.delete(&p(m2.user.id), m1.token())
        .await
        .problem(403, "forbidden");
    api.delete(&p(m1.user.id), viewer.token())
        .await
        .problem(403, "forbidden");
    api.delete(&p(owner.user.id), owner.token())
        .await
        .problem(409, "conflict");
    api.delete(&p(owner.user.id), admin.token())
        .await
        .problem(409, "conflict");
    assert_eq!(api.team_seq(owner.token(), team.id).await, seq0);

    // A member removes themself.
    let r = api.delete(&p(m2.user.id), m2.token()).await;
    r.ok(204);
    assert!(r.text.is_empty());
    api.get(&format!("/api/v1/teams/{}", team.id), m2.token())
        .await
        .problem(404, "not_found");
    let me = api.get("/api/v1/me", m2.token()).await;
    assert_eq!(me.ok(200)["teams"], json!([]));
    let t: Task = api.get_task(owner.token(), task.id).await.parse(200);
    assert_eq!(t.assignee_user_id, Some(m2.user.id));
    // The former member sees nothing of the team any more.
    api.get_task(m2.token(), task.id)
        .await
        .problem(404, "not_found");
    api.get(&format!("/api/v1/teams/{}/activity", team.id), m2.token())
        .await
        .problem(404, "not_found");

    // A viewer removes themself; an admin removes a member.
    api.delete(&p(viewer.user.id), viewer.token()).await.ok(204);
    api.delete(&p(m1.user.id), admin.token()).await.ok(204);
    api.get(&format!("/api/v1/teams/{}/tasks", team.id), m1.token())
        .await
        .problem(404, "not_found");
    // Gone already.
    api.delete(&p(m1.user.id), admin.token())
        .await
        .problem(404, "not_found");
    api.delete(&p(Uuid::new_v4()), admin.token())
        .await
        .problem(404, "not_found");
    // Owner removes the admin.
    api.delete(&p(admin.user.id), owner.token()).await.ok(204);
    api.get(&format!("/api/v1/teams/{}", team.id), admin.token())
        .await
        .problem(404, "not_found");

    let acts = api.activity_since(owner.token(), team.id, seq0).await;
    let got: Vec<(String, String, uuid::Uuid)> = acts
        .iter()
        .map(|a| {
            (
                a.kind.clone(),
                a.data["userId"].as_str().unwrap_or("").to_string(),
                a.actor_user_id,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("member.removed".into(), m2.user.id.to_string(), m2.user.id),
            (
                "member.removed".into(),
                viewer.user.id.to_string(),
                viewer.user.id
            ),
            (
                "member.removed".into(),
                m1.user.id.to_string(),
                admin.user.id
            ),
            (
                "member.removed".into(),
                admin.user.id.to_string(),
                owner.user.id
            ),
        ]
    );
    let members = api
        .all_pages(owner.token(), &format!("/api/v1/teams/{}/members", team.id))
        .await;
    assert_eq!(members.len(), 1);

    // A removed member can be added back.
    api.add_member(owner.token(), team.id, &m2.user.email, "viewer")
        .await;
    api.get(&format!("/api/v1/teams/{}", team.id), m2.token())
        .await
        .ok(200);
}

async fn non_members_get_404(b: Backend) {
    let srv = TestServer::start(b).await;
    let api = srv.client();
    let owner = api.new_user("Owner").await;
    let team = api.create_team(owner.token(), "T").await;
    let m = api.member(owner.token(), team.id, "M", "member").await;
    let out = api.new_user("Out").await;
    let tok = out.token();
    let base = format!("/api/v1/teams/{}/members", team.id);
    api.get(&base, tok).await.problem(404, "not_found");
    api.post(
        &base,
        tok,
        json!({"email": out.user.email, "role": "member"}),
    )
    .await
    .problem(404, "not_found");
    api.patch(
        &format!("{base}/{}", m.user.id),
        tok,
        json!({"role": "viewer"}),
    )
    .await
    .problem(404, "not_found");
    api.delete(&format!("{base}/{}", m.user.id), tok)
        .await
        .problem(404, "not_found");
    api.delete(&format!("{base}/{}", out.user.id), tok)
        .await
        .problem(404, "not_found");
    assert_eq!(api.team_seq(owner.token(), team.id).await, 1);
}
