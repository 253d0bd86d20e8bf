//! Bulk import: a batch of tasks, with their comments, written in one transaction under one
//! activity.
//!
//! One `task.imported` activity stands for the batch, not one `task.created` per task: a batch
//! delivered task by task is a thousand frames queued at once on every socket watching the team,
//! past the live queue a socket may hold (`TASKFORGE_WS_QUEUE_LIMIT`, 1,024 frames), which cuts
//! those sockets as slow consumers. An import notifies no one's inbox and makes no one follow the
//! tasks: a migration of old work is not news. The rows are written by multi-row INSERTs (a few
//! statements per 200 tasks, not six per task).

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::{Result, Services, now};
use crate::domain::activity::{ActivityData, ActivityDraft};
use crate::domain::import::{BatchTask, ImportedTask, TaskBatch};
use crate::domain::rules::{Action, label_set, position_after};
use crate::domain::*;
use crate::store::{StoreError, Tx};

impl Services {
    /// Creates the batch's tasks (those whose import key the team has not seen) in its order,
    /// each at the end of its status column, with their comments; answers every task of the
    /// batch, created or found.
    pub async fn import_tasks(
        &self,
        actor: UserId,
        team: TeamId,
        batch: TaskBatch,
    ) -> Result<Vec<ImportedTask>> {
        batch.check()?;
        let mut tx = self.write_in(team).await?;
        let mut last_positions = column_ends(&mut *tx, team, actor, &batch).await?;
        let keys: Vec<&str> = batch
            .tasks
            .iter()
            .filter_map(|t| t.import_key.as_deref())
            .collect();
        let known: HashMap<String, TaskId> =
            tx.imported_tasks(team, &keys).await?.into_iter().collect();
        let is_new = |t: &BatchTask| t.import_key.as_ref().is_none_or(|k| !known.contains_key(k));
        check_references(&mut *tx, team, &batch, is_new).await?;

        let at = now();
        let mut answer = Vec::with_capacity(batch.tasks.len());
        let mut tasks: Vec<Task> = Vec::with_capacity(batch.tasks.len());
        let mut keyed: Vec<(String, TaskId)> = Vec::new();
        let mut comments: Vec<Comment> = Vec::new();
        let board_id = batch.board_id;
        for item in batch.tasks {
            if let Some(id) = item.import_key.as_ref().and_then(|k| known.get(k)) {
                answer.push(ImportedTask {
                    task_id: *id,
                    created: false,
                });
                continue;
            }
            let status = item.status.unwrap_or_default();
            let last = last_positions.entry(status).or_default();
            let position = position_after(*last);
            *last = Some(position);
            let id = TaskId::from(Uuid::now_v7());
            tasks.push(Task {
                id,
                team_id: team,
                board_id,
                title: item.title,
                description: item.description.unwrap_or_default(),
                status,
                priority: item.priority.unwrap_or_default(),
                assignee_user_id: item.assignee_user_id,
                due_date: item.due_date,
                position,
                created_by: actor,
                created_at: at,
                updated_at: at,
                version: 1,
                label_ids: label_set(item.label_ids.as_deref().unwrap_or_default()),
            });
            if let Some(key) = item.import_key {
                keyed.push((key, id));
            }
            comments.extend(item.comments.into_iter().map(|c| Comment {
                id: CommentId::from(Uuid::now_v7()),
                task_id: id,
                team_id: team,
                author_user_id: actor,
                body: c.body,
                created_at: at,
                edited_at: None,
            }));
            answer.push(ImportedTask {
                task_id: id,
                created: true,
            });
        }
        if tasks.is_empty() {
            // Every row was imported before: nothing to write, nothing to tell. Committed all
            // the same: the answer rests on what this transaction read, which may be another
            // write of the same batch (group commit) that is durable only once it commits.
            tx.commit().await?;
            return Ok(answer);
        }
        tx.insert_imported(&tasks, &keyed, &comments)
            .await
            .map_err(|e| match e {
                // Another import of one of the keys committed first (PostgreSQL).
                StoreError::Duplicate => DomainError::Conflict(
                    "another import of the same key ran at the same time; retry",
                )
                .into(),
                other => super::ServiceError::from(other),
            })?;
        let comment_count = u32::try_from(comments.len()).unwrap_or(u32::MAX);
        let created: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
        let draft = ActivityDraft::new(
            ActivityData::TaskImported {
                board_id,
                task_ids: created,
                comment_count,
            },
            actor,
            at,
        );
        self.commit(tx, team, vec![draft], Vec::new()).await?;
        Ok(answer)
    }
}

/// The caller may write tasks in the team, the board is the team's, and the last position of
/// each status column the batch adds to (read once per column).
async fn column_ends(
    tx: &mut dyn Tx,
    team: TeamId,
    actor: UserId,
    batch: &TaskBatch,
) -> Result<HashMap<TaskStatus, Option<f64>>> {
    let mut statuses: Vec<TaskStatus> = batch
        .tasks
        .iter()
        .map(|t| t.status.unwrap_or_default())
        .collect();
    statuses.sort_by_key(|s| s.as_str());
    statuses.dedup();
    let mut ends = HashMap::new();
    for status in statuses {
        let slot = tx
            .task_slot(team, actor, Some(batch.board_id), status)
            .await?
            .ok_or(DomainError::NotFound)?;
        slot.role.ensure(Action::WriteTasks)?;
        if slot.board_id.is_none() {
            return Err(DomainError::invalid("boardId", "is not a board of this team").into());
        }
        ends.insert(status, slot.last_position);
    }
    Ok(ends)
}

/// Every assignee is a member and every label the team's; each miss is named by its task.
/// Rows imported before are not checked again (their assignee may have left the team since).
async fn check_references(
    tx: &mut dyn Tx,
    team: TeamId,
    batch: &TaskBatch,
    is_new: impl Fn(&BatchTask) -> bool,
) -> Result<()> {
    let new_rows = || batch.tasks.iter().filter(|t| is_new(t));
    let assignees: Vec<UserId> = distinct(new_rows().filter_map(|t| t.assignee_user_id));
    let labels: Vec<LabelId> =
        distinct(new_rows().flat_map(|t| t.label_ids.iter().flatten().copied()));
    let members: HashSet<UserId> = tx
        .members_among(team, &assignees)
        .await?
        .into_iter()
        .collect();
    let team_labels: HashSet<LabelId> = tx.labels_among(team, &labels).await?.into_iter().collect();
    let mut errors = Vec::new();
    for (i, t) in batch.tasks.iter().enumerate().filter(|(_, t)| is_new(t)) {
        if t.assignee_user_id.is_some_and(|a| !members.contains(&a)) {
            errors.push(FieldError::new(
                &format!("tasks[{i}].assigneeUserId"),
                "is not a member of this team",
            ));
        }
        if t.label_ids
            .iter()
            .flatten()
            .any(|l| !team_labels.contains(l))
        {
            errors.push(FieldError::new(
                &format!("tasks[{i}].labelIds"),
                "names a label that is not one of this team's",
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(DomainError::Validation(errors).into())
    }
}

fn distinct<T: Ord>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut v: Vec<T> = items.collect();
    v.sort_unstable();
    v.dedup();
    v
}
