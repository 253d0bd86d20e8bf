//! The group commit on real SQLite and PostgreSQL, step by step: writes that queue behind one
//! are committed together, a member that fails (at the database, which aborts the transaction on
//! PostgreSQL) is rolled back alone and leaves no seq behind, the member that opened a batch
//! failing takes only its own writes along, and a batch of one commits at once.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

use super::{KeyClaim, PgOptions, PgStore, SqliteStore, Store, Tx};
use crate::domain::activity::{ActivityData, ActivityDraft};
use crate::domain::*;

/// A user and a team with its board, committed.
async fn team(store: &dyn Store) -> (UserId, Board, Team) {
    let at = OffsetDateTime::now_utc();
    let user = User {
        id: UserId::from(Uuid::now_v7()),
        email: format!("{}@example.com", Uuid::new_v4()),
        display_name: "Batch".into(),
        created_at: at,
    };
    let team = Team {
        id: TeamId::from(Uuid::now_v7()),
        name: "Batch".into(),
        created_at: at,
        default_board_id: BoardId::from(Uuid::now_v7()),
    };
    let board = Board {
        id: team.default_board_id,
        team_id: team.id,
        name: "General".into(),
        created_at: at,
    };
    let mut tx = store.write().await.expect("write");
    tx.insert_user(&user, "hash").await.expect("user");
    tx.insert_team(&team).await.expect("team");
    tx.insert_board(&board).await.expect("board");
    tx.commit().await.expect("commit");
    (user.id, board, team)
}

/// Appends one `board.updated` naming `name`; returns its seq.
async fn append(tx: &mut dyn Tx, user: UserId, board: &Board, name: &str) -> i64 {
    let mut b = board.clone();
    b.name = name.into();
    let draft = ActivityDraft::new(
        ActivityData::BoardUpdated { board: b },
        user,
        OffsetDateTime::now_utc(),
    );
    let entries = tx.append(board.team_id, vec![draft]).await.expect("append");
    entries[0].seq
}

async fn last_seq(store: &dyn Store, team: TeamId) -> i64 {
    let mut tx = store.read().await.expect("read");
    tx.last_seq(team).await.expect("last seq").unwrap_or(0)
}

/// Gives spawned work time to run (only where what is checked is that something did not happen,
/// or where a task spawned inside the store must be given its turn first).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(150)).await;
}

/// Waits until `n` writes queue for the lane of `team`.
async fn queued(store: &dyn Store, team: TeamId, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while store.queued_writes(team) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} writes did not queue within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Writes of one team queued for its lane, in the order they queued.
struct Joining(std::vec::IntoIter<tokio::task::JoinHandle<super::Result<Box<dyn Tx>>>>);

impl Joining {
    /// Queues `n` writes of `team`, each waiting for the lane before the next is started.
    async fn queue(store: &Arc<dyn Store>, team: TeamId, n: usize) -> Self {
        let mut joining = Vec::new();
        for queued_now in 1..=n {
            let s = store.clone();
            joining.push(tokio::spawn(async move { s.write_team(team).await }));
            queued(&**store, team, queued_now).await;
        }
        Self(joining.into_iter())
    }

    /// The next of them, once it holds the lane.
    async fn next(&mut self) -> Box<dyn Tx> {
        self.0
            .next()
            .expect("a queued write")
            .await
            .expect("joined")
            .expect("a member")
    }
}

/// A holds the lane; B and C queue. A commits: its answer waits for the batch. B appends, then
/// fails at the database and is dropped. C appends (B's seq again) and commits: A and C are
/// answered together, B left nothing.
async fn queued_writes_commit_together_and_a_failure_alone_rolls_back(store: Arc<dyn Store>) {
    let (user, board, t) = team(&*store).await;
    let mut a = store.write_team(t.id).await.expect("A");
    assert_eq!(append(&mut *a, user, &board, "A").await, 1);

    let s = store.clone();
    let b = tokio::spawn(async move { s.write_team(t.id).await });
    queued(&*store, t.id, 1).await;
    let s = store.clone();
    let c = tokio::spawn(async move { s.write_team(t.id).await });
    queued(&*store, t.id, 2).await;

    let a_commit = tokio::spawn(a.commit());
    let mut b = b.await.expect("B joined").expect("B");
    assert_eq!(append(&mut *b, user, &board, "B").await, 2);
    assert!(
        b.insert_team(&t).await.is_err(),
        "a second row for the team must be refused"
    );
    drop(b);

    let mut c = c.await.expect("C joined").expect("C");
    assert_eq!(
        append(&mut *c, user, &board, "C").await,
        2,
        "B's seq was rolled back with it"
    );
    settle().await;
    assert!(
        !a_commit.is_finished(),
        "A is answered when its batch commits, not before"
    );
    assert_eq!(last_seq(&*store, t.id).await, 0, "nothing committed yet");
    c.commit().await.expect("C commits the batch");
    a_commit
        .await
        .expect("A's commit ran")
        .expect("A committed with C");

    assert_eq!(
        logged_names(&*store, t.id).await,
        [(1, "A".into()), (2, "C".into())]
    );
}

/// A PostgreSQL batch stops at `MAX_BATCH` members, whatever the lane was opened with: A opens a
/// batch and more writes queue than fit; the batch's `COMMIT` runs once its last member commits,
/// while the others still wait, and the next member opens a batch of its own. (Past 64
/// savepoints every snapshot on the server would have to read `pg_subtrans`.)
async fn a_batch_stops_at_the_savepoints_postgres_tracks(store: Arc<dyn Store>) {
    use super::postgres::MAX_BATCH;
    let (user, board, t) = team(&*store).await;
    let mut a = store.write_team(t.id).await.expect("A");
    append(&mut *a, user, &board, "1").await;
    let more = MAX_BATCH + 3;
    let mut waiting = Joining::queue(&store, t.id, more).await;
    // The next queued writes in turn: each appends seq `n` and commits without waiting.
    let mut members = async |seqs: std::ops::RangeInclusive<usize>| {
        let mut commits = Vec::new();
        for n in seqs {
            let mut m = waiting.next().await;
            assert_eq!(
                append(&mut *m, user, &board, &n.to_string()).await,
                n as i64
            );
            commits.push(tokio::spawn(m.commit()));
        }
        commits
    };
    let mut first = vec![tokio::spawn(a.commit())];
    first.extend(members(2..=MAX_BATCH).await);
    for c in first {
        tokio::time::timeout(Duration::from_secs(10), c)
            .await
            .expect("a full batch commits without waiting for more members")
            .expect("the commit ran")
            .expect("committed");
    }
    assert_eq!(last_seq(&*store, t.id).await, MAX_BATCH as i64);

    for c in members(MAX_BATCH + 1..=1 + more).await {
        c.await.expect("the commit ran").expect("committed");
    }
    assert_eq!(last_seq(&*store, t.id).await, 1 + more as i64);
}

/// The team's log as (seq, board name) pairs.
async fn logged_names(store: &dyn Store, team: TeamId) -> Vec<(i64, String)> {
    let mut tx = store.read().await.expect("read");
    let log = tx.activities(team, 0, 10, 1 << 20).await.expect("log");
    log.iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_str(&e.json).expect("json");
            (
                e.seq,
                v["data"]["board"]["name"].as_str().unwrap_or("").into(),
            )
        })
        .collect()
}

/// O opens a batch; A, B and C queue. O and A commit (A's savepoint stays open until the next
/// member starts); B appends, fails and is dropped; C appends and commits. B's rollback undoes
/// B alone: O, A and C are logged with seqs 1, 2, 3.
async fn a_failure_after_a_committed_member_undoes_only_itself(store: Arc<dyn Store>) {
    let (user, board, t) = team(&*store).await;
    let mut o = store.write_team(t.id).await.expect("O");
    assert_eq!(append(&mut *o, user, &board, "O").await, 1);
    let mut joining = Joining::queue(&store, t.id, 3).await;

    let o_commit = tokio::spawn(o.commit());
    let mut a = joining.next().await;
    assert_eq!(append(&mut *a, user, &board, "A").await, 2);
    let a_commit = tokio::spawn(a.commit());
    let mut b = joining.next().await;
    assert_eq!(append(&mut *b, user, &board, "B").await, 3);
    assert!(
        b.insert_team(&t).await.is_err(),
        "a second row for the team"
    );
    drop(b);
    let mut c = joining.next().await;
    assert_eq!(
        append(&mut *c, user, &board, "C").await,
        3,
        "B's seq is free again"
    );
    c.commit().await.expect("C commits the batch");
    o_commit
        .await
        .expect("O's commit ran")
        .expect("O committed");
    a_commit
        .await
        .expect("A's commit ran")
        .expect("A committed");
    assert_eq!(last_seq(&*store, t.id).await, 3);
    assert_eq!(
        logged_names(&*store, t.id).await,
        [(1, "O".into()), (2, "A".into()), (3, "C".into())]
    );
}

/// With batches of one, A commits at once though B waits, and B gets a transaction of its own.
async fn batches_of_one_commit_at_once(store: Arc<dyn Store>) {
    let (user, board, t) = team(&*store).await;
    let mut a = store.write_team(t.id).await.expect("A");
    append(&mut *a, user, &board, "A").await;
    let s = store.clone();
    let b = tokio::spawn(async move { s.write_team(t.id).await });
    queued(&*store, t.id, 1).await;
    tokio::time::timeout(Duration::from_secs(10), a.commit())
        .await
        .expect("A does not wait for B")
        .expect("A commits");
    assert_eq!(last_seq(&*store, t.id).await, 1, "A is committed alone");
    let mut b = b.await.expect("B joined").expect("B");
    assert_eq!(append(&mut *b, user, &board, "B").await, 2);
    drop(b);
    let mut c = store.write_team(t.id).await.expect("C after a dropped B");
    assert_eq!(append(&mut *c, user, &board, "C").await, 2);
    c.commit().await.expect("C commits");
    assert_eq!(last_seq(&*store, t.id).await, 2);
}

/// The member that opens a batch has no savepoint: when it ends without committing, its whole
/// transaction goes, and the member waiting behind it opens a new one.
async fn an_opener_that_fails_takes_only_its_own_writes_along(store: Arc<dyn Store>) {
    let (user, board, t) = team(&*store).await;
    let mut a = store.write_team(t.id).await.expect("A");
    assert_eq!(append(&mut *a, user, &board, "A").await, 1);
    let s = store.clone();
    let b = tokio::spawn(async move { s.write_team(t.id).await });
    queued(&*store, t.id, 1).await;
    drop(a);
    let mut b = b.await.expect("B joined").expect("B");
    assert_eq!(
        append(&mut *b, user, &board, "B").await,
        1,
        "A's seq went with it"
    );
    b.commit().await.expect("B commits");
    assert_eq!(last_seq(&*store, t.id).await, 1);
}

/// On PostgreSQL a member that locked rows other teams' writers lock too (here a webhook row)
/// commits its batch at once, with a write waiting behind it: a batch never holds such rows
/// while its later members wait for others.
async fn a_member_holding_shared_rows_commits_its_batch_at_once(store: Arc<dyn Store>) {
    let (user, board, t) = team(&*store).await;
    let mut a = store.write_team(t.id).await.expect("A");
    append(&mut *a, user, &board, "A").await;
    let none = a
        .lock_webhook(WebhookId::from(Uuid::now_v7()))
        .await
        .expect("lock");
    assert!(none.is_none());
    let s = store.clone();
    let b = tokio::spawn(async move { s.write_team(t.id).await });
    queued(&*store, t.id, 1).await;
    tokio::time::timeout(Duration::from_secs(10), a.commit())
        .await
        .expect("A does not wait for B")
        .expect("A commits");
    assert_eq!(last_seq(&*store, t.id).await, 1, "A is committed at once");
    let mut b = b.await.expect("B joined").expect("B");
    assert_eq!(append(&mut *b, user, &board, "B").await, 2);
    b.commit().await.expect("B commits");
}

/// Callers that go away leave the lane whole. B, cancelled while it waits for the lane, takes
/// no part in the batch. A's caller, cancelled while A waits for its batch's `COMMIT` (A has
/// handed the batch on by then: C holds it), is committed all the same, by C's commit.
async fn callers_that_go_away_leave_the_lane_whole(store: Arc<dyn Store>) {
    let (user, board, t) = team(&*store).await;
    let mut a = store.write_team(t.id).await.expect("A");
    assert_eq!(append(&mut *a, user, &board, "A").await, 1);
    let s = store.clone();
    let b = tokio::spawn(async move { s.write_team(t.id).await });
    queued(&*store, t.id, 1).await;
    b.abort();
    assert!(
        matches!(b.await, Err(e) if e.is_cancelled()),
        "B was cancelled"
    );
    let s = store.clone();
    let c = tokio::spawn(async move { s.write_team(t.id).await });
    queued(&*store, t.id, 1).await;

    let a_commit = tokio::spawn(a.commit());
    let mut c = c.await.expect("C joined").expect("C");
    a_commit.abort();
    assert_eq!(
        append(&mut *c, user, &board, "C").await,
        2,
        "C writes after A, in A's batch"
    );
    c.commit().await.expect("C commits the batch");
    assert_eq!(
        logged_names(&*store, t.id).await,
        [(1, "A".into()), (2, "C".into())]
    );
}

/// A batch has one flush, queued by the first member that hands it on (A): B, which hands it
/// on to D, queues none, and is committed by A's, before D, which queued after it, runs.
async fn the_first_members_flush_commits_those_after_it(store: Arc<dyn Store>) {
    let (user, board, t) = team(&*store).await;
    let mut a = store.write_team(t.id).await.expect("A");
    assert_eq!(append(&mut *a, user, &board, "A").await, 1);
    let s = store.clone();
    let b = tokio::spawn(async move { s.write_team(t.id).await });
    queued(&*store, t.id, 1).await;
    let a_commit = tokio::spawn(a.commit());
    let mut b = b.await.expect("B joined").expect("B");
    assert_eq!(append(&mut *b, user, &board, "B").await, 2);
    // A's flush, spawned when A handed on, queues for the lane meanwhile; D queues after it.
    settle().await;
    let s = store.clone();
    let d = tokio::spawn(async move { s.write_team(t.id).await });
    queued(&*store, t.id, 1).await;
    tokio::time::timeout(Duration::from_secs(10), b.commit())
        .await
        .expect("B is committed by A's flush, not after D")
        .expect("B commits");
    a_commit
        .await
        .expect("A's commit ran")
        .expect("A committed with B");
    assert_eq!(last_seq(&*store, t.id).await, 2);
    let mut d = d.await.expect("D joined").expect("D");
    assert_eq!(append(&mut *d, user, &board, "D").await, 3);
    d.commit().await.expect("D commits");
    assert_eq!(last_seq(&*store, t.id).await, 3);
}

/// A task of `board` titled `title`.
fn task(user: UserId, board: &Board, title: &str) -> Task {
    let at = OffsetDateTime::now_utc();
    Task {
        id: TaskId::from(Uuid::now_v7()),
        team_id: board.team_id,
        board_id: board.id,
        title: title.into(),
        description: String::new(),
        status: TaskStatus::default(),
        priority: Priority::default(),
        assignee_user_id: None,
        due_date: None,
        position: 1.0,
        created_by: user,
        created_at: at,
        updated_at: at,
        version: 1,
        label_ids: Vec::new(),
    }
}

/// The titles of the team's tasks that the search finds for `word`.
async fn found(store: &dyn Store, team: TeamId, word: &str) -> Vec<String> {
    let mut tx = store.read().await.expect("read");
    let hits = tx
        .search_tasks(team, &[word.to_owned()], 10)
        .await
        .expect("search");
    hits.into_iter().map(|(t, _)| t.title).collect()
}

/// On SQLite the words of a batch's tasks are indexed when it commits, not as each member
/// writes them (see `WriterTx`): every committed member's task is found, a member rolled back
/// leaves no words (neither for the task it created nor for the one it renamed), a task deleted
/// later in the same batch leaves none either, and a task renamed later in the batch is found
/// by its last title only.
async fn a_batchs_tasks_are_found_once_it_commits(store: Arc<dyn Store>) {
    let (user, board, t) = team(&*store).await;
    let mut o = store.write_team(t.id).await.expect("O");
    let alpha = task(user, &board, "alpha");
    o.insert_task(&alpha, None).await.expect("alpha");
    let mut joining = Joining::queue(&store, t.id, 2).await;
    let o_commit = tokio::spawn(o.commit());
    let mut a = joining.next().await;
    a.insert_task(&task(user, &board, "bravo"), None)
        .await
        .expect("bravo");
    let mut renamed = alpha.clone();
    renamed.title = "foxtrot".into();
    renamed.version = 2;
    a.update_task(&renamed, true).await.expect("alpha renamed");
    assert!(
        a.insert_team(&t).await.is_err(),
        "a second row for the team"
    );
    drop(a);
    let mut b = joining.next().await;
    let charlie = task(user, &board, "charlie");
    b.insert_task(&charlie, None).await.expect("charlie");
    assert!(b.delete_task(charlie.id).await.expect("delete").is_some());
    let mut delta = task(user, &board, "delta");
    b.insert_task(&delta, None).await.expect("delta");
    // Renamed in the same batch: the last words count.
    delta.title = "echo".into();
    delta.version = 2;
    b.update_task(&delta, true).await.expect("renamed");
    assert!(
        found(&*store, t.id, "alpha").await.is_empty(),
        "nothing before the commit"
    );
    b.commit().await.expect("B commits the batch");
    o_commit
        .await
        .expect("O's commit ran")
        .expect("O committed");

    assert_eq!(found(&*store, t.id, "alpha").await, ["alpha"]);
    assert!(found(&*store, t.id, "foxtrot").await.is_empty());
    assert!(found(&*store, t.id, "bravo").await.is_empty());
    assert!(found(&*store, t.id, "charlie").await.is_empty());
    assert!(found(&*store, t.id, "delta").await.is_empty());
    assert_eq!(found(&*store, t.id, "echo").await, ["echo"]);
}

/// Whether the task is there, and its creator follows it, read after the fact.
async fn stored(store: &dyn Store, t: &Task) -> (bool, bool) {
    let mut tx = store.read().await.expect("read");
    let there = tx.task(t.id).await.expect("task").is_some();
    let follows = tx.follows(t.id, t.created_by).await.expect("follows");
    (there, follows)
}

/// On PostgreSQL a task's insert is held for the transaction's next statement (`PgTx::held`):
/// whatever comes next must send it first. Read back in its own transaction, written by a
/// `COMMIT` with nothing after it, sent before a second task's insert and written with the
/// activities, and dropped with a transaction that is dropped. (SQLite writes at once: the
/// same story holds.)
async fn a_held_task_is_sent_by_whatever_comes_next(store: Arc<dyn Store>) {
    let (user, board, t) = team(&*store).await;

    let read_back = task(user, &board, "read back");
    let mut tx = store.write_team(t.id).await.expect("write");
    tx.insert_task(&read_back, Some(user))
        .await
        .expect("insert");
    let found = tx.task(read_back.id).await.expect("read");
    assert_eq!(found.map(|f| f.title), Some("read back".to_owned()));
    assert!(tx.follows(read_back.id, user).await.expect("follows"));
    tx.commit().await.expect("commit");
    assert_eq!(stored(&*store, &read_back).await, (true, true));

    let committed = task(user, &board, "committed");
    let mut tx = store.write_team(t.id).await.expect("write");
    tx.insert_task(&committed, Some(user))
        .await
        .expect("insert");
    tx.commit().await.expect("commit");
    assert_eq!(stored(&*store, &committed).await, (true, true));

    let (first, second) = (task(user, &board, "first"), task(user, &board, "second"));
    let mut tx = store.write_team(t.id).await.expect("write");
    tx.insert_task(&first, Some(user)).await.expect("first");
    tx.insert_task(&second, None).await.expect("second");
    let seq = append(&mut *tx, user, &board, "two tasks").await;
    tx.commit().await.expect("commit");
    assert_eq!(stored(&*store, &first).await, (true, true));
    assert_eq!(stored(&*store, &second).await, (true, false));
    assert_eq!(last_seq(&*store, t.id).await, seq);

    let dropped = task(user, &board, "dropped");
    let mut tx = store.write_team(t.id).await.expect("write");
    tx.insert_task(&dropped, Some(user)).await.expect("insert");
    drop(tx);
    settle().await;
    assert_eq!(stored(&*store, &dropped).await, (false, false));
}

/// A task whose insert the database refuses (its board does not exist) fails its member when
/// it is sent (PostgreSQL: with the member's activities, SQLite: at once), and only that
/// member: the members before and after it commit, the seqs stay gapless.
async fn a_held_task_that_fails_fails_its_member_alone(store: Arc<dyn Store>) {
    let (user, board, t) = team(&*store).await;
    let mut a = store.write_team(t.id).await.expect("A");
    let kept = task(user, &board, "kept");
    a.insert_task(&kept, Some(user)).await.expect("kept");
    assert_eq!(append(&mut *a, user, &board, "A").await, 1);
    let mut joining = Joining::queue(&store, t.id, 2).await;
    let a_commit = tokio::spawn(a.commit());

    let mut b = joining.next().await;
    let mut orphan = task(user, &board, "orphan");
    orphan.board_id = BoardId::from(Uuid::now_v7());
    let draft = ActivityDraft::new(
        ActivityData::BoardUpdated {
            board: board.clone(),
        },
        user,
        OffsetDateTime::now_utc(),
    );
    let failed = match b.insert_task(&orphan, Some(user)).await {
        Err(e) => Err(e),
        Ok(()) => b.append(t.id, vec![draft]).await.map(|_| ()),
    };
    assert!(failed.is_err(), "a task on no board was written");
    drop(b);

    let mut c = joining.next().await;
    assert_eq!(append(&mut *c, user, &board, "C").await, 2);
    c.commit().await.expect("C commits");
    a_commit
        .await
        .expect("A's commit ran")
        .expect("A committed");
    assert_eq!(stored(&*store, &kept).await, (true, true));
    assert_eq!(stored(&*store, &orphan).await, (false, false));
    assert_eq!(
        logged_names(&*store, t.id).await,
        [(1, "A".to_owned()), (2, "C".to_owned())]
    );
}

/// What PostgreSQL saw last from the one transaction open on the scratch database.
async fn last_statement(url: &str) -> String {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connects");
    let open: Vec<(String,)> = sqlx::query_as(
        "SELECT query FROM pg_stat_activity \
         WHERE datname = current_database() AND state = 'idle in transaction'",
    )
    .fetch_all(&mut conn)
    .await
    .expect("pg_stat_activity");
    match <[_; 1]>::try_from(open) {
        Ok([(query,)]) => query,
        Err(open) => panic!("one transaction open, not {}: {open:?}", open.len()),
    }
}

/// A creation's task goes to PostgreSQL inside its activities' statement, with its keyed
/// request's mark: nothing is sent when the task is inserted, and the statement that appends
/// the activities inserts the task and marks the key too.
async fn a_creations_task_goes_out_with_its_activities(store: Arc<dyn Store>, url: String) {
    let (user, board, t) = team(&*store).await;
    let claimed_at = claim(&*store, user, "creation").await;
    let key = super::ApplyingKey {
        user,
        key: "creation".into(),
        claimed_at,
    };
    let created = task(user, &board, "with its activities");
    let with = super::APPLYING_KEY
        .scope(key, async {
            let mut tx = store.write_team(t.id).await.expect("write");
            let before = last_statement(&url).await;
            assert!(!before.contains("INSERT INTO tasks"), "{before}");
            tx.insert_task(&created, Some(user)).await.expect("insert");
            assert_eq!(last_statement(&url).await, before, "sent on its own");
            let draft = ActivityDraft::new(
                ActivityData::TaskCreated {
                    task: created.clone(),
                },
                user,
                OffsetDateTime::now_utc(),
            );
            tx.append(t.id, vec![draft]).await.expect("append");
            let with = last_statement(&url).await;
            tx.commit().await.expect("commit");
            with
        })
        .await;
    // The key's mark too (a keyed request's), in the same statement.
    assert!(
        with.starts_with("WITH task AS (INSERT INTO tasks")
            && with.contains("INSERT INTO task_followers")
            && with.contains("marked AS (UPDATE idempotency_keys")
            && with.contains("INSERT INTO activities"),
        "{with}"
    );
    assert_eq!(stored(&*store, &created).await, (true, true));
    assert_eq!(
        claimed_when_stale(&*store, user, "creation").await,
        KeyClaim::AnswerLost
    );
}

/// `user` joins `team` as `role`, committed.
async fn join(store: &dyn Store, team: TeamId, user: UserId, role: Role) {
    let mut tx = store.write().await.expect("write");
    tx.insert_member(team, user, role, OffsetDateTime::now_utc())
        .await
        .expect("member");
    tx.commit().await.expect("commit");
}

/// What `user` creating a task on the team's default board, in the default status, is told.
async fn slot(tx: &mut dyn Tx, team: TeamId, user: UserId) -> super::TaskSlot {
    tx.task_slot(team, user, None, TaskStatus::default())
        .await
        .expect("slot")
        .expect("a member")
}

/// A creation as the service writes one: the task, then its activity.
async fn create(tx: &mut dyn Tx, user: UserId, board: &Board, title: &str, position: f64) -> Task {
    let mut created = task(user, board, title);
    created.position = position;
    tx.insert_task(&created, Some(user)).await.expect("insert");
    let draft = ActivityDraft::new(
        ActivityData::TaskCreated {
            task: created.clone(),
        },
        user,
        OffsetDateTime::now_utc(),
    );
    tx.append(board.team_id, vec![draft]).await.expect("append");
    created
}

/// A batch's members read what a creation needs (role, board, the column's end) as their
/// transaction holds it, though a run of creations reads it once: after a creation the next
/// member knows the column ends at that task; after a member that moved a task (a creation
/// too), one that was dropped, and one that changed the creator's role, it reads again and
/// finds what they left.
async fn a_batch_knows_its_columns_only_after_its_creations(store: Arc<dyn Store>) {
    let (user, board, t) = team(&*store).await;
    join(&*store, t.id, user, Role::Member).await;

    let mut a = store.write_team(t.id).await.expect("A");
    let opened = slot(&mut *a, t.id, user).await;
    assert_eq!(
        (opened.role, opened.board_id, opened.last_position),
        (Role::Member, Some(board.id), None)
    );
    let first = create(&mut *a, user, &board, "first", 10.0).await;
    let mut joining = Joining::queue(&store, t.id, 5).await;
    let mut commits = vec![tokio::spawn(a.commit())];

    // After a creation: the column ends at its task.
    let mut b = joining.next().await;
    assert_eq!(slot(&mut *b, t.id, user).await.last_position, Some(10.0));
    create(&mut *b, user, &board, "second", 20.0).await;
    commits.push(tokio::spawn(b.commit()));

    // A creation that also moves the first task to the end of the column.
    let mut c = joining.next().await;
    assert_eq!(slot(&mut *c, t.id, user).await.last_position, Some(20.0));
    create(&mut *c, user, &board, "third", 30.0).await;
    let mut moved = first.clone();
    moved.position = 50.0;
    moved.version = 2;
    c.update_task(&moved, false).await.expect("moved");
    commits.push(tokio::spawn(c.commit()));

    // Reads the move, then creates a task and is dropped.
    let mut d = joining.next().await;
    assert_eq!(slot(&mut *d, t.id, user).await.last_position, Some(50.0));
    create(&mut *d, user, &board, "dropped", 90.0).await;
    drop(d);

    // The dropped task is not in the column; this member changes the creator's role.
    let mut e = joining.next().await;
    assert_eq!(slot(&mut *e, t.id, user).await.last_position, Some(50.0));
    assert!(
        e.set_role(t.id, user, Role::Member, Role::Viewer)
            .await
            .expect("role")
    );
    commits.push(tokio::spawn(e.commit()));

    let mut f = joining.next().await;
    let after = slot(&mut *f, t.id, user).await;
    assert_eq!(
        (after.role, after.last_position),
        (Role::Viewer, Some(50.0))
    );
    f.commit().await.expect("F commits");
    for c in commits {
        c.await.expect("ran").expect("committed");
    }
    assert_eq!(last_seq(&*store, t.id).await, 3);
}

/// On PostgreSQL the member after a creation sends nothing for its slot: the last statement
/// PostgreSQL saw is still its savepoint.
async fn a_run_of_creations_reads_its_column_once(store: Arc<dyn Store>, url: String) {
    let (user, board, t) = team(&*store).await;
    join(&*store, t.id, user, Role::Member).await;
    let mut a = store.write_team(t.id).await.expect("A");
    slot(&mut *a, t.id, user).await;
    create(&mut *a, user, &board, "first", 1.0).await;
    let mut joining = Joining::queue(&store, t.id, 1).await;
    let a_commit = tokio::spawn(a.commit());

    let mut b = joining.next().await;
    let before = last_statement(&url).await;
    assert!(before.contains("SAVEPOINT batch_member"), "{before}");
    assert_eq!(slot(&mut *b, t.id, user).await.last_position, Some(1.0));
    assert_eq!(
        last_statement(&url).await,
        before,
        "the slot was read again"
    );
    create(&mut *b, user, &board, "second", 2.0).await;
    b.commit().await.expect("B commits");
    a_commit.await.expect("ran").expect("A committed");
    assert_eq!(last_seq(&*store, t.id).await, 2);
}

/// What `user`'s `key` holds when claimed again, its claim taken as stale (`stale` in the
/// future): a claim whose request changed nothing is freed and taken anew.
async fn claimed_when_stale(store: &dyn Store, user: UserId, key: &str) -> KeyClaim {
    let now = OffsetDateTime::now_utc();
    let mut tx = store.write().await.expect("write");
    let claim = tx
        .claim_idempotency_key(
            user,
            key,
            b"print",
            now,
            now - time::Duration::hours(24),
            now + time::Duration::minutes(1),
        )
        .await
        .expect("claim");
    tx.commit().await.expect("commit");
    claim
}

/// Claims `key` for `user`; returns the claim's time.
async fn claim(store: &dyn Store, user: UserId, key: &str) -> OffsetDateTime {
    let now = crate::domain::model::timestamp::truncate(OffsetDateTime::now_utc());
    let mut tx = store.write().await.expect("write");
    let claim = tx
        .claim_idempotency_key(user, key, b"print", now, now, now)
        .await
        .expect("claim");
    tx.commit().await.expect("commit");
    assert_eq!(claim, KeyClaim::Claimed);
    now
}

/// A keyed request's write transactions mark its key applied as they commit, in their own
/// statements (PostgreSQL: inside the activities' statement when there is one, else before the
/// `COMMIT`): a read, a write that is dropped and a write outside the request's scope leave the
/// claim free once stale; a committed write with activities, and one without, make it lost.
/// A release keeps an applied claim unless told the answer is a secret.
async fn a_keyed_requests_writes_mark_its_key_applied(store: Arc<dyn Store>) {
    let (user, board, t) = team(&*store).await;
    let applying = |key: &str, claimed_at| super::ApplyingKey {
        user,
        key: key.to_owned(),
        claimed_at,
    };

    let at = claim(&*store, user, "untouched").await;
    super::APPLYING_KEY
        .scope(applying("untouched", at), async {
            let mut read = store.read().await.expect("read");
            read.last_seq(t.id).await.expect("read");
            read.commit().await.expect("commit a read");
            let mut dropped = store.write_team(t.id).await.expect("write");
            append(&mut *dropped, user, &board, "dropped").await;
            drop(dropped);
        })
        .await;
    let mut outside = store.write_team(t.id).await.expect("write");
    append(&mut *outside, user, &board, "outside").await;
    outside.commit().await.expect("commit");
    settle().await;
    assert_eq!(
        claimed_when_stale(&*store, user, "untouched").await,
        KeyClaim::Claimed
    );

    let at = claim(&*store, user, "appended").await;
    super::APPLYING_KEY
        .scope(applying("appended", at), async {
            let mut tx = store.write_team(t.id).await.expect("write");
            tx.insert_task(&task(user, &board, "keyed"), Some(user))
                .await
                .expect("task");
            append(&mut *tx, user, &board, "keyed").await;
            tx.commit().await.expect("commit");
        })
        .await;
    assert_eq!(
        claimed_when_stale(&*store, user, "appended").await,
        KeyClaim::AnswerLost
    );

    let at = claim(&*store, user, "plain").await;
    super::APPLYING_KEY
        .scope(applying("plain", at), async {
            let mut tx = store.write().await.expect("write");
            tx.set_display_name(user, "Renamed").await.expect("rename");
            tx.commit().await.expect("commit");
        })
        .await;
    assert_eq!(
        claimed_when_stale(&*store, user, "plain").await,
        KeyClaim::AnswerLost
    );

    for (secret, after) in [(false, KeyClaim::InProgress), (true, KeyClaim::Claimed)] {
        let key = format!("released {secret}");
        let at = claim(&*store, user, &key).await;
        super::APPLYING_KEY
            .scope(applying(&key, at), async {
                let mut tx = store.write_team(t.id).await.expect("write");
                append(&mut *tx, user, &board, "released").await;
                tx.commit().await.expect("commit");
            })
            .await;
        let mut tx = store.write().await.expect("write");
        tx.release_idempotency_key(user, &key, b"print", at, secret)
            .await
            .expect("release");
        tx.commit().await.expect("commit");
        let now = OffsetDateTime::now_utc();
        let mut tx = store.write().await.expect("write");
        let again = tx
            .claim_idempotency_key(
                user,
                &key,
                b"print",
                now,
                now - time::Duration::hours(24),
                at,
            )
            .await
            .expect("claim");
        tx.commit().await.expect("commit");
        assert_eq!(again, after, "released, secret: {secret}");
    }
}

async fn sqlite(max_batch: usize) -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("batch.db").display()
    );
    let store = SqliteStore::open(&url, max_batch)
        .await
        .expect("opens and migrates");
    (dir, Arc::new(store))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_queued_writes_commit_together() {
    let (_dir, store) = sqlite(64).await;
    queued_writes_commit_together_and_a_failure_alone_rolls_back(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_failure_after_a_committed_member_undoes_only_itself() {
    let (_dir, store) = sqlite(64).await;
    a_failure_after_a_committed_member_undoes_only_itself(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_an_opener_that_fails_takes_only_its_own_writes_along() {
    let (_dir, store) = sqlite(64).await;
    an_opener_that_fails_takes_only_its_own_writes_along(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_callers_that_go_away_leave_the_lane_whole() {
    let (_dir, store) = sqlite(64).await;
    callers_that_go_away_leave_the_lane_whole(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_the_first_members_flush_commits_those_after_it() {
    let (_dir, store) = sqlite(64).await;
    the_first_members_flush_commits_those_after_it(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_batchs_tasks_are_found_once_it_commits() {
    let (_dir, store) = sqlite(64).await;
    a_batchs_tasks_are_found_once_it_commits(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_batchs_tasks_are_found_once_it_commits() {
    on_postgres(64, a_batchs_tasks_are_found_once_it_commits).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_batches_of_one_commit_at_once() {
    let (_dir, store) = sqlite(1).await;
    batches_of_one_commit_at_once(store).await;
}

/// Runs `story` on a scratch PostgreSQL database (skipped, visibly, without one).
async fn on_postgres<F, Fut>(max_batch: usize, story: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    on_postgres_at(max_batch, |store, _url| story(store)).await;
}

/// `on_postgres`, the story also given the scratch database's URL.
async fn on_postgres_at<F, Fut>(max_batch: usize, story: F)
where
    F: FnOnce(Arc<dyn Store>, String) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let Some(db) = super::scratch_tests::ScratchPg::create().await else {
        return;
    };
    let url = db.url.clone();
    // In a task of its own, so that the scratch database is dropped whatever the outcome.
    let outcome = tokio::spawn(async move {
        let store = PgStore::open(&url, &PgOptions::pool(4), max_batch)
            .await
            .expect("opens and migrates");
        story(Arc::new(store), url).await;
    })
    .await;
    db.drop_database().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_held_task_is_sent_by_whatever_comes_next() {
    let (_dir, store) = sqlite(64).await;
    a_held_task_is_sent_by_whatever_comes_next(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_held_task_is_sent_by_whatever_comes_next() {
    on_postgres(64, a_held_task_is_sent_by_whatever_comes_next).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_held_task_that_fails_fails_its_member_alone() {
    let (_dir, store) = sqlite(64).await;
    a_held_task_that_fails_fails_its_member_alone(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_held_task_that_fails_fails_its_member_alone() {
    on_postgres(64, a_held_task_that_fails_fails_its_member_alone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_creations_task_goes_out_with_its_activities() {
    on_postgres_at(64, a_creations_task_goes_out_with_its_activities).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_batch_knows_its_columns_only_after_its_creations() {
    let (_dir, store) = sqlite(64).await;
    a_batch_knows_its_columns_only_after_its_creations(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_batch_knows_its_columns_only_after_its_creations() {
    on_postgres(64, a_batch_knows_its_columns_only_after_its_creations).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_run_of_creations_reads_its_column_once() {
    on_postgres_at(64, a_run_of_creations_reads_its_column_once).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_keyed_requests_writes_mark_its_key_applied() {
    let (_dir, store) = sqlite(64).await;
    a_keyed_requests_writes_mark_its_key_applied(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_keyed_requests_writes_mark_its_key_applied() {
    on_postgres(64, a_keyed_requests_writes_mark_its_key_applied).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_queued_writes_commit_together() {
    on_postgres(
        64,
        queued_writes_commit_together_and_a_failure_alone_rolls_back,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_failure_after_a_committed_member_undoes_only_itself() {
    on_postgres(64, a_failure_after_a_committed_member_undoes_only_itself).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_callers_that_go_away_leave_the_lane_whole() {
    on_postgres(64, callers_that_go_away_leave_the_lane_whole).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_first_members_flush_commits_those_after_it() {
    on_postgres(64, the_first_members_flush_commits_those_after_it).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_batch_stops_at_the_savepoints_postgres_tracks() {
    on_postgres(1000, a_batch_stops_at_the_savepoints_postgres_tracks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_batches_of_one_commit_at_once() {
    on_postgres(1, batches_of_one_commit_at_once).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_opener_that_fails_takes_only_its_own_writes_along() {
    on_postgres(64, an_opener_that_fails_takes_only_its_own_writes_along).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_member_holding_shared_rows_commits_its_batch_at_once() {
    on_postgres(64, a_member_holding_shared_rows_commits_its_batch_at_once).await;
}

/// Without the upkeep, the writer checkpoints the WAL by itself once it passes
/// `WAL_BACKSTOP` pages (after a `COMMIT`, never in it), and the WAL then starts again from its
/// beginning: the file stops growing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_the_writer_checkpoints_the_wal_past_its_backstop() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("backstop.db");
    let store = SqliteStore::open(&format!("sqlite://{}?mode=rwc", path.display()), 64)
        .await
        .expect("opens and migrates");
    let size = |path: &std::path::Path| std::fs::metadata(path).map_or(0, |m| m.len());
    let wal = dir.path().join("backstop.db-wal");
    let frames = || size(&wal).saturating_sub(32) / (4096 + 24);
    let backstop = u64::try_from(super::sqlite_writer::WAL_BACKSTOP).expect("positive");
    let (user, board, t) = team(&store).await;
    let before = size(&path);
    let mut commits = 0;
    // Past the backstop once, then as many commits again: without a checkpoint and a restart
    // the WAL would hold twice the backstop's frames.
    while commits < 12_000 && size(&path) == before {
        let mut tx = store.write_team(t.id).await.expect("write");
        append(&mut *tx, user, &board, &format!("renamed {commits}")).await;
        tx.commit().await.expect("commit");
        commits += 1;
    }
    assert!(
        size(&path) > before,
        "{commits} commits and no checkpoint; the WAL holds {} frames",
        frames()
    );
    let at_checkpoint = commits;
    for n in 0..at_checkpoint {
        let mut tx = store.write_team(t.id).await.expect("write");
        append(&mut *tx, user, &board, &format!("again {n}")).await;
        tx.commit().await.expect("commit");
        commits += 1;
    }
    assert!(
        frames() < backstop + backstop / 2,
        "the WAL grew to {} frames (backstop {backstop})",
        frames()
    );
    assert_eq!(last_seq(&store, t.id).await, commits);
}

/// The WAL is checkpointed by the store's upkeep, off the write lane, not by the writer's
/// `COMMIT` at SQLite's default of 1,000 pages: the database file takes the commits' pages only
/// once the upkeep runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_the_upkeep_checkpoints_the_wal_off_the_lane() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("wal.db");
    let store = SqliteStore::open(&format!("sqlite://{}?mode=rwc", path.display()), 64)
        .await
        .expect("opens and migrates");
    let size = |path: &std::path::Path| std::fs::metadata(path).map_or(0, |m| m.len());
    let wal = dir.path().join("wal.db-wal");
    // Frames of 4 KiB pages, each with its 24-byte header, after the 32-byte file header.
    let frames = || size(&wal).saturating_sub(32) / (4096 + 24);
    let (user, board, t) = team(&store).await;
    let before = size(&path);
    let mut commits = 0;
    while frames() < 1_200 {
        assert!(
            commits < 1_500,
            "1,500 commits wrote only {} frames",
            frames()
        );
        let mut tx = store.write_team(t.id).await.expect("write");
        append(&mut *tx, user, &board, &format!("renamed {commits}")).await;
        tx.commit().await.expect("commit");
        commits += 1;
    }
    assert_eq!(size(&path), before, "the commits stay in the WAL");
    let upkeep = tokio::spawn(store.upkeep().expect("SQLite has upkeep"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while size(&path) == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upkeep did not checkpoint within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    upkeep.abort();
    assert_eq!(last_seq(&store, t.id).await, commits);
}
