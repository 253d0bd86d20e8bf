//! Tasks and their comments.

use uuid::Uuid;

use super::inbox::{TaskChange, notify};
use super::{
    OwnedBy, Page, PageRequest, Result, Seqd, Services, WRITE_ATTEMPTS, now, page_by_id, role_in,
    seq_of,
};
use crate::domain::activity::{ActivityData, ActivityDraft, ActivityKind};
use crate::domain::notify::{Happening, Reason, mentions, new_mentions};
use crate::domain::rules::{
    Action, NewTask, TaskPatch, check_comment_body, if_match_allows, label_set, position_after,
};
use crate::domain::search::{
    self, SEARCH_LIMIT_DEFAULT, SEARCH_LIMIT_MAX, SearchHit, TaskCursor, TaskFilter, TaskSort,
    check_filter,
};
use crate::domain::*;
use crate::store::{StoreError, Tx};

/// A board the task may live on: it must belong to the task's team.
async fn check_board(tx: &mut dyn Tx, team: TeamId, board: BoardId) -> Result<()> {
    match tx.board(board).await? {
        Some(b) if b.team_id == team => Ok(()),
        _ => Err(DomainError::invalid("boardId", "is not a board of this team").into()),
    }
}

/// Labels must be the team's: each is locked against deletion until the transaction ends.
async fn check_labels(tx: &mut dyn Tx, team: TeamId, labels: &[LabelId]) -> Result<()> {
    if labels.is_empty() {
        return Ok(());
    }
    let found = tx.labels_among(team, labels).await?;
    if found.len() == labels.len() {
        Ok(())
    } else {
        Err(DomainError::invalid("labelIds", "names a label that is not one of this team's").into())
    }
}

/// An assignee must be a member of the team.
async fn check_assignee(tx: &mut dyn Tx, team: TeamId, user: UserId) -> Result<()> {
    match tx.role(team, user).await? {
        Some(_) => Ok(()),
        None => Err(DomainError::invalid("assigneeUserId", "is not a member of this team").into()),
    }
}

impl Services {
    pub async fn create_task(&self, actor: UserId, team: TeamId, input: NewTask) -> Result<Task> {
        input.check()?;
        let status = input.status.unwrap_or_default();
        let mut tx = self.write_in(team).await?;
        // One read for the role, the board and the column's last position: this is the hot path.
        let slot = tx
            .task_slot(team, actor, input.board_id, status)
            .await?
            .ok_or(DomainError::NotFound)?;
        slot.role.ensure(Action::WriteTasks)?;
        let board_id = slot
            .board_id
            .ok_or_else(|| DomainError::invalid("boardId", "is not a board of this team"))?;
        if let Some(a) = input.assignee_user_id {
            check_assignee(&mut *tx, team, a).await?;
        }
        let label_ids = label_set(input.label_ids.as_deref().unwrap_or_default());
        check_labels(&mut *tx, team, &label_ids).await?;
        let position = input
            .position
            .unwrap_or_else(|| position_after(slot.last_position));
        let at = now();
        let task = Task {
            id: TaskId::from(Uuid::now_v7()),
            team_id: team,
            board_id,
            title: input.title,
            description: input.description.unwrap_or_default(),
            status,
            priority: input.priority.unwrap_or_default(),
            assignee_user_id: input.assignee_user_id,
            due_date: input.due_date,
            position,
            created_by: actor,
            created_at: at,
            updated_at: at,
            version: 1,
            label_ids,
        };
        // The creator follows what they create (they acted: `follows_after`); their row is
        // written with the task's, one round trip instead of two on PostgreSQL, and `notify`
        // is told so.
        tx.insert_task(&task, Some(actor)).await?;
        let notified = notify(
            &mut *tx,
            TaskChange {
                actor,
                task: &task,
                kind: ActivityKind::TaskCreated,
                happening: Happening {
                    assigned: task.assignee_user_id,
                    mentioned: mentions(&task.description),
                    to_followers: None,
                },
                acted: true,
                followed: Some(actor),
                comment: None,
                followers: None,
                at,
            },
        )
        .await?;
        let mut drafts = vec![ActivityDraft::new(
            ActivityData::TaskCreated { task: task.clone() },
            actor,
            at,
        )];
        if task.assignee_user_id.is_some() {
            let data = ActivityData::TaskAssigned {
                task: task.clone(),
                assignee_user_id: task.assignee_user_id,
                previous_assignee_user_id: None,
            };
            drafts.push(ActivityDraft::new(data, actor, at));
        }
        self.commit(tx, team, drafts, notified).await?;
        Ok(task)
    }

    /// A page of the team's tasks passing `filter`, in `sort`'s order.
    pub async fn tasks(
        &self,
        actor: UserId,
        team: TeamId,
        filter: &TaskFilter,
        sort: TaskSort,
        req: &PageRequest,
    ) -> Result<Seqd<Page<Task>>> {
        check_filter(filter)?;
        let limit = req.limit()?;
        let after = req
            .cursor
            .as_deref()
            .map(|c| TaskCursor::decode(sort, c))
            .transpose()?;
        let mut tx = self.store.read().await?;
        role_in(&mut *tx, team, actor).await?;
        let seq = seq_of(&mut *tx, team).await?;
        let mut items = tx.tasks(team, filter, sort, after, limit + 1).await?;
        let more = items.len() as i64 > limit;
        items.truncate(limit as usize);
        let next_cursor = items
            .last()
            .filter(|_| more)
            .map(|t| TaskCursor::of(sort, t).encode(sort));
        Ok(Seqd {
            data: Page { items, next_cursor },
            seq,
        })
    }

    /// The team's best matches of `q`, each with the excerpt that matched.
    pub async fn search_tasks(
        &self,
        actor: UserId,
        team: TeamId,
        q: &str,
        limit: Option<i64>,
    ) -> Result<Vec<SearchHit>> {
        let words = search::words(q)?;
        let limit = match limit {
            None => SEARCH_LIMIT_DEFAULT,
            Some(n) if (1..=SEARCH_LIMIT_MAX).contains(&n) => n,
            Some(_) => {
                return Err(DomainError::invalid(
                    "limit",
                    format!("must be 1 to {SEARCH_LIMIT_MAX}"),
                )
                .into());
            }
        };
        let mut tx = self.store.read().await?;
        role_in(&mut *tx, team, actor).await?;
        let found = tx.search_tasks(team, &words, limit).await?;
        Ok(found
            .into_iter()
            .map(|(task, score)| SearchHit {
                snippet: search::snippet(&task, &words),
                task,
                score,
            })
            .collect())
    }

    /// A task, and whether the caller follows it.
    pub async fn task(&self, actor: UserId, id: TaskId) -> Result<Seqd<(Task, bool)>> {
        let mut tx = self.store.read().await?;
        let task = tx.task(id).await?.ok_or(DomainError::NotFound)?;
        role_in(&mut *tx, task.team_id, actor).await?;
        let seq = seq_of(&mut *tx, task.team_id).await?;
        let following = tx.follows(id, actor).await?;
        Ok(Seqd {
            data: (task, following),
            seq,
        })
    }

    /// Applies a patch, optionally only if the task is still at a version the caller names
    /// (`If-Match`). A patch that changes nothing emits nothing and keeps the version.
    pub async fn update_task(
        &self,
        actor: UserId,
        id: TaskId,
        patch: TaskPatch,
        if_match: Option<&str>,
    ) -> Result<Task> {
        patch.check()?;
        for _ in 0..WRITE_ATTEMPTS {
            let mut tx = self.write_for(OwnedBy::Task(id)).await?;
            let task = tx.task(id).await?.ok_or(DomainError::NotFound)?;
            role_in(&mut *tx, task.team_id, actor)
                .await?
                .ensure(Action::WriteTasks)?;
            if let Some(tag) = if_match
                && !if_match_allows(tag, task.version)
            {
                return Err(DomainError::PreconditionFailed {
                    current_version: task.version,
                }
                .into());
            }
            if let Some(b) = patch.board_id.filter(|b| *b != task.board_id) {
                check_board(&mut *tx, task.team_id, b).await?;
            }
            if let Some(Some(a)) = patch
                .assignee_user_id
                .filter(|a| *a != task.assignee_user_id)
            {
                check_assignee(&mut *tx, task.team_id, a).await?;
            }
            let at = now();
            let (mut next, changes) = patch.apply(&task, at);
            if changes.is_empty() {
                // Committed though nothing changed: see `import_tasks`.
                tx.commit().await?;
                return Ok(task);
            }
            let labels_changed = changes.contains_key("labelIds");
            if labels_changed {
                check_labels(&mut *tx, task.team_id, &next.label_ids).await?;
            }
            let stored_labels = match tx.update_task(&next, next.words_differ(&task)).await {
                Err(StoreError::Stale) => continue,
                other => other?,
            };
            if labels_changed {
                tx.set_task_labels(next.id, &next.label_ids).await?;
            } else {
                // A label deleted after the read above is gone from the task (its deletion does
                // not move versions): answer and log the task as stored.
                next.label_ids = stored_labels;
            }
            let moved = |d: ActivityDraft| {
                if next.board_id != task.board_id {
                    d.moved_from(task.board_id)
                } else {
                    d
                }
            };
            let assignee_changed = changes.contains_key("assigneeUserId");
            let happening = Happening {
                assigned: next.assignee_user_id.filter(|_| assignee_changed),
                mentioned: new_mentions(&task.description, &next.description),
                to_followers: changes
                    .contains_key("status")
                    .then_some(Reason::StatusChanged),
            };
            let kind = if happening.assigned.is_some() && happening.to_followers.is_none() {
                ActivityKind::TaskAssigned
            } else {
                ActivityKind::TaskUpdated
            };
            let notified = notify(
                &mut *tx,
                TaskChange {
                    actor,
                    task: &next,
                    kind,
                    happening,
                    acted: false,
                    followed: None,
                    comment: None,
                    followers: None,
                    at,
                },
            )
            .await?;
            let mut drafts = vec![moved(ActivityDraft::new(
                ActivityData::TaskUpdated {
                    task: next.clone(),
                    changes,
                },
                actor,
                at,
            ))];
            if assignee_changed {
                let data = ActivityData::TaskAssigned {
                    task: next.clone(),
                    assignee_user_id: next.assignee_user_id,
                    previous_assignee_user_id: task.assignee_user_id,
                };
                drafts.push(moved(ActivityDraft::new(data, actor, at)));
            }
            self.commit(tx, next.team_id, drafts, notified).await?;
            return Ok(next);
        }
        Err(StoreError::Stale.into())
    }

    pub async fn delete_task(&self, actor: UserId, id: TaskId) -> Result<()> {
        let mut tx = self.write_for(OwnedBy::Task(id)).await?;
        let task = tx.task(id).await?.ok_or(DomainError::NotFound)?;
        role_in(&mut *tx, task.team_id, actor)
            .await?
            .ensure(Action::WriteTasks)?;
        // The activity names the board of the row deleted: a move that committed after the read
        // above (the DELETE waited for its row lock) left the task on another board.
        // The followers go with the task: read them first, once the task's row is locked (a
        // comment committing meanwhile has made its author follow), as every change takes the
        // task's row before any inbox row.
        if !tx.lock_task(id).await? {
            return Err(DomainError::NotFound.into());
        }
        let followers = tx.followers(id).await?;
        let deleted = tx.delete_task(id).await?.ok_or(DomainError::NotFound)?;
        let at = now();
        let notified = notify(
            &mut *tx,
            TaskChange {
                actor,
                task: &deleted,
                kind: ActivityKind::TaskDeleted,
                happening: Happening {
                    to_followers: Some(Reason::TaskDeleted),
                    ..Happening::default()
                },
                acted: false,
                followed: None,
                comment: None,
                followers: Some(followers),
                at,
            },
        )
        .await?;
        let data = ActivityData::TaskDeleted {
            task_id: id,
            board_id: deleted.board_id,
        };
        self.commit(
            tx,
            deleted.team_id,
            vec![ActivityDraft::new(data, actor, at)],
            notified,
        )
        .await?;
        Ok(())
    }

    pub async fn create_comment(&self, actor: UserId, task: TaskId, body: &str) -> Result<Comment> {
        check_comment_body(body)?;
        let mut tx = self.write_for(OwnedBy::Task(task)).await?;
        let found = tx.task(task).await?.ok_or(DomainError::NotFound)?;
        role_in(&mut *tx, found.team_id, actor)
            .await?
            .ensure(Action::WriteTasks)?;
        let comment = Comment {
            id: CommentId::from(Uuid::now_v7()),
            task_id: task,
            team_id: found.team_id,
            author_user_id: actor,
            body: body.to_owned(),
            created_at: now(),
            edited_at: None,
        };
        tx.insert_comment(&comment).await?;
        let notified = notify(
            &mut *tx,
            TaskChange {
                actor,
                task: &found,
                kind: ActivityKind::CommentCreated,
                happening: Happening {
                    assigned: None,
                    mentioned: mentions(body),
                    to_followers: Some(Reason::Commented),
                },
                acted: true,
                followed: None,
                comment: Some((comment.id, body)),
                followers: None,
                at: comment.created_at,
            },
        )
        .await?;
        let draft = ActivityDraft::new(
            ActivityData::CommentCreated {
                comment: comment.clone(),
            },
            actor,
            comment.created_at,
        );
        self.commit(tx, found.team_id, vec![draft], notified)
            .await?;
        Ok(comment)
    }

    pub async fn comments(
        &self,
        actor: UserId,
        task: TaskId,
        req: &PageRequest,
    ) -> Result<Seqd<Page<Comment>>> {
        let page = req.after_id()?;
        let mut tx = self.store.read().await?;
        let found = tx.task(task).await?.ok_or(DomainError::NotFound)?;
        role_in(&mut *tx, found.team_id, actor).await?;
        let seq = seq_of(&mut *tx, found.team_id).await?;
        let rows = tx.comments(task, page).await?;
        Ok(Seqd {
            data: page_by_id(rows, page, |c: &Comment| c.id),
            seq,
        })
    }

    pub async fn edit_comment(&self, actor: UserId, id: CommentId, body: &str) -> Result<Comment> {
        check_comment_body(body)?;
        for _ in 0..WRITE_ATTEMPTS {
            let mut tx = self.write_for(OwnedBy::Comment(id)).await?;
            let mut comment = tx.comment(id).await?.ok_or(DomainError::NotFound)?;
            role_in(&mut *tx, comment.team_id, actor).await?;
            if comment.author_user_id != actor {
                return Err(DomainError::Forbidden("only the author can edit a comment").into());
            }
            let previous = std::mem::replace(&mut comment.body, body.to_owned());
            let mentioned = new_mentions(&previous, body);
            comment.edited_at = Some(now());
            // A concurrent edit won: read it again, so that only mentions new against it notify.
            if !tx.update_comment(&comment, &previous).await? {
                continue;
            }
            return self
                .finish_comment_edit(tx, actor, comment, mentioned)
                .await;
        }
        Err(StoreError::Stale.into())
    }

    /// The rest of an edit whose row is written: notifications of its new mentions, the
    /// activity, the commit.
    async fn finish_comment_edit(
        &self,
        mut tx: Box<dyn Tx>,
        actor: UserId,
        comment: Comment,
        mentioned: Vec<UserId>,
    ) -> Result<Comment> {
        let body = comment.body.as_str();
        let notified = match (mentioned.is_empty(), tx.task(comment.task_id).await?) {
            (false, Some(task)) => {
                notify(
                    &mut *tx,
                    TaskChange {
                        actor,
                        task: &task,
                        kind: ActivityKind::CommentUpdated,
                        happening: Happening {
                            mentioned,
                            ..Happening::default()
                        },
                        acted: false,
                        followed: None,
                        comment: Some((comment.id, body)),
                        followers: None,
                        at: now(),
                    },
                )
                .await?
            }
            _ => Vec::new(),
        };
        let draft = ActivityDraft::new(
            ActivityData::CommentUpdated {
                comment: comment.clone(),
            },
            actor,
            now(),
        );
        self.commit(tx, comment.team_id, vec![draft], notified)
            .await?;
        Ok(comment)
    }

    pub async fn delete_comment(&self, actor: UserId, id: CommentId) -> Result<()> {
        let mut tx = self.write_for(OwnedBy::Comment(id)).await?;
        let comment = tx.comment(id).await?.ok_or(DomainError::NotFound)?;
        let role = role_in(&mut *tx, comment.team_id, actor).await?;
        if comment.author_user_id != actor {
            role.ensure(Action::ModerateComments)?;
        }
        if !tx.delete_comment(id).await? {
            return Err(DomainError::NotFound.into());
        }
        let data = ActivityData::CommentDeleted {
            comment_id: id,
            task_id: comment.task_id,
        };
        self.commit(
            tx,
            comment.team_id,
            vec![ActivityDraft::new(data, actor, now())],
            Vec::new(),
        )
        .await?;
        Ok(())
    }
}
