//! Business rules: who may do what, what input is valid, and how a task patch changes a task.
//! Every rule lives here once; services apply them, handlers and SQL never repeat them.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::activity::Change;
use super::error::{Checks, DomainError, FieldError};
use super::model::*;

pub const TITLE_MAX: usize = 200;
pub const DESCRIPTION_MAX: usize = 20_000;
pub const COMMENT_MAX: usize = 10_000;
pub const NAME_MAX: usize = 100;
pub const DISPLAY_NAME_MAX: usize = 100;
pub const PASSWORD_MIN: usize = 8;
pub const PASSWORD_MAX: usize = 1_024;
pub const EMAIL_MAX: usize = 254;

/// What a member may try to do in a team.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Rename the team.
    EditTeam,
    /// Add members, change roles, remove others.
    ManageMembers,
    /// Create and rename boards.
    WriteBoards,
    DeleteBoards,
    /// Create, edit and delete tasks, and create comments.
    WriteTasks,
    /// Delete other people's comments.
    ModerateComments,
    /// Create, change and delete the team's webhooks, and see them and their deliveries.
    ManageWebhooks,
}

impl Role {
    pub fn allows(self, action: Action) -> bool {
        use Action::*;
        match action {
            EditTeam | ManageMembers | DeleteBoards | ModerateComments | ManageWebhooks => {
                self >= Role::Admin
            }
            WriteBoards | WriteTasks => self >= Role::Member,
        }
    }

    pub fn ensure(self, action: Action) -> Result<(), DomainError> {
        if self.allows(action) {
            Ok(())
        } else {
            Err(DomainError::Forbidden("your role does not allow this"))
        }
    }
}

/// Length in characters (Unicode scalar values), as the contract counts.
fn chars(s: &str) -> usize {
    s.chars().count()
}

fn text(checks: &mut Checks, field: &str, value: &str, min: usize, max: usize) {
    let n = chars(value);
    if min > 0 && value.trim().is_empty() {
        checks.push(FieldError::new(field, "must not be blank"));
    } else if n < min || n > max {
        checks.push(FieldError::new(
            field,
            format!("must be {min} to {max} characters"),
        ));
    }
}

/// A text (within `max_chars`: a longer one is refused anyway and not read) may mention at most
/// `MAX_MENTIONS` distinct users.
fn mention_limit(checks: &mut Checks, field: &str, value: &str, max_chars: usize) {
    let max = super::notify::MAX_MENTIONS;
    if value.len() <= max_chars * 4
        && chars(value) <= max_chars
        && super::notify::mentions(value).len() > max
    {
        checks.push(FieldError::new(
            field,
            format!("mentions more than {max} users"),
        ));
    }
}

pub fn check_name(field: &str, name: &str) -> Result<(), DomainError> {
    let mut c = Checks::default();
    text(&mut c, field, name, 1, NAME_MAX);
    c.finish()
}

pub fn check_display_name(name: &str) -> Result<(), DomainError> {
    let mut c = Checks::default();
    text(&mut c, "displayName", name, 1, DISPLAY_NAME_MAX);
    c.finish()
}

pub fn check_comment_body(body: &str) -> Result<(), DomainError> {
    let mut c = Checks::default();
    text(&mut c, "body", body, 1, COMMENT_MAX);
    mention_limit(&mut c, "body", body, COMMENT_MAX);
    c.finish()
}

/// Emails are compared case-insensitively: this is the one form that is stored and compared.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// The sizes any credential must respect, checked before anything costly (a look-up, a hash, a
/// rate-limit key) is done with it.
pub fn check_credential_sizes(email: &str, password: &str) -> Result<(), DomainError> {
    let mut c = Checks::default();
    c.check(
        chars(email) <= EMAIL_MAX,
        "email",
        "must be at most 254 characters",
    );
    c.check(
        chars(password) <= PASSWORD_MAX,
        "password",
        "must be at most 1024 characters",
    );
    c.finish()
}

pub fn check_registration(
    email: &str,
    password: &str,
    display_name: &str,
) -> Result<(), DomainError> {
    let mut c = Checks::default();
    let plausible = match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !email.contains(char::is_whitespace)
        }
        None => false,
    };
    c.check(
        plausible && chars(email) <= EMAIL_MAX,
        "email",
        "must be an email address",
    );
    let n = chars(password);
    c.check(
        n >= PASSWORD_MIN,
        "password",
        "must be at least 8 characters",
    );
    c.check(
        n <= PASSWORD_MAX,
        "password",
        "must be at most 1024 characters",
    );
    text(&mut c, "displayName", display_name, 1, DISPLAY_NAME_MAX);
    c.finish()
}

/// Roles that can be given through the members API (ownership is not transferable here).
pub fn check_assignable_role(role: Role) -> Result<(), DomainError> {
    if role == Role::Owner {
        Err(DomainError::invalid(
            "role",
            "must be one of admin, member, viewer",
        ))
    } else {
        Ok(())
    }
}

/// Deserializes a field that distinguishes "absent" (None) from "null" (Some(None)).
pub fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Deserializes a field that may be absent but not `null`.
pub fn non_null<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    T::deserialize(d).map(Some)
}

fn double_option_date<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<time::Date>>, D::Error> {
    date::deserialize(d).map(Some)
}

/// The body of `POST /teams/{teamId}/tasks`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewTask {
    #[schema(min_length = 1, max_length = 200)]
    pub title: String,
    #[serde(default)]
    #[schema(max_length = 20000)]
    pub description: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Uuid>)]
    pub board_id: Option<BoardId>,
    #[serde(default)]
    pub status: Option<TaskStatus>,
    #[serde(default)]
    pub priority: Option<Priority>,
    #[serde(default)]
    #[schema(value_type = Option<Uuid>)]
    pub assignee_user_id: Option<UserId>,
    #[serde(default, with = "date")]
    #[schema(value_type = Option<String>, format = Date)]
    pub due_date: Option<time::Date>,
    #[serde(default)]
    pub position: Option<f64>,
    /// At most 20 of the team's labels.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Uuid>>, max_items = 20)]
    pub label_ids: Option<Vec<LabelId>>,
}

/// The rules of a new task's title, description and labels (a single creation's and each of a
/// bulk import's).
pub(super) fn new_task_fields(
    c: &mut Checks,
    title: &str,
    description: Option<&str>,
    label_ids: Option<&[LabelId]>,
) {
    text(c, "title", title, 1, TITLE_MAX);
    if let Some(d) = description {
        text(c, "description", d, 0, DESCRIPTION_MAX);
        mention_limit(c, "description", d, DESCRIPTION_MAX);
    }
    if let Some(l) = label_ids {
        label_set_checks(c, l);
    }
}

impl NewTask {
    pub fn check(&self) -> Result<(), DomainError> {
        let mut c = Checks::default();
        new_task_fields(
            &mut c,
            &self.title,
            self.description.as_deref(),
            self.label_ids.as_deref(),
        );
        c.check(
            self.position.is_none_or(f64::is_finite),
            "position",
            "must be a finite number",
        );
        c.finish()
    }
}

/// The body of `PATCH /tasks/{taskId}`: absent fields stay as they are; `null` clears a nullable one.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskPatch {
    #[serde(default, deserialize_with = "non_null")]
    #[schema(nullable = false, min_length = 1, max_length = 200)]
    pub title: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    #[schema(nullable = false, max_length = 20000)]
    pub description: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    #[schema(nullable = false, value_type = Option<Uuid>)]
    pub board_id: Option<BoardId>,
    #[serde(default, deserialize_with = "non_null")]
    #[schema(nullable = false)]
    pub status: Option<TaskStatus>,
    #[serde(default, deserialize_with = "non_null")]
    #[schema(nullable = false)]
    pub priority: Option<Priority>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<uuid::Uuid>)]
    pub assignee_user_id: Option<Option<UserId>>,
    #[serde(default, deserialize_with = "double_option_date")]
    #[schema(value_type = Option<String>, format = Date)]
    pub due_date: Option<Option<time::Date>>,
    #[serde(default, deserialize_with = "non_null")]
    #[schema(nullable = false)]
    pub position: Option<f64>,
    /// The task's whole set of labels (at most 20 of the team's).
    #[serde(default, deserialize_with = "non_null")]
    #[schema(nullable = false, value_type = Option<Vec<Uuid>>, max_items = 20)]
    pub label_ids: Option<Vec<LabelId>>,
}

impl TaskPatch {
    pub fn check(&self) -> Result<(), DomainError> {
        let mut c = Checks::default();
        if let Some(l) = &self.label_ids {
            label_set_checks(&mut c, l);
        }
        if let Some(t) = &self.title {
            text(&mut c, "title", t, 1, TITLE_MAX);
        }
        if let Some(d) = &self.description {
            text(&mut c, "description", d, 0, DESCRIPTION_MAX);
            mention_limit(&mut c, "description", d, DESCRIPTION_MAX);
        }
        c.check(
            self.position.is_none_or(f64::is_finite),
            "position",
            "must be a finite number",
        );
        c.finish()
    }

    /// Applies the patch: the new task (version bumped if anything changed) and the changed fields.
    pub fn apply(&self, task: &Task, now: OffsetDateTime) -> (Task, BTreeMap<String, Change>) {
        let mut next = task.clone();
        let mut changes = BTreeMap::new();
        fn track<T: PartialEq + serde::Serialize + Clone>(
            changes: &mut BTreeMap<String, Change>,
            field: &str,
            slot: &mut T,
            value: Option<&T>,
        ) {
            if let Some(v) = value
                && slot != v
            {
                changes.insert(
                    field.to_owned(),
                    Change {
                        from: serde_json::to_value(&*slot).unwrap_or_default(),
                        to: serde_json::to_value(v).unwrap_or_default(),
                    },
                );
                *slot = v.clone();
            }
        }
        track(&mut changes, "title", &mut next.title, self.title.as_ref());
        track(
            &mut changes,
            "description",
            &mut next.description,
            self.description.as_ref(),
        );
        track(
            &mut changes,
            "boardId",
            &mut next.board_id,
            self.board_id.as_ref(),
        );
        track(
            &mut changes,
            "status",
            &mut next.status,
            self.status.as_ref(),
        );
        track(
            &mut changes,
            "priority",
            &mut next.priority,
            self.priority.as_ref(),
        );
        track(
            &mut changes,
            "assigneeUserId",
            &mut next.assignee_user_id,
            self.assignee_user_id.as_ref(),
        );
        track(
            &mut changes,
            "position",
            &mut next.position,
            self.position.as_ref(),
        );
        if let Some(due) = self.due_date
            && next.due_date != due
        {
            let fmt = |d: Option<time::Date>| {
                d.map(|d| serde_json::Value::String(date::format(&d)))
                    .unwrap_or(serde_json::Value::Null)
            };
            changes.insert(
                "dueDate".into(),
                Change {
                    from: fmt(next.due_date),
                    to: fmt(due),
                },
            );
            next.due_date = due;
        }
        let labels = self.label_ids.as_deref().map(label_set);
        track(
            &mut changes,
            "labelIds",
            &mut next.label_ids,
            labels.as_ref(),
        );
        if !changes.is_empty() {
            next.version += 1;
            next.updated_at = now;
        }
        (next, changes)
    }
}

pub const LABELS_PER_TASK: usize = 20;
pub const LABEL_NAME_MAX: usize = 50;

fn label_set_checks(c: &mut Checks, ids: &[LabelId]) {
    c.check(
        ids.len() <= LABELS_PER_TASK,
        "labelIds",
        &format!("must hold at most {LABELS_PER_TASK} labels"),
    );
    c.check(
        label_set(ids).len() == ids.len(),
        "labelIds",
        "must not name a label twice",
    );
}

/// A task's labels as it carries them: ascending ids, each once.
pub fn label_set(ids: &[LabelId]) -> Vec<LabelId> {
    let mut set = ids.to_vec();
    set.sort_unstable();
    set.dedup();
    set
}

/// What makes two label names the same in a team: their lower-case forms are equal.
pub fn label_name_key(name: &str) -> String {
    name.trim().to_lowercase()
}

/// `#rrggbb` in lower case, or None.
fn label_color(color: &str) -> Option<String> {
    let hex = color.strip_prefix('#')?;
    (hex.len() == 6 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| color.to_ascii_lowercase())
}

fn label_checks(c: &mut Checks, name: Option<&str>, color: Option<&str>) {
    if let Some(n) = name {
        text(c, "name", n, 1, LABEL_NAME_MAX);
    }
    if let Some(k) = color {
        c.check(label_color(k).is_some(), "color", "must be #rrggbb");
    }
}

/// The body of `POST /teams/{teamId}/labels`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewLabel {
    #[schema(min_length = 1, max_length = 50)]
    pub name: String,
    /// `#rrggbb` (stored in lower case).
    #[schema(pattern = "^#[0-9a-fA-F]{6}$")]
    pub color: String,
}

impl NewLabel {
    /// The label's name and color as stored (name trimmed, color in lower case).
    pub fn check(&self) -> Result<(String, String), DomainError> {
        let mut c = Checks::default();
        label_checks(&mut c, Some(&self.name), Some(&self.color));
        c.finish()?;
        Ok((self.name.trim().to_owned(), self.color.to_ascii_lowercase()))
    }
}

/// The body of `PATCH /labels/{labelId}`: absent fields stay as they are.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelPatch {
    #[serde(default, deserialize_with = "non_null")]
    #[schema(nullable = false, min_length = 1, max_length = 50)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    #[schema(nullable = false, pattern = "^#[0-9a-fA-F]{6}$")]
    pub color: Option<String>,
}

impl LabelPatch {
    /// The label after the patch, or None when nothing changes.
    pub fn apply(&self, label: &Label) -> Result<Option<Label>, DomainError> {
        let mut c = Checks::default();
        label_checks(&mut c, self.name.as_deref(), self.color.as_deref());
        c.finish()?;
        let mut next = label.clone();
        if let Some(n) = &self.name {
            next.name = n.trim().to_owned();
        }
        if let Some(k) = &self.color {
            next.color = k.to_ascii_lowercase();
        }
        Ok((next != *label).then_some(next))
    }
}

/// The position of a task placed after the last one of its column.
pub fn position_after(last: Option<f64>) -> f64 {
    last.map_or(1.0, |m| m.floor() + 1.0)
}

/// Parses an `If-Match` header value against the task's version: `*`, `"3"`, `W/"3"` or a list.
pub fn if_match_allows(header: &str, version: i64) -> bool {
    header.split(',').map(str::trim).any(|tag| {
        tag == "*"
            || tag
                .trim_start_matches("W/")
                .trim_matches('"')
                .parse::<i64>()
                .ok()
                == Some(version)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_by_power() {
        assert!(!Role::Viewer.allows(Action::WriteTasks));
        assert!(Role::Member.allows(Action::WriteTasks));
        assert!(!Role::Member.allows(Action::ManageMembers));
        assert!(Role::Admin.allows(Action::DeleteBoards));
        assert!(Role::Owner.allows(Action::EditTeam));
    }

    #[test]
    fn lengths_count_unicode_scalar_values() {
        let ok = "😀".repeat(200);
        assert!(
            NewTask {
                title: ok,
                ..blank()
            }
            .check()
            .is_ok()
        );
        let too_long = "😀".repeat(201);
        assert!(
            NewTask {
                title: too_long,
                ..blank()
            }
            .check()
            .is_err()
        );
        assert!(
            NewTask {
                title: "  ".into(),
                ..blank()
            }
            .check()
            .is_err()
        );
    }

    fn blank() -> NewTask {
        NewTask {
            title: String::new(),
            description: None,
            board_id: None,
            status: None,
            priority: None,
            assignee_user_id: None,
            due_date: None,
            position: None,
            label_ids: None,
        }
    }

    #[test]
    fn if_match_accepts_strong_weak_and_star() {
        assert!(if_match_allows("\"3\"", 3));
        assert!(if_match_allows("W/\"3\"", 3));
        assert!(if_match_allows("*", 9));
        assert!(if_match_allows("\"1\", \"3\"", 3));
        assert!(!if_match_allows("\"2\"", 3));
        assert!(!if_match_allows("garbage", 3));
    }
}
