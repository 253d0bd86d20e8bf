//! The SQLite writer: the one connection every write transaction runs on, driven synchronously by
//! the task that holds the write lane, with no hand-off to another thread per statement. (sqlx's
//! SQLite driver sends each statement to the connection's own thread and waits for the answer;
//! on two cores those hand-offs cost more than the writes.) Reads stay on sqlx's readers, which
//! run beside the writer on their own threads, off the async workers.
//!
//! It speaks a small query API shaped like sqlx's (`api`: `query`, `query_as`, `QueryBuilder`,
//! `bind`, `execute`, `fetch_*`), so that the store's SQL (`impl_tx!`) is written once for every
//! driver, and it reports errors as `sqlx::Error`, so that they map as the drivers' do.
//!
//! It must never encode a value differently from sqlx's SQLite driver (readers decode what it
//! writes, and SQL compares the text of timestamps), and never checkpoint the WAL on an async
//! worker (a checkpoint copies pages into the database file and syncs it): SQLite's checkpoint
//! inside `COMMIT` is replaced by a hook that only notes the WAL's length, and the writer's own
//! checkpoint, past a backstop, goes to the blocking pool. Every statement of a write, `COMMIT`
//! included, is short (its pages are in memory; `COMMIT` writes them to the WAL and syncs
//! nothing) and runs where the member runs.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::{Value, ValueRef};
use sqlx::SqlSafeStr;
use time::OffsetDateTime;
use uuid::Uuid;

use super::sql::StoredTime;
use crate::domain::*;

type BoxDynError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The WAL's length, in pages, past which the writer checkpoints it after a `COMMIT` (SQLite's
/// own checkpoint in `COMMIT` is off; its default is 1,000). The store's checkpointer copies the
/// WAL into the database every 25 ms, but only the writer restarts the WAL from its start, and
/// only when everything in it was copied; under a steady stream of commits that seldom happens,
/// so the WAL grows to this length, where the writer's checkpoint (of the little the
/// checkpointer has not copied yet) restarts it: 2,000 pages, 8 MiB.
pub(super) const WAL_BACKSTOP: i64 = 2_000;

thread_local! {
    /// The WAL's length in pages after the last `COMMIT` on this thread, as SQLite reports it
    /// to `wal_pages` (the hook runs inside the `COMMIT`, on the thread that runs it).
    static WAL_PAGES: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
}

/// The writer's WAL hook: notes the WAL's length for `WriterTx::commit`, checkpoints nothing
/// (registering it replaces SQLite's automatic checkpoint).
fn wal_pages(_: &rusqlite::hooks::Wal, pages: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_PAGES.set(i64::from(pages));
    Ok(())
}

/// The longest the writer waits for a lock another connection holds (as sqlx's writer did).
const BUSY_WAIT: Duration = Duration::from_secs(10);

/// Statements the writer keeps prepared: every fixed statement of the store, with room to spare.
const STATEMENT_CACHE: usize = 512;

/// The writer connection while no transaction holds it.
#[derive(Clone)]
pub(super) struct Writer(Arc<Mutex<Option<rusqlite::Connection>>>);

impl Writer {
    /// Opens the database file (already created and migrated) for writing, with the settings
    /// sqlx's writer had: WAL (kept in the file), `synchronous = NORMAL`, foreign keys on,
    /// temporary files (the savepoints' statement journals) in memory.
    pub(super) fn open(path: &std::path::Path) -> Result<Self, sqlx::Error> {
        use rusqlite::OpenFlags;
        // The writer and the readers are separate connections: an in-memory database would be
        // a different, empty one for each.
        let name = path.to_string_lossy();
        if name.is_empty() || name == ":memory:" || name.starts_with("file:") {
            return Err(sqlx::Error::Configuration(
                format!("SQLite needs the path of a database file, not {name:?}").into(),
            ));
        }
        let conn = rusqlite::Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_PRIVATE_CACHE,
        )
        .map_err(database)?;
        conn.busy_timeout(BUSY_WAIT).map_err(database)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
             PRAGMA temp_store = MEMORY;",
        )
        .map_err(database)?;
        // The store's checkpointer keeps the WAL short (`sqlite::checkpoints`); the writer
        // checkpoints only past `WAL_BACKSTOP`, after its `COMMIT` (`WriterTx::commit`).
        conn.wal_hook(Some(wal_pages));
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(Self(Arc::new(Mutex::new(Some(conn)))))
    }

    /// Takes the connection and begins a write transaction on it (`BEGIN IMMEDIATE`: it holds the
    /// write lock from its first statement). The lane lets one transaction at a time begin.
    ///
    /// This process holds the one writer connection, so the write lock is almost always free:
    /// it is tried where the member runs, without waiting. Held by another process (a migration,
    /// a backup, a `sqlite3` shell), it is waited for (`BUSY_WAIT`) on the blocking pool.
    pub(super) async fn begin(&self) -> Result<WriterTx, sqlx::Error> {
        let conn = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
            .ok_or_else(|| {
                sqlx::Error::Protocol("the SQLite writer connection is in use".into())
            })?;
        let tx = WriterTx {
            conn: Some(conn),
            home: self.clone(),
            words: Vec::new(),
            words_at_savepoint: 0,
        };
        let busy = match tx.begin_immediate(Duration::ZERO) {
            Ok(()) => return Ok(tx),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                e
            }
            Err(e) => return Err(database(e)),
        };
        tracing::debug!(error = %busy, "the SQLite write lock is held elsewhere: waiting for it");
        tokio::task::spawn_blocking(move || tx.begin_immediate(BUSY_WAIT).map(|()| tx))
            .await
            .map_err(|e| sqlx::Error::Protocol(format!("the begin task failed: {e}")))?
            .map_err(database)
    }

    fn put_back(&self, conn: rusqlite::Connection) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(conn);
    }
}

/// A write transaction on the writer connection: rolled back when dropped uncommitted; the
/// connection goes back to the `Writer` either way.
///
/// It also holds the search words of the tasks its statements wrote, to index them in one go
/// just before `COMMIT` (`index_words_at_commit`): FTS5 writes the words pending in its memory to
/// the database, as a new segment, at every `SAVEPOINT`, and merges those segments as they pile
/// up. Indexed as each member wrote them, a batch of 17 creations made 17 segments and their
/// merges, a third of the writer's time; indexed at the end, one.
pub(super) struct WriterTx {
    conn: Option<rusqlite::Connection>,
    home: Writer,
    words: Vec<TaskWords>,
    /// How many of `words` were there when the open member's savepoint was opened: a rollback
    /// to the savepoint drops the ones after.
    words_at_savepoint: usize,
}

/// The words of a task to index, as `task_query::indexed_text` makes them.
struct TaskWords {
    task: TaskId,
    title: String,
    description: String,
    /// The task was created in this transaction: its search key holds no words yet.
    new: bool,
}

/// Tasks whose words one statement indexes (3 values each).
const WORDS_PER_INSERT: usize = 200;

/// One statement indexing `chunk`'s words under their tasks' search keys, in key order.
/// `CROSS JOIN` keeps the listed tasks the outer loop, each found by id: with a plain join and
/// the `ORDER BY`, SQLite's planner walked every task in key order instead (to skip the sort),
/// and each batch read the whole table (measured: 3,200 creations/s instead of 8,500).
fn words_insert(insert: &str, chunk: Vec<TaskWords>) -> Query {
    let mut statement = QueryBuilder::new(insert);
    statement.push(
        " INTO task_words (rowid, title, description) \
         SELECT t.search_key, v.column2, v.column3 FROM (",
    );
    statement.push_values(chunk, |mut row, w| {
        row.push_bind(w.task)
            .push_bind(w.title)
            .push_bind(w.description);
    });
    statement.push(
        ") AS v CROSS JOIN tasks t ON t.id = v.column1 WHERE t.search_key IS NOT NULL \
         ORDER BY t.search_key",
    );
    statement.build()
}

impl WriterTx {
    fn connection(&self) -> &rusqlite::Connection {
        self.conn
            .as_ref()
            .expect("a writer transaction holds its connection until it ends")
    }

    /// The connection the store's statements run on.
    pub(super) fn conn(&mut self) -> &mut rusqlite::Connection {
        self.conn
            .as_mut()
            .expect("a writer transaction holds its connection until it ends")
    }

    /// `BEGIN IMMEDIATE`, waiting at most `wait` for the write lock; statements after it wait
    /// at most `BUSY_WAIT` (in WAL mode a writer that holds the lock seldom waits at all).
    fn begin_immediate(&self, wait: Duration) -> Result<(), rusqlite::Error> {
        let conn = self.connection();
        conn.busy_timeout(wait)?;
        let begun = conn.execute_batch("BEGIN IMMEDIATE");
        conn.busy_timeout(BUSY_WAIT)?;
        begun
    }

    /// Runs fixed statements (savepoints), nothing bound.
    pub(super) fn run(&mut self, sql: &'static str) -> Result<(), sqlx::Error> {
        self.connection().execute_batch(sql).map_err(database)
    }

    /// Indexes the task's words (already made by `task_query::indexed_text`) just before the
    /// transaction commits, under the search key the task has then; `new`: the task was
    /// created in this transaction.
    pub(super) fn index_words_at_commit(
        &mut self,
        task: TaskId,
        title: String,
        description: String,
        new: bool,
    ) {
        self.words.push(TaskWords {
            task,
            title,
            description,
            new,
        });
    }

    /// Writes the words collected, each task's last, in few statements. Measured: a statement
    /// per task gained nothing over indexing in the members, and `OR REPLACE` for every task
    /// little (a contentless table writes its pending words before each row it replaces). The
    /// tasks created in this transaction have no words yet: a plain `INSERT` of all of them (200
    /// per statement); the others replace theirs. Joined to `tasks` by id: a task deleted since
    /// gets no words (they must not come back under a key that may be handed out again).
    fn index_words(&mut self) -> Result<(), sqlx::Error> {
        let mut words: Vec<TaskWords> = Vec::new();
        let mut at: std::collections::HashMap<TaskId, usize> = std::collections::HashMap::new();
        for w in std::mem::take(&mut self.words) {
            match at.get(&w.task) {
                // The last words count; whether it was created here, the first tells.
                Some(&i) => {
                    words[i].title = w.title;
                    words[i].description = w.description;
                }
                None => {
                    at.insert(w.task, words.len());
                    words.push(w);
                }
            }
        }
        let (new, changed): (Vec<TaskWords>, Vec<TaskWords>) =
            words.into_iter().partition(|w| w.new);
        // In ascending key order (the changed tasks' keys are mostly below the new ones'): FTS5
        // writes its pending words out whenever a rowid goes down.
        for (mut words, insert) in [(changed, "INSERT OR REPLACE"), (new, "INSERT")] {
            while !words.is_empty() {
                let rest = words.split_off(words.len().min(WORDS_PER_INSERT));
                let chunk = std::mem::replace(&mut words, rest);
                words_insert(insert, chunk).run(self.conn(), |_| Ok(Flow::Next))?;
            }
        }
        Ok(())
    }

    pub(super) fn savepoint_opened(&mut self) {
        self.words_at_savepoint = self.words.len();
    }

    pub(super) fn rolled_back_to_savepoint(&mut self) {
        self.words.truncate(self.words_at_savepoint);
    }

    /// Indexes the words of the tasks written (in the order they were written: the last words
    /// of a task win), then commits where the member runs: a `COMMIT` writes the batch's pages
    /// to the WAL and syncs nothing (`synchronous = NORMAL`), and it never checkpoints (the WAL
    /// hook replaces SQLite's automatic checkpoint). Measured: handing it to the blocking pool
    /// cost 8-10 % of one team's rate. A WAL past `WAL_BACKSTOP` is checkpointed after, on the
    /// blocking pool (it copies and syncs the database file), the lane still held.
    pub(super) async fn commit(mut self) -> Result<(), sqlx::Error> {
        self.index_words()?;
        WAL_PAGES.set(0);
        self.connection()
            .execute_batch("COMMIT")
            .map_err(database)?;
        if WAL_PAGES.get() < WAL_BACKSTOP {
            return Ok(());
        }
        // Committed whatever happens here: a failed checkpoint is retried after the next commit.
        match tokio::task::spawn_blocking(move || {
            self.connection()
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        })
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the writer's WAL checkpoint failed"),
            Err(e) => tracing::warn!(error = %e, "the writer's WAL checkpoint task failed"),
        }
        Ok(())
    }
}

impl Drop for WriterTx {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Uncommitted, or a `COMMIT` that failed and left the transaction open.
            if !conn.is_autocommit()
                && let Err(e) = conn.execute_batch("ROLLBACK")
            {
                tracing::warn!(error = %e, "rolling back a SQLite write transaction failed");
            }
            self.home.put_back(conn);
        }
    }
}

/// An error SQLite reported, as sqlx's SQLite driver reports it (same kinds, same codes).
#[derive(Debug)]
struct SqliteFailure {
    code: i32,
    message: String,
}

impl std::fmt::Display for SqliteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "(code: {}) {}", self.code, self.message)
    }
}

impl std::error::Error for SqliteFailure {}

impl sqlx::error::DatabaseError for SqliteFailure {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        Some(self.code.to_string().into())
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> BoxDynError {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        use rusqlite::ffi;
        use sqlx::error::ErrorKind;
        match self.code {
            ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                ErrorKind::UniqueViolation
            }
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => ErrorKind::ForeignKeyViolation,
            ffi::SQLITE_CONSTRAINT_NOTNULL => ErrorKind::NotNullViolation,
            ffi::SQLITE_CONSTRAINT_CHECK => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}

fn database(e: rusqlite::Error) -> sqlx::Error {
    match e {
        rusqlite::Error::SqliteFailure(failure, message) => {
            sqlx::Error::Database(Box::new(SqliteFailure {
                code: failure.extended_code,
                message: message.unwrap_or_else(|| failure.to_string()),
            }))
        }
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

/// A value bound to a statement, encoded as sqlx's SQLite driver encodes it.
pub(crate) trait Encode {
    fn encode(&self) -> Result<Value, BoxDynError>;
}

/// A column's value decoded as sqlx's SQLite driver decodes it.
pub(crate) trait Decode: Sized {
    fn decode(value: ValueRef<'_>) -> Result<Self, BoxDynError>;
}

impl<T: Encode + ?Sized> Encode for &T {
    fn encode(&self) -> Result<Value, BoxDynError> {
        (**self).encode()
    }
}

impl<T: Encode> Encode for Option<T> {
    fn encode(&self) -> Result<Value, BoxDynError> {
        match self {
            Some(v) => v.encode(),
            None => Ok(Value::Null),
        }
    }
}

impl<T: Decode> Decode for Option<T> {
    fn decode(value: ValueRef<'_>) -> Result<Self, BoxDynError> {
        match value {
            ValueRef::Null => Ok(None),
            v => T::decode(v).map(Some),
        }
    }
}

fn unexpected(what: &str, value: ValueRef<'_>) -> BoxDynError {
    format!(
        "cannot decode {what} from a value of type {}",
        value.data_type()
    )
    .into()
}

impl Encode for i64 {
    fn encode(&self) -> Result<Value, BoxDynError> {
        Ok(Value::Integer(*self))
    }
}

impl Decode for i64 {
    fn decode(value: ValueRef<'_>) -> Result<Self, BoxDynError> {
        match value {
            ValueRef::Integer(i) => Ok(i),
            ValueRef::Real(f) => Ok(f as i64),
            v => Err(unexpected("an integer", v)),
        }
    }
}

macro_rules! narrow_integers {
    ($($t:ty),+) => {$(
        impl Encode for $t {
            fn encode(&self) -> Result<Value, BoxDynError> {
                Ok(Value::Integer(i64::from(*self)))
            }
        }

        impl Decode for $t {
            fn decode(value: ValueRef<'_>) -> Result<Self, BoxDynError> {
                Ok(<$t>::try_from(i64::decode(value)?)?)
            }
        }
    )+};
}

narrow_integers!(i16, i32, u32);

impl Encode for bool {
    fn encode(&self) -> Result<Value, BoxDynError> {
        Ok(Value::Integer(i64::from(*self)))
    }
}

impl Decode for bool {
    fn decode(value: ValueRef<'_>) -> Result<Self, BoxDynError> {
        Ok(i64::decode(value)? != 0)
    }
}

impl Encode for f64 {
    fn encode(&self) -> Result<Value, BoxDynError> {
        Ok(Value::Real(*self))
    }
}

impl Decode for f64 {
    fn decode(value: ValueRef<'_>) -> Result<Self, BoxDynError> {
        match value {
            ValueRef::Real(f) => Ok(f),
            ValueRef::Integer(i) => Ok(i as f64),
            v => Err(unexpected("a real", v)),
        }
    }
}

impl Encode for str {
    fn encode(&self) -> Result<Value, BoxDynError> {
        Ok(Value::Text(self.to_owned()))
    }
}

impl Encode for String {
    fn encode(&self) -> Result<Value, BoxDynError> {
        Ok(Value::Text(self.clone()))
    }
}

impl Decode for String {
    fn decode(value: ValueRef<'_>) -> Result<Self, BoxDynError> {
        match value {
            ValueRef::Text(t) => Ok(std::str::from_utf8(t)?.to_owned()),
            ValueRef::Integer(i) => Ok(i.to_string()),
            ValueRef::Real(f) => Ok(f.to_string()),
            v => Err(unexpected("text", v)),
        }
    }
}

impl Encode for [u8] {
    fn encode(&self) -> Result<Value, BoxDynError> {
        Ok(Value::Blob(self.to_vec()))
    }
}

impl Encode for Vec<u8> {
    fn encode(&self) -> Result<Value, BoxDynError> {
        Ok(Value::Blob(self.clone()))
    }
}

impl Decode for Vec<u8> {
    fn decode(value: ValueRef<'_>) -> Result<Self, BoxDynError> {
        match value {
            ValueRef::Blob(b) | ValueRef::Text(b) => Ok(b.to_vec()),
            v => Err(unexpected("a blob", v)),
        }
    }
}

/// UUIDs as their 16 bytes, as sqlx binds them.
impl Encode for Uuid {
    fn encode(&self) -> Result<Value, BoxDynError> {
        Ok(Value::Blob(self.as_bytes().to_vec()))
    }
}

impl Decode for Uuid {
    fn decode(value: ValueRef<'_>) -> Result<Self, BoxDynError> {
        match value {
            ValueRef::Blob(b) => Ok(Uuid::from_slice(b)?),
            v => Err(unexpected("a UUID", v)),
        }
    }
}

macro_rules! ids {
    ($($id:ty),+) => {$(
        impl Encode for $id {
            fn encode(&self) -> Result<Value, BoxDynError> {
                self.as_uuid().encode()
            }
        }

        impl Decode for $id {
            fn decode(value: ValueRef<'_>) -> Result<Self, BoxDynError> {
                Uuid::decode(value).map(<$id>::from_uuid)
            }
        }
    )+};
}

ids!(
    UserId,
    TeamId,
    BoardId,
    TaskId,
    CommentId,
    ActivityId,
    SessionId,
    NotificationId,
    WebhookId,
    LabelId
);

/// RFC 3339, as sqlx formats an `OffsetDateTime` for SQLite.
impl Encode for OffsetDateTime {
    fn encode(&self) -> Result<Value, BoxDynError> {
        Ok(Value::Text(
            self.format(&time::format_description::well_known::Rfc3339)?,
        ))
    }
}

impl Decode for OffsetDateTime {
    fn decode(value: ValueRef<'_>) -> Result<Self, BoxDynError> {
        match value {
            ValueRef::Text(t) => {
                let text = std::str::from_utf8(t)?;
                timestamp_from_text(text)
                    .ok_or_else(|| format!("invalid offset datetime: {text}").into())
            }
            ValueRef::Integer(seconds) => Ok(OffsetDateTime::from_unix_timestamp(seconds)?),
            v => Err(unexpected("a timestamp", v)),
        }
    }
}

/// A timestamp as text, in the forms sqlx's SQLite driver reads: RFC 3339 (what the store
/// writes), or SQLite's own `YYYY-MM-DD HH:MM[:SS[.SSS]]` (`datetime()`, or with a `T`) with an
/// offset, or in UTC without one.
fn timestamp_from_text(text: &str) -> Option<OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    use time::macros::format_description;
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return Some(at);
    }
    let with_offset = format_description!(
        version = 2,
        "[year]-[month]-[day][optional [ ]][optional [T]][hour]:[minute][optional [:]][optional [[second]]][optional [.]][optional [[subsecond]]][optional [[offset_hour sign:mandatory]]][optional [:]][optional [[offset_minute]]]"
    );
    if let Ok(at) = OffsetDateTime::parse(text, with_offset) {
        return Some(at);
    }
    let utc = [
        format_description!(
            version = 2,
            "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond]"
        ),
        format_description!(
            version = 2,
            "[year]-[month]-[day] [hour]:[minute][optional [:]][optional [[second]]][optional [.]][optional [[subsecond]]][optional [Z]]"
        ),
        format_description!(
            version = 2,
            "[year]-[month]-[day]T[hour]:[minute][optional [:]][optional [[second]]][optional [.]][optional [[subsecond]]][optional [Z]]"
        ),
    ];
    utc.iter().find_map(|format| {
        time::PrimitiveDateTime::parse(text, format)
            .ok()
            .map(time::PrimitiveDateTime::assume_utc)
    })
}

/// The fixed-width text `StoredTime` stands for (see there).
impl Encode for StoredTime {
    fn encode(&self) -> Result<Value, BoxDynError> {
        Ok(Value::Text(crate::domain::model::timestamp::format(
            &self.0,
        )))
    }
}

const DATE: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]");

impl Encode for time::Date {
    fn encode(&self) -> Result<Value, BoxDynError> {
        Ok(Value::Text(self.format(DATE)?))
    }
}

impl Decode for time::Date {
    fn decode(value: ValueRef<'_>) -> Result<Self, BoxDynError> {
        match value {
            ValueRef::Text(t) => Ok(time::Date::parse(std::str::from_utf8(t)?, DATE)?),
            v => Err(unexpected("a date", v)),
        }
    }
}

/// A row decoded from its columns by name (`row!` derives it beside sqlx's `FromRow`), or a
/// tuple decoded by position.
pub(crate) trait FromRow: Sized {
    fn from_row(row: &rusqlite::Row<'_>) -> Result<Self, sqlx::Error>;
}

/// One field of a `row!`: a column by its name, or a row flattened into it.
pub(crate) trait Field: Sized {
    fn field(row: &rusqlite::Row<'_>, name: &str) -> Result<Self, sqlx::Error>;
}

impl<T: Decode> Field for T {
    fn field(row: &rusqlite::Row<'_>, name: &str) -> Result<Self, sqlx::Error> {
        let value = row
            .get_ref(name)
            .map_err(|_| sqlx::Error::ColumnNotFound(name.into()))?;
        T::decode(value).map_err(|source| sqlx::Error::ColumnDecode {
            index: format!("{name:?}"),
            source,
        })
    }
}

fn column<T: Decode>(row: &rusqlite::Row<'_>, index: usize) -> Result<T, sqlx::Error> {
    let value = row
        .get_ref(index)
        .map_err(|_| sqlx::Error::ColumnIndexOutOfBounds {
            index,
            len: row.as_ref().column_count(),
        })?;
    T::decode(value).map_err(|source| sqlx::Error::ColumnDecode {
        index: index.to_string(),
        source,
    })
}

macro_rules! tuples {
    ($(($($t:ident $i:tt),+))+) => {$(
        impl<$($t: Decode),+> FromRow for ($($t,)+) {
            fn from_row(row: &rusqlite::Row<'_>) -> Result<Self, sqlx::Error> {
                Ok(($(column::<$t>(row, $i)?,)+))
            }
        }
    )+};
}

tuples! {
    (A 0)
    (A 0, B 1)
    (A 0, B 1, C 2)
    (A 0, B 1, C 2, D 3)
    (A 0, B 1, C 2, D 3, E 4)
    (A 0, B 1, C 2, D 3, E 4, F 5)
}

/// What `execute` reports.
#[derive(Debug)]
pub(crate) struct QueryResult {
    rows_affected: u64,
}

impl QueryResult {
    pub(crate) fn rows_affected(&self) -> u64 {
        self.rows_affected
    }
}

/// The statements of `sql`, split at the semicolons outside quotes and comments (sqlx runs a
/// query of several statements one after another, binding each by its own placeholders).
fn statements(sql: &str) -> impl Iterator<Item = &str> {
    let bytes = sql.as_bytes();
    let mut parts = Vec::new();
    let (mut start, mut i) = (0, 0);
    if !bytes.contains(&b';') {
        // Most queries: one statement, not worth a walk of their text (a 200-row insert's is long).
        i = bytes.len();
    }
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'\'' | b'"' | b'`') => {
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    i += 1;
                }
            }
            b'[' => {
                while i < bytes.len() && bytes[i] != b']' {
                    i += 1;
                }
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b';' => {
                parts.push(&sql[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(&sql[start.min(sql.len())..]);
    parts.into_iter().filter(|s| !s.trim().is_empty())
}

/// Binds `args` to `statement` by its placeholders' numbers (`$n`, `?n`), as sqlx does; plain
/// `?` take the arguments in order, counted across the statements of the query (`next`).
fn bind(
    statement: &mut rusqlite::Statement<'_>,
    args: &[Value],
    next: &mut usize,
) -> Result<(), sqlx::Error> {
    for i in 1..=statement.parameter_count() {
        let n = match statement.parameter_name(i) {
            Some(name) => name
                .get(1..)
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| sqlx::Error::Protocol(format!("unnumbered parameter {name}")))?,
            None => {
                *next += 1;
                *next
            }
        };
        let value = n.checked_sub(1).and_then(|n| args.get(n)).ok_or_else(|| {
            sqlx::Error::Protocol(format!(
                "parameter ${n} has no value ({} bound)",
                args.len()
            ))
        })?;
        statement.raw_bind_parameter(i, value).map_err(database)?;
    }
    Ok(())
}

/// Runs every statement of `sql` with `args`, handing each row returned to `on_row`; returns
/// the rows changed.
fn run(
    conn: &rusqlite::Connection,
    sql: &str,
    args: &[Value],
    persistent: bool,
    mut on_row: impl FnMut(&rusqlite::Row<'_>) -> Result<Flow, sqlx::Error>,
) -> Result<u64, sqlx::Error> {
    let mut changed = 0;
    let mut next = 0;
    for piece in statements(sql) {
        let mut cached;
        let mut once;
        let statement: &mut rusqlite::Statement<'_> = if persistent {
            cached = conn.prepare_cached(piece).map_err(database)?;
            &mut cached
        } else {
            once = conn.prepare(piece).map_err(database)?;
            &mut once
        };
        bind(statement, args, &mut next)?;
        let readonly = statement.readonly();
        let mut rows = statement.raw_query();
        while let Some(row) = rows.next().map_err(database)? {
            if on_row(row)? == Flow::Stop {
                // As sqlx's `fetch_optional`: the rest of the rows, and of the statements, are
                // not run.
                return Ok(changed);
            }
        }
        drop(rows);
        if !readonly {
            changed += conn.changes();
        }
    }
    Ok(changed)
}

/// Whether a query goes on to its next row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Next,
    Stop,
}

/// The query API of the writer, named as sqlx's, for `impl_tx!`.
pub(crate) mod api {
    pub(crate) use super::{QueryBuilder, bind_all, query, query_as};
}

/// A statement (or several) with its arguments.
pub(crate) struct Query {
    sql: sqlx::SqlStr,
    args: Vec<Value>,
    /// The first argument that failed to encode: the query fails with it.
    failed: Option<BoxDynError>,
    persistent: bool,
    /// It may touch many rows (`sql::Heavy`).
    heavy: bool,
}

pub(crate) fn query(sql: impl sqlx::SqlSafeStr) -> Query {
    Query {
        sql: sql.into_sql_str(),
        args: Vec::new(),
        failed: None,
        persistent: true,
        heavy: false,
    }
}

pub(crate) fn query_as<O: FromRow>(sql: impl sqlx::SqlSafeStr) -> QueryAs<O> {
    QueryAs {
        query: query(sql),
        row: PhantomData,
    }
}

impl Query {
    pub(crate) fn bind<T: Encode>(mut self, value: T) -> Self {
        self.push(&value);
        self
    }

    fn push<T: Encode + ?Sized>(&mut self, value: &T) {
        match value.encode() {
            Ok(v) => self.args.push(v),
            Err(e) => {
                self.args.push(Value::Null);
                self.failed.get_or_insert(e);
            }
        }
    }

    /// Whether the statement is kept prepared (off for SQL built per call).
    pub(crate) fn persistent(mut self, keep: bool) -> Self {
        self.persistent = keep;
        self
    }

    fn run(
        self,
        conn: &rusqlite::Connection,
        on_row: impl FnMut(&rusqlite::Row<'_>) -> Result<Flow, sqlx::Error>,
    ) -> Result<u64, sqlx::Error> {
        if let Some(e) = self.failed {
            return Err(sqlx::Error::Encode(e));
        }
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if self.heavy && multi_thread {
            // The worker's other tasks move to another thread while this one blocks.
            tokio::task::block_in_place(|| {
                run(conn, self.sql.as_str(), &self.args, self.persistent, on_row)
            })
        } else {
            run(conn, self.sql.as_str(), &self.args, self.persistent, on_row)
        }
    }

    pub(crate) async fn execute(
        self,
        conn: &mut rusqlite::Connection,
    ) -> Result<QueryResult, sqlx::Error> {
        let rows_affected = self.run(conn, |_| Ok(Flow::Next))?;
        Ok(QueryResult { rows_affected })
    }
}

impl super::sql::Heavy for Query {
    fn heavy(mut self) -> Self {
        self.heavy = true;
        self
    }
}

/// A query whose rows decode to `O`.
pub(crate) struct QueryAs<O> {
    query: Query,
    row: PhantomData<fn() -> O>,
}

impl<O> super::sql::Heavy for QueryAs<O> {
    fn heavy(mut self) -> Self {
        self.query.heavy = true;
        self
    }
}

impl<O: FromRow> QueryAs<O> {
    pub(crate) fn bind<T: Encode>(mut self, value: T) -> Self {
        self.query.push(&value);
        self
    }

    pub(crate) fn persistent(mut self, keep: bool) -> Self {
        self.query.persistent = keep;
        self
    }

    pub(crate) async fn fetch_all(
        self,
        conn: &mut rusqlite::Connection,
    ) -> Result<Vec<O>, sqlx::Error> {
        let mut out = Vec::new();
        self.query.run(conn, |row| {
            out.push(O::from_row(row)?);
            Ok(Flow::Next)
        })?;
        Ok(out)
    }

    pub(crate) async fn fetch_optional(
        self,
        conn: &mut rusqlite::Connection,
    ) -> Result<Option<O>, sqlx::Error> {
        let mut out = None;
        self.query.run(conn, |row| {
            out = Some(O::from_row(row)?);
            Ok(Flow::Stop)
        })?;
        Ok(out)
    }

    pub(crate) async fn fetch_one(self, conn: &mut rusqlite::Connection) -> Result<O, sqlx::Error> {
        self.fetch_optional(conn)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }
}

/// Binds a built query's arguments in order (as `sql::bind_all` does for sqlx).
pub(crate) fn bind_all<O: FromRow>(q: QueryAs<O>, args: Vec<super::task_query::Arg>) -> QueryAs<O> {
    super::task_query::bind_args!(q, args)
}

/// SQL with its arguments built piece by piece, as sqlx's `QueryBuilder` (placeholders `?`).
pub(crate) struct QueryBuilder {
    sql: String,
    query: Query,
}

impl QueryBuilder {
    pub(crate) fn new(init: impl Into<String>) -> Self {
        Self {
            sql: init.into(),
            query: query(""),
        }
    }

    pub(crate) fn push(&mut self, sql: impl std::fmt::Display) -> &mut Self {
        use std::fmt::Write;
        let _ = write!(self.sql, "{sql}");
        self
    }

    /// A plain `?`, as sqlx's builder writes: numbered placeholders would cost a lookup by name
    /// each when bound (SQLite walks its list of names: quadratic in a 3,400-value insert).
    pub(crate) fn push_bind<T: Encode>(&mut self, value: T) -> &mut Self {
        self.query.push(&value);
        self.push("?")
    }

    /// `VALUES (...), (...)`: one parenthesized row per item, its values pushed by `row`.
    pub(crate) fn push_values<I, F>(&mut self, items: I, mut row: F) -> &mut Self
    where
        I: IntoIterator,
        F: FnMut(Separated<'_>, I::Item),
    {
        self.push("VALUES ");
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.push("(");
            row(
                Separated {
                    builder: self,
                    first: true,
                },
                item,
            );
            self.push(")");
        }
        self
    }

    /// The query, its SQL kept (so `persistent(false)` applies as on sqlx).
    pub(crate) fn build(&mut self) -> Query {
        let sql = std::mem::take(&mut self.sql);
        let mut built = std::mem::replace(&mut self.query, query(""));
        built.sql = sqlx::AssertSqlSafe(sql).into_sql_str();
        built
    }
}

/// One row of `push_values`: its values separated by commas.
pub(crate) struct Separated<'b> {
    builder: &'b mut QueryBuilder,
    first: bool,
}

impl Separated<'_> {
    pub(crate) fn push_bind<T: Encode>(&mut self, value: T) -> &mut Self {
        if !self.first {
            self.builder.push(", ");
        }
        self.first = false;
        self.builder.push_bind(value);
        self
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Debug;

    use sqlx::{Row, Sqlite};
    use time::macros::datetime;

    use super::*;

    /// Written by sqlx and by the writer, a value must be stored as the same bytes (SQL compares
    /// them: ids, timestamps as text), and each must decode what the other wrote.
    async fn stored_alike<T>(dir: &std::path::Path, value: T)
    where
        T: Encode
            + Decode
            + for<'q> sqlx::Encode<'q, Sqlite>
            + for<'r> sqlx::Decode<'r, Sqlite>
            + sqlx::Type<Sqlite>
            + PartialEq
            + Debug
            + Clone
            + Send
            + Sync
            + Unpin
            + 'static,
    {
        let path = dir.join("alike.db");
        let _ = std::fs::remove_file(&path);
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        let pool = sqlx::SqlitePool::connect_with(options)
            .await
            .expect("opens");
        sqlx::query("CREATE TABLE t (k INTEGER PRIMARY KEY, v)")
            .execute(&pool)
            .await
            .expect("a table");
        sqlx::query("INSERT INTO t VALUES (1, $1)")
            .bind(value.clone())
            .execute(&pool)
            .await
            .expect("sqlx writes");
        let writer = Writer::open(&path).expect("the writer opens");
        let mut tx = writer.begin().await.expect("begins");
        query("INSERT INTO t VALUES (2, $1)")
            .bind(value.clone())
            .execute(tx.conn())
            .await
            .expect("the writer writes");
        let (back,): (T,) = query_as("SELECT v FROM t WHERE k = 1")
            .fetch_one(tx.conn())
            .await
            .expect("the writer reads what sqlx wrote");
        assert_eq!(back, value);
        tx.commit().await.expect("commits");
        let rows = sqlx::query("SELECT typeof(v), hex(v) FROM t ORDER BY k")
            .fetch_all(&pool)
            .await
            .expect("reads");
        let stored: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(stored[0], stored[1], "{value:?} stored differently");
        let back: T = sqlx::query_scalar("SELECT v FROM t WHERE k = 2")
            .fetch_one(&pool)
            .await
            .expect("sqlx reads what the writer wrote");
        assert_eq!(back, value);
    }

    /// A batch's words find each listed task by its id; a walk of the tasks would read the
    /// whole table at every commit. Asked of SQLite's planner for one task, a batch's worth and
    /// a full statement, both kinds of insert.
    #[tokio::test]
    async fn a_batchs_words_find_their_tasks_by_id() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("words.db");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        crate::store::SqliteStore::open(&url, 64)
            .await
            .expect("opens and migrates");
        let writer = Writer::open(&path).expect("the writer opens");
        let mut tx = writer.begin().await.expect("begins");
        for n in [1, 32, WORDS_PER_INSERT] {
            for insert in ["INSERT", "INSERT OR REPLACE"] {
                let chunk = (0..n)
                    .map(|_| TaskWords {
                        task: TaskId::from(Uuid::now_v7()),
                        title: "a title".into(),
                        description: "words".into(),
                        new: true,
                    })
                    .collect();
                let mut statement = words_insert(insert, chunk);
                statement.sql =
                    sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {}", statement.sql.as_str()))
                        .into_sql_str();
                let mut plan: Vec<String> = Vec::new();
                statement
                    .run(tx.conn(), |row| {
                        plan.push(row.get(3).map_err(database)?);
                        Ok(Flow::Next)
                    })
                    .expect("explains");
                let by_id = plan
                    .iter()
                    .any(|l| l.starts_with("SEARCH t USING INDEX sqlite_autoindex_tasks_1 (id=?)"));
                let walks = plan.iter().any(|l| {
                    (l.starts_with("SCAN t") || l.starts_with("SEARCH t ")) && !l.contains("(id=?)")
                });
                assert!(
                    by_id && !walks,
                    "{insert}, {n} tasks: not found by id:\n  {}",
                    plan.join("\n  ")
                );
            }
        }
    }

    #[tokio::test]
    async fn values_are_stored_as_sqlx_stores_them() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let dir = dir.path();
        stored_alike(dir, Uuid::now_v7()).await;
        stored_alike(dir, TeamId::from_uuid(Uuid::now_v7())).await;
        stored_alike(dir, Some(UserId::from_uuid(Uuid::now_v7()))).await;
        stored_alike(dir, None::<UserId>).await;
        stored_alike(dir, datetime!(2026-12-06 14:48:19.123456789 UTC)).await;
        stored_alike(dir, datetime!(2026-12-06 14:48:19 UTC)).await;
        stored_alike(dir, datetime!(2026-12-06 14:48:19.5 +02:00)).await;
        stored_alike(dir, time::macros::date!(2027 - 01 - 31)).await;
        stored_alike(dir, -3_i64).await;
        stored_alike(dir, 7_i16).await;
        stored_alike(dir, 0.1_f64).await;
        stored_alike(dir, true).await;
        stored_alike(dir, "a title; 'quoted'".to_owned()).await;
        stored_alike(dir, vec![0_u8, 1, 255]).await;
    }

    #[tokio::test]
    async fn stored_times_are_written_as_sqlx_writes_them() {
        let at = datetime!(2026-12-06 14:48:19 UTC);
        let pool = sqlx::SqlitePool::connect("sqlite::memory:")
            .await
            .expect("opens");
        let (text,): (String,) = sqlx::query_as("SELECT $1")
            .bind(StoredTime(at))
            .fetch_one(&pool)
            .await
            .expect("reads");
        assert_eq!(text, "2026-12-06T14:48:19.000Z");
        assert_eq!(StoredTime(at).encode().expect("encodes"), Value::Text(text));
    }

    #[tokio::test]
    async fn timestamps_in_sqlites_own_forms_decode_as_sqlx_decodes_them() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:")
            .await
            .expect("opens");
        for text in [
            "2026-12-06 14:48:19",
            "2026-12-06 14:48:19.250",
            "2026-12-06T14:48:19Z",
            "2026-12-06 14:48",
            "2026-12-06 14:48:19.5+02:00",
            "2026-12-06 14:48:19+0200",
            "2026-12-06T14:48:19-02",
            "2026-12-06T14:48:19.125",
        ] {
            let (by_sqlx,): (OffsetDateTime,) = sqlx::query_as("SELECT $1")
                .bind(text)
                .fetch_one(&pool)
                .await
                .expect("sqlx decodes it");
            let ours = OffsetDateTime::decode(ValueRef::Text(text.as_bytes()))
                .expect("the writer decodes it");
            assert_eq!(ours, by_sqlx, "{text}");
        }
        assert!(OffsetDateTime::decode(ValueRef::Text(b"yesterday")).is_err());
    }

    /// How SQLite plans FTS5's delete of a segment's pages, on the writer's statistics.
    fn segment_delete_plan(tx: &mut WriterTx) -> String {
        let mut explain = tx
            .conn()
            .prepare("EXPLAIN QUERY PLAN DELETE FROM task_words_data WHERE id >= ?1 AND id <= ?2")
            .expect("explains");
        let details = explain
            .query_map([1, 2], |row| row.get::<_, String>(3))
            .expect("a plan")
            .collect::<Result<Vec<_>, _>>()
            .expect("its lines");
        details.join("; ")
    }

    /// The search index's own tables keep no statistics (`SqliteStore::open`): analyzed at a
    /// first start, FTS5's data table counts 2 rows, and on that count SQLite plans FTS5's
    /// delete of a merged segment's pages as a scan of the whole index. On a new database and
    /// on one whose index grew, the writer's plan of that delete seeks by rowid, and the other
    /// tables keep their statistics (the migrations' table, the one with rows here).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_search_index_keeps_no_statistics_and_its_segments_are_deleted_by_rowid() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("grown.db");
        let url = format!("sqlite://{}", path.display());
        // Opens the store (which analyzes), then reads the writer's plan and the statistics.
        let open_and_check = async |when: &str| {
            drop(
                super::super::SqliteStore::open(&url, 64)
                    .await
                    .expect("created or opened, migrated and analyzed"),
            );
            let writer = Writer::open(&path).expect("the writer opens");
            let mut tx = writer.begin().await.expect("begins");
            let plan = segment_delete_plan(&mut tx);
            let kept: Vec<String> = query_as("SELECT tbl FROM sqlite_stat1 ORDER BY tbl")
                .fetch_all(tx.conn())
                .await
                .expect("the statistics")
                .into_iter()
                .map(|(tbl,)| tbl)
                .collect();
            assert!(
                plan.contains("SEARCH") && plan.contains("INTEGER PRIMARY KEY"),
                "{when}: {plan}"
            );
            assert!(
                !kept.iter().any(|t| t.starts_with("task_words"))
                    && kept.iter().any(|t| t == "_sqlx_migrations"),
                "FTS5's statistics gone, the others kept: {kept:?}"
            );
        };
        open_and_check("a new database").await;

        let writer = Writer::open(&path).expect("the writer opens");
        for batch in 0..30 {
            let mut tx = writer.begin().await.expect("begins");
            for row in 0..20 {
                let key = batch * 20 + row + 1;
                let words = (0..40)
                    .map(|w| format!("word{key}x{w}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                tx.conn()
                    .execute(
                        "INSERT INTO task_words (rowid, title, description) VALUES (?1, ?2, ?3)",
                        rusqlite::params![key, format!("title{key}"), words],
                    )
                    .expect("indexed");
            }
            tx.commit().await.expect("commits");
        }
        drop(writer);
        open_and_check("after the index grew").await;
    }

    #[tokio::test]
    async fn a_write_lock_held_elsewhere_is_waited_for_off_the_async_thread() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("busy.db");
        let other = rusqlite::Connection::open(&path).expect("opens");
        other
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (k INTEGER PRIMARY KEY)")
            .expect("a table");
        let writer = Writer::open(&path).expect("the writer opens");
        other
            .execute_batch("BEGIN IMMEDIATE")
            .expect("holds the lock");
        let begin = tokio::spawn({
            let writer = writer.clone();
            async move { writer.begin().await.map(drop) }
        });
        // This (current-thread) runtime keeps running while the writer waits.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!begin.is_finished(), "it waits for the lock");
        other.execute_batch("COMMIT").expect("lets go");
        begin
            .await
            .expect("the task")
            .expect("begins once the lock is free");
        writer.begin().await.expect("the connection came back");
    }

    #[tokio::test]
    async fn fetch_optional_runs_no_further_than_its_first_row() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("first.db");
        rusqlite::Connection::open(&path)
            .and_then(|c| c.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
            .expect("a table");
        let writer = Writer::open(&path).expect("the writer opens");
        let mut tx = writer.begin().await.expect("begins");
        let first: Option<(i64,)> =
            query_as("SELECT 7 UNION ALL SELECT 8; INSERT INTO t VALUES (1)")
                .fetch_optional(tx.conn())
                .await
                .expect("reads");
        assert_eq!(first, Some((7,)));
        let (n,): (i64,) = query_as("SELECT COUNT(*) FROM t")
            .fetch_one(tx.conn())
            .await
            .expect("counts");
        assert_eq!(n, 0, "the statement after the first row did not run");
    }

    #[test]
    fn a_database_in_memory_is_refused() {
        for name in [":memory:", "file:sqlx-in-memory-1"] {
            assert!(
                matches!(
                    Writer::open(std::path::Path::new(name)),
                    Err(sqlx::Error::Configuration(_))
                ),
                "{name}"
            );
        }
    }

    #[tokio::test]
    async fn a_failing_statement_reports_the_kind_sqlx_reports() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("kinds.db");
        let writer = {
            let conn = rusqlite::Connection::open(&path).expect("opens");
            conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY)")
                .expect("a table");
            drop(conn);
            Writer::open(&path).expect("the writer opens")
        };
        let mut tx = writer.begin().await.expect("begins");
        query("INSERT INTO t VALUES ($1)")
            .bind(1_i64)
            .execute(tx.conn())
            .await
            .expect("inserts");
        let err = query("INSERT INTO t VALUES ($1)")
            .bind(1_i64)
            .execute(tx.conn())
            .await
            .expect_err("a duplicate");
        match err {
            sqlx::Error::Database(d) => assert!(d.is_unique_violation(), "{d}"),
            other => panic!("not a database error: {other}"),
        }
        drop(tx);
        // Dropped uncommitted: rolled back, and the connection is back for the next one.
        let mut tx = writer.begin().await.expect("the connection came back");
        let (n,): (i64,) = query_as("SELECT COUNT(*) FROM t")
            .fetch_one(tx.conn())
            .await
            .expect("counts");
        assert_eq!(n, 0);
    }

    #[test]
    fn statements_split_at_semicolons_outside_quotes() {
        let sql = "UPDATE t SET a = 'x;y' WHERE b = $1; INSERT INTO \"u;v\" VALUES ($2);  ";
        let parts: Vec<&str> = statements(sql).map(str::trim).collect();
        assert_eq!(
            parts,
            [
                "UPDATE t SET a = 'x;y' WHERE b = $1",
                "INSERT INTO \"u;v\" VALUES ($2)"
            ]
        );
    }
}
