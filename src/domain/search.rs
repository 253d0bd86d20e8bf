//! Finding tasks: the filters and sorts of a task list, the words of a search, the cursor that
//! pages through a sort, and the snippet that shows where a task matched.
//!
//! The rules are written here once, as plain Rust (`TaskFilter::matches`, `TaskSort::key_of`);
//! the store answers the same questions with indexes and must agree with them (the randomized
//! tests compare the two). Nothing here touches a database.

use std::cmp::Ordering;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use time::{Date, OffsetDateTime};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::{Checks, DomainError};
use super::model::*;

/// The longest `q` accepted, in characters.
pub const Q_MAX_CHARS: usize = 200;
/// The most words of `q` that are searched for.
pub const WORDS_MAX: usize = 10;
/// A longer word is searched for by its first 50 characters.
pub const WORD_MAX_CHARS: usize = 50;
/// The most `labelId`s one filter may name (a task carries at most as many).
pub const FILTER_LABELS_MAX: usize = super::rules::LABELS_PER_TASK;

/// `assigneeUserId=<id>` or `assigneeUserId=none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssigneeFilter {
    User(UserId),
    Nobody,
}

/// What a task must be to be listed; every part given narrows (AND).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskFilter {
    pub board_id: Option<BoardId>,
    /// Any of these (none given: any status).
    pub statuses: Vec<TaskStatus>,
    /// Any of these.
    pub priorities: Vec<Priority>,
    pub assignee: Option<AssigneeFilter>,
    /// All of these.
    pub label_ids: Vec<LabelId>,
    /// Due on or after.
    pub due_after: Option<Date>,
    /// Due on or before.
    pub due_before: Option<Date>,
    /// Each must begin a word of the title or the description (see `words`).
    pub words: Vec<String>,
}

impl TaskFilter {
    /// Whether `task` passes the filter: the definition the store's queries implement.
    pub fn matches(&self, task: &Task) -> bool {
        let due_ok = |bound: Option<Date>, ok: fn(Date, Date) -> bool| {
            bound.is_none_or(|b| task.due_date.is_some_and(|d| ok(d, b)))
        };
        self.board_id.is_none_or(|b| task.board_id == b)
            && (self.statuses.is_empty() || self.statuses.contains(&task.status))
            && (self.priorities.is_empty() || self.priorities.contains(&task.priority))
            && match self.assignee {
                None => true,
                Some(AssigneeFilter::User(u)) => task.assignee_user_id == Some(u),
                Some(AssigneeFilter::Nobody) => task.assignee_user_id.is_none(),
            }
            && self.label_ids.iter().all(|l| task.label_ids.contains(l))
            && due_ok(self.due_after, |d, b| d >= b)
            && due_ok(self.due_before, |d, b| d <= b)
            && (self.words.is_empty() || text_matches(task, &self.words))
    }
}

/// Every word of the query begins some word of the title or the description.
fn text_matches(task: &Task, words: &[String]) -> bool {
    let tokens: Vec<String> = tokens(&task.title)
        .chain(tokens(&task.description))
        .map(|(_, t)| t.to_lowercase())
        .collect();
    words
        .iter()
        .all(|w| tokens.iter().any(|t| t.starts_with(w.as_str())))
}

/// The words of a text: maximal runs of letters and digits, with their byte offsets.
fn tokens(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut rest = text.char_indices().peekable();
    std::iter::from_fn(move || {
        while let Some(&(_, c)) = rest.peek() {
            if c.is_alphanumeric() {
                break;
            }
            rest.next();
        }
        let (start, _) = *rest.peek()?;
        let mut end = start;
        while let Some(&(i, c)) = rest.peek() {
            if !c.is_alphanumeric() {
                break;
            }
            end = i + c.len_utf8();
            rest.next();
        }
        Some((start, &text[start..end]))
    })
}

/// The words searched for in `q`: its runs of letters and digits in lower case, at most
/// `WORDS_MAX` (the first ones), each cut to `WORD_MAX_CHARS` characters, repeats dropped.
pub fn words(q: &str) -> Result<Vec<String>, DomainError> {
    if q.chars().count() > Q_MAX_CHARS {
        return Err(DomainError::invalid(
            "q",
            format!("must be at most {Q_MAX_CHARS} characters"),
        ));
    }
    let mut words: Vec<String> = Vec::new();
    for (_, token) in tokens(q) {
        let word: String = token.to_lowercase().chars().take(WORD_MAX_CHARS).collect();
        if !words.contains(&word) {
            words.push(word);
        }
        if words.len() == WORDS_MAX {
            break;
        }
    }
    if words.is_empty() {
        return Err(DomainError::invalid(
            "q",
            "must contain a letter or a digit",
        ));
    }
    Ok(words)
}

/// The field a list is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortField {
    /// The id order: ids are UUIDv7s minted when the task is created.
    CreatedAt,
    UpdatedAt,
    /// Tasks without a due date come last, in either direction.
    DueDate,
    /// none < low < medium < high < urgent.
    Priority,
    Position,
}

/// `sort=`: a field, ascending unless written with a leading `-`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskSort {
    pub field: SortField,
    pub descending: bool,
}

impl Default for TaskSort {
    fn default() -> Self {
        TaskSort {
            field: SortField::CreatedAt,
            descending: false,
        }
    }
}

impl TaskSort {
    pub const FIELDS: [(&'static str, SortField); 5] = [
        ("createdAt", SortField::CreatedAt),
        ("updatedAt", SortField::UpdatedAt),
        ("dueDate", SortField::DueDate),
        ("priority", SortField::Priority),
        ("position", SortField::Position),
    ];

    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let (descending, name) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        Self::FIELDS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, field)| TaskSort { field, descending })
            .ok_or_else(|| {
                DomainError::invalid(
                    "sort",
                    "must be createdAt, updatedAt, dueDate, priority or position, optionally after -",
                )
            })
    }

    /// The task's place in this sort (its id breaks ties).
    pub fn key_of(&self, task: &Task) -> SortKey {
        match self.field {
            SortField::CreatedAt => SortKey::Id,
            SortField::UpdatedAt => SortKey::UpdatedAt(task.updated_at),
            SortField::DueDate => SortKey::DueDate(task.due_date),
            SortField::Priority => SortKey::Priority(task.priority.rank()),
            SortField::Position => SortKey::Position(task.position),
        }
    }

    /// The order of two tasks in this sort: the definition the store's `ORDER BY` implements.
    pub fn compare(&self, a: &Task, b: &Task) -> Ordering {
        let by_key = match (self.key_of(a), self.key_of(b)) {
            (SortKey::UpdatedAt(x), SortKey::UpdatedAt(y)) => x.cmp(&y),
            (SortKey::Priority(x), SortKey::Priority(y)) => x.cmp(&y),
            (SortKey::Position(x), SortKey::Position(y)) => x.total_cmp(&y),
            // Undated last in both directions: the direction applies to dated tasks only.
            (SortKey::DueDate(x), SortKey::DueDate(y)) => match (x, y) {
                (Some(x), Some(y)) => x.cmp(&y),
                (Some(_), None) => return Ordering::Less,
                (None, Some(_)) => return Ordering::Greater,
                (None, None) => Ordering::Equal,
            },
            _ => Ordering::Equal,
        };
        let order = by_key.then_with(|| a.id.cmp(&b.id));
        if self.descending {
            order.reverse()
        } else {
            order
        }
    }

    fn tag(&self) -> u8 {
        let field = Self::FIELDS
            .iter()
            .position(|&(_, f)| f == self.field)
            .unwrap_or_default() as u8;
        field * 2 + u8::from(self.descending)
    }
}

/// A task's sort key in one sort.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SortKey {
    /// `createdAt`: the id is the key.
    Id,
    UpdatedAt(OffsetDateTime),
    DueDate(Option<Date>),
    Priority(i16),
    Position(f64),
}

/// Where a page ends: the last task's key and id. Pages go on strictly after it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskCursor {
    pub key: SortKey,
    pub id: TaskId,
}

impl TaskCursor {
    pub fn of(sort: TaskSort, task: &Task) -> Self {
        TaskCursor {
            key: sort.key_of(task),
            id: task.id,
        }
    }

    /// The opaque text a page hands out. The default sort's cursor is the bare id, as it was
    /// before other sorts existed; the others carry their sort's tag (so that a cursor is refused
    /// under another sort) and the key.
    pub fn encode(&self, sort: TaskSort) -> String {
        let id = Uuid::from(self.id);
        if sort == TaskSort::default() {
            return URL_SAFE_NO_PAD.encode(id.as_bytes());
        }
        let mut bytes = vec![sort.tag()];
        bytes.extend_from_slice(id.as_bytes());
        match self.key {
            SortKey::Id | SortKey::DueDate(None) => {}
            SortKey::UpdatedAt(t) => {
                let ms = (t.unix_timestamp_nanos() / 1_000_000) as i64;
                bytes.extend_from_slice(&ms.to_be_bytes());
            }
            SortKey::DueDate(Some(d)) => bytes.extend_from_slice(&d.to_julian_day().to_be_bytes()),
            SortKey::Priority(p) => bytes.extend_from_slice(&p.to_be_bytes()),
            SortKey::Position(p) => bytes.extend_from_slice(&p.to_be_bytes()),
        }
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The cursor `text` if this server issued it for `sort`.
    pub fn decode(sort: TaskSort, text: &str) -> Result<Self, DomainError> {
        let bad =
            || DomainError::invalid("cursor", "is not a cursor this server issued for this sort");
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
        if sort == TaskSort::default() {
            let id = Uuid::from_slice(&bytes).map_err(|_| bad())?;
            return Ok(TaskCursor {
                key: SortKey::Id,
                id: TaskId::from(id),
            });
        }
        let (&tag, rest) = bytes.split_first().ok_or_else(bad)?;
        if tag != sort.tag() || rest.len() < 16 {
            return Err(bad());
        }
        let (id, key) = rest.split_at(16);
        let id = TaskId::from(Uuid::from_slice(id).map_err(|_| bad())?);
        let key = match (sort.field, key.len()) {
            (SortField::CreatedAt, 0) => SortKey::Id,
            (SortField::UpdatedAt, 8) => {
                let ms = i64::from_be_bytes(key.try_into().map_err(|_| bad())?);
                let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                    .map_err(|_| bad())?;
                if !(0..=9999).contains(&t.year()) {
                    return Err(bad());
                }
                SortKey::UpdatedAt(t)
            }
            (SortField::DueDate, 0) => SortKey::DueDate(None),
            (SortField::DueDate, 4) => {
                let day = i32::from_be_bytes(key.try_into().map_err(|_| bad())?);
                let d = Date::from_julian_day(day).map_err(|_| bad())?;
                // Only dates a task can hold: the databases refuse some others outright.
                if !(0..=9999).contains(&d.year()) {
                    return Err(bad());
                }
                SortKey::DueDate(Some(d))
            }
            (SortField::Priority, 2) => {
                SortKey::Priority(i16::from_be_bytes(key.try_into().map_err(|_| bad())?))
            }
            (SortField::Position, 8) => {
                let p = f64::from_be_bytes(key.try_into().map_err(|_| bad())?);
                if !p.is_finite() {
                    return Err(bad());
                }
                SortKey::Position(p)
            }
            _ => return Err(bad()),
        };
        Ok(TaskCursor { key, id })
    }
}

/// Checks the parts of a filter that need more than parsing.
pub fn check_filter(filter: &TaskFilter) -> Result<(), DomainError> {
    let mut c = Checks::default();
    c.check(
        filter.label_ids.len() <= FILTER_LABELS_MAX,
        "labelId",
        &format!("may be given at most {FILTER_LABELS_MAX} times"),
    );
    if let (Some(after), Some(before)) = (filter.due_after, filter.due_before) {
        c.check(after <= before, "dueAfter", "must not be after dueBefore");
    }
    c.finish()
}

/// One piece of a snippet: matched words are their own fragments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Fragment {
    pub text: String,
    #[serde(rename = "match")]
    pub matched: bool,
}

/// Where a task matched: an excerpt of one field cut into fragments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Snippet {
    /// `title` or `description`.
    pub field: &'static str,
    pub fragments: Vec<Fragment>,
}

/// One answer of a search.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SearchHit {
    pub task: Task,
    /// Higher is better; comparable within one answer only (each backend scores its own way).
    pub score: f64,
    pub snippet: Snippet,
}

/// The most answers one search returns.
pub const SEARCH_LIMIT_MAX: i64 = 50;
pub const SEARCH_LIMIT_DEFAULT: i64 = 20;

/// Words shown around the first match of a description.
const SNIPPET_WORDS: usize = 30;

/// The snippet of a matching task: its title when a word of the query begins a word of it,
/// else the stretch of the description around its first match.
pub fn snippet(task: &Task, words: &[String]) -> Snippet {
    let matches = |token: &str| {
        let token = token.to_lowercase();
        words.iter().any(|w| token.starts_with(w.as_str()))
    };
    if tokens(&task.title).any(|(_, t)| matches(t)) || task.description.is_empty() {
        return Snippet {
            field: "title",
            fragments: fragments(&task.title, 0, task.title.len(), &matches),
        };
    }
    let text = &task.description;
    let all: Vec<(usize, &str)> = tokens(text).collect();
    let first = all.iter().position(|(_, t)| matches(t)).unwrap_or(0);
    let from = first.saturating_sub(SNIPPET_WORDS / 3);
    let to = (from + SNIPPET_WORDS).min(all.len());
    let start = if from == 0 { 0 } else { all[from].0 };
    let end = match all.get(to) {
        Some(&(i, _)) => i,
        None => text.len(),
    };
    let mut fragments = fragments(text, start, end, &matches);
    if start > 0 {
        fragments.insert(0, plain("…"));
    }
    if end < text.len() {
        fragments.push(plain("…"));
    }
    Snippet {
        field: "description",
        fragments: merge(fragments),
    }
}

fn plain(text: &str) -> Fragment {
    Fragment {
        text: text.to_owned(),
        matched: false,
    }
}

/// `text[start..end]` cut into fragments, each matching word its own.
fn fragments(
    text: &str,
    start: usize,
    end: usize,
    matches: &dyn Fn(&str) -> bool,
) -> Vec<Fragment> {
    let part = &text[start..end];
    let mut out = Vec::new();
    let mut at = 0;
    for (i, token) in tokens(part) {
        if matches(token) {
            if i > at {
                out.push(plain(&part[at..i]));
            }
            out.push(Fragment {
                text: token.to_owned(),
                matched: true,
            });
            at = i + token.len();
        }
    }
    if at < part.len() {
        out.push(plain(&part[at..]));
    }
    out
}

/// Adjacent plain fragments joined.
fn merge(fragments: Vec<Fragment>) -> Vec<Fragment> {
    let mut out: Vec<Fragment> = Vec::with_capacity(fragments.len());
    for f in fragments {
        match out.last_mut() {
            Some(last) if !last.matched && !f.matched => last.text.push_str(&f.text),
            _ => out.push(f),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(title: &str, description: &str) -> Task {
        let at = OffsetDateTime::UNIX_EPOCH;
        Task {
            id: TaskId::from(Uuid::from_u128(7)),
            team_id: TeamId::from(Uuid::from_u128(1)),
            board_id: BoardId::from(Uuid::from_u128(2)),
            title: title.into(),
            description: description.into(),
            status: TaskStatus::Todo,
            priority: Priority::None,
            assignee_user_id: None,
            due_date: None,
            position: 1.0,
            created_by: UserId::from(Uuid::from_u128(3)),
            created_at: at,
            updated_at: at,
            version: 1,
            label_ids: Vec::new(),
        }
    }

    #[test]
    fn words_are_runs_of_letters_and_digits_in_lower_case() {
        assert_eq!(
            words("Deploy-FAILED on x86!").unwrap(),
            ["deploy", "failed", "on", "x86"]
        );
        assert_eq!(words("Été été").unwrap(), ["été"]);
        assert!(words(" -- ").is_err());
        assert!(words(&"a".repeat(Q_MAX_CHARS + 1)).is_err());
        assert_eq!(words(&"w ".repeat(3)).unwrap().len(), 1);
        let many: String = (0..20).map(|i| format!("w{i} ")).collect();
        assert_eq!(words(&many).unwrap().len(), WORDS_MAX);
        assert_eq!(
            words(&"z".repeat(80)).unwrap()[0].chars().count(),
            WORD_MAX_CHARS
        );
    }

    #[test]
    fn a_filter_of_words_needs_each_word_to_begin_a_word() {
        let t = task("Deploy failed", "The build server ran out of disk");
        let f = |q: &str| TaskFilter {
            words: words(q).unwrap(),
            ..TaskFilter::default()
        };
        assert!(f("dep fai").matches(&t));
        assert!(f("DISK serv").matches(&t));
        assert!(!f("ploy").matches(&t));
        assert!(!f("deploy missing").matches(&t));
    }

    #[test]
    fn due_bounds_are_inclusive_and_exclude_undated_tasks() {
        let day = |d| Date::from_calendar_date(2026, time::Month::March, d).unwrap();
        let mut t = task("a", "");
        let f = TaskFilter {
            due_after: Some(day(2)),
            due_before: Some(day(4)),
            ..TaskFilter::default()
        };
        assert!(!f.matches(&t));
        for (d, want) in [(1, false), (2, true), (4, true), (5, false)] {
            t.due_date = Some(day(d));
            assert_eq!(f.matches(&t), want, "day {d}");
        }
    }

    #[test]
    fn undated_tasks_come_last_in_both_directions() {
        let mut a = task("a", "");
        a.due_date = Some(Date::from_calendar_date(2026, time::Month::March, 2).unwrap());
        let b = task("b", "");
        for descending in [false, true] {
            let s = TaskSort {
                field: SortField::DueDate,
                descending,
            };
            assert_eq!(s.compare(&a, &b), Ordering::Less);
        }
    }

    #[test]
    fn cursors_round_trip_and_are_refused_under_another_sort() {
        let mut t = task("a", "");
        t.updated_at = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        t.due_date = Some(Date::from_calendar_date(2026, time::Month::March, 2).unwrap());
        t.position = -2.5;
        t.priority = Priority::High;
        for (name, _) in TaskSort::FIELDS {
            for prefix in ["", "-"] {
                let sort = TaskSort::parse(&format!("{prefix}{name}")).unwrap();
                let c = TaskCursor::of(sort, &t);
                assert_eq!(
                    TaskCursor::decode(sort, &c.encode(sort)).unwrap(),
                    c,
                    "{prefix}{name}"
                );
                let other = TaskSort {
                    descending: !sort.descending,
                    ..sort
                };
                if sort != TaskSort::default() && other != TaskSort::default() {
                    assert!(TaskCursor::decode(other, &c.encode(sort)).is_err());
                }
            }
        }
        assert!(TaskSort::parse("title").is_err());
        assert!(TaskCursor::decode(TaskSort::default(), "!!").is_err());
        // A forged cursor with a date no task can have is refused, not sent to the database.
        let sort = TaskSort::parse("dueDate").unwrap();
        let mut forged = TaskCursor::of(sort, &t);
        forged.key = SortKey::DueDate(Some(Date::MIN));
        assert!(TaskCursor::decode(sort, &forged.encode(sort)).is_err());
    }

    #[test]
    fn snippets_mark_the_matching_words() {
        let t = task("Deploy failed", "");
        let s = snippet(&t, &words("fail").unwrap());
        assert_eq!(s.field, "title");
        let text: String = s.fragments.iter().map(|f| f.text.as_str()).collect();
        assert_eq!(text, "Deploy failed");
        assert_eq!(
            s.fragments
                .iter()
                .filter(|f| f.matched)
                .map(|f| f.text.as_str())
                .collect::<Vec<_>>(),
            ["failed"]
        );
        let long: String = (0..100).map(|i| format!("word{i} ")).collect();
        let t = task("Other", &format!("{long}needle and more {long}"));
        let s = snippet(&t, &words("needle").unwrap());
        assert_eq!(s.field, "description");
        assert_eq!(
            s.fragments.first().map(|f| f.text.starts_with('…')),
            Some(true)
        );
        assert!(s.fragments.iter().any(|f| f.matched && f.text == "needle"));
        assert!(
            s.fragments
                .iter()
                .map(|f| f.text.split_whitespace().count())
                .sum::<usize>()
                <= SNIPPET_WORDS + 2
        );
    }
}
