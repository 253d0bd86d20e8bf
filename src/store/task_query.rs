//! The SQL of a filtered, sorted page of a team's tasks, and of a ranked search.
//!
//! One builder for both backends: the text differs only where a search meets its index (FTS5 on
//! SQLite, a `tsvector` on PostgreSQL). Every value is a bound parameter; only placeholders and
//! fixed fragments go into the text. Each filter and each sort has an index led by the team
//! (migrations `*_labels_and_search.sql`), and pages are key-set (`(key, id) > (k, i)`), so a page
//! costs an index range scan however deep it is.

use time::{Date, OffsetDateTime};
use uuid::Uuid;

use crate::domain::search::{
    AssigneeFilter, SortField, SortKey, TaskCursor, TaskFilter, TaskSort, text_words,
};
use crate::domain::{TaskStatus, TeamId};

/// The columns every task query reads (a `TaskRow`).
pub const TASK_COLUMNS: &str = super::sql::task_columns!();

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// What every PostgreSQL read transaction sets first (see `PgStore::read`): a random page read
/// costs little more than a sequential one when the tasks are in memory or on SSD. At the default
/// (4) the planner walked the primary key (every team's tasks in id order, correlated with the
/// table's layout) rather than the team's own index in the same order, reading the other teams'
/// rows too (66,677 of them to find 500 matches of two words).
pub const PG_READ_SETTING: &str = "SET LOCAL random_page_cost = 1.1";

/// A bound value.
#[derive(Debug, Clone)]
pub enum Arg {
    Id(Uuid),
    Text(String),
    SmallInt(i16),
    Int(i64),
    Real(f64),
    Date(Date),
    Time(OffsetDateTime),
}

/// Binds a built query's arguments (`Vec<Arg>`) to a query, in order, and gives the query back:
/// the Rust type each `Arg` binds as, written once for sqlx's queries (`sql::bind_all`) and the
/// SQLite writer's (`sqlite_writer::bind_all`), whose `bind` methods are not one trait's.
macro_rules! bind_args {
    ($query:expr, $args:expr) => {{
        use $crate::store::sql::StoredTime;
        use $crate::store::task_query::Arg;
        let mut q = $query;
        for a in $args {
            q = match a {
                Arg::Id(v) => q.bind(v),
                Arg::Text(v) => q.bind(v),
                Arg::SmallInt(v) => q.bind(v),
                Arg::Int(v) => q.bind(v),
                Arg::Real(v) => q.bind(v),
                Arg::Date(v) => q.bind(v),
                Arg::Time(v) => q.bind(StoredTime(v)),
            };
        }
        q
    }};
}
pub(super) use bind_args;

/// SQL text with its arguments, `$1` … `$n` in order.
#[derive(Debug, Default)]
pub struct Built {
    pub sql: String,
    pub args: Vec<Arg>,
}

impl Built {
    /// Binds `a` and returns its placeholder.
    fn arg(&mut self, a: Arg) -> String {
        self.args.push(a);
        format!("${}", self.args.len())
    }

    fn list(&mut self, args: impl IntoIterator<Item = Arg>) -> String {
        args.into_iter()
            .map(|a| self.arg(a))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The due-date sort reads dated tasks by the index, then the undated ones by id: the part a
/// query covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    All,
    Dated,
    Undated,
}

/// How a part of a page is read. The planners choose well for one filter in the default sort
/// (each has an index that yields the team's matches in id order), but a mix of filters, or a
/// filter in another sort, leaves them to guess where the matches lie: walking the sort's index
/// hoping to meet a page of matches early (PostgreSQL read 800,000 rows for tasks due in one
/// month, all at the end of the id order), or finding every match of the most selective-looking
/// filter and sorting them (SQLite and PostgreSQL read a label's 19,582 tasks to keep 50). The
/// store bounds both: `Walk` first, `Matches` when the walk did not fill the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// As the database's planner chooses: one filter (or none) in the default sort.
    Planner,
    /// The first `n` tasks of the team in the sort's order after the cursor, then the filter:
    /// bounded by `n` however the matches lie. A full page is the right page (every task before
    /// the last one kept was looked at); a short one says nothing.
    Walk(i64),
    /// Every task passing the filter, then sorted (PostgreSQL: a materialized CTE, so that the
    /// planner cannot turn it into a walk): bounded by the number of matches.
    Matches,
}

/// The tasks a `Walk` looks at: a page of 50 is filled by a walk when about 1 % or more of the
/// tasks in the sort's order match. Measured on 100,000 tasks a team (`bench/search.sh`).
pub const WALK_ROWS: i64 = 5000;

/// The ways to try, in order, for a page with `filter` in `sort`.
pub fn accesses(dialect: Dialect, filter: &TaskFilter, sort: TaskSort) -> &'static [Access] {
    let kinds = [
        filter.board_id.is_some(),
        !filter.statuses.is_empty(),
        !filter.priorities.is_empty(),
        filter.assignee.is_some(),
        !filter.label_ids.is_empty(),
        filter.due_after.is_some() || filter.due_before.is_some(),
        !filter.words.is_empty(),
    ]
    .into_iter()
    .filter(|k| *k)
    .count();
    // A due-date range's index yields its tasks in due order, not in id order. SQLite's planner
    // reads the range and sorts it (2 ms for a month of 100,000 tasks); PostgreSQL's walked the
    // team's ids hoping to meet the month's tasks early, and they were the newest (317 ms).
    let due = filter.due_after.is_some() || filter.due_before.is_some();
    match (kinds, sort.field) {
        (0, _) => &[Access::Planner],
        (1, SortField::CreatedAt) if !(due && dialect == Dialect::Postgres) => &[Access::Planner],
        _ => &[Access::Walk(WALK_ROWS), Access::Matches],
    }
}

/// The parts a page after `after` reads, in order.
pub fn parts(sort: TaskSort, after: Option<&TaskCursor>) -> &'static [Part] {
    match (sort.field, after.map(|c| c.key)) {
        (SortField::DueDate, Some(SortKey::DueDate(None))) => &[Part::Undated],
        (SortField::DueDate, _) => &[Part::Dated, Part::Undated],
        _ => &[Part::All],
    }
}

fn column(field: SortField) -> &'static str {
    match field {
        SortField::CreatedAt => "id",
        SortField::UpdatedAt => "updated_at",
        SortField::DueDate => "due_date",
        SortField::Priority => "priority_rank",
        SortField::Position => "position",
    }
}

fn key_arg(key: SortKey) -> Option<Arg> {
    match key {
        SortKey::Id | SortKey::DueDate(None) => None,
        SortKey::UpdatedAt(t) => Some(Arg::Time(t)),
        SortKey::DueDate(Some(d)) => Some(Arg::Date(d)),
        SortKey::Priority(p) => Some(Arg::SmallInt(p)),
        SortKey::Position(p) => Some(Arg::Real(p)),
    }
}

/// A word as SQLite's search index holds it: scoped to its team (`t<team hex>x<word>`), so that a
/// search reads the postings of its team's words only.
fn team_word(team: TeamId, word: &str) -> String {
    format!("t{}x{word}", Uuid::from(team).simple())
}

/// What SQLite indexes for a text of `team`: its words (`search::text_words`), scoped.
pub fn indexed_text(team: TeamId, text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for w in text_words(text) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&team_word(team, &w));
    }
    out
}

/// The FTS5 query of `words` within one team: every word as a prefix, in the title or the
/// description. Words are letters and digits only (`search::words`), and each is quoted besides.
pub fn fts5_match(team: TeamId, words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("\"{}\" *", team_word(team, w).replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The `tsquery` of `words`: every word as a prefix (PostgreSQL indexes words without their
/// team: see migration 0010).
pub fn tsquery(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("'{}':*", w.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(" & ")
}

/// Appends the filter's conditions (after `WHERE team_id = …`). After a walk (`walked`), a label
/// is probed task by task: the walk's few thousand probes cost less than listing a frequent
/// label's tasks (19,582 of 100,000: 9 ms against 6 in the label combination of the benchmark).
fn filter(b: &mut Built, dialect: Dialect, team: TeamId, f: &TaskFilter, walked: bool) {
    if let Some(board) = f.board_id {
        let p = b.arg(Arg::Id(board.into()));
        b.sql.push_str(&format!(" AND board_id = {p}"));
    }
    if !f.statuses.is_empty() {
        let p = b.list(
            f.statuses
                .iter()
                .map(|s| Arg::Text(TaskStatus::as_str(*s).to_owned())),
        );
        b.sql.push_str(&format!(" AND status IN ({p})"));
    }
    if !f.priorities.is_empty() {
        let p = b.list(f.priorities.iter().map(|p| Arg::SmallInt(p.rank())));
        b.sql.push_str(&format!(" AND priority_rank IN ({p})"));
    }
    match f.assignee {
        None => {}
        Some(AssigneeFilter::User(u)) => {
            let p = b.arg(Arg::Id(u.into()));
            b.sql.push_str(&format!(" AND assignee_user_id = {p}"));
        }
        Some(AssigneeFilter::Nobody) => b.sql.push_str(" AND assignee_user_id IS NULL"),
    }
    for label in &f.label_ids {
        let p = b.arg(Arg::Id((*label).into()));
        if walked {
            // `OFFSET 0` keeps PostgreSQL from turning the probe into a join with all the
            // label's tasks, which ended the walk's early stop (7 ms against 2 in the benchmark's
            // label combination).
            let fence = match dialect {
                Dialect::Postgres => " OFFSET 0",
                Dialect::Sqlite => "",
            };
            b.sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM task_labels WHERE label_id = {p} AND task_id = walk.id{fence})"
            ));
        } else {
            b.sql.push_str(&format!(
                " AND id IN (SELECT task_id FROM task_labels WHERE label_id = {p})"
            ));
        }
    }
    if let Some(d) = f.due_after {
        let p = b.arg(Arg::Date(d));
        b.sql.push_str(&format!(" AND due_date >= {p}"));
    }
    if let Some(d) = f.due_before {
        let p = b.arg(Arg::Date(d));
        b.sql.push_str(&format!(" AND due_date <= {p}"));
    }
    if !f.words.is_empty() {
        match dialect {
            Dialect::Sqlite => {
                let p = b.arg(Arg::Text(fts5_match(team, &f.words)));
                b.sql.push_str(&format!(
                    " AND search_key IN (SELECT rowid FROM task_words WHERE task_words MATCH {p})"
                ));
            }
            Dialect::Postgres => {
                let p = b.arg(Arg::Text(tsquery(&f.words)));
                b.sql
                    .push_str(&format!(" AND search @@ to_tsquery('simple', {p})"));
            }
        }
    }
}

/// What a page of tasks asks for.
#[derive(Debug, Clone, Copy)]
pub struct TaskPage<'a> {
    pub team: TeamId,
    pub filter: &'a TaskFilter,
    pub sort: TaskSort,
    pub after: Option<&'a TaskCursor>,
}

/// One part of a page: at most `limit` tasks of the team passing the filter, in the sort's
/// order, after the cursor, read the `access` way.
pub fn page(
    dialect: Dialect,
    columns: &str,
    req: TaskPage<'_>,
    part: Part,
    access: Access,
    limit: i64,
) -> Built {
    let TaskPage {
        team,
        filter: f,
        sort,
        after,
    } = req;
    let mut b = Built::default();
    let p = b.arg(Arg::Id(team.into()));
    let (cmp, dir) = if sort.descending {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    let col = column(sort.field);
    let by_id = part == Part::Undated || sort.field == SortField::CreatedAt;
    let read = match access {
        // A walk reads whole rows: the filter after it reads columns the page does not return.
        Access::Walk(_) => "*".to_owned(),
        // The matches carry the sort's column under a name of their own (the page's columns may
        // lack it, as `priority_rank`, or hold it already).
        Access::Matches if !by_id => format!("{columns}, {col} AS page_key"),
        _ => columns.to_owned(),
    };
    b.sql = format!("SELECT {read} FROM tasks WHERE team_id = {p}");
    match part {
        Part::Dated => b.sql.push_str(" AND due_date IS NOT NULL"),
        Part::Undated => b.sql.push_str(" AND due_date IS NULL"),
        Part::All => {}
    }
    // A cursor of the undated part, or any cursor once the dated part is done, keys on the id.
    let keyed = match (part, after) {
        (Part::Undated, Some(c)) if c.key == SortKey::DueDate(None) => Some((None, c.id)),
        (Part::Undated, _) => None,
        (_, Some(c)) => Some((key_arg(c.key), c.id)),
        (_, None) => None,
    };
    match keyed {
        None => {}
        Some((None, id)) => {
            let p = b.arg(Arg::Id(id.into()));
            b.sql.push_str(&format!(" AND id {cmp} {p}"));
        }
        Some((Some(key), id)) => {
            let k = b.arg(key);
            let i = b.arg(Arg::Id(id.into()));
            b.sql
                .push_str(&format!(" AND ({col}, id) {cmp} ({k}, {i})"));
        }
    }
    let order = if by_id {
        format!(" ORDER BY id {dir}")
    } else {
        format!(" ORDER BY {col} {dir}, id {dir}")
    };
    match access {
        Access::Planner => {
            filter(&mut b, dialect, team, f, false);
            b.sql.push_str(&order);
        }
        Access::Walk(n) => {
            // The walk's bound is the server's constant, written into the text so that the
            // planner sees it (a bound parameter is a guess in a generic plan).
            let walk = std::mem::take(&mut b.sql);
            b.sql = format!("SELECT {columns} FROM ({walk}{order} LIMIT {n}) AS walk WHERE TRUE");
            filter(&mut b, dialect, team, f, true);
            b.sql.push_str(&order);
        }
        Access::Matches => {
            filter(&mut b, dialect, team, f, false);
            let matches = std::mem::take(&mut b.sql);
            let order = if by_id {
                format!("id {dir}")
            } else {
                format!("page_key {dir}, id {dir}")
            };
            b.sql = format!(
                "WITH matches AS MATERIALIZED ({matches}) \
                 SELECT {columns} FROM matches ORDER BY {order}"
            );
        }
    }
    let l = b.arg(Arg::Int(limit));
    b.sql.push_str(&format!(" LIMIT {l}"));
    b
}

/// `columns` (`a, b, c`) each prefixed with `table.`, for a query that joins another table
/// with columns of the same names.
pub fn qualified(table: &str, columns: &str) -> String {
    columns
        .split(',')
        .map(|c| format!("{table}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How many matches a ranked search scores: the team's newest. Scoring costs each match a read of
/// its words (PostgreSQL: about 10 µs a `tsvector`), so a frequent word (a third of 100,000 tasks)
/// would cost hundreds of milliseconds if every match were scored; the newest matches are found in
/// the key's or the id's order and the scan stops after them.
pub const SEARCH_CANDIDATES: i64 = 500;

/// The best `limit` of the newest `SEARCH_CANDIDATES` matches of `words` in `team`, with a score
/// (higher is better).
pub fn search(
    dialect: Dialect,
    columns: &str,
    team: TeamId,
    words: &[String],
    limit: i64,
) -> Built {
    let mut b = Built::default();
    match dialect {
        Dialect::Sqlite => {
            // bm25 is lower for better matches; a title word weighs four description words. The
            // matches drive the join (CROSS JOIN fixes the order in SQLite): with statistics, the
            // planner otherwise walked every task and probed the index for each. FTS5 reads the
            // postings in descending key order (a task's key grows with its creation) and stops
            // after the candidates, scoring only those.
            let m = b.arg(Arg::Text(fts5_match(team, words)));
            let c = b.arg(Arg::Int(SEARCH_CANDIDATES));
            let t = b.arg(Arg::Id(team.into()));
            let l = b.arg(Arg::Int(limit));
            // The team is checked on the row too: the words are the team's, and a key's words
            // must never answer for another team's task. The candidates are joined through the
            // key's unique index, named (the planner took the team's index instead and walked the
            // team once per candidate: 3.2 s for a frequent word).
            b.sql = format!(
                "SELECT {columns}, -m.rank AS score \
                 FROM (SELECT rowid AS search_key, bm25(task_words, 4.0, 1.0) AS rank \
                       FROM task_words WHERE task_words MATCH {m} \
                       ORDER BY rowid DESC LIMIT {c}) AS m \
                 CROSS JOIN tasks INDEXED BY tasks_search_key ON tasks.search_key = m.search_key \
                 WHERE tasks.team_id = {t} \
                 ORDER BY m.rank, tasks.id LIMIT {l}"
            );
        }
        Dialect::Postgres => {
            // The newest matches first (the team's id order, or the word index for rare words:
            // the planner's choice), then `ts_rank` on those only.
            let t = b.arg(Arg::Id(team.into()));
            let q = b.arg(Arg::Text(tsquery(words)));
            let c = b.arg(Arg::Int(SEARCH_CANDIDATES));
            let l = b.arg(Arg::Int(limit));
            b.sql = format!(
                "SELECT {columns}, ts_rank(tasks.search, to_tsquery('simple', {q}))::float8 AS score \
                 FROM (SELECT * FROM tasks WHERE team_id = {t} \
                       AND search @@ to_tsquery('simple', {q}) \
                       ORDER BY id DESC LIMIT {c}) AS tasks \
                 ORDER BY score DESC, tasks.id LIMIT {l}"
            );
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_text_is_quoted_and_bound() {
        let team = TeamId::from(Uuid::from_u128(0xab));
        let m = fts5_match(team, &["dep".into(), "x\"y".into()]);
        assert_eq!(
            m,
            "\"t000000000000000000000000000000abxdep\" * AND \"t000000000000000000000000000000abxx\"\"y\" *"
        );
        assert_eq!(
            indexed_text(team, "Deploy, 3.14!"),
            "t000000000000000000000000000000abxdeploy t000000000000000000000000000000abx3 \
             t000000000000000000000000000000abx14"
        );
        assert_eq!(tsquery(&["dep".into(), "o'k".into()]), "'dep':* & 'o''k':*");
    }

    #[test]
    fn a_descending_page_after_a_cursor_compares_key_and_id_downwards() {
        let team = TeamId::from(Uuid::from_u128(1));
        let sort = TaskSort::parse("-priority").unwrap();
        let after = TaskCursor {
            key: SortKey::Priority(3),
            id: Uuid::from_u128(9).into(),
        };
        let req = TaskPage {
            team,
            filter: &TaskFilter::default(),
            sort,
            after: Some(&after),
        };
        let b = page(Dialect::Postgres, "id", req, Part::All, Access::Planner, 51);
        assert_eq!(
            b.sql,
            "SELECT id FROM tasks WHERE team_id = $1 AND (priority_rank, id) < ($2, $3) \
             ORDER BY priority_rank DESC, id DESC LIMIT $4"
        );
        assert_eq!(b.args.len(), 4);
    }

    #[test]
    fn a_mix_of_filters_walks_a_bounded_run_of_the_sort_then_reads_the_matches() {
        let team = TeamId::from(Uuid::from_u128(1));
        let sort = TaskSort::parse("-dueDate").unwrap();
        let filter = TaskFilter {
            statuses: vec![TaskStatus::Todo],
            priorities: vec![crate::domain::Priority::High],
            ..TaskFilter::default()
        };
        assert_eq!(
            accesses(Dialect::Sqlite, &filter, sort),
            &[Access::Walk(WALK_ROWS), Access::Matches]
        );
        // One filter in the default sort stays with the planner, whichever filter it is.
        let one = TaskFilter {
            statuses: filter.statuses.clone(),
            ..TaskFilter::default()
        };
        assert_eq!(
            accesses(Dialect::Postgres, &one, TaskSort::default()),
            &[Access::Planner]
        );
        let due = TaskFilter {
            due_after: Some(Date::MIN),
            ..TaskFilter::default()
        };
        assert_eq!(
            accesses(Dialect::Sqlite, &due, TaskSort::default()),
            &[Access::Planner]
        );
        assert_eq!(
            accesses(Dialect::Postgres, &due, TaskSort::default()),
            &[Access::Walk(WALK_ROWS), Access::Matches]
        );
        assert_eq!(
            accesses(Dialect::Postgres, &one, sort),
            &[Access::Walk(WALK_ROWS), Access::Matches]
        );
        let req = TaskPage {
            team,
            filter: &filter,
            sort,
            after: None,
        };
        let walk = page(
            Dialect::Postgres,
            "id",
            req,
            Part::Dated,
            Access::Walk(100),
            51,
        );
        assert_eq!(
            walk.sql,
            "SELECT id FROM (SELECT * FROM tasks WHERE team_id = $1 AND due_date IS NOT NULL \
             ORDER BY due_date DESC, id DESC LIMIT 100) AS walk WHERE TRUE AND status IN ($2) \
             AND priority_rank IN ($3) ORDER BY due_date DESC, id DESC LIMIT $4"
        );
        let matches = page(Dialect::Sqlite, "id", req, Part::Dated, Access::Matches, 51);
        assert_eq!(
            matches.sql,
            "WITH matches AS MATERIALIZED (SELECT id, due_date AS page_key FROM tasks \
             WHERE team_id = $1 AND due_date IS NOT NULL AND status IN ($2) \
             AND priority_rank IN ($3)) \
             SELECT id FROM matches ORDER BY page_key DESC, id DESC LIMIT $4"
        );
    }
}
