//! Notifications: who a change owes one to and why, the mention markup, and what following a
//! task means. Pure rules: the service reads the followers and the team's members, asks
//! `recipients` and `follows_after`, and writes what they decide in the change's transaction.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::activity::ActivityKind;
use super::id::{BoardId, CommentId, NotificationId, TaskId, TeamId, UserId};
use super::model::{text_enum, timestamp};

/// The most distinct users one text may mention.
pub const MAX_MENTIONS: usize = 50;
/// How much of a comment or description a notification quotes.
pub const EXCERPT_CHARS: usize = 200;

/// Why a user is notified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    Assigned,
    Mentioned,
    Commented,
    StatusChanged,
    TaskDeleted,
}

text_enum!(Reason {
    Assigned = "assigned",
    Mentioned = "mentioned",
    Commented = "commented",
    StatusChanged = "status_changed",
    TaskDeleted = "task_deleted",
});

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The mention markup starting at `at` (where `text` holds `@[`): its name, its user and where
/// it ends. Otherwise, where a later markup may start: scanning resumes there, so every text is
/// read in one pass whatever it holds (a hostile text of `@[` repeated stays linear).
fn markup(text: &str, at: usize) -> Result<(&str, UserId, usize), usize> {
    const OPEN: &[u8] = b"(user:";
    let b = text.as_bytes();
    let start = at + 2;
    // The name runs to the first `]`, and may not hold a `[` or a newline. Only ASCII bytes stop
    // it, so every index used below is a character boundary.
    let mut i = start;
    while i < b.len() && !matches!(b[i], b'[' | b']' | b'\n') {
        i += 1;
    }
    if i >= b.len() {
        return Err(b.len());
    }
    if b[i] != b']' || i == start {
        // `@[x @[Ann](user:…)`: the next markup starts at the `@` before this `[`.
        return Err(if b[i] == b'[' && b[i - 1] == b'@' && i - 1 > at {
            i - 1
        } else {
            i
        });
    }
    let id_start = i + 1 + OPEN.len();
    let id_end = id_start + 36;
    if b.get(i + 1..id_start) != Some(OPEN) || b.get(id_end) != Some(&b')') {
        return Err(i + 1);
    }
    let id = text
        .get(id_start..id_end)
        .and_then(|s| s.parse::<uuid::Uuid>().ok())
        .ok_or(i + 1)?;
    Ok((&text[start..i], UserId::from(id), id_end + 1))
}

/// The users a text mentions, in order of first mention, each once. The markup is
/// `@[Display name](user:<uuid>)`: the id is what counts, so a mention survives a rename.
pub fn mentions(text: &str) -> Vec<UserId> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut pos = 0;
    while let Some(off) = text[pos..].find("@[") {
        let at = pos + off;
        match markup(text, at) {
            Ok((_, user, end)) => {
                if seen.insert(user) {
                    out.push(user);
                }
                pos = end;
            }
            Err(next) => pos = next.max(at + 1),
        }
    }
    out
}

/// The text with every mention shown as `@Name`, cut to `EXCERPT_CHARS` characters.
pub fn excerpt(text: &str) -> String {
    let mut shown = String::with_capacity(text.len().min(EXCERPT_CHARS * 4));
    let mut pos = 0;
    while let Some(off) = text[pos..].find("@[") {
        let at = pos + off;
        shown.push_str(&text[pos..at]);
        match markup(text, at) {
            Ok((name, _, end)) => {
                shown.push('@');
                shown.push_str(name);
                pos = end;
            }
            Err(next) => {
                let next = next.max(at + 1);
                shown.push_str(&text[at..next]);
                pos = next;
            }
        }
        // Past what an excerpt can show: the rest is not needed.
        if shown.len() > EXCERPT_CHARS * 8 {
            break;
        }
    }
    if shown.len() <= EXCERPT_CHARS * 8 {
        shown.push_str(&text[pos..]);
    }
    let trimmed = shown.trim();
    match trimmed.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &trimmed[..cut]),
        None => trimmed.to_owned(),
    }
}

/// Users mentioned in `after` that `before` did not mention (an edit notifies only those).
pub fn new_mentions(before: &str, after: &str) -> Vec<UserId> {
    let old: HashSet<UserId> = mentions(before).into_iter().collect();
    mentions(after)
        .into_iter()
        .filter(|u| !old.contains(u))
        .collect()
}

/// A task's followers as stored: following, or explicitly not (an unfollow).
#[derive(Debug, Clone, Default)]
pub struct Followers {
    pub following: BTreeSet<UserId>,
    pub unfollowed: BTreeSet<UserId>,
}

/// What a change does that may owe someone a notification.
#[derive(Debug, Clone, Default)]
pub struct Happening {
    /// The user the change made the assignee (not one who already was).
    pub assigned: Option<UserId>,
    /// Users the change newly mentions, already reduced to members of the team.
    pub mentioned: Vec<UserId>,
    /// The reason the change gives every follower, if any.
    pub to_followers: Option<Reason>,
}

/// Who is notified of a change and why: never the actor, one entry per user with every reason,
/// in user order (the order in which their inbox rows are locked).
pub fn recipients(
    actor: UserId,
    happening: &Happening,
    followers: &Followers,
) -> BTreeMap<UserId, Vec<Reason>> {
    let mut out: BTreeMap<UserId, BTreeSet<Reason>> = BTreeMap::new();
    if let Some(user) = happening.assigned {
        out.entry(user).or_default().insert(Reason::Assigned);
    }
    for user in &happening.mentioned {
        out.entry(*user).or_default().insert(Reason::Mentioned);
    }
    if let Some(reason) = happening.to_followers {
        for user in &followers.following {
            out.entry(*user).or_default().insert(reason);
        }
    }
    out.remove(&actor);
    out.into_iter()
        .map(|(u, r)| (u, r.into_iter().collect()))
        .collect()
}

/// How a change makes a user follow a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoFollow {
    /// Something the user did (created the task, commented): follows again even after an
    /// explicit unfollow.
    Acted,
    /// Something done to the user (assigned, mentioned): follows unless they unfollowed.
    Involved,
}

/// The users a change makes follow the task, in user order (the order their rows are written).
pub fn follows_after(
    actor: UserId,
    acted: bool,
    happening: &Happening,
) -> BTreeMap<UserId, AutoFollow> {
    let mut out = BTreeMap::new();
    for user in happening.assigned.iter().chain(&happening.mentioned) {
        out.insert(*user, AutoFollow::Involved);
    }
    if acted {
        out.insert(actor, AutoFollow::Acted);
    }
    out
}

/// A notification as its reader sees it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    #[schema(value_type = Uuid)]
    pub id: NotificationId,
    /// The seq of its creation in the reader's inbox stream.
    pub seq: i64,
    #[schema(value_type = Uuid)]
    pub team_id: TeamId,
    #[schema(value_type = Uuid)]
    pub task_id: TaskId,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Uuid>)]
    pub board_id: Option<BoardId>,
    pub task_title: String,
    /// The type of the activity that caused it (`comment.created`, `task.updated`, …).
    pub activity_type: String,
    #[schema(value_type = Vec<String>)]
    pub reasons: Vec<Reason>,
    #[schema(value_type = Uuid)]
    pub actor_user_id: UserId,
    pub actor_display_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Uuid>)]
    pub comment_id: Option<CommentId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub excerpt: Option<String>,
    #[serde(with = "timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "timestamp::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub read_at: Option<OffsetDateTime>,
}

/// What a change asks to write into one user's inbox; the store assigns the seq.
#[derive(Debug, Clone)]
pub struct NotificationDraft {
    pub user_id: UserId,
    pub id: NotificationId,
    pub team_id: TeamId,
    pub task_id: TaskId,
    pub board_id: Option<BoardId>,
    pub task_title: String,
    pub activity_kind: ActivityKind,
    pub reasons: Vec<Reason>,
    pub actor_user_id: UserId,
    pub actor_display_name: String,
    pub comment_id: Option<CommentId>,
    pub excerpt: Option<String>,
    pub created_at: OffsetDateTime,
}

/// Which notifications a mark-read covers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub enum MarkRead {
    Ids(Vec<NotificationId>),
    Upto(i64),
}

/// A mark-read as the stream carries it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReadMark {
    pub seq: i64,
    /// The notifications it marked, for a mark by ids.
    #[schema(value_type = Option<Vec<Uuid>>)]
    pub ids: Option<Vec<NotificationId>>,
    /// Every notification up to this seq, for a mark up to a seq.
    pub upto: Option<i64>,
    pub unread_count: i64,
}

/// One event of a user's inbox stream.
#[derive(Debug, Clone, PartialEq)]
pub enum InboxEvent {
    Created(Box<Notification>),
    Read(ReadMark),
}

impl InboxEvent {
    pub fn seq(&self) -> i64 {
        match self {
            InboxEvent::Created(n) => n.seq,
            InboxEvent::Read(r) => r.seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: u128) -> UserId {
        UserId::from(uuid::Uuid::from_u128(n))
    }

    fn markup(name: &str, u: UserId) -> String {
        format!("@[{name}](user:{u})")
    }

    #[test]
    fn mentions_are_read_by_id_in_order_and_once() {
        let (a, b) = (user(1), user(2));
        let text = format!(
            "hi {} and {}, again {} — not @[x](user:nope) nor @[](user:{b}) nor [y](user:{a})",
            markup("Ann", a),
            markup("Bob [old]", b),
            markup("Ann Renamed", a),
        );
        // `Bob [old]` holds a `[`: not a mention.
        assert_eq!(mentions(&text), vec![a]);
        let text = format!("{}{}", markup("Bob", b), markup("Ann", a));
        assert_eq!(mentions(&text), vec![b, a]);
        assert!(mentions("@[").is_empty());
        assert!(mentions("@[a](user:").is_empty());
    }

    /// A hostile text is read in one pass: a megabyte of `@[` and of unterminated names.
    #[test]
    fn parsing_is_linear_in_the_text() {
        let a = user(7);
        let texts = [
            format!("{}](user:", "@[".repeat(500_000)),
            format!("{}{}", "@[a".repeat(300_000), markup("Ann", a)),
            format!("@[{}", "x".repeat(1_000_000)),
            format!("{}{}", "@[x](user:".repeat(100_000), markup("Ann", a)),
        ];
        for t in &texts {
            let m = mentions(t);
            assert!(m.is_empty() || m == vec![a], "{:?}", &t[..20]);
            assert!(excerpt(t).chars().count() <= EXCERPT_CHARS + 1);
        }
        // (The first, quadratic parser took minutes on these: the test would not end.)
        assert_eq!(mentions(&texts[1]), vec![a]);
        assert_eq!(mentions(&format!("@[x @[Ann](user:{a})")), vec![a]);
        assert_eq!(excerpt(&format!("@[x @[Ann](user:{a}) é")), "@[x @Ann é");
    }

    #[test]
    fn an_edit_notifies_only_new_mentions() {
        let (a, b) = (user(1), user(2));
        let before = markup("Ann", a);
        let after = format!("{} {}", markup("Ann", a), markup("Bob", b));
        assert_eq!(new_mentions(&before, &after), vec![b]);
        assert!(new_mentions(&after, &before).is_empty());
    }

    #[test]
    fn excerpts_show_names_and_are_cut() {
        let a = user(1);
        assert_eq!(
            excerpt(&format!("  ping {} @[ok", markup("Ann", a))),
            "ping @Ann @[ok"
        );
        let long = "é".repeat(EXCERPT_CHARS + 5);
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), EXCERPT_CHARS + 1);
        assert!(e.ends_with('…'));
    }

    #[test]
    fn the_actor_is_never_notified_and_reasons_merge() {
        let (actor, a, b, c) = (user(1), user(2), user(3), user(4));
        let followers = Followers {
            following: [actor, a, b].into_iter().collect(),
            unfollowed: [c].into_iter().collect(),
        };
        let happening = Happening {
            assigned: Some(b),
            mentioned: vec![b, c, actor],
            to_followers: Some(Reason::Commented),
        };
        let got = recipients(actor, &happening, &followers);
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            vec![
                (a, vec![Reason::Commented]),
                (
                    b,
                    vec![Reason::Assigned, Reason::Mentioned, Reason::Commented]
                ),
                // Unfollowed, but a mention still notifies.
                (c, vec![Reason::Mentioned]),
            ]
        );
        let quiet = Happening::default();
        assert!(recipients(actor, &quiet, &followers).is_empty());
    }

    #[test]
    fn acting_follows_again_being_involved_does_not_override() {
        let (actor, a) = (user(1), user(2));
        let h = Happening {
            assigned: None,
            mentioned: vec![a],
            to_followers: None,
        };
        let f = follows_after(actor, true, &h);
        assert_eq!(f.get(&actor), Some(&AutoFollow::Acted));
        assert_eq!(f.get(&a), Some(&AutoFollow::Involved));
        assert!(follows_after(actor, false, &Happening::default()).is_empty());
    }
}
