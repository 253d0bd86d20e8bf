//! Durable state: the `Store` trait, its SQLite and PostgreSQL implementations, and migrations.
//!
//! The store owns SQL and nothing else: it never decides who may do what (that is `domain::rules`,
//! applied by `service`), never publishes events (that is `bus`), and never speaks HTTP.
//! Every change and the activities it emits are written in one transaction (`Store::write`).

mod group_commit;
#[cfg(test)]
mod group_commit_tests;
#[cfg(test)]
mod label_race_tests;
#[cfg(test)]
mod plans_tests;
mod postgres;
#[cfg(test)]
pub(crate) mod scratch_tests;
#[cfg(test)]
mod search_key_tests;
mod sql;
mod sqlite;
mod sqlite_writer;
pub mod task_query;
#[cfg(test)]
mod walk_tests;
pub mod webhooks;

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::domain::activity::{ActivityDraft, LogEntry};
use crate::domain::notify::{
    Followers, InboxEvent, MarkRead, Notification, NotificationDraft, ReadMark,
};
use crate::domain::search::{TaskCursor, TaskFilter, TaskSort};
use crate::domain::*;

pub use group_commit::AfterCommit;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use webhooks::{Failing, SealedSecrets, WebhookRecord, WebhookTx};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A unique constraint refused the row (e.g. an email that is taken).
    #[error("already exists")]
    Duplicate,
    /// An optimistic update lost a race with a concurrent writer; the caller may retry.
    #[error("concurrent update")]
    Stale,
    /// The `COMMIT` of a batch of write transactions (group commit) failed: nothing of it is kept.
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("serialization failed: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported database url (expected sqlite:// or postgres://)")]
    UnsupportedUrl,
    /// Behind a transaction pooler without a direct URL to migrate over, the schema must be
    /// exactly this build's (as the migrator would check it).
    #[error(
        "the database schema is not this build's ({0}): run `taskforge migrate` with \
         TASKFORGE_MIGRATION_DATABASE_URL set to a direct connection, or set it for `serve`"
    )]
    SchemaMismatch(String),
}

/// The most payload characters one read of the log returns (past its first row): a replay, a
/// repair or a page of the log never holds more than this at once, however large activities are.
pub const READ_BATCH_CHARS: i64 = 256 * 1024;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A page request: items strictly after `after` (a key of the last item seen), at most `limit`.
#[derive(Debug, Clone, Copy)]
pub struct PageAfter<K> {
    pub after: Option<K>,
    pub limit: i64,
}

/// A stored refresh token with the state of its family.
#[derive(Debug, Clone)]
pub struct RefreshToken {
    pub family_id: SessionId,
    pub user_id: UserId,
    pub expires_at: OffsetDateTime,
    pub used: bool,
    pub family_revoked: bool,
}

/// See `Tx::task_slot`.
#[derive(Debug, Clone, Copy)]
pub struct TaskSlot {
    pub role: Role,
    /// None when the board named is not one of the team's.
    pub board_id: Option<BoardId>,
    pub last_position: Option<f64>,
}

/// What a team's log holds: `oldest_since` is the smallest `since` that can still be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBounds {
    pub oldest_since: i64,
    pub last_seq: i64,
}

/// A page of a user's inbox, newest first: notifications with `since < seq < before`.
#[derive(Debug, Clone, Copy)]
pub struct InboxQuery {
    pub since: i64,
    pub before: i64,
    pub unread_only: bool,
    pub limit: i64,
}

/// Opens transactions. `read` gives a consistent snapshot; `write` a transaction that cannot fail
/// for lack of a write lock once it has begun.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn read(&self) -> Result<Box<dyn Tx>>;
    async fn write(&self) -> Result<Box<dyn Tx>>;
    /// A write transaction of one team: all the writes that append to a team's log open theirs
    /// here. It may be committed together with other writes of the team (group commit); its
    /// `commit` returns once that has committed.
    async fn write_team(&self, team: TeamId) -> Result<Box<dyn Tx>> {
        let _ = team;
        self.write().await
    }
    /// Writes waiting for the lane of `team` (tests: to know a write has queued).
    #[cfg(test)]
    fn queued_writes(&self, team: TeamId) -> usize {
        let _ = team;
        0
    }
    /// Whether `write_team` needs the team (PostgreSQL: a lane per team); if not, a write by id
    /// need not read its team first.
    fn lanes_by_team(&self) -> bool {
        false
    }
    async fn ping(&self) -> Result<()>;
    fn backend(&self) -> &'static str;
    /// One webhook's row, read alone outside any transaction: the delivery worker reads it
    /// before every attempt, and a one-statement read costs a round trip where a transaction
    /// costs three.
    async fn webhook_now(&self, id: crate::domain::WebhookId) -> Result<Option<WebhookRecord>>;
    /// Work the store needs done in the background until shutdown (SQLite: checkpoints of the
    /// WAL, off the write lane), for the app's supervisor to run; `None` if there is none.
    fn upkeep(&self) -> Option<futures_util::future::BoxFuture<'static, ()>> {
        None
    }
}

/// One transaction. Dropping it without `commit` rolls it back.
#[async_trait]
pub trait Tx: WebhookTx + Send {
    async fn commit(self: Box<Self>) -> Result<()>;
    /// Commits and runs `then` right after the `COMMIT`, before returning: with the group commit,
    /// the members of a batch run theirs in the batch's order.
    async fn commit_then(self: Box<Self>, then: AfterCommit) -> Result<()>;

    // labels
    /// `StoreError::Duplicate` if the team has a label of that name (in any case).
    async fn insert_label(&mut self, label: &Label) -> Result<()>;
    async fn label(&mut self, id: LabelId) -> Result<Option<Label>>;
    async fn labels(&mut self, team: TeamId, page: PageAfter<LabelId>) -> Result<Vec<Label>>;
    async fn count_labels(&mut self, team: TeamId) -> Result<i64>;
    /// Renames or recolors; false if the label is gone, `StoreError::Duplicate` on a name clash.
    async fn update_label(&mut self, label: &Label) -> Result<bool>;
    /// Deletes the label and takes it off every task that carries it (their versions stay: the
    /// `label.deleted` activity tells clients). False if it was gone.
    async fn delete_label(&mut self, id: LabelId) -> Result<bool>;
    /// Which of `ids` are labels of `team`, each locked against deletion until the transaction
    /// ends (so that a task never gets a label deleted meanwhile).
    async fn labels_among(&mut self, team: TeamId, ids: &[LabelId]) -> Result<Vec<LabelId>>;

    // users and sessions
    async fn insert_user(&mut self, user: &User, password_hash: &str) -> Result<()>;
    async fn user(&mut self, id: UserId) -> Result<Option<User>>;
    async fn user_by_email(&mut self, email: &str) -> Result<Option<(User, String)>>;
    async fn set_display_name(&mut self, id: UserId, name: &str) -> Result<Option<User>>;
    async fn insert_refresh_family(
        &mut self,
        family: SessionId,
        user: UserId,
        now: OffsetDateTime,
    ) -> Result<()>;
    async fn insert_refresh_token(
        &mut self,
        hash: &[u8],
        family: SessionId,
        expires_at: OffsetDateTime,
    ) -> Result<()>;
    async fn refresh_token(&mut self, hash: &[u8]) -> Result<Option<RefreshToken>>;
    /// Marks the token used; false if it already was (a concurrent refresh won).
    async fn use_refresh_token(&mut self, hash: &[u8], now: OffsetDateTime) -> Result<bool>;
    async fn revoke_refresh_family(&mut self, family: SessionId, now: OffsetDateTime)
    -> Result<()>;
    /// Deletes refresh tokens expired at `now`, families left with no token that is not, and
    /// families revoked before `revoked_before`; returns how many rows it deleted.
    async fn purge_sessions(
        &mut self,
        now: OffsetDateTime,
        revoked_before: OffsetDateTime,
    ) -> Result<u64>;

    // teams and members
    async fn insert_team(&mut self, team: &Team) -> Result<()>;
    async fn team(&mut self, id: TeamId) -> Result<Option<Team>>;
    async fn set_team_name(&mut self, id: TeamId, name: &str) -> Result<Option<Team>>;
    async fn teams_of(
        &mut self,
        user: UserId,
        page: PageAfter<TeamId>,
    ) -> Result<Vec<(Team, Role)>>;
    async fn role(&mut self, team: TeamId, user: UserId) -> Result<Option<Role>>;
    async fn member(&mut self, team: TeamId, user: UserId) -> Result<Option<Member>>;
    async fn members(&mut self, team: TeamId, page: PageAfter<UserId>) -> Result<Vec<Member>>;
    async fn insert_member(
        &mut self,
        team: TeamId,
        user: UserId,
        role: Role,
        at: OffsetDateTime,
    ) -> Result<()>;
    /// Changes a role only if it still is `from`; false otherwise.
    async fn set_role(&mut self, team: TeamId, user: UserId, from: Role, to: Role) -> Result<bool>;
    async fn delete_member(&mut self, team: TeamId, user: UserId) -> Result<bool>;

    // boards
    async fn insert_board(&mut self, board: &Board) -> Result<()>;
    async fn board(&mut self, id: BoardId) -> Result<Option<Board>>;
    async fn boards(&mut self, team: TeamId, page: PageAfter<BoardId>) -> Result<Vec<Board>>;
    async fn set_board_name(&mut self, id: BoardId, name: &str) -> Result<Option<Board>>;
    async fn board_has_tasks(&mut self, id: BoardId) -> Result<bool>;
    async fn delete_board(&mut self, id: BoardId) -> Result<bool>;

    // tasks
    /// Writes a new task; `follower`, if any, follows it from its creation (the row
    /// `set_following(.., true, false)` would write), in the same statement on PostgreSQL: a
    /// creation's round trip fewer. In a batch, the next member may take what the batch read of
    /// the columns, this task's position taken in (`WriteTx::created_task`), unless this member
    /// also changes a membership, a board or a task's column (every such write forgets it).
    async fn insert_task(&mut self, task: &Task, follower: Option<UserId>) -> Result<()>;
    /// The tasks imported into the team under any of `keys`, as (key, task).
    async fn imported_tasks(
        &mut self,
        team: TeamId,
        keys: &[&str],
    ) -> Result<Vec<(String, TaskId)>>;
    /// Writes an import's new tasks (all of one team, with their labels and words), the keys
    /// they were imported under, and their comments, in few statements; `StoreError::Duplicate`
    /// if another transaction recorded one of the keys first.
    async fn insert_imported(
        &mut self,
        tasks: &[Task],
        keys: &[(String, TaskId)],
        comments: &[Comment],
    ) -> Result<()>;
    async fn task(&mut self, id: TaskId) -> Result<Option<Task>>;
    /// At most `limit` of the team's tasks passing `filter`, in `sort`'s order, after `after`.
    async fn tasks(
        &mut self,
        team: TeamId,
        filter: &TaskFilter,
        sort: TaskSort,
        after: Option<TaskCursor>,
        limit: i64,
    ) -> Result<Vec<Task>>;
    /// The team's best `limit` matches of `words` (`search::words`), best first, with their
    /// scores (higher is better; comparable within one answer only).
    async fn search_tasks(
        &mut self,
        team: TeamId,
        words: &[String],
        limit: i64,
    ) -> Result<Vec<(Task, f64)>>;
    /// Writes `task` if the stored version is still `task.version - 1` (else `StoreError::Stale`)
    /// and returns the labels the task has. Its labels are not written: `set_task_labels` does
    /// that when they change (a label deleted since `task` was read stays deleted).
    /// `words_changed`: its title or description changed (`Task::words_differ`); only then
    /// does SQLite's search index take its words again (PostgreSQL's follows the row).
    async fn update_task(&mut self, task: &Task, words_changed: bool) -> Result<Vec<LabelId>>;
    /// Makes `labels` (ascending, each a label of the task's team that `labels_among` has
    /// locked in this transaction) the task's whole set of labels.
    async fn set_task_labels(&mut self, task: TaskId, labels: &[LabelId]) -> Result<()>;
    /// Deletes a task and returns it as it was when deleted (None if it was gone): callers must
    /// describe the delete from this row, not from an earlier read a concurrent update may have
    /// outdated (PostgreSQL, READ COMMITTED).
    async fn delete_task(&mut self, id: TaskId) -> Result<Option<Task>>;
    /// What creating a task needs, in one read: the caller's role, the board (`board` if it is
    /// one of the team's, else the team's default board when `board` is None), and the last
    /// position in that column. None if the caller is not a member. In a batch, read once for a
    /// run of creations (`WriteTx::known_slot`).
    async fn task_slot(
        &mut self,
        team: TeamId,
        user: UserId,
        board: Option<BoardId>,
        status: TaskStatus,
    ) -> Result<Option<TaskSlot>>;

    // comments
    async fn insert_comment(&mut self, comment: &Comment) -> Result<()>;
    async fn comment(&mut self, id: CommentId) -> Result<Option<Comment>>;
    async fn comments(&mut self, task: TaskId, page: PageAfter<CommentId>) -> Result<Vec<Comment>>;
    /// Writes the comment if its body is still `previous_body`; false if it is gone or was
    /// edited meanwhile (an edit's new mentions are counted against the body it replaces).
    async fn update_comment(&mut self, comment: &Comment, previous_body: &str) -> Result<bool>;
    async fn delete_comment(&mut self, id: CommentId) -> Result<bool>;

    // the activity log
    /// Appends activities at `last_seq + 1 ..` and records the team as unpublished up to the last
    /// one; locks the team's row, so call it last.
    async fn append(&mut self, team: TeamId, drafts: Vec<ActivityDraft>) -> Result<Vec<LogEntry>>;
    async fn last_seq(&mut self, team: TeamId) -> Result<Option<i64>>;
    /// The latest seq of each of `teams` that exists.
    async fn last_seqs(&mut self, teams: &[TeamId]) -> Result<Vec<(TeamId, i64)>>;
    async fn log_bounds(&mut self, team: TeamId) -> Result<Option<LogBounds>>;
    /// Logged activities with `after < seq <= upto`, oldest first: at most `limit`, and no more
    /// than fit in `READ_BATCH_CHARS` (but always the first). Callers loop on the last seq.
    async fn activities(
        &mut self,
        team: TeamId,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<LogEntry>>;
    /// The published watermarks of these teams (0 for a team without one), in any order.
    async fn published_seqs(&mut self, teams: &[TeamId]) -> Result<Vec<(TeamId, i64)>>;

    /// Raises the published watermarks of these teams (never lowers one), a statement or two
    /// per few hundred teams. Each team once, in team order (the order rows are locked in).
    async fn set_published_seqs(&mut self, marks: &[(TeamId, i64)]) -> Result<()>;
    /// Drops the unpublished records of `teams` that their stored watermark has reached (a record
    /// an append raised beyond it stays). Call it last in the transaction.
    async fn clear_unpublished(&mut self, teams: &[TeamId]) -> Result<()>;
    /// Teams recorded as unpublished whose record is above the published watermark and whose
    /// first activity above it was written before `stale_before` (a live relay publishes and saves
    /// sooner): (team, watermark). Reads only those records, never every team.
    async fn unpublished_teams(
        &mut self,
        limit: i64,
        stale_before: OffsetDateTime,
    ) -> Result<Vec<(TeamId, i64)>>;
    /// Deletes notifications and mark-reads older than `before`; returns how many.
    async fn prune_inbox(&mut self, before: OffsetDateTime) -> Result<u64>;

    // Idempotency keys (`service::idempotency`).
    /// Takes `key` for `user`'s request with `fingerprint` (a row created before `expired`, or a
    /// claim without an answer created before `stale`, is forgotten first), or says what the key
    /// holds.
    async fn claim_idempotency_key(
        &mut self,
        user: UserId,
        key: &str,
        fingerprint: &[u8],
        now: OffsetDateTime,
        expired: OffsetDateTime,
        stale: OffsetDateTime,
    ) -> Result<KeyClaim>;
    /// Stores the answer of the request that claimed the key with `fingerprint` at `at` (a claim
    /// taken over since is left alone).
    async fn finish_idempotency_key(
        &mut self,
        user: UserId,
        key: &str,
        fingerprint: &[u8],
        at: OffsetDateTime,
        answer: &StoredAnswer,
    ) -> Result<()>;
    /// Gives up that claim, its request having no answer to keep, so that a retry runs again:
    /// unless the request changed something (its claim is `applied`: a retry must not act
    /// twice, and finds the key in use, then lost), or `even_applied` (an answer that must not
    /// be kept, such as a secret: the request runs as if it had no key).
    async fn release_idempotency_key(
        &mut self,
        user: UserId,
        key: &str,
        fingerprint: &[u8],
        at: OffsetDateTime,
        even_applied: bool,
    ) -> Result<()>;
    /// Deletes keys created before `before`; returns how many.
    async fn prune_idempotency_keys(&mut self, before: OffsetDateTime) -> Result<u64>;

    // following and notifications. Lock order within a change: the task's row, its follower
    // rows (in user order), the inbox rows (`users.inbox_seq`, in user order), the team's row.
    /// Locks the task's row until commit as strongly as a delete does (PostgreSQL: it waits for
    /// a change that is writing a comment or a follow of the task); false if it is gone.
    async fn lock_task(&mut self, task: TaskId) -> Result<bool>;
    /// The task's followers, and who explicitly unfollowed it.
    async fn followers(&mut self, task: TaskId) -> Result<Followers>;
    async fn follows(&mut self, task: TaskId, user: UserId) -> Result<bool>;
    /// Records that `user` follows `task` (or, with `following` false, explicitly does not).
    /// With `keep_decision`, a row already there (an earlier follow or unfollow) stays as it is.
    async fn set_following(
        &mut self,
        task: TaskId,
        team: TeamId,
        user: UserId,
        following: bool,
        keep_decision: bool,
    ) -> Result<()>;
    /// Which of `users` are members of `team`.
    async fn members_among(&mut self, team: TeamId, users: &[UserId]) -> Result<Vec<UserId>>;
    /// Writes each draft at its user's next inbox seq (call in user order); returns
    /// (user, seq) per draft.
    async fn insert_notifications(
        &mut self,
        drafts: &[NotificationDraft],
    ) -> Result<Vec<(UserId, i64)>>;
    /// The user's latest inbox seq and unread count (of teams they are a member of).
    async fn inbox_state(&mut self, user: UserId) -> Result<(i64, i64)>;
    /// The latest inbox seq of each of `users`.
    async fn inbox_seqs(&mut self, users: &[UserId]) -> Result<Vec<(UserId, i64)>>;
    /// A page of the user's notifications of teams they are a member of, newest first.
    async fn notifications(&mut self, user: UserId, q: InboxQuery) -> Result<Vec<Notification>>;
    /// Marks unread notifications (of teams the user is a member of) read and records the
    /// mark as the stream's next event; None when nothing was unread.
    async fn mark_read(
        &mut self,
        user: UserId,
        mark: &MarkRead,
        at: OffsetDateTime,
    ) -> Result<Option<ReadMark>>;
    /// The stream's first events with `after < seq <= upto` (at most `limit`), oldest first,
    /// leaving out notifications of teams the user is no longer a member of; and the seq up to
    /// which the answer is complete (`upto` when nothing was cut off). Read by key, so a sparse
    /// range (pruned, or of teams left) costs what it returns.
    async fn inbox_events(
        &mut self,
        user: UserId,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<(Vec<InboxEvent>, i64)>;

    // retention
    /// The teams of the `scan` oldest activities older than `before` (and newer than `after`),
    /// the most overdue first, and the newest `ts` among those activities (where the next scan
    /// starts).
    async fn teams_with_old_activities(
        &mut self,
        before: OffsetDateTime,
        after: Option<OffsetDateTime>,
        scan: i64,
    ) -> Result<(Vec<TeamId>, Option<OffsetDateTime>)>;
    /// Deletes the team's lowest seqs that are older than `before` and published, up to the first
    /// that is not (only a prefix goes: a resume never skips a kept seq), at most `chunk` rows.
    async fn prune_team_log(
        &mut self,
        team: TeamId,
        before: OffsetDateTime,
        chunk: i64,
    ) -> Result<u64>;

    // leases
    /// Gives the lease `name` up if `holder` holds it.
    async fn release_lease(&mut self, name: &str, holder: &str) -> Result<()>;
    /// Takes the lease `name` for `holder` until `until`, or renews it, unless another holder's
    /// runs past `now`; true when `holder` holds it now.
    async fn take_lease(
        &mut self,
        name: &str,
        holder: &str,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<bool>;
}

/// What an idempotency key holds when a request comes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyClaim {
    /// The key was free: this request runs and its answer is stored.
    Claimed,
    /// The key's first request is still running (or ended without storing an answer).
    InProgress,
    /// The key was used with another request.
    Mismatch,
    /// The key's first request answered this.
    Answered(StoredAnswer),
    /// The key's first request changed something (`applying_key`) but its answer was never
    /// kept, and it is stale: its process died in between. Running it again would act twice.
    AnswerLost,
}

/// The idempotency key a keyed request holds while its handler runs: every write transaction
/// the request commits marks the key `applied` in that same transaction (the store's `commit`),
/// so a crash between a change's commit and the keeping of its answer cannot make a retry
/// change it again (`KeyClaim::AnswerLost`).
#[derive(Debug, Clone)]
pub struct ApplyingKey {
    pub user: UserId,
    pub key: String,
    /// When the request claimed the key: names its claim.
    pub claimed_at: OffsetDateTime,
}

tokio::task_local! {
    /// Set around a keyed request's handler (`Services::run_keyed`); read by the store's commit.
    pub static APPLYING_KEY: ApplyingKey;
}

/// The key the current task's request holds, if it holds one.
pub(crate) fn applying_key() -> Option<ApplyingKey> {
    APPLYING_KEY.try_with(Clone::clone).ok()
}

/// An answer kept for an idempotency key: status, the headers worth replaying, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    pub status: u16,
    /// `[[name, value], …]` as JSON.
    pub headers: String,
    pub body: Vec<u8>,
}

/// The most write transactions one group commit takes by default (`TASKFORGE_WRITE_BATCH`).
pub const DEFAULT_WRITE_BATCH: u16 = 64;

/// Opens the store named by a `sqlite://` or `postgres://` URL and runs its migrations.
pub async fn connect(url: &str, pg_pool_size: u32) -> Result<std::sync::Arc<dyn Store>> {
    connect_with(
        url,
        &PgOptions::pool(pg_pool_size),
        DEFAULT_WRITE_BATCH.into(),
    )
    .await
}

/// `connect` with PostgreSQL's options and the most write transactions committed together.
pub async fn connect_with(
    url: &str,
    pg: &PgOptions,
    write_batch: usize,
) -> Result<std::sync::Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(
            SqliteStore::open(url, write_batch).await?,
        ))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(std::sync::Arc::new(
            PgStore::open(url, pg, write_batch).await?,
        ))
    } else {
        Err(StoreError::UnsupportedUrl)
    }
}

/// How an instance reaches PostgreSQL.
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    pub pool_size: u32,
    pub pooler: Pooler,
    /// A connection that keeps its session (PostgreSQL itself, or a session pool) to run the
    /// migrations over when `pooler` hands out connections per transaction.
    pub migration_url: Option<String>,
}

impl PgOptions {
    /// PostgreSQL directly, with a pool of `size` connections.
    pub fn pool(size: u32) -> Self {
        Self {
            pool_size: size,
            ..Self::default()
        }
    }
}

/// What stands between the instances and PostgreSQL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Pooler {
    /// PostgreSQL itself, or a pooler that keeps a server connection per client (session mode).
    #[default]
    None,
    /// A pooler in transaction mode (PgBouncer `pool_mode = transaction`): a server connection
    /// per transaction, so no statement is named (they would not be found, or would collide,
    /// on the next transaction's connection) and nothing relies on the session.
    Transaction,
}
