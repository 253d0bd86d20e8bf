//! `sqlite-writer`: the SQLite write path of a task creation without HTTP, run two ways on the
//! same schema (the server's migrations, a fresh file each), to tell how much of its cost is the
//! store's path around SQLite:
//!
//! - `store`: through the server's own store (`Store::write_team`, `task_slot`, `insert_task`
//!   with the creator's follow, `append`, `commit`: the calls the service makes), from `--concurrency`
//!   tasks on a 2-worker runtime, so that the group commit forms its batches as in the server.
//!   Until 796a08c every call was a hand-off to sqlx's connection thread and back; since, the
//!   store's writer runs the statements where the member runs.
//! - `synchronous`: one thread running the same statements with rusqlite (same SQLite library),
//!   `--batch` creations per `BEGIN IMMEDIATE ... COMMIT`, each in its own savepoint, statements
//!   prepared once and cached: no async task, no lane, no hand-off at all.
//!
//! Both write the same rows (task, search key, words, follower, seq, activity as the server
//! serializes and routes it, unpublished mark); the synchronous writer copies the server's SQL, so
//! it is a measurement, not a second store. Differences left: its batches are always `--batch`
//! long (the store's are what the group commit forms from the queued writers, up to 64), and it
//! writes `updated_at` as RFC 3339 text where the store writes fixed-width milliseconds.
//! The gap between the two is the whole of the store's path: the group commit's spawned tasks
//! and channels, `async_trait` boxes, argument copies, and (before 796a08c) the hand-offs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use time::OffsetDateTime;
use uuid::Uuid;

use taskforge::domain::activity::ActivityDraft;
use taskforge::domain::*;
use taskforge::store::task_query::indexed_text;
use taskforge::store::{SqliteStore, Store};

use crate::procfs::{Proc, cpu_seconds};

#[derive(clap::Args, Debug)]
pub struct SqliteWriterArgs {
    /// Task creations per run
    #[arg(long, default_value_t = 20_000)]
    creations: usize,
    /// Concurrent writers through the store (they form the group commit's batches)
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Creations per transaction on the synchronous writer
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Rounds; each runs both writers, alternated, on fresh files
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Directory for the database files (default: a new directory under the system's temp dir)
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// One run's figures.
struct Figures {
    per_second: f64,
    cpu_us_per_creation: f64,
}

/// The team every creation goes to.
struct Seeded {
    user: UserId,
    team: TeamId,
    user_uuid: Uuid,
    team_uuid: Uuid,
    board_uuid: Uuid,
}

pub fn run(args: &SqliteWriterArgs) -> Result<()> {
    anyhow::ensure!(
        args.creations > 0 && args.rounds > 0,
        "--creations and --rounds must be positive"
    );
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("taskforge-sqlite-writer-{}", Uuid::new_v4())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let outcome = rounds(args, &dir, &runtime);
    runtime.shutdown_background();
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    outcome
}

fn rounds(args: &SqliteWriterArgs, dir: &Path, runtime: &tokio::runtime::Runtime) -> Result<()> {
    println!(
        "sqlite-writer: {} task creations per run; store: {} concurrent writers; synchronous: {} per transaction",
        args.creations, args.concurrency, args.batch
    );
    println!(
        "{:>5}  {:<12} {:>12} {:>16}",
        "round", "writer", "creations/s", "CPU µs/creation"
    );
    let (mut store_runs, mut sync_runs) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        // Alternated: the store first in odd rounds, second in even ones.
        for store_now in [round % 2 == 1, round % 2 == 0] {
            if store_now {
                let path = dir.join(format!("store-{round}.db"));
                let f = runtime.block_on(through_store(&path, args.creations, args.concurrency))?;
                print_row(round, "store", &f);
                store_runs.push(f);
            } else {
                let path = dir.join(format!("sync-{round}.db"));
                let seeded = runtime.block_on(async {
                    let store = open(&path).await?;
                    seed(&*store).await
                })?;
                let f = synchronous(&path, &seeded, args.creations, args.batch)?;
                print_row(round, "synchronous", &f);
                sync_runs.push(f);
            }
        }
    }
    let (s, y) = (median(&store_runs), median(&sync_runs));
    println!(
        "median: store {:.0}/s at {:.0} µs, synchronous {:.0}/s at {:.0} µs: {:.1} times the rate, {:.1} times less CPU",
        s.0,
        s.1,
        y.0,
        y.1,
        y.0 / s.0,
        s.1 / y.1
    );
    Ok(())
}

fn print_row(round: usize, writer: &str, f: &Figures) {
    println!(
        "{round:>5}  {writer:<12} {:>12.0} {:>16.1}",
        f.per_second, f.cpu_us_per_creation
    );
}

fn median(runs: &[Figures]) -> (f64, f64) {
    let mid = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (
        mid(runs.iter().map(|f| f.per_second).collect()),
        mid(runs.iter().map(|f| f.cpu_us_per_creation).collect()),
    )
}

async fn open(path: &Path) -> Result<Arc<dyn Store>> {
    let url = format!("sqlite://{}?mode=rwc", path.display());
    Ok(Arc::new(SqliteStore::open(&url, 64).await?))
}

/// A user who owns a team with its board, committed.
async fn seed(store: &dyn Store) -> Result<Seeded> {
    let at = OffsetDateTime::now_utc();
    let (user_uuid, team_uuid, board_uuid) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let user = User {
        id: UserId::from(user_uuid),
        email: format!("{user_uuid}@example.com"),
        display_name: "Writer".into(),
        created_at: at,
    };
    let team = Team {
        id: TeamId::from(team_uuid),
        name: "Writers".into(),
        created_at: at,
        default_board_id: BoardId::from(board_uuid),
    };
    let board = Board {
        id: team.default_board_id,
        team_id: team.id,
        name: "General".into(),
        created_at: at,
    };
    let mut tx = store.write().await?;
    tx.insert_user(&user, "hash").await?;
    tx.insert_team(&team).await?;
    tx.insert_board(&board).await?;
    tx.insert_member(team.id, user.id, Role::Owner, at).await?;
    tx.commit().await?;
    Ok(Seeded {
        user: user.id,
        team: team.id,
        user_uuid,
        team_uuid,
        board_uuid,
    })
}

fn task(s: &Seeded, n: usize, position: f64) -> Task {
    let at = OffsetDateTime::now_utc();
    Task {
        id: TaskId::from(Uuid::now_v7()),
        team_id: s.team,
        board_id: BoardId::from(s.board_uuid),
        title: format!("Task {n} of the writer benchmark"),
        description: "Two sentences of description, as the HTTP benchmark sends. Nothing more."
            .into(),
        status: TaskStatus::default(),
        priority: Priority::default(),
        assignee_user_id: None,
        due_date: None,
        position,
        created_by: s.user,
        created_at: at,
        updated_at: at,
        version: 1,
        label_ids: Vec::new(),
    }
}

async fn through_store(path: &Path, creations: usize, concurrency: usize) -> Result<Figures> {
    let store = open(path).await?;
    // As in the server: the store's upkeep checkpoints the WAL beside the writes (its CPU
    // counts), and ends with the run.
    let upkeep = store.upkeep().map(tokio::spawn);
    let seeded = Arc::new(seed(&*store).await?);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cpu = cpu_seconds(Proc::Current)?;
    let started = Instant::now();
    let mut writers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (store, seeded, next) = (store.clone(), seeded.clone(), next.clone());
        writers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= creations {
                    return Ok::<(), anyhow::Error>(());
                }
                create_through(&*store, &seeded, n).await?;
            }
        }));
    }
    for w in writers {
        w.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(Proc::Current)? - cpu;
    if let Some(upkeep) = upkeep {
        upkeep.abort();
    }
    Ok(Figures {
        per_second: creations as f64 / seconds,
        cpu_us_per_creation: cpu * 1e6 / creations as f64,
    })
}

/// The store calls `TaskService::create_task` makes for a task without assignee or labels.
async fn create_through(store: &dyn Store, s: &Seeded, n: usize) -> Result<()> {
    let mut tx = store.write_team(s.team).await?;
    let slot = tx
        .task_slot(s.team, s.user, None, TaskStatus::default())
        .await?
        .context("the seeded team's slot")?;
    let t = task(s, n, slot.last_position.unwrap_or(0.0) + 1.0);
    tx.insert_task(&t, Some(s.user)).await?;
    let draft = ActivityDraft::new(
        ActivityData::TaskCreated { task: t.clone() },
        s.user,
        t.created_at,
    );
    tx.append(s.team, vec![draft]).await?;
    tx.commit().await?;
    Ok(())
}

// The server's statements for the same creation (SQLite dialect), copied, with `?N` for `$N`:
// rusqlite binds by index, and SQLite numbers `$N` parameters in order of appearance.
const SLOT: &str = "SELECT m.role, \
       (SELECT b.id FROM boards b WHERE b.id = COALESCE(?3, t.default_board_id) AND b.team_id = t.id), \
       (SELECT k.position FROM tasks k \
         WHERE k.board_id = COALESCE(?3, t.default_board_id) AND k.status = ?4 \
         ORDER BY k.position DESC LIMIT 1) \
     FROM memberships m JOIN teams t ON t.id = m.team_id \
     WHERE m.team_id = ?1 AND m.user_id = ?2";
const INSERT_TASK: &str = "INSERT INTO tasks (id, team_id, board_id, title, description, status, priority, \
     assignee_user_id, due_date, position, created_by, created_at, updated_at, version, \
     label_ids, priority_rank, search_key) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, \
     (SELECT COALESCE(MAX(search_key), 0) + 1 FROM tasks))";
const INSERT_WORDS: &str = "INSERT OR REPLACE INTO task_words (rowid, title, description) \
     VALUES ((SELECT search_key FROM tasks WHERE id = ?1), ?2, ?3)";
const FOLLOW: &str = "INSERT INTO task_followers (task_id, user_id, team_id, following) VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT (task_id, user_id) DO NOTHING";
const TAKE_SEQ: &str = "UPDATE teams SET last_seq = last_seq + 1 WHERE id = ?1 RETURNING last_seq";
const INSERT_ACTIVITY: &str = "INSERT INTO activities (team_id, seq, kind, board_id, prev_board_id, task_id, user_id, ts, payload) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
const MARK: &str = "INSERT INTO team_unpublished (team_id, upto_seq) VALUES (?1, ?2) \
     ON CONFLICT (team_id) DO UPDATE SET upto_seq = excluded.upto_seq";

fn synchronous(path: &Path, s: &Seeded, creations: usize, batch: usize) -> Result<Figures> {
    use rusqlite::params;
    let conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "temp_store", "memory")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let (team, user, board) = (
        s.team_uuid.as_bytes().as_slice(),
        s.user_uuid.as_bytes().as_slice(),
        s.board_uuid.as_bytes().as_slice(),
    );
    let cpu = cpu_seconds(Proc::Current)?;
    let started = Instant::now();
    let mut n = 0;
    while n < creations {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        for member in 0..batch.max(1).min(creations - n) {
            if member > 0 {
                conn.execute_batch("SAVEPOINT batch_member")?;
            }
            let last: Option<f64> = conn.prepare_cached(SLOT)?.query_row(
                params![team, user, None::<Vec<u8>>, TaskStatus::default().as_str()],
                |r| r.get(2),
            )?;
            let t = task(s, n, last.unwrap_or(0.0) + 1.0);
            let id = Uuid::from(t.id);
            let at = t
                .created_at
                .format(&time::format_description::well_known::Rfc3339)?;
            conn.prepare_cached(INSERT_TASK)?.execute(params![
                id.as_bytes().as_slice(),
                team,
                board,
                t.title,
                t.description,
                t.status.as_str(),
                t.priority.as_str(),
                None::<Vec<u8>>,
                None::<String>,
                t.position,
                user,
                at,
                at,
                t.version,
                "",
                t.priority.rank(),
            ])?;
            conn.prepare_cached(INSERT_WORDS)?.execute(params![
                id.as_bytes().as_slice(),
                indexed_text(s.team, &t.title),
                indexed_text(s.team, &t.description)
            ])?;
            conn.prepare_cached(FOLLOW)?.execute(params![
                id.as_bytes().as_slice(),
                user,
                team,
                true
            ])?;
            let seq: i64 = conn
                .prepare_cached(TAKE_SEQ)?
                .query_row(params![team], |r| r.get(0))?;
            // The activity as the server serializes and routes it.
            let (activity, route) = ActivityDraft::new(
                ActivityData::TaskCreated { task: t.clone() },
                s.user,
                t.created_at,
            )
            .into_activity(s.team, seq);
            let payload = serde_json::to_string(&activity)?;
            let blob = |id: Option<Uuid>| id.map(|u| u.as_bytes().to_vec());
            conn.prepare_cached(INSERT_ACTIVITY)?.execute(params![
                team,
                seq,
                route.kind.as_str(),
                blob(route.board_id.map(Uuid::from)),
                blob(route.prev_board_id.map(Uuid::from)),
                blob(route.task_id.map(Uuid::from)),
                blob(route.user_id.map(Uuid::from)),
                at,
                payload
            ])?;
            conn.prepare_cached(MARK)?.execute(params![team, seq])?;
            if member > 0 {
                conn.execute_batch("RELEASE SAVEPOINT batch_member")?;
            }
            n += 1;
        }
        conn.execute_batch("COMMIT")?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(Proc::Current)? - cpu;
    Ok(Figures {
        per_second: creations as f64 / seconds,
        cpu_us_per_creation: cpu * 1e6 / creations as f64,
    })
}
