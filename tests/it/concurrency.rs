//! Concurrent mutations in two teams through a pool of connections; afterwards each team's
//! activity log must be gapless (seq 1..N), complete (N = successful mutations + setup) and must
//! contain every created task exactly once. Requests that fail inside their transaction (an
//! assignee who is not a member: refused by the service; a member added twice: refused by the
//! database) are mixed in, and leave nothing behind.
//!
//! Each test runs with the group commit as configured by default, with every write committing
//! alone (`TASKFORGE_WRITE_BATCH=1`), and with batches as large as the queue
//! (`TASKFORGE_WRITE_BATCH=1000`): requests that fail then sit between others in a batch.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use serde_json::json;
use uuid::Uuid;

both_backends!(
    concurrent_mutations_keep_the_log_gapless,
    concurrent_mutations_keep_the_log_gapless_committing_alone,
    concurrent_mutations_keep_the_log_gapless_in_large_batches,
);

/// `TASKFORGE_WRITE_BATCH` forcing every write to commit alone, and batches as large as the queue.
const ALONE: &[(&str, &str)] = &[("TASKFORGE_WRITE_BATCH", "1")];
const LARGE: &[(&str, &str)] = &[("TASKFORGE_WRITE_BATCH", "1000")];

async fn concurrent_mutations_keep_the_log_gapless(b: Backend) {
    mutations_keep_the_log_gapless(b, &[]).await;
}

async fn concurrent_mutations_keep_the_log_gapless_committing_alone(b: Backend) {
    mutations_keep_the_log_gapless(b, ALONE).await;
}

async fn concurrent_mutations_keep_the_log_gapless_in_large_batches(b: Backend) {
    mutations_keep_the_log_gapless(b, LARGE).await;
}

#[derive(Clone, Debug)]
enum Job {
    Create {
        team: Uuid,
        token: String,
        assignee: Option<Uuid>,
        n: usize,
    },
    Update {
        token: String,
        task: Uuid,
        n: usize,
    },
    Comment {
        token: String,
        task: Uuid,
        n: usize,
    },
    /// A creation naming an assignee outside the team: 422 from inside the transaction.
    Refused {
        team: Uuid,
        token: String,
        n: usize,
    },
    /// Adding a member again: the database refuses the row (409), inside the transaction.
    Rejoin {
        team: Uuid,
        token: String,
        user: Uuid,
    },
}

#[derive(Default)]
struct Outcome {
    /// activities each team should have gained, from 2xx answers
    expected: HashMap<Uuid, i64>,
    created: HashMap<Uuid, Vec<Uuid>>,
    updates_ok: HashMap<Uuid, i64>,
    statuses: HashMap<u16, usize>,
}

const WORKERS: usize = 24;

async fn mutations_keep_the_log_gapless(b: Backend, settings: &[(&str, &str)]) {
    let srv = TestServer::start_with(b, settings).await;
    let api = srv.client();

    // Setup, counted: team A with 3 members, team B with 1, 10 + 4 seed tasks.
    let oa = api.new_user("A owner").await;
    let team_a = api.create_team(oa.token(), "A").await;
    let mut a_users = vec![oa.clone()];
    for i in 0..3 {
        a_users.push(
            api.member(oa.token(), team_a.id, &format!("A{i}"), "member")
                .await,
        );
    }
    let ob = api.new_user("B owner").await;
    let team_b = api.create_team(ob.token(), "B").await;
    let b_users = [
        ob.clone(),
        api.member(ob.token(), team_b.id, "B0", "member").await,
    ];
    let mut seed_a = Vec::new();
    for i in 0..10 {
        seed_a.push(
            api.task(oa.token(), team_a.id, &format!("seed A{i}"))
                .await
                .id,
        );
    }
    let mut seed_b = Vec::new();
    for i in 0..4 {
        seed_b.push(
            api.task(ob.token(), team_b.id, &format!("seed B{i}"))
                .await
                .id,
        );
    }
    let setup_a = 3 + 10;
    let setup_b = 1 + 4;
    assert_eq!(api.team_seq(oa.token(), team_a.id).await, setup_a);
    assert_eq!(api.team_seq(ob.token(), team_b.id).await, setup_b);

    // Jobs: A gets 100 creations (every 4th with an assignee), 60 updates, 60 comments = 220;
    // B gets 30 creations, 15 updates, 15 comments = 60. Interleaved.
    let mut a_jobs = Vec::new();
    for n in 0..100 {
        let u = &a_users[n % a_users.len()];
        a_jobs.push(Job::Create {
            team: team_a.id,
            token: u.access_token.clone(),
            assignee: n
                .is_multiple_of(4)
                .then(|| a_users[(n / 4) % a_users.len()].user.id),
            n,
        });
    }
    for n in 0..60 {
        a_jobs.push(Job::Update {
            token: a_users[n % a_users.len()].access_token.clone(),
            task: seed_a[n % seed_a.len()],
            n,
        });
        a_jobs.push(Job::Comment {
            token: a_users[(n + 1) % a_users.len()].access_token.clone(),
            task: seed_a[(n * 7) % seed_a.len()],
            n,
        });
    }
    // 20 requests that fail inside their transaction, between the others.
    for n in 0..10 {
        a_jobs.push(Job::Refused {
            team: team_a.id,
            token: a_users[n % a_users.len()].access_token.clone(),
            n,
        });
        a_jobs.push(Job::Rejoin {
            team: team_a.id,
            token: oa.access_token.clone(),
            user: a_users[1 + n % 3].user.id,
        });
    }
    let mut b_jobs = Vec::new();
    for n in 0..30 {
        b_jobs.push(Job::Create {
            team: team_b.id,
            token: b_users[n % 2].access_token.clone(),
            assignee: n.is_multiple_of(3).then(|| b_users[1].user.id),
            n,
        });
    }
    for n in 0..15 {
        b_jobs.push(Job::Update {
            token: b_users[n % 2].access_token.clone(),
            task: seed_b[n % seed_b.len()],
            n,
        });
        b_jobs.push(Job::Comment {
            token: b_users[(n + 1) % 2].access_token.clone(),
            task: seed_b[n % seed_b.len()],
            n,
        });
    }
    // Interleave: spread B's jobs through A's, and mix creation/update/comment order.
    let mut queue = VecDeque::new();
    let mut ai = a_jobs.into_iter();
    let mut bi = b_jobs.into_iter();
    let mut step = 0usize;
    loop {
        step += 1;
        let a = ai.next();
        let b = if step.is_multiple_of(4) {
            bi.next()
        } else {
            None
        };
        if a.is_none() && b.is_none() {
            if let Some(rest) = bi.next() {
                queue.push_back(rest);
                continue;
            }
            break;
        }
        queue.extend(a);
        queue.extend(b);
    }
    let total_jobs = queue.len();
    assert_eq!(total_jobs, 300);
    let team_of_task: HashMap<Uuid, Uuid> = seed_a
        .iter()
        .map(|t| (*t, team_a.id))
        .chain(seed_b.iter().map(|t| (*t, team_b.id)))
        .collect();

    let queue = Arc::new(Mutex::new(queue));
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let barrier = Arc::new(tokio::sync::Barrier::new(WORKERS));
    let mut handles = Vec::new();
    for _ in 0..WORKERS {
        let api = api.clone();
        let queue = queue.clone();
        let outcome = outcome.clone();
        let barrier = barrier.clone();
        let team_of_task = team_of_task.clone();
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            loop {
                let Some(job) = queue.lock().unwrap().pop_front() else {
                    break;
                };
                let (status, team, gained, created, updated) = match &job {
                    Job::Create {
                        team,
                        token,
                        assignee,
                        n,
                    } => {
                        let r = api
                            .post(
                                &format!("/api/v1/teams/{team}/tasks"),
                                token,
                                json!({"title": format!("concurrent {n}"), "assigneeUserId": assignee}),
                            )
                            .await;
                        let id = (r.status / 100 == 2)
                            .then(|| r.json["id"].as_str().unwrap().parse::<Uuid>().unwrap());
                        (r.status, *team, 1 + assignee.is_some() as i64, id, None)
                    }
                    Job::Update { token, task, n } => {
                        let r = api
                            .patch(
                                &format!("/api/v1/tasks/{task}"),
                                token,
                                json!({"title": format!("updated {n} {}", Uuid::new_v4())}),
                            )
                            .await;
                        (r.status, team_of_task[task], 1, None, Some(*task))
                    }
                    Job::Comment { token, task, n } => {
                        let r = api
                            .post(
                                &format!("/api/v1/tasks/{task}/comments"),
                                token,
                                json!({"body": format!("comment {n}")}),
                            )
                            .await;
                        (r.status, team_of_task[task], 1, None, None)
                    }
                    Job::Refused { team, token, n } => {
                        let r = api
                            .post(
                                &format!("/api/v1/teams/{team}/tasks"),
                                token,
                                json!({"title": format!("refused {n}"), "assigneeUserId": Uuid::new_v4()}),
                            )
                            .await;
                        assert_eq!(r.status, 422, "an outsider as assignee: {}", r.text);
                        (r.status, *team, 0, None, None)
                    }
                    Job::Rejoin { team, token, user } => {
                        let r = api
                            .post(
                                &format!("/api/v1/teams/{team}/members"),
                                token,
                                json!({"userId": user, "role": "member"}),
                            )
                            .await;
                        assert_eq!(r.status, 409, "a member added again: {}", r.text);
                        (r.status, *team, 0, None, None)
                    }
                };
                let mut o = outcome.lock().unwrap();
                *o.statuses.entry(status).or_default() += 1;
                if status / 100 == 2 {
                    *o.expected.entry(team).or_default() += gained;
                    if let Some(id) = created {
                        o.created.entry(team).or_default().push(id);
                    }
                    if let Some(t) = updated {
                        *o.updates_ok.entry(t).or_default() += 1;
                    }
                }
            }
        }));
    }
    let all = futures_util::future::join_all(handles);
    for h in tokio::time::timeout(Duration::from_secs(300), all)
        .await
        .expect("concurrent phase took more than 5 minutes")
    {
        h.expect("worker panicked");
    }

    let o = Arc::try_unwrap(outcome).ok().unwrap().into_inner().unwrap();
    eprintln!("{b:?}: response statuses {:?}", o.statuses);
    assert_eq!(o.statuses.values().sum::<usize>(), total_jobs);
    let server_errors: usize = o
        .statuses
        .iter()
        .filter(|(s, _)| **s >= 500)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        server_errors, 0,
        "server errors under concurrency: {:?}",
        o.statuses
    );
    assert_eq!(o.statuses.get(&422), Some(&10), "{:?}", o.statuses);
    assert_eq!(o.statuses.get(&409), Some(&10), "{:?}", o.statuses);
    let ok: usize = o
        .statuses
        .iter()
        .filter(|(s, _)| **s / 100 == 2)
        .map(|(_, n)| n)
        .sum();
    assert!(
        ok >= 200,
        "only {ok} of {total_jobs} mutations succeeded: {:?}",
        o.statuses
    );

    for (team, owner, setup, seeds) in [
        (&team_a, &oa, setup_a, &seed_a),
        (&team_b, &ob, setup_b, &seed_b),
    ] {
        let acts = api.activity(owner.token(), team.id).await;
        let seqs: Vec<i64> = acts.iter().map(|a| a.seq).collect();
        let n = setup + o.expected.get(&team.id).copied().unwrap_or(0);
        assert_eq!(
            seqs,
            (1..=n).collect::<Vec<_>>(),
            "team {}: seqs must be exactly 1..={n} in order (got {} activities)",
            team.name,
            acts.len()
        );
        assert!(acts.iter().all(|a| a.team_id == team.id));
        assert_eq!(api.team_seq(owner.token(), team.id).await, n);

        // Every created task id is in exactly one task.created.
        let mut created_in_log: HashMap<String, usize> = HashMap::new();
        for a in acts.iter().filter(|a| a.kind == "task.created") {
            let id = a.data["task"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert_eq!(a.task_id.map(|t| t.to_string()), Some(id.clone()));
            *created_in_log.entry(id).or_default() += 1;
        }
        let created = o.created.get(&team.id).cloned().unwrap_or_default();
        for id in created.iter().chain(seeds.iter()) {
            assert_eq!(
                created_in_log.get(&id.to_string()).copied(),
                Some(1),
                "task {id} must appear in exactly one task.created of team {}",
                team.name
            );
        }
        assert_eq!(
            created_in_log.len(),
            created.len() + seeds.len(),
            "no task.created for tasks that were not reported created"
        );

        // Concurrent unconditional PATCHes all count: version = 1 + successful updates.
        for t in seeds.iter() {
            let task: Task = api.get_task(owner.token(), *t).await.parse(200);
            let updates = o.updates_ok.get(t).copied().unwrap_or(0);
            assert_eq!(task.version, 1 + updates, "version of seed task {t}");
        }
        let listed = api
            .all_pages(
                owner.token(),
                &format!("/api/v1/teams/{}/tasks?limit=200", team.id),
            )
            .await;
        assert_eq!(listed.len(), created.len() + seeds.len());
    }
}

both_backends!(
    racing_if_match_patches_let_exactly_one_win,
    racing_if_match_patches_let_exactly_one_win_committing_alone,
    racing_if_match_patches_let_exactly_one_win_in_large_batches,
);

async fn racing_if_match_patches_let_exactly_one_win(b: Backend) {
    if_match_race(b, &[]).await;
}

async fn racing_if_match_patches_let_exactly_one_win_committing_alone(b: Backend) {
    if_match_race(b, ALONE).await;
}

async fn racing_if_match_patches_let_exactly_one_win_in_large_batches(b: Backend) {
    if_match_race(b, LARGE).await;
}

/// 30 PATCHes carrying the same `If-Match` race: exactly one wins, the rest get 412 with the
/// winner's version, and exactly one `task.updated` is logged.
async fn if_match_race(b: Backend, settings: &[(&str, &str)]) {
    let srv = TestServer::start_with(b, settings).await;
    let api = srv.client();
    let owner = api.new_user("Racer").await;
    let team = api.create_team(owner.token(), "Race").await;
    let task = api.task(owner.token(), team.id, "contended").await;
    let barrier = Arc::new(tokio::sync::Barrier::new(30));
    let mut handles = Vec::new();
    for i in 0..30 {
        let api = api.clone();
        let tok = owner.access_token.clone();
        let barrier = barrier.clone();
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            api.send(
                "PATCH",
                &format!("/api/v1/tasks/{}", task.id),
                Some(&tok),
                Some(&json!({"title": format!("winner {i}")})),
                &[("if-match", "\"1\"")],
            )
            .await
        }));
    }
    let mut winners = Vec::new();
    for h in handles {
        let r = h.await.expect("worker panicked");
        match r.status {
            200 => winners.push(r.json["title"].as_str().unwrap().to_string()),
            412 => {
                let p = r.problem(412, "precondition_failed");
                assert_eq!(p["currentVersion"], 2, "{}", r.text);
            }
            s => panic!("unexpected status {s}: {}", r.text),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one conditional PATCH wins: {winners:?}"
    );
    let t: Task = api.get_task(owner.token(), task.id).await.parse(200);
    assert_eq!(t.version, 2);
    assert_eq!(t.title, winners[0]);
    let acts = api.activity(owner.token(), team.id).await;
    let kinds: Vec<&str> = acts.iter().map(|a| a.kind.as_str()).collect();
    assert_eq!(kinds, ["task.created", "task.updated"]);
}
