//! The SQL of TaskForge, written once in the dialect SQLite and PostgreSQL share (`$n` parameters,
//! `RETURNING`, `ON CONFLICT`), and instantiated for each driver by `impl_tx!`. A macro rather than
//! generics: sqlx's generic executor bounds would bury every query under trait clauses.
//! Schemas differ (UUID vs BLOB, TIMESTAMPTZ vs TEXT) but bind and decode to the same Rust types.

use std::sync::Arc;

use time::OffsetDateTime;
use uuid::Uuid;

use super::{RefreshToken, StoreError};
use crate::domain::activity::{ActivityDraft, ActivityKind, LogEntry, Route};
use crate::domain::notify::{Notification, ReadMark, Reason};
use crate::domain::*;

pub(super) fn map_dup(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Duplicate,
        _ => StoreError::Database(e),
    }
}

/// Ids per `IN (...)` list: well under both drivers' bound-parameter limits.
pub(super) const IN_LIST_CHUNK: usize = 500;

/// Rows per multi-row INSERT of an import (at most 17 parameters each: 3,400 per statement, under
/// SQLite's 32,766 and PostgreSQL's 65,535).
pub(super) const BULK_ROWS: usize = 200;

/// Notifications per multi-row INSERT (14 parameters each): under both drivers' limits.
pub(super) const NOTIFICATION_ROWS_PER_INSERT: usize = 200;

/// `$1, $2, ..., $n`: only placeholders go into the SQL text, the values are bound.
pub(super) fn placeholders(n: usize) -> String {
    placeholders_from(1, n)
}

/// `$first, ..., $(first + n - 1)`: a list after `first - 1` other parameters.
pub(super) fn placeholders_from(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Cursor keys are UUIDv7s; the nil UUID sorts before all of them and stands for "from the start".
pub(super) fn after<K: From<Uuid>>(key: Option<K>) -> K {
    key.unwrap_or_else(|| K::from(Uuid::nil()))
}

/// A row type of the store, decoded by name: by sqlx's drivers (`FromRow`) and by the SQLite
/// writer (`sqlite_writer::FromRow`) alike. A `#[sqlx(flatten)]` field is a row type itself.
macro_rules! row {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $($(#[$field_meta:meta])* $field_vis:vis $field:ident : $ty:ty),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(sqlx::FromRow)]
        $vis struct $name {
            $($(#[$field_meta])* $field_vis $field: $ty),*
        }

        impl $crate::store::sqlite_writer::FromRow for $name {
            fn from_row(row: &rusqlite::Row<'_>) -> Result<Self, sqlx::Error> {
                Ok(Self {
                    $($field: $crate::store::sqlite_writer::Field::field(row, stringify!($field))?),*
                })
            }
        }

        impl $crate::store::sqlite_writer::Field for $name {
            fn field(row: &rusqlite::Row<'_>, _: &str) -> Result<Self, sqlx::Error> {
                <Self as $crate::store::sqlite_writer::FromRow>::from_row(row)
            }
        }
    };
}
pub(super) use row;

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} {value:?}"))
}

row! {
    pub(super) struct UserRow {
        id: UserId,
        email: String,
        display_name: String,
        created_at: OffsetDateTime,
    }
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> Self {
        User {
            id: r.id,
            email: r.email,
            display_name: r.display_name,
            created_at: r.created_at,
        }
    }
}

row! {
    pub(super) struct UserWithHashRow {
        #[sqlx(flatten)]
        user: UserRow,
        password_hash: String,
    }
}

impl From<UserWithHashRow> for (User, String) {
    fn from(r: UserWithHashRow) -> Self {
        (r.user.into(), r.password_hash)
    }
}

row! {
    pub(super) struct RefreshRow {
        family_id: SessionId,
        user_id: UserId,
        expires_at: OffsetDateTime,
        used_at: Option<OffsetDateTime>,
        revoked_at: Option<OffsetDateTime>,
    }
}

impl From<RefreshRow> for RefreshToken {
    fn from(r: RefreshRow) -> Self {
        RefreshToken {
            family_id: r.family_id,
            user_id: r.user_id,
            expires_at: r.expires_at,
            used: r.used_at.is_some(),
            family_revoked: r.revoked_at.is_some(),
        }
    }
}

row! {
    pub(super) struct TeamRow {
        id: TeamId,
        name: String,
        created_at: OffsetDateTime,
        default_board_id: BoardId,
    }
}

impl From<TeamRow> for Team {
    fn from(r: TeamRow) -> Self {
        Team {
            id: r.id,
            name: r.name,
            created_at: r.created_at,
            default_board_id: r.default_board_id,
        }
    }
}

pub(super) fn role(s: &str) -> Result<Role, StoreError> {
    Role::parse(s).ok_or_else(|| corrupt("role", s))
}

row! {
    pub(super) struct TeamRoleRow {
        #[sqlx(flatten)]
        team: TeamRow,
        role: String,
    }
}

impl TryFrom<TeamRoleRow> for (Team, Role) {
    type Error = StoreError;
    fn try_from(r: TeamRoleRow) -> Result<Self, StoreError> {
        Ok((r.team.into(), role(&r.role)?))
    }
}

row! {
    pub(super) struct MemberRow {
        team_id: TeamId,
        role: String,
        joined_at: OffsetDateTime,
        #[sqlx(flatten)]
        user: UserRow,
    }
}

impl TryFrom<MemberRow> for Member {
    type Error = StoreError;
    fn try_from(r: MemberRow) -> Result<Self, StoreError> {
        Ok(Member {
            team_id: r.team_id,
            role: role(&r.role)?,
            joined_at: r.joined_at,
            user: r.user.into(),
        })
    }
}

row! {
    pub(super) struct BoardRow {
        id: BoardId,
        team_id: TeamId,
        name: String,
        created_at: OffsetDateTime,
    }
}

impl From<BoardRow> for Board {
    fn from(r: BoardRow) -> Self {
        Board {
            id: r.id,
            team_id: r.team_id,
            name: r.name,
            created_at: r.created_at,
        }
    }
}

row! {
    pub(super) struct TaskRow {
        id: TaskId,
        team_id: TeamId,
        board_id: BoardId,
        title: String,
        description: String,
        status: String,
        priority: String,
        assignee_user_id: Option<UserId>,
        due_date: Option<time::Date>,
        position: f64,
        created_by: UserId,
        created_at: OffsetDateTime,
        updated_at: OffsetDateTime,
        version: i64,
        label_ids: String,
    }
}

/// `tasks.label_ids`: the ids in ascending order, comma-separated (hyphenated, lower case).
pub(super) fn label_ids_text(ids: &[LabelId]) -> String {
    let mut text = String::with_capacity(ids.len() * 37);
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&Uuid::from(*id).hyphenated().to_string());
    }
    text
}

pub(super) fn parse_label_ids(text: &str) -> Result<Vec<LabelId>, StoreError> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<Uuid>()
                .map(LabelId::from)
                .map_err(|_| corrupt("label_ids", text))
        })
        .collect()
}

impl TryFrom<TaskRow> for Task {
    type Error = StoreError;
    fn try_from(r: TaskRow) -> Result<Self, StoreError> {
        Ok(Task {
            status: TaskStatus::parse(&r.status).ok_or_else(|| corrupt("status", &r.status))?,
            priority: Priority::parse(&r.priority)
                .ok_or_else(|| corrupt("priority", &r.priority))?,
            id: r.id,
            team_id: r.team_id,
            board_id: r.board_id,
            title: r.title,
            description: r.description,
            assignee_user_id: r.assignee_user_id,
            due_date: r.due_date,
            position: r.position,
            created_by: r.created_by,
            created_at: r.created_at,
            updated_at: r.updated_at,
            version: r.version,
            label_ids: parse_label_ids(&r.label_ids)?,
        })
    }
}

row! {
    pub(super) struct ScoredTaskRow {
        #[sqlx(flatten)]
        pub(super) task: TaskRow,
        pub(super) score: f64,
    }
}

/// A statement that may touch many rows (an import's inserts, a prune, a delete that cascades):
/// the SQLite writer runs it where it may block (`tokio::task::block_in_place`) instead of on an
/// async worker. Statements bounded by a chunk size (`IN` lists, multi-row inserts) are not
/// heavy, even when a loop runs several. On sqlx's drivers it changes nothing: their statements
/// wait on a connection thread (SQLite) or on the network (PostgreSQL), never on a worker.
pub(crate) trait Heavy {
    fn heavy(self) -> Self;
}

impl<'q, DB: sqlx::Database, A> Heavy for sqlx::query::Query<'q, DB, A> {
    fn heavy(self) -> Self {
        self
    }
}

impl<'q, DB: sqlx::Database, O, A> Heavy for sqlx::query::QueryAs<'q, DB, O, A> {
    fn heavy(self) -> Self {
        self
    }
}

/// sqlx's query API, for `impl_tx!` on sqlx's drivers (the SQLite writer has its own).
pub(crate) mod sqlx_api {
    pub(crate) use super::bind_all;
    pub(crate) use sqlx::{QueryBuilder, query, query_as};
}

/// Binds a built query's arguments in order.
pub(crate) fn bind_all<'q, DB, O>(
    q: sqlx::query::QueryAs<'q, DB, O, <DB as sqlx::Database>::Arguments>,
    args: Vec<super::task_query::Arg>,
) -> sqlx::query::QueryAs<'q, DB, O, <DB as sqlx::Database>::Arguments>
where
    DB: sqlx::Database,
    Uuid: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i16: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    f64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    time::Date: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    StoredTime: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    super::task_query::bind_args!(q, args)
}

/// A timestamp a query sorts by: on SQLite written as fixed-width text (`…T17:25:55.000Z`) so that
/// text order is time order (sqlx's own encoding drops a zero fraction, and `…55Z` sorts after
/// `…55.1Z`); on PostgreSQL a plain `timestamptz`.
#[derive(Debug, Clone, Copy)]
pub(super) struct StoredTime(pub OffsetDateTime);

impl sqlx::Type<sqlx::Sqlite> for StoredTime {
    fn type_info() -> sqlx::sqlite::SqliteTypeInfo {
        <String as sqlx::Type<sqlx::Sqlite>>::type_info()
    }
}

impl sqlx::Encode<'_, sqlx::Sqlite> for StoredTime {
    fn encode_by_ref(
        &self,
        buf: &mut <sqlx::Sqlite as sqlx::Database>::ArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        sqlx::Encode::<sqlx::Sqlite>::encode(crate::domain::model::timestamp::format(&self.0), buf)
    }
}

impl sqlx::Type<sqlx::Postgres> for StoredTime {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <OffsetDateTime as sqlx::Type<sqlx::Postgres>>::type_info()
    }
}

impl sqlx::Encode<'_, sqlx::Postgres> for StoredTime {
    fn encode_by_ref(
        &self,
        buf: &mut <sqlx::Postgres as sqlx::Database>::ArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        sqlx::Encode::<sqlx::Postgres>::encode_by_ref(&self.0, buf)
    }
}

row! {
    pub(super) struct LabelRow {
        id: LabelId,
        team_id: TeamId,
        name: String,
        color: String,
        created_at: OffsetDateTime,
    }
}

impl From<LabelRow> for Label {
    fn from(r: LabelRow) -> Self {
        Label {
            id: r.id,
            team_id: r.team_id,
            name: r.name,
            color: r.color,
            created_at: r.created_at,
        }
    }
}

row! {
    pub(super) struct CommentRow {
        id: CommentId,
        task_id: TaskId,
        team_id: TeamId,
        author_user_id: UserId,
        body: String,
        created_at: OffsetDateTime,
        edited_at: Option<OffsetDateTime>,
    }
}

impl From<CommentRow> for Comment {
    fn from(r: CommentRow) -> Self {
        Comment {
            id: r.id,
            task_id: r.task_id,
            team_id: r.team_id,
            author_user_id: r.author_user_id,
            body: r.body,
            created_at: r.created_at,
            edited_at: r.edited_at,
        }
    }
}

row! {
    pub(super) struct ActivityRow {
        seq: i64,
        kind: String,
        board_id: Option<BoardId>,
        prev_board_id: Option<BoardId>,
        task_id: Option<TaskId>,
        user_id: Option<UserId>,
        payload: String,
    }
}

impl ActivityRow {
    pub(super) fn into_entry(self, team_id: TeamId) -> Result<LogEntry, StoreError> {
        let kind =
            ActivityKind::parse(&self.kind).ok_or_else(|| corrupt("activity kind", &self.kind))?;
        Ok(LogEntry {
            seq: self.seq,
            route: Route {
                kind,
                team_id,
                board_id: self.board_id,
                prev_board_id: self.prev_board_id,
                task_id: self.task_id,
                user_id: self.user_id,
            },
            json: Arc::from(self.payload),
        })
    }
}

row! {
    pub(super) struct NotificationRow {
        id: NotificationId,
        seq: i64,
        team_id: TeamId,
        task_id: TaskId,
        board_id: Option<BoardId>,
        task_title: String,
        activity_type: String,
        reasons: String,
        actor_user_id: UserId,
        actor_display_name: String,
        comment_id: Option<CommentId>,
        excerpt: Option<String>,
        created_at: OffsetDateTime,
        read_at: Option<OffsetDateTime>,
    }
}

/// The columns `NotificationRow` reads, for every query of notifications.
pub(super) const NOTIFICATION_COLUMNS: &str = "n.id, n.seq, n.team_id, n.task_id, n.board_id, \
     n.task_title, n.activity_type, n.reasons, n.actor_user_id, n.actor_display_name, \
     n.comment_id, n.excerpt, n.created_at, n.read_at";

/// Reasons are stored as their names joined by commas.
pub(super) fn reasons_text(reasons: &[Reason]) -> String {
    reasons
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

impl NotificationRow {
    pub(super) fn seq(&self) -> i64 {
        self.seq
    }
}

impl TryFrom<NotificationRow> for Notification {
    type Error = StoreError;
    fn try_from(r: NotificationRow) -> Result<Self, StoreError> {
        let reasons = r
            .reasons
            .split(',')
            .map(|s| Reason::parse(s).ok_or_else(|| corrupt("reason", s)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Notification {
            id: r.id,
            seq: r.seq,
            team_id: r.team_id,
            task_id: r.task_id,
            board_id: r.board_id,
            task_title: r.task_title,
            activity_type: r.activity_type,
            reasons,
            actor_user_id: r.actor_user_id,
            actor_display_name: r.actor_display_name,
            comment_id: r.comment_id,
            excerpt: r.excerpt,
            created_at: r.created_at,
            read_at: r.read_at,
        })
    }
}

row! {
    pub(super) struct ReadRow {
        seq: i64,
        ids: Option<String>,
        upto: Option<i64>,
        unread_count: i64,
    }
}

impl ReadRow {
    pub(super) fn seq(&self) -> i64 {
        self.seq
    }
}

impl TryFrom<ReadRow> for ReadMark {
    type Error = StoreError;
    fn try_from(r: ReadRow) -> Result<Self, StoreError> {
        let ids = r.ids.map(|t| serde_json::from_str(&t)).transpose()?;
        Ok(ReadMark {
            seq: r.seq,
            ids,
            upto: r.upto,
            unread_count: r.unread_count,
        })
    }
}

/// Serializes the drafts at their seqs, once: the same text is stored and later sent.
pub(super) fn entries(
    team: TeamId,
    first_seq: i64,
    drafts: Vec<ActivityDraft>,
) -> Result<Vec<(LogEntry, OffsetDateTime)>, StoreError> {
    drafts
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let ts = d.ts;
            let (activity, route) = d.into_activity(team, first_seq + i as i64);
            let json = serde_json::to_string(&activity)?;
            Ok((
                LogEntry {
                    seq: activity.seq,
                    route,
                    json: Arc::from(json),
                },
                ts,
            ))
        })
        .collect()
}

/// Activities per multi-row INSERT (8 parameters each besides the team and the last seq).
pub(super) const ACTIVITY_ROWS_PER_INSERT: usize = 200;

/// A task's row and its follower's (if `$(base+17)` is not null), for one PostgreSQL statement:
/// the task's 17 values are `$(base+1)` to `$(base+17)` in `bind_task!`'s order. The follower
/// row's foreign key is checked at the statement's end, when the task is there.
fn pg_task_parts(base: usize) -> (String, String) {
    let p = |i: usize| format!("${}", base + i);
    let task = format!(
        "INSERT INTO tasks (id, team_id, board_id, title, description, status, priority, \
         assignee_user_id, due_date, position, created_by, created_at, updated_at, version, \
         label_ids, priority_rank) VALUES ({})",
        placeholders_from(base + 1, 16)
    );
    let follow = format!(
        "INSERT INTO task_followers (task_id, user_id, team_id, following) \
         SELECT {id}, {f}, {team}, TRUE WHERE {f} IS NOT NULL",
        id = p(1),
        team = p(2),
        f = p(17),
    );
    (task, follow)
}

/// A task and its follower in one PostgreSQL statement (`pg_task_parts`, from `$1`).
pub(super) fn pg_task_insert() -> String {
    let (task, follow) = pg_task_parts(0);
    format!("WITH task AS ({task}) {follow}")
}

/// Marks a keyed request's claim applied (`store::ApplyingKey`): user `$(base+1)`, key
/// `$(base+2)`, claimed at `$(base+3)` (`bind_key_mark!`).
pub(super) fn key_mark(base: usize) -> String {
    format!(
        "UPDATE idempotency_keys SET applied = TRUE \
         WHERE user_id = ${} AND key = ${} AND created_at = ${} AND status IS NULL",
        base + 1,
        base + 2,
        base + 3
    )
}

/// Binds a key mark's values in the order of `key_mark`.
macro_rules! bind_key_mark {
    ($query:expr, $k:expr) => {{
        let k = $k;
        $query
            .bind(k.user)
            .bind(&k.key)
            .bind($crate::store::sql::StoredTime(k.claimed_at))
    }};
}
pub(super) use bind_key_mark;

/// A task's insert held back to go out with the transaction's next statement, so a creation
/// costs PostgreSQL one round trip fewer (see `PgTx`).
#[derive(Debug)]
pub(super) struct HeldTask {
    pub task: Task,
    pub follower: Option<UserId>,
}

/// Writes that ride on a later statement instead of costing a round trip of their own: only
/// `PgTx` has any (every statement it sends sends a held task first, and its `append` carries
/// the held task and the keyed request's mark inside its own statement); the SQLite
/// transactions run their statements in place.
#[async_trait::async_trait]
pub(super) trait HeldWrites {
    /// Holds the insert of `t` (true), or leaves it to the caller to write now (false).
    fn hold_task(&mut self, _t: &Task, _follower: Option<UserId>) -> bool {
        false
    }

    /// The held task, if any, for the caller to send in its statement.
    fn take_held_task(&mut self) -> Option<HeldTask> {
        None
    }

    /// Sends the held task, if any, on its own (before a `COMMIT`).
    async fn send_held_task(&mut self) -> super::Result<()> {
        Ok(())
    }

    /// The keyed request's mark (`store::ApplyingKey`), once per write transaction, for the
    /// caller to send in its statement.
    fn take_key_mark(&mut self) -> Option<super::ApplyingKey> {
        None
    }

    /// Whether the mark went out in an earlier statement.
    fn key_marked(&self) -> bool {
        false
    }
}

/// Binds a task's values in the order of `pg_task_insert` (and of SQLite's insert).
macro_rules! bind_task {
    ($query:expr, $t:expr, $follower:expr) => {{
        let t = $t;
        $query
            .bind(t.id)
            .bind(t.team_id)
            .bind(t.board_id)
            .bind(&t.title)
            .bind(&t.description)
            .bind(t.status.as_str())
            .bind(t.priority.as_str())
            .bind(t.assignee_user_id)
            .bind(t.due_date)
            .bind(t.position)
            .bind(t.created_by)
            .bind(t.created_at)
            .bind($crate::store::sql::StoredTime(t.updated_at))
            .bind(t.version)
            .bind($crate::store::sql::label_ids_text(&t.label_ids))
            .bind(t.priority.rank())
            .bind($follower)
    }};
}
pub(super) use bind_task;

/// An INSERT of `rows` activities of team `$1` with the upsert of the team's unpublished mark up
/// to `$2` and (`set_seq`) the team's last seq set to `$2`: one call to the database. On
/// PostgreSQL the statement may carry more, its values after the activities' in this order: a
/// held task's insert (`with_task`, `pg_task_parts`: `PgTx::hold_task`) and a keyed request's
/// mark (`with_mark`, `key_mark`).
pub(super) fn activities_insert(
    dialect: super::task_query::Dialect,
    rows: usize,
    set_seq: bool,
    with_task: bool,
    with_mark: bool,
) -> String {
    let values = (0..rows)
        .map(|r| format!("($1, {})", placeholders_from(3 + 8 * r, 8)))
        .collect::<Vec<_>>()
        .join(", ");
    let insert = format!(
        "INSERT INTO activities (team_id, seq, kind, board_id, prev_board_id, task_id, user_id, ts, payload) \
         VALUES {values}"
    );
    let upsert = "INSERT INTO team_unpublished (team_id, upto_seq) VALUES ($1, $2) \
                  ON CONFLICT (team_id) DO UPDATE SET upto_seq = excluded.upto_seq";
    let seq = "UPDATE teams SET last_seq = $2 WHERE id = $1";
    match dialect {
        super::task_query::Dialect::Sqlite => {
            debug_assert!(!with_task && !with_mark, "SQLite holds nothing back");
            if set_seq {
                format!("{seq}; {insert}; {upsert}")
            } else {
                format!("{insert}; {upsert}")
            }
        }
        super::task_query::Dialect::Postgres => {
            let mut ctes = Vec::with_capacity(5);
            let mut next = 2 + 8 * rows;
            if with_task {
                let (task, follow) = pg_task_parts(next);
                ctes.push(format!("task AS ({task})"));
                ctes.push(format!("followed AS ({follow})"));
                next += 17;
            }
            if with_mark {
                ctes.push(format!("marked AS ({})", key_mark(next)));
            }
            if set_seq {
                ctes.push(format!("seq AS ({seq})"));
            }
            ctes.push(format!("logged AS ({insert})"));
            format!("WITH {} {upsert}", ctes.join(", "))
        }
    }
}

/// The columns of a `TaskRow`, for `concat!` in every query that reads tasks.
macro_rules! task_columns {
    () => {
        "id, team_id, board_id, title, description, status, priority, assignee_user_id, due_date, \
         position, created_by, created_at, updated_at, version, label_ids"
    };
}
pub(super) use task_columns;

/// Implements `Tx` for a struct `$tx { tx: group_commit::WriteTx<$db> }` with an `exec()`.
macro_rules! impl_tx {
    ($tx:ident, $dialect:expr, $lock_row:literal, $share_row:literal, $($api:ident)::+) => {
        // An unnamed const gives the impl its own imports.
        const _: () = {
        use time::OffsetDateTime;
        use $crate::domain::activity::{ActivityDraft, LogEntry};
        use $crate::domain::*;
        use $crate::store::sql::*;
        use $crate::store::{LogBounds, RefreshToken, StoreError};
        // The query API of the driver: sqlx's, or the SQLite writer's.
        use $crate::store::$($api)::+ as api;

        impl $tx {
            /// What a transaction sends before its `COMMIT`: a held task (PostgreSQL), and in a
            /// write transaction of a keyed request, unless its `append` carried it, the mark that
            /// the request's key is applied (`store::ApplyingKey`): the mark commits with the
            /// change or not at all.
            async fn before_commit(&mut self) -> $crate::store::Result<()> {
                self.send_held_task().await?;
                if !self.writes() || self.key_marked() {
                    return Ok(());
                }
                if let Some(k) = $crate::store::applying_key() {
                    bind_key_mark!(api::query(sqlx::AssertSqlSafe(key_mark(0))), &k)
                        .execute(self.exec())
                        .await?;
                }
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::Tx for $tx {
            async fn commit(mut self: Box<Self>) -> $crate::store::Result<()> {
                self.before_commit().await?;
                self.tx.commit(None).await
            }

            async fn commit_then(
                mut self: Box<Self>,
                then: $crate::store::AfterCommit,
            ) -> $crate::store::Result<()> {
                self.before_commit().await?;
                self.tx.commit(Some(then)).await
            }

            async fn insert_user(&mut self, u: &User, password_hash: &str) -> $crate::store::Result<()> {
                api::query(
                    "INSERT INTO users (id, email, password_hash, display_name, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(u.id)
                .bind(&u.email)
                .bind(password_hash)
                .bind(&u.display_name)
                .bind(u.created_at)
                .execute(self.exec())
                .await
                .map_err(map_dup)?;
                Ok(())
            }

            async fn user(&mut self, id: UserId) -> $crate::store::Result<Option<User>> {
                let row: Option<UserRow> = api::query_as(
                    "SELECT id, email, display_name, created_at FROM users WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(self.exec())
                .await?;
                Ok(row.map(Into::into))
            }

            async fn user_by_email(&mut self, email: &str) -> $crate::store::Result<Option<(User, String)>> {
                let row: Option<UserWithHashRow> = api::query_as(
                    "SELECT id, email, display_name, created_at, password_hash FROM users WHERE email = $1",
                )
                .bind(email)
                .fetch_optional(self.exec())
                .await?;
                Ok(row.map(Into::into))
            }

            async fn set_display_name(&mut self, id: UserId, name: &str) -> $crate::store::Result<Option<User>> {
                let row: Option<UserRow> = api::query_as(
                    "UPDATE users SET display_name = $2 WHERE id = $1 \
                     RETURNING id, email, display_name, created_at",
                )
                .bind(id)
                .bind(name)
                .fetch_optional(self.exec())
                .await?;
                Ok(row.map(Into::into))
            }

            async fn insert_refresh_family(
                &mut self,
                family: SessionId,
                user: UserId,
                now: OffsetDateTime,
            ) -> $crate::store::Result<()> {
                api::query("INSERT INTO refresh_families (id, user_id, created_at) VALUES ($1, $2, $3)")
                    .bind(family)
                    .bind(user)
                    .bind(now)
                    .execute(self.exec())
                    .await?;
                Ok(())
            }

            async fn insert_refresh_token(
                &mut self,
                hash: &[u8],
                family: SessionId,
                expires_at: OffsetDateTime,
            ) -> $crate::store::Result<()> {
                api::query("INSERT INTO refresh_tokens (token_hash, family_id, expires_at) VALUES ($1, $2, $3)")
                    .bind(hash)
                    .bind(family)
                    .bind(expires_at)
                    .execute(self.exec())
                    .await?;
                Ok(())
            }

            async fn refresh_token(&mut self, hash: &[u8]) -> $crate::store::Result<Option<RefreshToken>> {
                let row: Option<RefreshRow> = api::query_as(
                    "SELECT t.family_id, f.user_id, t.expires_at, t.used_at, f.revoked_at \
                     FROM refresh_tokens t JOIN refresh_families f ON f.id = t.family_id \
                     WHERE t.token_hash = $1",
                )
                .bind(hash)
                .fetch_optional(self.exec())
                .await?;
                Ok(row.map(Into::into))
            }

            async fn use_refresh_token(&mut self, hash: &[u8], now: OffsetDateTime) -> $crate::store::Result<bool> {
                let done = api::query(
                    "UPDATE refresh_tokens SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL",
                )
                .bind(hash)
                .bind(now)
                .execute(self.exec())
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn revoke_refresh_family(&mut self, family: SessionId, now: OffsetDateTime) -> $crate::store::Result<()> {
                api::query("UPDATE refresh_families SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                    .bind(family)
                    .bind(now)
                    .execute(self.exec())
                    .await?;
                Ok(())
            }

            async fn purge_sessions(
                &mut self,
                now: OffsetDateTime,
                revoked_before: OffsetDateTime,
            ) -> $crate::store::Result<u64> {
                // Families all of whose tokens have expired, found through the tokens that have
                // (indexed by expiry); their tokens go with them (ON DELETE CASCADE).
                let families = api::query(
                    "DELETE FROM refresh_families WHERE id IN \
                       (SELECT t.family_id FROM refresh_tokens t WHERE t.expires_at <= $1) \
                     AND NOT EXISTS (SELECT 1 FROM refresh_tokens k \
                                     WHERE k.family_id = refresh_families.id AND k.expires_at > $1)",
                )
                .bind(now)
                .heavy()
                .execute(self.exec())
                .await?;
                // Expired tokens of families that still have a valid one (rotated-away tokens).
                let tokens = api::query("DELETE FROM refresh_tokens WHERE expires_at <= $1")
                    .bind(now)
                    .heavy()
                    .execute(self.exec())
                    .await?;
                let revoked = api::query(
                    "DELETE FROM refresh_families WHERE revoked_at IS NOT NULL AND revoked_at < $1",
                )
                .bind(revoked_before)
                .heavy()
                .execute(self.exec())
                .await?;
                Ok(families.rows_affected() + tokens.rows_affected() + revoked.rows_affected())
            }

            async fn insert_team(&mut self, t: &Team) -> $crate::store::Result<()> {
                api::query(
                    "INSERT INTO teams (id, name, created_at, default_board_id, last_seq) VALUES ($1, $2, $3, $4, 0)",
                )
                .bind(t.id)
                .bind(&t.name)
                .bind(t.created_at)
                .bind(t.default_board_id)
                .execute(self.exec())
                .await?;
                api::query("INSERT INTO team_outbox (team_id, published_seq) VALUES ($1, 0)")
                    .bind(t.id)
                    .execute(self.exec())
                    .await?;
                Ok(())
            }

            async fn team(&mut self, id: TeamId) -> $crate::store::Result<Option<Team>> {
                let row: Option<TeamRow> =
                    api::query_as("SELECT id, name, created_at, default_board_id FROM teams WHERE id = $1")
                        .bind(id)
                        .fetch_optional(self.exec())
                        .await?;
                Ok(row.map(Into::into))
            }

            async fn set_team_name(&mut self, id: TeamId, name: &str) -> $crate::store::Result<Option<Team>> {
                let row: Option<TeamRow> = api::query_as(
                    "UPDATE teams SET name = $2 WHERE id = $1 RETURNING id, name, created_at, default_board_id",
                )
                .bind(id)
                .bind(name)
                .fetch_optional(self.exec())
                .await?;
                Ok(row.map(Into::into))
            }

            async fn teams_of(
                &mut self,
                user: UserId,
                page: $crate::store::PageAfter<TeamId>,
            ) -> $crate::store::Result<Vec<(Team, Role)>> {
                let rows: Vec<TeamRoleRow> = api::query_as(
                    "SELECT t.id, t.name, t.created_at, t.default_board_id, m.role \
                     FROM memberships m JOIN teams t ON t.id = m.team_id \
                     WHERE m.user_id = $1 AND m.team_id > $2 ORDER BY m.team_id LIMIT $3",
                )
                .bind(user)
                .bind(after(page.after))
                .bind(page.limit)
                .fetch_all(self.exec())
                .await?;
                rows.into_iter().map(TryInto::try_into).collect()
            }

            async fn role(&mut self, team: TeamId, user: UserId) -> $crate::store::Result<Option<Role>> {
                let r: Option<(String,)> =
                    api::query_as("SELECT role FROM memberships WHERE team_id = $1 AND user_id = $2")
                        .bind(team)
                        .bind(user)
                        .fetch_optional(self.exec())
                        .await?;
                r.map(|(s,)| role(&s)).transpose()
            }

            async fn member(&mut self, team: TeamId, user: UserId) -> $crate::store::Result<Option<Member>> {
                let row: Option<MemberRow> = api::query_as(
                    "SELECT m.team_id, m.role, m.joined_at, u.id, u.email, u.display_name, u.created_at \
                     FROM memberships m JOIN users u ON u.id = m.user_id \
                     WHERE m.team_id = $1 AND m.user_id = $2",
                )
                .bind(team)
                .bind(user)
                .fetch_optional(self.exec())
                .await?;
                row.map(TryInto::try_into).transpose()
            }

            async fn members(
                &mut self,
                team: TeamId,
                page: $crate::store::PageAfter<UserId>,
            ) -> $crate::store::Result<Vec<Member>> {
                let rows: Vec<MemberRow> = api::query_as(
                    "SELECT m.team_id, m.role, m.joined_at, u.id, u.email, u.display_name, u.created_at \
                     FROM memberships m JOIN users u ON u.id = m.user_id \
                     WHERE m.team_id = $1 AND m.user_id > $2 ORDER BY m.user_id LIMIT $3",
                )
                .bind(team)
                .bind(after(page.after))
                .bind(page.limit)
                .fetch_all(self.exec())
                .await?;
                rows.into_iter().map(TryInto::try_into).collect()
            }

            async fn insert_member(
                &mut self,
                team: TeamId,
                user: UserId,
                r: Role,
                at: OffsetDateTime,
            ) -> $crate::store::Result<()> {
                self.tx.slots_changed();
                api::query("INSERT INTO memberships (team_id, user_id, role, joined_at) VALUES ($1, $2, $3, $4)")
                    .bind(team)
                    .bind(user)
                    .bind(r.as_str())
                    .bind(at)
                    .execute(self.exec())
                    .await
                    .map_err(map_dup)?;
                Ok(())
            }

            async fn set_role(&mut self, team: TeamId, user: UserId, from: Role, to: Role) -> $crate::store::Result<bool> {
                self.tx.slots_changed();
                let done = api::query(
                    "UPDATE memberships SET role = $4 WHERE team_id = $1 AND user_id = $2 AND role = $3",
                )
                .bind(team)
                .bind(user)
                .bind(from.as_str())
                .bind(to.as_str())
                .execute(self.exec())
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn delete_member(&mut self, team: TeamId, user: UserId) -> $crate::store::Result<bool> {
                self.tx.slots_changed();
                let done = api::query("DELETE FROM memberships WHERE team_id = $1 AND user_id = $2")
                    .bind(team)
                    .bind(user)
                    .execute(self.exec())
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn insert_board(&mut self, b: &Board) -> $crate::store::Result<()> {
                self.tx.slots_changed();
                api::query("INSERT INTO boards (id, team_id, name, created_at) VALUES ($1, $2, $3, $4)")
                    .bind(b.id)
                    .bind(b.team_id)
                    .bind(&b.name)
                    .bind(b.created_at)
                    .execute(self.exec())
                    .await?;
                Ok(())
            }

            async fn board(&mut self, id: BoardId) -> $crate::store::Result<Option<Board>> {
                let row: Option<BoardRow> =
                    api::query_as("SELECT id, team_id, name, created_at FROM boards WHERE id = $1")
                        .bind(id)
                        .fetch_optional(self.exec())
                        .await?;
                Ok(row.map(Into::into))
            }

            async fn boards(
                &mut self,
                team: TeamId,
                page: $crate::store::PageAfter<BoardId>,
            ) -> $crate::store::Result<Vec<Board>> {
                let rows: Vec<BoardRow> = api::query_as(
                    "SELECT id, team_id, name, created_at FROM boards \
                     WHERE team_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                )
                .bind(team)
                .bind(after(page.after))
                .bind(page.limit)
                .fetch_all(self.exec())
                .await?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn set_board_name(&mut self, id: BoardId, name: &str) -> $crate::store::Result<Option<Board>> {
                let row: Option<BoardRow> = api::query_as(
                    "UPDATE boards SET name = $2 WHERE id = $1 RETURNING id, team_id, name, created_at",
                )
                .bind(id)
                .bind(name)
                .fetch_optional(self.exec())
                .await?;
                Ok(row.map(Into::into))
            }

            async fn board_has_tasks(&mut self, id: BoardId) -> $crate::store::Result<bool> {
                let row: Option<(TaskId,)> = api::query_as("SELECT id FROM tasks WHERE board_id = $1 LIMIT 1")
                    .bind(id)
                    .fetch_optional(self.exec())
                    .await?;
                Ok(row.is_some())
            }

            async fn delete_board(&mut self, id: BoardId) -> $crate::store::Result<bool> {
                self.tx.slots_changed();
                let done = api::query("DELETE FROM boards WHERE id = $1")
                    .bind(id)
                    .execute(self.exec())
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn insert_task(&mut self, t: &Task, follower: Option<UserId>) -> $crate::store::Result<()> {
                use $crate::store::task_query::Dialect;
                // PostgreSQL: a task without labels is held and goes out with the transaction's
                // next statement (usually inside its activities': `PgTx::hold_task`).
                // Written (or held: should it fail, so does the member, which the batch then
                // forgets), the batch's creations after it know the column's end.
                if t.label_ids.is_empty() && self.hold_task(t, follower) {
                    self.tx.created_task(t);
                    return Ok(());
                }
                // SQLite: the row with its search key (one above the highest); its words go to
                // the search index under that key (`index_words`). The follower's row after it:
                // on PostgreSQL in the same statement (`pg_task_insert`), on SQLite in the same
                // call.
                if $dialect == Dialect::Sqlite {
                    let sql = "INSERT INTO tasks (id, team_id, board_id, title, description, status, priority, \
                         assignee_user_id, due_date, position, created_by, created_at, updated_at, version, \
                         label_ids, priority_rank, search_key) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
                         (SELECT COALESCE(MAX(search_key), 0) + 1 FROM tasks)); \
                         INSERT INTO task_followers (task_id, user_id, team_id, following) \
                         SELECT $1, $17, $2, TRUE WHERE $17 IS NOT NULL";
                    bind_task!(api::query(sql), t, follower).execute(self.exec()).await?;
                } else {
                    let sql = sqlx::AssertSqlSafe(pg_task_insert());
                    bind_task!(api::query(sql), t, follower).execute(self.exec()).await?;
                }
                if $dialect == Dialect::Sqlite {
                    self.index_words(t, true).await?;
                }
                if !t.label_ids.is_empty() {
                    self.set_task_labels(t.id, &t.label_ids).await?;
                }
                self.tx.created_task(t);
                Ok(())
            }

            async fn imported_tasks(&mut self, team: TeamId, keys: &[&str]) -> $crate::store::Result<Vec<(String, TaskId)>> {
                let mut out = Vec::new();
                for chunk in keys.chunks($crate::store::sql::IN_LIST_CHUNK) {
                    let sql = format!(
                        "SELECT key, task_id FROM task_import_keys WHERE team_id = $1 AND key IN ({})",
                        $crate::store::sql::placeholders_from(2, chunk.len())
                    );
                    // Planned for its values each time: a plan cached while the table was small
                    // (a fresh import) scans the whole table for every batch after it grew.
                    let mut query = api::query_as(sqlx::AssertSqlSafe(sql))
                        .persistent(false)
                        .bind(team);
                    for k in chunk {
                        query = query.bind(*k);
                    }
                    let rows: Vec<(String, TaskId)> = query.fetch_all(self.exec()).await?;
                    out.extend(rows);
                }
                Ok(out)
            }

            async fn insert_imported(
                &mut self,
                tasks: &[Task],
                keys: &[(String, TaskId)],
                comments: &[Comment],
            ) -> $crate::store::Result<()> {
                use $crate::store::sql::BULK_ROWS;
                self.tx.slots_changed();
                let team = match tasks.first() {
                    Some(t) => t.team_id,
                    None => return Ok(()),
                };
                let sqlite = $dialect == $crate::store::task_query::Dialect::Sqlite;
                // SQLite's word index is keyed by a number the writer hands out (see insert_task);
                // the one writer holds the database, so the largest key stays the largest.
                let mut next_key = if sqlite {
                    let (max,): (i64,) =
                        api::query_as("SELECT COALESCE(MAX(search_key), 0) FROM tasks")
                            .fetch_one(self.exec())
                            .await?;
                    max + 1
                } else {
                    0
                };
                for chunk in tasks.chunks(BULK_ROWS) {
                    let mut insert = api::QueryBuilder::new(
                        "INSERT INTO tasks (id, team_id, board_id, title, description, status, priority, \
                         assignee_user_id, due_date, position, created_by, created_at, updated_at, version, \
                         label_ids, priority_rank",
                    );
                    insert.push(if sqlite { ", search_key) " } else { ") " });
                    let first_key = next_key;
                    insert.push_values(chunk.iter().enumerate(), |mut row, (i, t)| {
                        row.push_bind(t.id)
                            .push_bind(t.team_id)
                            .push_bind(t.board_id)
                            .push_bind(&t.title)
                            .push_bind(&t.description)
                            .push_bind(t.status.as_str())
                            .push_bind(t.priority.as_str())
                            .push_bind(t.assignee_user_id)
                            .push_bind(t.due_date)
                            .push_bind(t.position)
                            .push_bind(t.created_by)
                            .push_bind(t.created_at)
                            .push_bind(StoredTime(t.updated_at))
                            .push_bind(t.version)
                            .push_bind(label_ids_text(&t.label_ids))
                            .push_bind(t.priority.rank());
                        if sqlite {
                            row.push_bind(first_key + i as i64);
                        }
                    });
                    insert.build().persistent(false).heavy().execute(self.exec()).await?;
                    if sqlite {
                        use $crate::store::task_query::indexed_text;
                        // OR REPLACE, as a changed task's words are written (`WriterTx`): a
                        // contentless table would not refuse a duplicate rowid.
                        let mut words = api::QueryBuilder::new(
                            "INSERT OR REPLACE INTO task_words (rowid, title, description) ",
                        );
                        words.push_values(chunk.iter().enumerate(), |mut row, (i, t)| {
                            row.push_bind(first_key + i as i64)
                                .push_bind(indexed_text(t.team_id, &t.title))
                                .push_bind(indexed_text(t.team_id, &t.description));
                        });
                        words.build().persistent(false).heavy().execute(self.exec()).await?;
                        next_key += chunk.len() as i64;
                    }
                }
                let labels: Vec<(LabelId, TaskId)> = tasks
                    .iter()
                    .flat_map(|t| t.label_ids.iter().map(move |l| (*l, t.id)))
                    .collect();
                for chunk in labels.chunks(BULK_ROWS) {
                    let mut insert = api::QueryBuilder::new("INSERT INTO task_labels (label_id, task_id) ");
                    insert.push_values(chunk, |mut row, (label, task)| {
                        row.push_bind(*label).push_bind(*task);
                    });
                    insert.build().persistent(false).heavy().execute(self.exec()).await?;
                }
                for chunk in keys.chunks(BULK_ROWS) {
                    let mut insert = api::QueryBuilder::new("INSERT INTO task_import_keys (team_id, key, task_id) ");
                    insert.push_values(chunk, |mut row, (key, task)| {
                        row.push_bind(team).push_bind(key.as_str()).push_bind(*task);
                    });
                    insert.build().persistent(false).heavy().execute(self.exec()).await.map_err(map_dup)?;
                }
                for chunk in comments.chunks(BULK_ROWS) {
                    let mut insert = api::QueryBuilder::new(
                        "INSERT INTO comments (id, task_id, team_id, author_user_id, body, created_at, edited_at) ",
                    );
                    insert.push_values(chunk, |mut row, c| {
                        row.push_bind(c.id)
                            .push_bind(c.task_id)
                            .push_bind(c.team_id)
                            .push_bind(c.author_user_id)
                            .push_bind(&c.body)
                            .push_bind(c.created_at)
                            .push_bind(c.edited_at);
                    });
                    insert.build().persistent(false).heavy().execute(self.exec()).await?;
                }
                Ok(())
            }

            async fn task(&mut self, id: TaskId) -> $crate::store::Result<Option<Task>> {
                let row: Option<TaskRow> =
                    api::query_as(concat!("SELECT ", task_columns!(), " FROM tasks WHERE id = $1"))
                .bind(id)
                .fetch_optional(self.exec())
                .await?;
                row.map(TryInto::try_into).transpose()
            }

            async fn tasks(
                &mut self,
                team: TeamId,
                f: &$crate::domain::search::TaskFilter,
                sort: $crate::domain::search::TaskSort,
                after: Option<$crate::domain::search::TaskCursor>,
                limit: i64,
            ) -> $crate::store::Result<Vec<Task>> {
                use $crate::store::task_query;
                let mut tasks: Vec<Task> = Vec::new();
                let req = task_query::TaskPage { team, filter: f, sort, after: after.as_ref() };
                for part in task_query::parts(sort, after.as_ref()) {
                    let left = limit - tasks.len() as i64;
                    if left <= 0 {
                        break;
                    }
                    // A bounded walk first where the planner would guess (see `Access`); a walk
                    // that did not fill the page says nothing, and the matches are read instead.
                    let accesses = task_query::accesses($dialect, f, sort);
                    for (i, access) in accesses.iter().enumerate() {
                        let built =
                            task_query::page($dialect, task_columns!(), req, *part, *access, left);
                        // Not kept prepared: the text varies with the filters, and a plan made
                        // for any value cannot tell a rare word or label from a frequent one
                        // (PostgreSQL's generic plans after five runs sorted every match).
                        let rows: Vec<TaskRow> = api::bind_all(api::query_as(sqlx::AssertSqlSafe(built.sql)), built.args)
                            .persistent(false)
                            .fetch_all(self.exec())
                            .await?;
                        let last = i + 1 == accesses.len();
                        if last || rows.len() as i64 == left {
                            for row in rows {
                                tasks.push(row.try_into()?);
                            }
                            break;
                        }
                    }
                }
                Ok(tasks)
            }

            async fn search_tasks(
                &mut self,
                team: TeamId,
                words: &[String],
                limit: i64,
            ) -> $crate::store::Result<Vec<(Task, f64)>> {
                use $crate::store::task_query;
                let columns = task_query::qualified("tasks", task_columns!());
                let built = task_query::search($dialect, &columns, team, words, limit);
                // Planned for its words each time (see `tasks`): a generic plan took the word
                // index for a frequent word and sorted 31,100 matches (395 ms against 3).
                let rows: Vec<ScoredTaskRow> = api::bind_all(api::query_as(sqlx::AssertSqlSafe(built.sql)), built.args)
                    .persistent(false)
                    .fetch_all(self.exec())
                    .await?;
                rows.into_iter()
                    .map(|r| Ok((r.task.try_into()?, r.score)))
                    .collect()
            }

            async fn update_task(&mut self, t: &Task, words_changed: bool) -> $crate::store::Result<Vec<LabelId>> {
                self.tx.slots_changed();
                // The labels are not written here (`set_task_labels` is): a label deleted since
                // `t` was read must not come back with it. The stored set is returned instead.
                let stored: Option<(String,)> = api::query_as(
                    "UPDATE tasks SET board_id = $2, title = $3, description = $4, status = $5, priority = $6, \
                     assignee_user_id = $7, due_date = $8, position = $9, updated_at = $10, version = $11, \
                     priority_rank = $13 \
                     WHERE id = $1 AND version = $12 RETURNING label_ids",
                )
                .bind(t.id)
                .bind(t.board_id)
                .bind(&t.title)
                .bind(&t.description)
                .bind(t.status.as_str())
                .bind(t.priority.as_str())
                .bind(t.assignee_user_id)
                .bind(t.due_date)
                .bind(t.position)
                .bind(StoredTime(t.updated_at))
                .bind(t.version)
                .bind(t.version - 1)
                .bind(t.priority.rank())
                .fetch_optional(self.exec())
                .await?;
                let Some((labels,)) = stored else {
                    return Err(StoreError::Stale);
                };
                if words_changed && $dialect == $crate::store::task_query::Dialect::Sqlite {
                    self.index_words(t, false).await?;
                }
                parse_label_ids(&labels)
            }

            async fn set_task_labels(&mut self, task: TaskId, labels: &[LabelId]) -> $crate::store::Result<()> {
                api::query("UPDATE tasks SET label_ids = $2 WHERE id = $1")
                    .bind(task)
                    .bind(label_ids_text(labels))
                    .execute(self.exec())
                    .await?;
                api::query("DELETE FROM task_labels WHERE task_id = $1")
                    .bind(task)
                    .execute(self.exec())
                    .await?;
                if labels.is_empty() {
                    return Ok(());
                }
                let mut insert = api::QueryBuilder::new("INSERT INTO task_labels (label_id, task_id) ");
                insert.push_values(labels, |mut row, label| {
                    row.push_bind(*label).push_bind(task);
                });
                insert.build().execute(self.exec()).await?;
                Ok(())
            }

            async fn insert_label(&mut self, l: &Label) -> $crate::store::Result<()> {
                api::query(
                    "INSERT INTO labels (id, team_id, name, name_key, color, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(l.id)
                .bind(l.team_id)
                .bind(&l.name)
                .bind($crate::domain::rules::label_name_key(&l.name))
                .bind(&l.color)
                .bind(l.created_at)
                .execute(self.exec())
                .await
                .map_err(map_dup)?;
                Ok(())
            }

            async fn label(&mut self, id: LabelId) -> $crate::store::Result<Option<Label>> {
                let row: Option<LabelRow> =
                    api::query_as("SELECT id, team_id, name, color, created_at FROM labels WHERE id = $1")
                        .bind(id)
                        .fetch_optional(self.exec())
                        .await?;
                Ok(row.map(Into::into))
            }

            async fn labels(
                &mut self,
                team: TeamId,
                page: $crate::store::PageAfter<LabelId>,
            ) -> $crate::store::Result<Vec<Label>> {
                let rows: Vec<LabelRow> = api::query_as(
                    "SELECT id, team_id, name, color, created_at FROM labels \
                     WHERE team_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                )
                .bind(team)
                .bind(after(page.after))
                .bind(page.limit)
                .fetch_all(self.exec())
                .await?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn count_labels(&mut self, team: TeamId) -> $crate::store::Result<i64> {
                let (n,): (i64,) = api::query_as("SELECT COUNT(*) FROM labels WHERE team_id = $1")
                    .bind(team)
                    .fetch_one(self.exec())
                    .await?;
                Ok(n)
            }

            async fn update_label(&mut self, l: &Label) -> $crate::store::Result<bool> {
                let done = api::query("UPDATE labels SET name = $2, name_key = $3, color = $4 WHERE id = $1")
                    .bind(l.id)
                    .bind(&l.name)
                    .bind($crate::domain::rules::label_name_key(&l.name))
                    .bind(&l.color)
                    .execute(self.exec())
                    .await
                    .map_err(map_dup)?;
                Ok(done.rows_affected() == 1)
            }

            async fn delete_label(&mut self, id: LabelId) -> $crate::store::Result<bool> {
                // The label's row first: a task write that is giving a task this label holds it
                // (`labels_among`), and the tasks are read after that write commits.
                let found: Option<(LabelId,)> =
                    api::query_as(concat!("SELECT id FROM labels WHERE id = $1", $lock_row))
                        .bind(id)
                        .fetch_optional(self.exec())
                        .await?;
                if found.is_none() {
                    return Ok(false);
                }
                // `,a,b,c,` without `,b,` is `,a,c,`; the outer commas then go.
                api::query(
                    "UPDATE tasks SET label_ids = \
                       ltrim(rtrim(replace(',' || label_ids || ',', $2, ','), ','), ',') \
                     WHERE id IN (SELECT task_id FROM task_labels WHERE label_id = $1)",
                )
                .bind(id)
                .bind(format!(",{},", uuid::Uuid::from(id).hyphenated()))
                .heavy()
                .execute(self.exec())
                .await?;
                api::query("DELETE FROM task_labels WHERE label_id = $1")
                    .bind(id)
                    .heavy()
                    .execute(self.exec())
                    .await?;
                let done = api::query("DELETE FROM labels WHERE id = $1")
                    .bind(id)
                    .execute(self.exec())
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn labels_among(&mut self, team: TeamId, ids: &[LabelId]) -> $crate::store::Result<Vec<LabelId>> {
                let mut out = Vec::with_capacity(ids.len());
                for chunk in ids.chunks($crate::store::sql::IN_LIST_CHUNK) {
                    let sql = format!(
                        "SELECT id FROM labels WHERE team_id = $1 AND id IN ({}){}",
                        placeholders_from(2, chunk.len()),
                        $share_row
                    );
                    let mut q = api::query_as(sqlx::AssertSqlSafe(sql)).bind(team);
                    for id in chunk {
                        q = q.bind(*id);
                    }
                    let rows: Vec<(LabelId,)> = q.fetch_all(self.exec()).await?;
                    out.extend(rows.into_iter().map(|(id,)| id));
                }
                Ok(out)
            }

            async fn delete_task(&mut self, id: TaskId) -> $crate::store::Result<Option<Task>> {
                self.tx.slots_changed();
                // RETURNING gives the row as the DELETE found it: on PostgreSQL a concurrent update
                // the DELETE waited for is the version deleted, not the one read before.
                // Heavy: its comments and followers go with it (ON DELETE CASCADE), unbounded.
                let row: Option<TaskRow> = api::query_as(concat!(
                    "DELETE FROM tasks WHERE id = $1 RETURNING ",
                    task_columns!()
                ))
                .bind(id)
                .heavy()
                .fetch_optional(self.exec())
                .await?;
                row.map(TryInto::try_into).transpose()
            }

            async fn task_slot(
                &mut self,
                team: TeamId,
                user: UserId,
                board: Option<BoardId>,
                status: TaskStatus,
            ) -> $crate::store::Result<Option<$crate::store::TaskSlot>> {
                // A run of creations in a batch reads it once (`WriteTx::known_slot`).
                let key = $crate::store::group_commit::SlotKey { team, user, board, status };
                if let Some(known) = self.tx.known_slot(key) {
                    return Ok(Some(known));
                }
                let row: Option<(String, Option<BoardId>, Option<f64>)> = api::query_as(
                    "SELECT m.role, \
                       (SELECT b.id FROM boards b WHERE b.id = COALESCE($3, t.default_board_id) AND b.team_id = t.id), \
                       (SELECT k.position FROM tasks k \
                         WHERE k.board_id = COALESCE($3, t.default_board_id) AND k.status = $4 \
                         ORDER BY k.position DESC LIMIT 1) \
                     FROM memberships m JOIN teams t ON t.id = m.team_id \
                     WHERE m.team_id = $1 AND m.user_id = $2",
                )
                .bind(team)
                .bind(user)
                .bind(board)
                .bind(status.as_str())
                .fetch_optional(self.exec())
                .await?;
                let slot = row
                    .map(|(r, board_id, last_position)| {
                        // No column when the board is not the team's (as `KnownSlots` has it).
                        let last_position = board_id.and(last_position);
                        Ok::<_, $crate::store::StoreError>($crate::store::TaskSlot { role: role(&r)?, board_id, last_position })
                    })
                    .transpose()?;
                if let Some(slot) = &slot {
                    self.tx.learn_slot(key, slot);
                }
                Ok(slot)
            }

            async fn insert_comment(&mut self, c: &Comment) -> $crate::store::Result<()> {
                api::query(
                    "INSERT INTO comments (id, task_id, team_id, author_user_id, body, created_at, edited_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(c.id)
                .bind(c.task_id)
                .bind(c.team_id)
                .bind(c.author_user_id)
                .bind(&c.body)
                .bind(c.created_at)
                .bind(c.edited_at)
                .execute(self.exec())
                .await?;
                Ok(())
            }

            async fn comment(&mut self, id: CommentId) -> $crate::store::Result<Option<Comment>> {
                let row: Option<CommentRow> = api::query_as(
                    "SELECT id, task_id, team_id, author_user_id, body, created_at, edited_at \
                     FROM comments WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(self.exec())
                .await?;
                Ok(row.map(Into::into))
            }

            async fn comments(
                &mut self,
                task: TaskId,
                page: $crate::store::PageAfter<CommentId>,
            ) -> $crate::store::Result<Vec<Comment>> {
                let rows: Vec<CommentRow> = api::query_as(
                    "SELECT id, task_id, team_id, author_user_id, body, created_at, edited_at \
                     FROM comments WHERE task_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                )
                .bind(task)
                .bind(after(page.after))
                .bind(page.limit)
                .fetch_all(self.exec())
                .await?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn update_comment(&mut self, c: &Comment, previous_body: &str) -> $crate::store::Result<bool> {
                let done = api::query("UPDATE comments SET body = $2, edited_at = $3 WHERE id = $1 AND body = $4")
                    .bind(c.id)
                    .bind(&c.body)
                    .bind(c.edited_at)
                    .bind(previous_body)
                    .execute(self.exec())
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn delete_comment(&mut self, id: CommentId) -> $crate::store::Result<bool> {
                let done = api::query("DELETE FROM comments WHERE id = $1")
                    .bind(id)
                    .execute(self.exec())
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn append(&mut self, team: TeamId, drafts: Vec<ActivityDraft>) -> $crate::store::Result<Vec<LogEntry>> {
                if drafts.is_empty() {
                    return Ok(Vec::new());
                }
                let n = drafts.len() as i64;
                // Taking the seqs locks the team row until commit: a write alone serializes with the
                // team's other writers here, as late in the transaction as possible. In a batch
                // the row is locked already (PostgreSQL: by the batch's opener; SQLite: one
                // writer) and the seqs are usually known: the row is written with the activities.
                let known = self.tx.last_seq_known(team);
                let last = match known {
                    Some(known) => known + n,
                    None => {
                        let (last,): (i64,) = api::query_as(
                            "UPDATE teams SET last_seq = last_seq + $2 WHERE id = $1 RETURNING last_seq",
                        )
                        .bind(team)
                        .bind(n)
                        .fetch_one(self.exec())
                        .await?;
                        last
                    }
                };
                self.tx.set_last_seq_known(team, None);
                let first = last - n + 1;
                let (entries, stamps): (Vec<LogEntry>, Vec<OffsetDateTime>) =
                    entries(team, first, drafts)?.into_iter().unzip();
                // The activities and the team's unpublished mark in one call (SQLite: two
                // statements, PostgreSQL: one, the insert as a CTE). The mark tells the relay's
                // scan which teams to read; the team row lock (held by now) orders the marks per team.
                // (Each chunk of a long list sets the same mark.)
                // What rides on this statement (PostgreSQL: a held task, a keyed request's mark)
                // goes with the first chunk.
                let mut held = self.take_held_task();
                let mut mark = self.take_key_mark();
                for (chunk, ts) in entries
                    .chunks(ACTIVITY_ROWS_PER_INSERT)
                    .zip(stamps.chunks(ACTIVITY_ROWS_PER_INSERT))
                {
                    let (task, key) = (held.take(), mark.take());
                    let sql = activities_insert(
                        $dialect,
                        chunk.len(),
                        known.is_some(),
                        task.is_some(),
                        key.is_some(),
                    );
                    let mut query = api::query(sqlx::AssertSqlSafe(sql)).bind(team).bind(last);
                    for (e, ts) in chunk.iter().zip(ts) {
                        query = query
                            .bind(e.seq)
                            .bind(e.route.kind.as_str())
                            .bind(e.route.board_id)
                            .bind(e.route.prev_board_id)
                            .bind(e.route.task_id)
                            .bind(e.route.user_id)
                            .bind(*ts)
                            .bind(&*e.json);
                    }
                    if let Some(held) = &task {
                        query = bind_task!(query, &held.task, held.follower);
                    }
                    if let Some(key) = &key {
                        query = bind_key_mark!(query, key);
                    }
                    query.execute(self.exec()).await?;
                }
                self.tx.set_last_seq_known(team, Some(last));
                Ok(entries)
            }

            async fn last_seq(&mut self, team: TeamId) -> $crate::store::Result<Option<i64>> {
                let row: Option<(i64,)> = api::query_as("SELECT last_seq FROM teams WHERE id = $1")
                    .bind(team)
                    .fetch_optional(self.exec())
                    .await?;
                Ok(row.map(|(s,)| s))
            }

            async fn last_seqs(&mut self, teams: &[TeamId]) -> $crate::store::Result<Vec<(TeamId, i64)>> {
                let mut out = Vec::with_capacity(teams.len());
                for chunk in teams.chunks($crate::store::sql::IN_LIST_CHUNK) {
                    let sql = format!(
                        "SELECT id, last_seq FROM teams WHERE id IN ({})",
                        $crate::store::sql::placeholders(chunk.len())
                    );
                    let mut query = api::query_as(sqlx::AssertSqlSafe(sql));
                    for team in chunk {
                        query = query.bind(*team);
                    }
                    let rows: Vec<(TeamId, i64)> = query.fetch_all(self.exec()).await?;
                    out.extend(rows);
                }
                Ok(out)
            }

            async fn log_bounds(&mut self, team: TeamId) -> $crate::store::Result<Option<LogBounds>> {
                let row: Option<(i64, Option<i64>)> = api::query_as(
                    "SELECT t.last_seq, (SELECT MIN(seq) FROM activities a WHERE a.team_id = t.id) \
                     FROM teams t WHERE t.id = $1",
                )
                .bind(team)
                .fetch_optional(self.exec())
                .await?;
                Ok(row.map(|(last_seq, min)| LogBounds {
                    oldest_since: min.map_or(last_seq, |m| m - 1),
                    last_seq,
                }))
            }

            async fn activities(
                &mut self,
                team: TeamId,
                after_seq: i64,
                upto: i64,
                limit: i64,
            ) -> $crate::store::Result<Vec<LogEntry>> {
                // Bounded in size as well as rows: the first row always, then rows while the
                // payloads before them stay under the budget (counted in characters, which both
                // dialects' LENGTH agree on; a character is at most 4 bytes).
                let rows: Vec<ActivityRow> = api::query_as(
                    "SELECT seq, kind, board_id, prev_board_id, task_id, user_id, payload FROM ( \
                       SELECT seq, kind, board_id, prev_board_id, task_id, user_id, payload, \
                              SUM(LENGTH(payload)) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) - LENGTH(payload) AS before_chars \
                       FROM activities WHERE team_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4 \
                     ) page WHERE before_chars < $5 ORDER BY seq",
                )
                .bind(team)
                .bind(after_seq)
                .bind(upto)
                .bind(limit)
                .bind($crate::store::READ_BATCH_CHARS)
                .fetch_all(self.exec())
                .await?;
                rows.into_iter().map(|r| r.into_entry(team)).collect()
            }

            async fn published_seqs(&mut self, teams: &[TeamId]) -> $crate::store::Result<Vec<(TeamId, i64)>> {
                let mut found = std::collections::HashMap::with_capacity(teams.len());
                for chunk in teams.chunks($crate::store::sql::IN_LIST_CHUNK) {
                    let sql = format!(
                        "SELECT team_id, published_seq FROM team_outbox WHERE team_id IN ({})",
                        $crate::store::sql::placeholders(chunk.len())
                    );
                    let mut query = api::query_as(sqlx::AssertSqlSafe(sql));
                    for team in chunk {
                        query = query.bind(*team);
                    }
                    let rows: Vec<(TeamId, i64)> = query.fetch_all(self.exec()).await?;
                    found.extend(rows);
                }
                Ok(teams.iter().map(|t| (*t, found.get(t).copied().unwrap_or(0))).collect())
            }

            async fn set_published_seqs(&mut self, marks: &[(TeamId, i64)]) -> $crate::store::Result<()> {
                // Callers pass each team once, in team order; on PostgreSQL the rows are locked
                // in that order first (an UPDATE's own order is the plan's), so that relays of
                // several instances saving the same teams wait for each other, never deadlock.
                for chunk in marks.chunks($crate::store::sql::IN_LIST_CHUNK / 2) {
                    if $dialect != $crate::store::task_query::Dialect::Sqlite {
                        let sql = format!(
                            "SELECT team_id FROM team_outbox WHERE team_id IN ({}) ORDER BY team_id{}",
                            $crate::store::sql::placeholders(chunk.len()),
                            $lock_row
                        );
                        let mut query = api::query(sqlx::AssertSqlSafe(sql)).persistent(false);
                        for (team, _) in chunk {
                            query = query.bind(*team);
                        }
                        query.execute(self.exec()).await?;
                    }
                    let rows = (0..chunk.len())
                        .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let sql = format!(
                        "WITH m (team_id, seq) AS (VALUES {rows}) \
                         UPDATE team_outbox SET published_seq = \
                           (SELECT m.seq FROM m WHERE m.team_id = team_outbox.team_id) \
                         WHERE team_id IN (SELECT team_id FROM m) AND published_seq < \
                           (SELECT m.seq FROM m WHERE m.team_id = team_outbox.team_id)"
                    );
                    let mut query = api::query(sqlx::AssertSqlSafe(sql)).persistent(false);
                    for (team, seq) in chunk {
                        query = query.bind(*team).bind(*seq);
                    }
                    query.execute(self.exec()).await?;
                }
                Ok(())
            }

            async fn clear_unpublished(&mut self, teams: &[TeamId]) -> $crate::store::Result<()> {
                // One statement per chunk, meant to run last before COMMIT: the rows it deletes
                // are the ones `append` upserts, so they stay locked only briefly. A row an append
                // raised above the watermark is not deleted (on PostgreSQL the condition is
                // checked again on the row version the DELETE waited for).
                // On PostgreSQL the rows an open write transaction holds (a batch of the group
                // commit keeps its team's row until its COMMIT) are skipped, not waited for: such
                // a row ends above the watermark, so it stays anyway, and waiting for it while
                // holding other teams' rows could close a lock cycle with batches.
                let skip_locked = if $dialect == $crate::store::task_query::Dialect::Sqlite {
                    ""
                } else {
                    " FOR UPDATE SKIP LOCKED"
                };
                for chunk in teams.chunks($crate::store::sql::IN_LIST_CHUNK) {
                    let sql = format!(
                        "DELETE FROM team_unpublished WHERE team_id IN ( \
                           SELECT team_id FROM team_unpublished WHERE team_id IN ({}){} \
                         ) AND upto_seq <= \
                         (SELECT o.published_seq FROM team_outbox o WHERE o.team_id = team_unpublished.team_id)",
                        $crate::store::sql::placeholders(chunk.len()),
                        skip_locked
                    );
                    let mut query = api::query(sqlx::AssertSqlSafe(sql));
                    for team in chunk {
                        query = query.bind(*team);
                    }
                    query.execute(self.exec()).await?;
                }
                Ok(())
            }

            async fn unpublished_teams(
                &mut self,
                limit: i64,
                stale_before: OffsetDateTime,
            ) -> $crate::store::Result<Vec<(TeamId, i64)>> {
                // The age of the first unpublished activity, one key lookup per record: a team
                // written without pause always has a record, but a live relay keeps it young.
                let rows: Vec<(TeamId, i64)> = api::query_as(
                    "SELECT u.team_id, o.published_seq FROM team_unpublished u \
                     JOIN team_outbox o ON o.team_id = u.team_id \
                     WHERE u.upto_seq > o.published_seq AND EXISTS ( \
                       SELECT 1 FROM activities a \
                       WHERE a.team_id = u.team_id AND a.seq = o.published_seq + 1 AND a.ts < $2) \
                     LIMIT $1",
                )
                .bind(limit)
                .bind(stale_before)
                .fetch_all(self.exec())
                .await?;
                Ok(rows)
            }

            async fn teams_with_old_activities(
                &mut self,
                before: OffsetDateTime,
                after: Option<OffsetDateTime>,
                scan: i64,
            ) -> $crate::store::Result<(Vec<TeamId>, Option<OffsetDateTime>)> {
                // The oldest activities after `after` (the `ts` index), at most `scan` of them:
                // bounded however large the log; the teams most overdue first.
                let rows: Vec<(TeamId, OffsetDateTime)> = api::query_as(
                    "SELECT o.team_id, MAX(o.ts) FROM ( \
                       SELECT team_id, ts FROM activities \
                       WHERE ts < $1 AND ($2 IS NULL OR ts > $2) ORDER BY ts LIMIT $3 \
                     ) o GROUP BY o.team_id ORDER BY MIN(o.ts)",
                )
                .bind(before)
                .bind(after)
                .bind(scan)
                .fetch_all(self.exec())
                .await?;
                let last = rows.iter().map(|(_, ts)| *ts).max();
                Ok((rows.into_iter().map(|(t, _)| t).collect(), last))
            }

            async fn prune_team_log(
                &mut self,
                team: TeamId,
                before: OffsetDateTime,
                chunk: i64,
            ) -> $crate::store::Result<u64> {
                // Among the team's `chunk` lowest seqs, the first that must stay (too recent, or
                // not published yet: `ts` comes from each writer's clock, so it is not monotonic
                // in seq) and everything above it stay: only a prefix of the seqs goes, or a
                // resume would skip what is kept above a hole. Both reads walk the team's
                // (team_id, seq) key for at most `chunk` rows.
                let done = api::query(
                    "DELETE FROM activities WHERE team_id = $1 AND seq < COALESCE( \
                       (SELECT MIN(f.seq) FROM \
                          (SELECT seq, ts FROM activities WHERE team_id = $1 ORDER BY seq LIMIT $3) f \
                        WHERE f.ts >= $2 \
                           OR f.seq > COALESCE((SELECT published_seq FROM team_outbox WHERE team_id = $1), 0)), \
                       (SELECT MAX(f.seq) + 1 FROM \
                          (SELECT seq FROM activities WHERE team_id = $1 ORDER BY seq LIMIT $3) f), \
                       0)",
                )
                .bind(team)
                .bind(before)
                .bind(chunk)
                .heavy()
                .execute(self.exec())
                .await?;
                Ok(done.rows_affected())
            }

            async fn release_lease(&mut self, name: &str, holder: &str) -> $crate::store::Result<()> {
                api::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
                    .bind(name)
                    .bind(holder)
                    .execute(self.exec())
                    .await?;
                Ok(())
            }

            async fn take_lease(
                &mut self,
                name: &str,
                holder: &str,
                now: OffsetDateTime,
                until: OffsetDateTime,
            ) -> $crate::store::Result<bool> {
                let row: Option<(String,)> = api::query_as(
                    "INSERT INTO leases (name, holder, until) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until \
                     WHERE leases.holder = excluded.holder OR leases.until < $4 \
                     RETURNING holder",
                )
                .bind(name)
                .bind(holder)
                .bind(StoredTime(until))
                .bind(StoredTime(now))
                .fetch_optional(self.exec())
                .await?;
                Ok(row.is_some())
            }

            async fn prune_inbox(&mut self, before: OffsetDateTime) -> $crate::store::Result<u64> {
                let a = api::query("DELETE FROM notifications WHERE created_at < $1")
                    .bind(before)
                    .heavy()
                    .execute(self.exec())
                    .await?;
                let b = api::query("DELETE FROM notification_reads WHERE created_at < $1")
                    .bind(before)
                    .heavy()
                    .execute(self.exec())
                    .await?;
                Ok(a.rows_affected() + b.rows_affected())
            }

            async fn claim_idempotency_key(
                &mut self,
                user: UserId,
                key: &str,
                fingerprint: &[u8],
                now: OffsetDateTime,
                expired: OffsetDateTime,
                stale: OffsetDateTime,
            ) -> $crate::store::Result<$crate::store::KeyClaim> {
                use $crate::store::{KeyClaim, StoredAnswer};
                api::query(
                    "DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 \
                     AND (created_at < $3 OR (status IS NULL AND NOT applied AND created_at < $4))",
                )
                    .bind(user)
                    .bind(key)
                    .bind(StoredTime(expired))
                    .bind(StoredTime(stale))
                    .execute(self.exec())
                    .await?;
                let taken = api::query(
                    "INSERT INTO idempotency_keys (user_id, key, fingerprint, created_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .bind(user)
                .bind(key)
                .bind(fingerprint)
                .bind(StoredTime(now))
                .execute(self.exec())
                .await?;
                if taken.rows_affected() == 1 {
                    return Ok(KeyClaim::Claimed);
                }
                // `lost`: applied, and stale without an answer (its process died after the commit).
                let row: Option<(Vec<u8>, Option<i32>, Option<String>, Option<Vec<u8>>, i32)> = api::query_as(
                    "SELECT fingerprint, status, headers, body, \
                     CASE WHEN applied AND created_at < $3 THEN 1 ELSE 0 END \
                     FROM idempotency_keys WHERE user_id = $1 AND key = $2",
                )
                .bind(user)
                .bind(key)
                .bind(StoredTime(stale))
                .fetch_optional(self.exec())
                .await?;
                Ok(match row {
                    // Released between the insert and the read: as if still running.
                    None => KeyClaim::InProgress,
                    Some((stored, ..)) if stored != fingerprint => KeyClaim::Mismatch,
                    Some((_, Some(status), headers, body, _)) => KeyClaim::Answered(StoredAnswer {
                        status: u16::try_from(status).map_err(|_| {
                            $crate::store::StoreError::Corrupt(format!("idempotency status {status}"))
                        })?,
                        headers: headers.unwrap_or_default(),
                        body: body.unwrap_or_default(),
                    }),
                    Some((_, None, _, _, 1)) => KeyClaim::AnswerLost,
                    Some((_, None, ..)) => KeyClaim::InProgress,
                })
            }

            async fn finish_idempotency_key(
                &mut self,
                user: UserId,
                key: &str,
                fingerprint: &[u8],
                at: OffsetDateTime,
                answer: &$crate::store::StoredAnswer,
            ) -> $crate::store::Result<()> {
                api::query(
                    "UPDATE idempotency_keys SET status = $3, headers = $4, body = $5 \
                     WHERE user_id = $1 AND key = $2 AND status IS NULL \
                     AND fingerprint = $6 AND created_at = $7",
                )
                .bind(user)
                .bind(key)
                .bind(i32::from(answer.status))
                .bind(&answer.headers)
                .bind(&answer.body)
                .bind(fingerprint)
                .bind(StoredTime(at))
                .execute(self.exec())
                .await?;
                Ok(())
            }

            async fn release_idempotency_key(
                &mut self,
                user: UserId,
                key: &str,
                fingerprint: &[u8],
                at: OffsetDateTime,
                even_applied: bool,
            ) -> $crate::store::Result<()> {
                api::query(
                    "DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 \
                     AND status IS NULL AND fingerprint = $3 AND created_at = $4 \
                     AND (NOT applied OR $5)",
                )
                .bind(user)
                .bind(key)
                .bind(fingerprint)
                .bind(StoredTime(at))
                .bind(even_applied)
                .execute(self.exec())
                .await?;
                Ok(())
            }

            async fn prune_idempotency_keys(&mut self, before: OffsetDateTime) -> $crate::store::Result<u64> {
                let done = api::query("DELETE FROM idempotency_keys WHERE created_at < $1")
                    .bind(StoredTime(before))
                    .heavy()
                    .execute(self.exec())
                    .await?;
                Ok(done.rows_affected())
            }

            async fn lock_task(&mut self, task: TaskId) -> $crate::store::Result<bool> {
                let row: Option<(TaskId,)> =
                    api::query_as(concat!("SELECT id FROM tasks WHERE id = $1", $lock_row))
                        .bind(task)
                        .fetch_optional(self.exec())
                        .await?;
                Ok(row.is_some())
            }

            async fn followers(&mut self, task: TaskId) -> $crate::store::Result<$crate::domain::notify::Followers> {
                let rows: Vec<(UserId, bool)> =
                    api::query_as("SELECT user_id, following FROM task_followers WHERE task_id = $1")
                        .bind(task)
                        .fetch_all(self.exec())
                        .await?;
                let mut f = $crate::domain::notify::Followers::default();
                for (user, following) in rows {
                    if following {
                        f.following.insert(user);
                    } else {
                        f.unfollowed.insert(user);
                    }
                }
                Ok(f)
            }

            async fn follows(&mut self, task: TaskId, user: UserId) -> $crate::store::Result<bool> {
                let row: Option<(bool,)> = api::query_as(
                    "SELECT following FROM task_followers WHERE task_id = $1 AND user_id = $2",
                )
                .bind(task)
                .bind(user)
                .fetch_optional(self.exec())
                .await?;
                Ok(row.is_some_and(|(f,)| f))
            }

            async fn set_following(
                &mut self,
                task: TaskId,
                team: TeamId,
                user: UserId,
                following: bool,
                keep_decision: bool,
            ) -> $crate::store::Result<()> {
                let sql = if keep_decision {
                    "INSERT INTO task_followers (task_id, user_id, team_id, following) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (task_id, user_id) DO NOTHING"
                } else {
                    "INSERT INTO task_followers (task_id, user_id, team_id, following) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (task_id, user_id) DO UPDATE SET following = excluded.following"
                };
                api::query(sql)
                    .bind(task)
                    .bind(user)
                    .bind(team)
                    .bind(following)
                    .execute(self.exec())
                    .await?;
                Ok(())
            }

            async fn members_among(&mut self, team: TeamId, users: &[UserId]) -> $crate::store::Result<Vec<UserId>> {
                let mut out = Vec::with_capacity(users.len());
                for chunk in users.chunks($crate::store::sql::IN_LIST_CHUNK) {
                    let sql = format!(
                        "SELECT user_id FROM memberships WHERE team_id = $1 AND user_id IN ({})",
                        $crate::store::sql::placeholders_from(2, chunk.len())
                    );
                    let mut query = api::query_as(sqlx::AssertSqlSafe(sql)).bind(team);
                    for u in chunk {
                        query = query.bind(*u);
                    }
                    let rows: Vec<(UserId,)> = query.fetch_all(self.exec()).await?;
                    out.extend(rows.into_iter().map(|(u,)| u));
                }
                Ok(out)
            }

            async fn insert_notifications(
                &mut self,
                drafts: &[$crate::domain::notify::NotificationDraft],
            ) -> $crate::store::Result<Vec<(UserId, i64)>> {
                // Each inbox's next seq, in one statement per chunk. The rows are locked in id
                // order by the subquery (PostgreSQL: `FOR NO KEY UPDATE` above its sort), the order every
                // other writer of inbox rows uses, so two changes notifying the same users cannot
                // deadlock. SQLite's single writer needs no lock.
                let mut seqs: std::collections::HashMap<UserId, i64> =
                    std::collections::HashMap::with_capacity(drafts.len());
                let users: Vec<UserId> = drafts.iter().map(|d| d.user_id).collect();
                for chunk in users.chunks($crate::store::sql::IN_LIST_CHUNK) {
                    let sql = format!(
                        "UPDATE users SET inbox_seq = inbox_seq + 1 WHERE id IN ( \
                           SELECT id FROM users WHERE id IN ({}) ORDER BY id{} \
                         ) RETURNING id, inbox_seq",
                        $crate::store::sql::placeholders(chunk.len()),
                        // The UPDATE's own strength: it does not wait for the key-share locks
                        // that inserting a membership or a follow takes on the user row.
                        if $lock_row.is_empty() { "" } else { " FOR NO KEY UPDATE" }
                    );
                    let mut query = api::query_as(sqlx::AssertSqlSafe(sql));
                    for u in chunk {
                        query = query.bind(*u);
                    }
                    let rows: Vec<(UserId, i64)> = query.fetch_all(self.exec()).await?;
                    seqs.extend(rows);
                }
                // Inbox rows are shared by every team of their users.
                self.holds_shared_rows();
                let out = drafts
                    .iter()
                    .map(|d| {
                        seqs.get(&d.user_id)
                            .map(|s| (d.user_id, *s))
                            .ok_or_else(|| $crate::store::StoreError::Corrupt(format!("no inbox row for user {}", d.user_id)))
                    })
                    .collect::<Result<Vec<_>, $crate::store::StoreError>>()?;
                const COLUMNS: usize = 14;
                for (chunk, seqs) in drafts
                    .chunks($crate::store::sql::NOTIFICATION_ROWS_PER_INSERT)
                    .zip(out.chunks($crate::store::sql::NOTIFICATION_ROWS_PER_INSERT))
                {
                    let rows = (0..chunk.len())
                        .map(|r| format!("({})", $crate::store::sql::placeholders_from(r * COLUMNS + 1, COLUMNS)))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let sql = format!(
                        "INSERT INTO notifications (user_id, seq, id, team_id, task_id, board_id, task_title, \
                           activity_type, reasons, actor_user_id, actor_display_name, comment_id, excerpt, created_at) \
                         VALUES {rows}"
                    );
                    let mut query = api::query(sqlx::AssertSqlSafe(sql));
                    for (d, (_, seq)) in chunk.iter().zip(seqs) {
                        query = query
                            .bind(d.user_id)
                            .bind(*seq)
                            .bind(d.id)
                            .bind(d.team_id)
                            .bind(d.task_id)
                            .bind(d.board_id)
                            .bind(&d.task_title)
                            .bind(d.activity_kind.as_str())
                            .bind($crate::store::sql::reasons_text(&d.reasons))
                            .bind(d.actor_user_id)
                            .bind(&d.actor_display_name)
                            .bind(d.comment_id)
                            .bind(d.excerpt.as_deref())
                            .bind(d.created_at);
                    }
                    query.execute(self.exec()).await?;
                }
                Ok(out)
            }

            async fn inbox_state(&mut self, user: UserId) -> $crate::store::Result<(i64, i64)> {
                let row: Option<(i64, i64)> = api::query_as(
                    "SELECT u.inbox_seq, (SELECT COUNT(*) FROM notifications n \
                       WHERE n.user_id = u.id AND n.read_at IS NULL AND EXISTS ( \
                         SELECT 1 FROM memberships m WHERE m.team_id = n.team_id AND m.user_id = u.id)) \
                     FROM users u WHERE u.id = $1",
                )
                .bind(user)
                .fetch_optional(self.exec())
                .await?;
                Ok(row.unwrap_or((0, 0)))
            }

            async fn inbox_seqs(&mut self, users: &[UserId]) -> $crate::store::Result<Vec<(UserId, i64)>> {
                let mut out = Vec::with_capacity(users.len());
                for chunk in users.chunks($crate::store::sql::IN_LIST_CHUNK) {
                    let sql = format!(
                        "SELECT id, inbox_seq FROM users WHERE id IN ({})",
                        $crate::store::sql::placeholders(chunk.len())
                    );
                    let mut query = api::query_as(sqlx::AssertSqlSafe(sql));
                    for u in chunk {
                        query = query.bind(*u);
                    }
                    let rows: Vec<(UserId, i64)> = query.fetch_all(self.exec()).await?;
                    out.extend(rows);
                }
                Ok(out)
            }

            async fn notifications(
                &mut self,
                user: UserId,
                q: $crate::store::InboxQuery,
            ) -> $crate::store::Result<Vec<$crate::domain::notify::Notification>> {
                let sql = format!(
                    "SELECT {} FROM notifications n \
                     WHERE n.user_id = $1 AND n.seq > $2 AND n.seq < $3 AND ($4 = 0 OR n.read_at IS NULL) \
                       AND EXISTS (SELECT 1 FROM memberships m WHERE m.team_id = n.team_id AND m.user_id = n.user_id) \
                     ORDER BY n.seq DESC LIMIT $5",
                    $crate::store::sql::NOTIFICATION_COLUMNS
                );
                let rows: Vec<$crate::store::sql::NotificationRow> = api::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(user)
                    .bind(q.since)
                    .bind(q.before)
                    .bind(i64::from(q.unread_only))
                    .bind(q.limit)
                    .fetch_all(self.exec())
                    .await?;
                rows.into_iter().map(TryInto::try_into).collect()
            }

            async fn mark_read(
                &mut self,
                user: UserId,
                mark: &$crate::domain::notify::MarkRead,
                at: OffsetDateTime,
            ) -> $crate::store::Result<Option<$crate::domain::notify::ReadMark>> {
                use $crate::domain::notify::{MarkRead, ReadMark};
                const MINE: &str = "user_id = $1 AND read_at IS NULL \
                     AND team_id IN (SELECT m.team_id FROM memberships m WHERE m.user_id = $1)";
                // The user's inbox row first, as every write to the stream takes it: marks and
                // notifications of one user are serialized, and `upto` cannot reach a seq still
                // being written by an open transaction.
                let (latest,): (i64,) = api::query_as(
                    "UPDATE users SET inbox_seq = inbox_seq WHERE id = $1 RETURNING inbox_seq",
                )
                .bind(user)
                .fetch_one(self.exec())
                .await?;
                let (ids, upto) = match mark {
                    MarkRead::Ids(ids) => {
                        if ids.is_empty() {
                            return Ok(None);
                        }
                        let sql = format!(
                            "UPDATE notifications SET read_at = $2 WHERE {MINE} AND id IN ({}) RETURNING id",
                            $crate::store::sql::placeholders_from(3, ids.len())
                        );
                        let mut query = api::query_as(sqlx::AssertSqlSafe(sql))
                            .bind(user)
                            .bind(at);
                        for id in ids {
                            query = query.bind(*id);
                        }
                        let rows: Vec<(NotificationId,)> = query.fetch_all(self.exec()).await?;
                        let marked: Vec<NotificationId> = rows.into_iter().map(|(id,)| id).collect();
                        if marked.is_empty() {
                            return Ok(None);
                        }
                        (Some(marked), None)
                    }
                    MarkRead::Upto(upto) => {
                        let upto = (*upto).min(latest);
                        let sql = format!("UPDATE notifications SET read_at = $2 WHERE {MINE} AND seq <= $3");
                        let done = api::query(sqlx::AssertSqlSafe(sql))
                            .bind(user)
                            .bind(at)
                            .bind(upto)
                            .heavy()
                            .execute(self.exec())
                            .await?;
                        if done.rows_affected() == 0 {
                            return Ok(None);
                        }
                        (None, Some(upto))
                    }
                };
                let (seq,): (i64,) = api::query_as(
                    "UPDATE users SET inbox_seq = inbox_seq + 1 WHERE id = $1 RETURNING inbox_seq",
                )
                .bind(user)
                .fetch_one(self.exec())
                .await?;
                let (_, unread_count) = self.inbox_state(user).await?;
                let ids_text = ids.as_ref().map(serde_json::to_string).transpose()?;
                api::query(
                    "INSERT INTO notification_reads (user_id, seq, ids, upto, unread_count, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(user)
                .bind(seq)
                .bind(ids_text)
                .bind(upto)
                .bind(unread_count)
                .bind(at)
                .execute(self.exec())
                .await?;
                Ok(Some(ReadMark {
                    seq,
                    ids,
                    upto,
                    unread_count,
                }))
            }

            async fn inbox_events(
                &mut self,
                user: UserId,
                after: i64,
                upto: i64,
                limit: i64,
            ) -> $crate::store::Result<(Vec<$crate::domain::notify::InboxEvent>, i64)> {
                use $crate::domain::notify::InboxEvent;
                let sql = format!(
                    "SELECT {} FROM notifications n \
                     WHERE n.user_id = $1 AND n.seq > $2 AND n.seq <= $3 \
                       AND EXISTS (SELECT 1 FROM memberships m WHERE m.team_id = n.team_id AND m.user_id = n.user_id) \
                     ORDER BY n.seq LIMIT $4",
                    $crate::store::sql::NOTIFICATION_COLUMNS
                );
                let created: Vec<$crate::store::sql::NotificationRow> = api::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(user)
                    .bind(after)
                    .bind(upto)
                    .bind(limit)
                    .fetch_all(self.exec())
                    .await?;
                let reads: Vec<$crate::store::sql::ReadRow> = api::query_as(
                    "SELECT seq, ids, upto, unread_count FROM notification_reads \
                     WHERE user_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4",
                )
                .bind(user)
                .bind(after)
                .bind(upto)
                .bind(limit)
                .fetch_all(self.exec())
                .await?;
                // Each list is complete up to its last row when it was cut off at `limit`.
                let full = |n: usize, last: Option<i64>| if n as i64 >= limit { last } else { None };
                let covered = [
                    full(created.len(), created.last().map(|r| r.seq())),
                    full(reads.len(), reads.last().map(|r| r.seq())),
                ]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(upto);
                let mut out = Vec::with_capacity(created.len() + reads.len());
                for r in created.into_iter().filter(|r| r.seq() <= covered) {
                    out.push(InboxEvent::Created(Box::new(r.try_into()?)));
                }
                for r in reads.into_iter().filter(|r| r.seq() <= covered) {
                    out.push(InboxEvent::Read(r.try_into()?));
                }
                out.sort_by_key(InboxEvent::seq);
                Ok((out, covered))
            }
        }
        };
    };
}

pub(super) use impl_tx;
