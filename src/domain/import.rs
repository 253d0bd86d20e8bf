//! A bulk import: a batch of new tasks, with their comments, checked as one before anything of it
//! is written. Each task may carry an import key (the row of the source it came from), which
//! makes importing the same source again find the task instead of making a second one.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{Checks, DomainError, FieldError};
use super::model::{BoardId, LabelId, Priority, TaskId, TaskStatus, UserId, date};
use super::rules::{check_comment_body, new_task_fields};

/// Tasks one batch may create.
pub const BATCH_TASKS_MAX: usize = 1_000;
/// Comments one batch may create, over all its tasks.
pub const BATCH_COMMENTS_MAX: usize = 5_000;
/// The longest import key, in characters.
pub const IMPORT_KEY_MAX: usize = 200;

/// The body of `POST /teams/{teamId}/tasks:batch`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskBatch {
    /// The board every task of the batch goes on.
    #[schema(value_type = Uuid)]
    pub board_id: BoardId,
    /// 1 to 1,000 tasks, created in this order (each at the end of its status column).
    #[schema(min_items = 1, max_items = 1000)]
    pub tasks: Vec<BatchTask>,
}

/// One task of a batch: the fields of a created task, a key, and comments.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchTask {
    /// Names the row of the source (1 to 200 visible ASCII characters, unique in the batch): a
    /// task imported into the team under the same key before is answered instead of a new one.
    #[serde(default)]
    pub import_key: Option<String>,
    #[schema(min_length = 1, max_length = 200)]
    pub title: String,
    #[serde(default)]
    #[schema(max_length = 20000)]
    pub description: Option<String>,
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
    /// At most 20 of the team's labels.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Uuid>>, max_items = 20)]
    pub label_ids: Option<Vec<LabelId>>,
    /// Comments on the task, oldest first, written as the importing user's.
    #[serde(default)]
    pub comments: Vec<BatchComment>,
}

/// A comment of an imported task.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct BatchComment {
    #[schema(min_length = 1, max_length = 10000)]
    pub body: String,
}

/// One task of the answer, in the batch's order: its id, not the whole task, so that the
/// answer of a full batch stays small enough to be kept for an `Idempotency-Key` retry.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImportedTask {
    #[schema(value_type = Uuid)]
    pub task_id: TaskId,
    /// False when the task was imported under this key before (nothing of this row was written).
    pub created: bool,
}

/// A valid import key: 1 to 200 visible ASCII characters (as an `Idempotency-Key`, it often comes
/// from another system's ids and is echoed in errors).
pub fn valid_import_key(key: &str) -> bool {
    (1..=IMPORT_KEY_MAX).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

impl TaskBatch {
    /// Every rule a single creation checks, for every task, plus the batch's own: each error
    /// names its task (`tasks[3].title`), and one answer names them all.
    pub fn check(&self) -> Result<(), DomainError> {
        let mut c = Checks::default();
        c.check(
            !self.tasks.is_empty(),
            "tasks",
            "must hold at least one task",
        );
        c.check(
            self.tasks.len() <= BATCH_TASKS_MAX,
            "tasks",
            &format!("must hold at most {BATCH_TASKS_MAX} tasks"),
        );
        let comments: usize = self.tasks.iter().map(|t| t.comments.len()).sum();
        c.check(
            comments <= BATCH_COMMENTS_MAX,
            "tasks",
            &format!("must hold at most {BATCH_COMMENTS_MAX} comments in all"),
        );
        if self.tasks.len() > BATCH_TASKS_MAX || comments > BATCH_COMMENTS_MAX {
            // Not worth reading further: the batch is refused whatever its tasks hold.
            return c.finish();
        }
        let mut keys: HashMap<&str, usize> = HashMap::new();
        for (i, task) in self.tasks.iter().enumerate() {
            let at = |field: &str| format!("tasks[{i}].{field}");
            let mut fields = Checks::default();
            new_task_fields(
                &mut fields,
                &task.title,
                task.description.as_deref(),
                task.label_ids.as_deref(),
            );
            if let Err(DomainError::Validation(errors)) = fields.finish() {
                for e in errors {
                    c.push(FieldError::new(&at(&e.field), e.message));
                }
            }
            if let Some(key) = &task.import_key {
                if !valid_import_key(key) {
                    c.push(FieldError::new(
                        &at("importKey"),
                        format!("must be 1 to {IMPORT_KEY_MAX} visible ASCII characters"),
                    ));
                } else if let Some(first) = keys.insert(key, i) {
                    c.push(FieldError::new(
                        &at("importKey"),
                        format!("repeats the key of tasks[{first}]"),
                    ));
                }
            }
            for (j, comment) in task.comments.iter().enumerate() {
                if let Err(DomainError::Validation(errors)) = check_comment_body(&comment.body) {
                    for e in errors {
                        c.push(FieldError::new(
                            &at(&format!("comments[{j}].body")),
                            e.message,
                        ));
                    }
                }
            }
        }
        c.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(tasks: serde_json::Value) -> TaskBatch {
        serde_json::from_value(serde_json::json!({
            "boardId": uuid::Uuid::nil(),
            "tasks": tasks,
        }))
        .expect("a batch")
    }

    fn fields(b: &TaskBatch) -> Vec<String> {
        match b.check() {
            Ok(()) => Vec::new(),
            Err(DomainError::Validation(errors)) => errors.into_iter().map(|e| e.field).collect(),
            Err(e) => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn every_invalid_field_is_named_by_its_task() {
        let b = batch(serde_json::json!([
            { "title": "fine", "importKey": "row-1" },
            { "title": " ", "comments": [{ "body": "" }] },
            { "title": "fine too", "importKey": "row-1" },
            { "title": "x", "importKey": "has space" },
        ]));
        assert_eq!(
            fields(&b),
            vec![
                "tasks[1].title",
                "tasks[1].comments[0].body",
                "tasks[2].importKey",
                "tasks[3].importKey"
            ]
        );
    }

    #[test]
    fn a_batch_is_bounded_in_tasks_and_comments() {
        assert_eq!(fields(&batch(serde_json::json!([]))), vec!["tasks"]);
        let many: Vec<_> = (0..=BATCH_TASKS_MAX)
            .map(|i| serde_json::json!({ "title": format!("t{i}") }))
            .collect();
        assert_eq!(fields(&batch(serde_json::json!(many))), vec!["tasks"]);
        let chatty: Vec<_> = (0..6)
            .map(|_| serde_json::json!({ "title": "t", "comments": vec![serde_json::json!({"body": "c"}); 1000] }))
            .collect();
        assert_eq!(fields(&batch(serde_json::json!(chatty))), vec!["tasks"]);
        let fine: Vec<_> = (0..BATCH_TASKS_MAX)
            .map(|i| serde_json::json!({ "title": format!("t{i}"), "importKey": format!("k{i}") }))
            .collect();
        assert!(fields(&batch(serde_json::json!(fine))).is_empty());
    }
}
