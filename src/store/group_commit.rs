//! Group commit: write transactions that queue for the same lane (SQLite: the one writer;
//! PostgreSQL: one team) while another of the lane runs are run one after another inside one
//! database transaction, each inside its own `SAVEPOINT`, and committed together by one `COMMIT`.
//!
//! A member that ends without committing (a validation error, a 404, a 412, a dropped request)
//! is rolled back to its savepoint alone before the next member starts; the batch goes on. The
//! member that opens a batch needs no savepoint (should it fail, nothing else is in the
//! transaction, which is dropped). A member's `commit` returns once the batch's `COMMIT` has
//! answered, with its outcome: a request is answered only after what it wrote is durable, as
//! before.
//!
//! Round trips (on PostgreSQL; the SQLite writer runs its statements where the member runs) are
//! what a batch costs: a member's `RELEASE` is sent with the next member's `SAVEPOINT`, and the
//! batch remembers the last seq of each team its members appended to, so a member sets the seq
//! row with its activities instead of reading it first (forgotten whenever a member is rolled
//! back); and a run of task creations reads what a creation needs (the role, the board, the
//! column's end) once, not once per member (`KnownSlots`: forgotten before any member that does
//! not follow a committed creation).
//!
//! A member whose statement failed must be dropped, not committed: on PostgreSQL the failure
//! aborts the whole transaction, and the batch's `COMMIT` would then roll back every member
//! while sqlx reports success. The services return on every store error (`?`); none commits
//! after one.
//!
//! A member that locked rows other lanes' writers lock too (`holds_shared_rows`: users' inbox
//! rows, webhook rows) commits its batch at once: a batch never waits for another while holding
//! them; and the relay, which clears many teams' unpublished marks at once, skips the marks an
//! open batch holds instead of waiting for them. So batches cannot wait on each other in a cycle.
//! A write waits at most 30 s for its lane.
//!
//! The lane owns nothing but the order of its members; it never holds the batch across anything
//! but one member's own statements, and it never leaves a batch open without someone bound to
//! commit it: the first member that hands the batch on also spawns a flush, which queues for the
//! lane behind the members waiting when it first runs and commits the batch if nobody has by then
//! (every later member of the batch is ahead of it).
//!
//! Members read what the members before them wrote, uncommitted: a write that changes nothing
//! still commits (waits for the batch) before it answers. An error answer (404, 409, 412) is
//! given at once and may rest on such a write; should the batch's `COMMIT` then fail, that
//! write's own request is told so.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;

use async_trait::async_trait;
use tokio::sync::{Mutex, OwnedMutexGuard, oneshot};

use super::{Result, StoreError, TaskSlot};
use crate::domain::{BoardId, Role, Task, TaskStatus, TeamId, UserId};

/// The statements a batch runs on a sqlx connection besides the members' own.
#[async_trait]
pub(super) trait BatchConnection: Send {
    /// Runs one fixed statement (simple protocol, nothing prepared).
    async fn run(&mut self, sql: &'static str) -> Result<(), sqlx::Error>;
}

#[async_trait]
impl BatchConnection for sqlx::PgConnection {
    async fn run(&mut self, sql: &'static str) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(self)
            .await?;
        Ok(())
    }
}

#[async_trait]
impl BatchConnection for sqlx::SqliteConnection {
    async fn run(&mut self, sql: &'static str) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(self)
            .await?;
        Ok(())
    }
}

/// A database transaction a batch runs in: a sqlx transaction, or the SQLite writer's.
#[async_trait]
pub(super) trait BatchTx: Send + Sized + 'static {
    /// What the members' statements run on.
    type Conn: ?Sized;
    fn conn(&mut self) -> &mut Self::Conn;
    /// Runs fixed statements (the savepoints), nothing bound.
    async fn run(&mut self, sql: &'static str) -> Result<(), sqlx::Error>;
    async fn commit(self) -> Result<(), sqlx::Error>;
    /// A member's savepoint was opened (the previous one released or rolled back first).
    fn savepoint_opened(&mut self) {}
    /// The transaction was rolled back to the member's savepoint.
    fn rolled_back_to_savepoint(&mut self) {}
}

#[async_trait]
impl<DB> BatchTx for sqlx::Transaction<'static, DB>
where
    DB: sqlx::Database,
    DB::Connection: BatchConnection,
{
    type Conn = DB::Connection;

    fn conn(&mut self) -> &mut DB::Connection {
        self
    }

    async fn run(&mut self, sql: &'static str) -> Result<(), sqlx::Error> {
        BatchConnection::run(&mut **self, sql).await
    }

    async fn commit(self) -> Result<(), sqlx::Error> {
        sqlx::Transaction::commit(self).await
    }
}

#[async_trait]
impl BatchTx for super::sqlite_writer::WriterTx {
    type Conn = rusqlite::Connection;

    fn conn(&mut self) -> &mut rusqlite::Connection {
        super::sqlite_writer::WriterTx::conn(self)
    }

    async fn run(&mut self, sql: &'static str) -> Result<(), sqlx::Error> {
        super::sqlite_writer::WriterTx::run(self, sql)
    }

    async fn commit(self) -> Result<(), sqlx::Error> {
        super::sqlite_writer::WriterTx::commit(self).await
    }

    fn savepoint_opened(&mut self) {
        super::sqlite_writer::WriterTx::savepoint_opened(self);
    }

    fn rolled_back_to_savepoint(&mut self) {
        super::sqlite_writer::WriterTx::rolled_back_to_savepoint(self);
    }
}

/// The longest a write waits for its lane before it fails (as for a pool connection).
const LANE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT batch_member; RELEASE SAVEPOINT batch_member";

/// What readies the batch for its next member after what the last member `left`, in one call
/// (one round trip): undo its savepoint if it ended without
/// committing, or release it if it committed (a member's `RELEASE` waits for the next member, or
/// for the `COMMIT`, which releases it), then open the new member's savepoint.
fn before_member(left: Left) -> &'static str {
    match left {
        Left::Nothing | Left::Everything => "SAVEPOINT batch_member",
        Left::Committed => "RELEASE SAVEPOINT batch_member; SAVEPOINT batch_member",
        Left::Savepoint => {
            "ROLLBACK TO SAVEPOINT batch_member; RELEASE SAVEPOINT batch_member; \
             SAVEPOINT batch_member"
        }
    }
}

/// What every member of a batch is told when its `COMMIT` has answered. `StoreError` is not
/// `Clone`, so a failure reaches each member as its text.
type Outcome = std::result::Result<(), Arc<str>>;

/// Run right after a transaction's `COMMIT` succeeded, before its caller is answered; in a batch,
/// in the members' order (their seqs' order): the committed activities reach the relay in order.
/// It runs while the lane is held: it must be quick and must not block or wait.
pub type AfterCommit = Box<dyn FnOnce() + Send>;

/// A member waiting for its batch's `COMMIT`.
struct Committed {
    done: oneshot::Sender<Outcome>,
    then: Option<AfterCommit>,
}

struct Batch<T: BatchTx> {
    id: u64,
    tx: T,
    /// Members that committed, waiting for the `COMMIT` (the last one's savepoint may still be
    /// open: see `Left::Committed`).
    committed: Vec<Committed>,
    /// What the last member left to undo or release before anything else runs.
    left: Left,
    /// The last seq of each team a member appended to, as the transaction holds it: the next
    /// member sets its seqs without reading them (see `WriteTx::last_seq_known`).
    last_seqs: HashMap<TeamId, i64>,
    /// A member that handed the batch on has queued its flush: the later ones need not.
    flush_queued: bool,
    /// What the batch's creations read of their columns (see `WriteTx::known_slot`).
    slots: KnownSlots,
    /// The member holding the lane created a task and nothing else that `slots` depends on
    /// (see `WriteTx::created_task`): the next member may use them.
    member_created: bool,
}

/// What creating a task needs (`Tx::task_slot`: the caller's role, the board, the column's
/// last position), as the batch's transaction holds it. Only creations keep it from one member
/// to the next: every member but one that follows a committed creation starts without it, so
/// what it holds cannot have been changed since it was read, except by the creations after it,
/// whose positions it takes in. A run of creations then reads its column once, not once per
/// member (PostgreSQL: a round trip on the team's lane each).
/// What a creation asks `Tx::task_slot` for: `user` creating in `team`, on `board` (None: the
/// team's default), in `status`.
#[derive(Debug, Clone, Copy)]
pub(super) struct SlotKey {
    pub team: TeamId,
    pub user: UserId,
    pub board: Option<BoardId>,
    pub status: TaskStatus,
}

#[derive(Default)]
struct KnownSlots {
    roles: HashMap<(TeamId, UserId), Role>,
    /// The board a creation names (None: the team's default), as found: None when it is not
    /// one of the team's.
    boards: HashMap<(TeamId, Option<BoardId>), Option<BoardId>>,
    /// The last position of each column (board and status) read, None when it is empty.
    ends: HashMap<(BoardId, TaskStatus), Option<f64>>,
}

impl KnownSlots {
    fn get(&self, k: SlotKey) -> Option<TaskSlot> {
        let role = *self.roles.get(&(k.team, k.user))?;
        let board_id = *self.boards.get(&(k.team, k.board))?;
        let last_position = match board_id {
            Some(b) => *self.ends.get(&(b, k.status))?,
            None => None,
        };
        Some(TaskSlot {
            role,
            board_id,
            last_position,
        })
    }

    fn learn(&mut self, k: SlotKey, slot: &TaskSlot) {
        self.roles.insert((k.team, k.user), slot.role);
        self.boards.insert((k.team, k.board), slot.board_id);
        if let Some(b) = slot.board_id {
            self.ends.insert((b, k.status), slot.last_position);
        }
    }

    /// `task` was written: its column ends at its position now, if not further.
    fn take_in(&mut self, task: &Task) {
        if let Some(end) = self.ends.get_mut(&(task.board_id, task.status)) {
            *end = Some(end.map_or(task.position, |e| e.max(task.position)));
        }
    }
}

impl<T: BatchTx> Batch<T> {
    /// What the batch knows of the columns may be stale: the next member reads them again.
    fn forget_slots(&mut self) {
        self.slots = KnownSlots::default();
        self.member_created = false;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Left {
    Nothing,
    /// The savepoint of a member that committed: release it (or let the `COMMIT` do it).
    Committed,
    /// A member's savepoint: roll back to it.
    Savepoint,
    /// The member that opened the batch (no savepoint, nobody committed): drop the transaction.
    Everything,
}

/// A batch's transaction as its `begin` opened it, with the last seq of the team it locked, if
/// it read it (PostgreSQL: the lane's team).
pub(super) type Opened<T> = (T, Option<(TeamId, i64)>);

/// One lane: at most one batch open, its members one after another.
pub(super) struct Lane<T: BatchTx> {
    slot: Arc<Mutex<Option<Batch<T>>>>,
    /// Requests waiting for the lane, each counted once it is in the mutex's queue: a member
    /// that commits hands the batch on while any wait.
    queued: Arc<AtomicUsize>,
    next_id: AtomicU64,
    /// The most members one batch takes (1: every request commits alone).
    max_batch: usize,
}

/// Counts a request as queued until it gets the lane or is dropped while waiting.
struct Queued(Arc<AtomicUsize>);

impl Queued {
    fn new(n: &Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Self(n.clone())
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<T: BatchTx> Lane<T> {
    pub(super) fn new(max_batch: usize) -> Self {
        Self {
            slot: Arc::new(Mutex::new(None)),
            queued: Arc::new(AtomicUsize::new(0)),
            next_id: AtomicU64::new(1),
            max_batch: max_batch.max(1),
        }
    }

    /// Writes waiting for the lane now.
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Whether nobody uses the lane now (it can be forgotten).
    pub(super) fn is_idle(&self) -> bool {
        self.queued.load(Ordering::SeqCst) == 0
            && self.slot.try_lock().map(|s| s.is_none()).unwrap_or(false)
    }

    /// Joins the open batch, or opens one with `begin` (which also takes whatever the lane's
    /// batches must hold first). The member's statements run inside its own savepoint.
    ///
    /// Runs in a task of its own: a caller dropped while it waits cannot leave the lane half
    /// changed (the member it would have got is dropped, which hands the lane on).
    pub(super) async fn join<F, Fut>(self: &Arc<Self>, begin: F) -> Result<Member<T>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Opened<T>>> + Send + 'static,
    {
        let lane = self.clone();
        tokio::spawn(async move { lane.join_here(begin).await })
            .await
            .map_err(|e| StoreError::Commit(format!("joining a batch failed: {e}")))?
    }

    async fn join_here<F, Fut>(self: Arc<Self>, begin: F) -> Result<Member<T>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Opened<T>>>,
    {
        // As long as a writer used to wait for the one SQLite connection before it gave up.
        let mut lock = std::pin::pin!(tokio::time::timeout(
            LANE_WAIT,
            self.slot.clone().lock_owned()
        ));
        // Counted as queued only once its first poll has put it in the mutex's queue (or got
        // the lane): a member that sees it counted and hands the batch on queues its flush
        // behind it, never ahead (this task is new, so that poll is never refused for budget).
        let first = std::future::poll_fn(|cx| Poll::Ready(lock.as_mut().poll(cx))).await;
        let queued = Queued::new(&self.queued);
        let mut slot = match first {
            Poll::Ready(locked) => locked,
            Poll::Pending => lock.await,
        }
        .map_err(|_| StoreError::Database(sqlx::Error::PoolTimedOut))?;
        drop(queued);
        // A member that abandoned the batch it opened, and a failed savepoint, end the batch
        // (its waiting members are told): this write is not part of it, and opens the next.
        if slot.as_ref().is_some_and(|b| b.left == Left::Everything) {
            fail(
                &mut slot,
                &StoreError::Commit("the batch was abandoned".into()),
            );
        }
        if let Some(batch) = slot.as_mut() {
            match batch.tx.run(before_member(batch.left)).await {
                Ok(()) => {
                    if batch.left == Left::Savepoint {
                        batch.tx.rolled_back_to_savepoint();
                    }
                    batch.tx.savepoint_opened();
                    batch.left = Left::Nothing;
                    // Kept only after a committed creation (see `KnownSlots`).
                    if batch.member_created {
                        batch.member_created = false;
                    } else {
                        batch.forget_slots();
                    }
                }
                Err(e) => fail(&mut slot, &StoreError::from(e)),
            }
        }
        let nested = match slot.as_mut() {
            None => {
                let (tx, last_seq) = begin().await?;
                *slot = Some(Batch {
                    id: self.next_id.fetch_add(1, Ordering::Relaxed),
                    tx,
                    committed: Vec::new(),
                    left: Left::Nothing,
                    last_seqs: last_seq.into_iter().collect(),
                    flush_queued: false,
                    slots: KnownSlots::default(),
                    member_created: false,
                });
                false
            }
            Some(_) => true,
        };
        Ok(Member {
            lane: self,
            slot: Some(slot),
            nested,
            shared: false,
        })
    }
}

/// Undoes what a member that ended without committing left: its savepoint, or the whole
/// transaction it opened (then the lane is free for a new batch).
async fn settle<T: BatchTx>(slot: &mut Option<Batch<T>>) -> Result<()> {
    let Some(batch) = slot.as_mut() else {
        return Ok(());
    };
    match batch.left {
        // The `COMMIT` releases it.
        Left::Nothing | Left::Committed => {}
        Left::Savepoint => {
            batch.tx.run(ROLLBACK_TO).await?;
            batch.tx.rolled_back_to_savepoint();
            batch.left = Left::Nothing;
        }
        // Dropping the transaction rolls it back; nobody in it committed.
        Left::Everything => fail(slot, &StoreError::Commit("the batch was abandoned".into())),
    }
    Ok(())
}

/// The batch's connection failed: every member waiting is told, the transaction is dropped
/// (rolled back), and the lane is free for a new batch.
fn fail<T: BatchTx>(slot: &mut Option<Batch<T>>, e: &StoreError) {
    if let Some(batch) = slot.take() {
        let why: Arc<str> = format!("the batch failed: {e}").into();
        for m in batch.committed {
            let _ = m.done.send(Err(why.clone()));
        }
    }
}

/// Commits the batch in `slot` and tells its members.
async fn commit_batch<T: BatchTx>(slot: &mut Option<Batch<T>>) -> Outcome {
    if let Err(e) = settle(slot).await {
        fail(slot, &e);
        return Err(format!("{e}").into());
    }
    let Some(batch) = slot.take() else {
        return Ok(());
    };
    let outcome: Outcome = match batch.tx.commit().await {
        Ok(()) => Ok(()),
        Err(e) => Err(format!("commit failed: {e}").into()),
    };
    if outcome.is_ok() {
        metrics::counter!(crate::telemetry::WRITE_BATCHES).increment(1);
        metrics::counter!(crate::telemetry::WRITE_BATCH_MEMBERS)
            .increment(batch.committed.len() as u64);
    }
    for m in batch.committed {
        if outcome.is_ok()
            && let Some(then) = m.then
            && std::panic::catch_unwind(std::panic::AssertUnwindSafe(then)).is_err()
        {
            // Committed all the same: every member is still told so.
            tracing::error!("a callback after a group commit panicked");
        }
        let _ = m.done.send(outcome.clone());
    }
    outcome
}

/// One request's part of a batch: the connection is its own until it commits or is dropped.
pub(super) struct Member<T: BatchTx> {
    lane: Arc<Lane<T>>,
    /// The lane, held; `None` once handed on.
    slot: Option<OwnedMutexGuard<Option<Batch<T>>>>,
    /// Inside a savepoint (it joined an open batch), else it opened the batch.
    nested: bool,
    /// It locked rows other lanes' writers lock too: the batch commits right after it.
    shared: bool,
}

impl<T: BatchTx> Member<T> {
    /// The batch's connection, on which the member's statements run.
    pub(super) fn conn(&mut self) -> &mut T::Conn {
        self.batch().tx.conn()
    }

    fn batch(&mut self) -> &mut Batch<T> {
        self.slot
            .as_mut()
            .and_then(|s| s.as_mut())
            .expect("a member holds its batch until it ends")
    }

    /// Ends the member (its savepoint stays open until the next member starts or the batch
    /// commits) and waits for the batch's `COMMIT`: run now when nobody waits for the lane (or
    /// the batch is full), else by a later member or the flush.
    ///
    /// Runs in a task of its own: a `COMMIT` that carries other members' writes must not be
    /// interrupted because this member's caller went away.
    pub(super) async fn commit(self, then: Option<AfterCommit>) -> Result<()> {
        tokio::spawn(self.commit_here(then))
            .await
            .map_err(|e| StoreError::Commit(format!("the commit task failed: {e}")))?
    }

    async fn commit_here(mut self, then: Option<AfterCommit>) -> Result<()> {
        let Some(mut slot) = self.slot.take() else {
            return Err(StoreError::Corrupt("a member committed twice".into()));
        };
        let Some(batch) = slot.as_mut() else {
            return Err(StoreError::Corrupt("a member lost its batch".into()));
        };
        // Its savepoint is released by the next member's first call, or by the `COMMIT`.
        if self.nested {
            batch.left = Left::Committed;
        }
        let (done, outcome) = oneshot::channel();
        batch.committed.push(Committed { done, then });
        let full = batch.committed.len() >= self.lane.max_batch;
        let id = batch.id;
        if full || self.shared || self.lane.queued.load(Ordering::SeqCst) == 0 {
            return commit_batch(&mut slot)
                .await
                .map_err(|why| StoreError::Commit(why.to_string()));
        }
        let queue_flush = !std::mem::replace(&mut batch.flush_queued, true);
        drop(slot);
        // Queued behind the members waiting now: by the time it holds the lane they have all
        // run, and if the batch is still open, nobody else is bound to commit it. One flush per
        // batch: every member that gets the lane before it is in the batch it commits, and every
        // member after it finds the batch committed, so a second flush could only find it gone
        // (and would cost the lane a hand-over between two members).
        if queue_flush {
            let flush = self.lane.slot.clone();
            tokio::spawn(async move {
                let mut slot = flush.lock_owned().await;
                if slot.as_ref().is_some_and(|b| b.id == id) {
                    let _ = commit_batch(&mut slot).await;
                }
            });
        }
        match outcome.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(StoreError::Commit(why.to_string())),
            Err(_) => Err(StoreError::Commit("the batch was dropped".into())),
        }
    }
}

impl<T: BatchTx> Drop for Member<T> {
    fn drop(&mut self) {
        // Ended without committing: the next holder of the lane undoes it first. If nobody
        // comes, the batch still has to end: a flush does it (and commits the members that did
        // commit).
        let Some(mut slot) = self.slot.take() else {
            return;
        };
        let Some(batch) = slot.as_mut() else {
            return;
        };
        batch.left = if self.nested {
            Left::Savepoint
        } else {
            Left::Everything
        };
        // Its rollback may undo seqs it took, and tasks it wrote.
        batch.last_seqs.clear();
        batch.forget_slots();
        let id = batch.id;
        drop(slot);
        // Outside a runtime (its shutdown) nothing can run: the transaction is dropped with the
        // lane, which rolls it back.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let flush = self.lane.slot.clone();
        runtime.spawn(async move {
            let mut slot = flush.lock_owned().await;
            if slot.as_ref().is_none_or(|b| b.id != id) {
                return;
            }
            if slot.as_ref().is_some_and(|b| b.committed.is_empty()) {
                // Nothing to keep: dropping the transaction rolls it back.
                slot.take();
            } else {
                let _ = commit_batch(&mut slot).await;
            }
        });
    }
}

/// A transaction of the store: its own, or a member of a lane's batch.
pub(super) enum WriteTx<T: BatchTx> {
    Alone(T),
    Batched(Member<T>),
}

impl<T: BatchTx> WriteTx<T> {
    pub(super) fn conn(&mut self) -> &mut T::Conn {
        match self {
            Self::Alone(tx) => tx.conn(),
            Self::Batched(m) => m.conn(),
        }
    }

    /// The database transaction: this one's own, or its batch's.
    pub(super) fn db_tx(&mut self) -> &mut T {
        match self {
            Self::Alone(tx) => tx,
            Self::Batched(m) => &mut m.batch().tx,
        }
    }

    /// The last seq of `team` as this transaction holds it, if its batch knows it (an earlier
    /// member appended to the team, or, on PostgreSQL, the batch read it with the team row when
    /// it opened): the lane excludes every other writer of the team's log until the
    /// batch commits (SQLite: one writer; PostgreSQL: the batch holds the team row), so the seq
    /// row need not be read again. `None` outside a batch.
    pub(super) fn last_seq_known(&mut self, team: TeamId) -> Option<i64> {
        match self {
            Self::Alone(_) => None,
            Self::Batched(m) => m.batch().last_seqs.get(&team).copied(),
        }
    }

    /// Records (`Some`) or forgets (`None`: a write of it may have failed half-way) the team's
    /// last seq for the members after this one.
    pub(super) fn set_last_seq_known(&mut self, team: TeamId, seq: Option<i64>) {
        if let Self::Batched(m) = self {
            let seqs = &mut m.batch().last_seqs;
            match seq {
                Some(seq) => seqs.insert(team, seq),
                None => seqs.remove(&team),
            };
        }
    }

    /// What creating a task needs, if the batch knows it: an earlier member read it and every
    /// member since was a creation that committed (see `KnownSlots`). `None` outside a batch.
    pub(super) fn known_slot(&mut self, key: SlotKey) -> Option<TaskSlot> {
        match self {
            Self::Alone(_) => None,
            Self::Batched(m) => m.batch().slots.get(key),
        }
    }

    /// Records what `Tx::task_slot` read, for the creations after this member.
    pub(super) fn learn_slot(&mut self, key: SlotKey, slot: &TaskSlot) {
        if let Self::Batched(m) = self {
            m.batch().slots.learn(key, slot);
        }
    }

    /// The member wrote `task`, a creation: what the batch knows of the columns stays good for
    /// the next member, `task` taken in, unless the member then writes something else a slot
    /// depends on (`slots_changed`).
    pub(super) fn created_task(&mut self, task: &Task) {
        if let Self::Batched(m) = self {
            let batch = m.batch();
            batch.slots.take_in(task);
            batch.member_created = true;
        }
    }

    /// The member wrote something a slot depends on (a membership, a board, a task's column or
    /// position, imported tasks): the batch forgets what it knows of the columns, and this
    /// member no longer counts as a creation. Called by every such write of the store, so a
    /// member that creates a task and then changes something else still makes the next read.
    pub(super) fn slots_changed(&mut self) {
        if let Self::Batched(m) = self {
            m.batch().forget_slots();
        }
    }

    /// Commits, runs `then` once committed, and returns.
    pub(super) async fn commit(self, then: Option<AfterCommit>) -> Result<()> {
        match self {
            Self::Alone(tx) => {
                BatchTx::commit(tx).await?;
                if let Some(then) = then {
                    then();
                }
                Ok(())
            }
            Self::Batched(m) => m.commit(then).await,
        }
    }

    /// The transaction locked rows that other lanes' writers lock too (see `Member::shared`).
    pub(super) fn holds_shared_rows(&mut self) {
        if let Self::Batched(m) = self {
            m.shared = true;
        }
    }
}
