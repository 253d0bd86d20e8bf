//! Notifications and following: writing what a change owes its readers (in the change's
//! transaction), and the inbox a user reads and marks.

use time::OffsetDateTime;
use uuid::Uuid;

use super::{OwnedBy, PageRequest, Result, Services, now, role_in};
use crate::domain::activity::ActivityKind;
use crate::domain::notify::{
    AutoFollow, Followers, Happening, MarkRead, Notification, NotificationDraft, ReadMark, excerpt,
    follows_after, recipients,
};
use crate::domain::{CommentId, DomainError, Task, TaskId, UserId};
use crate::store::{InboxQuery, Tx};

/// The most ids one mark-read names.
pub const MAX_MARK_IDS: usize = 200;

/// A change to a task that may owe notifications, as the task service describes it.
pub(super) struct TaskChange<'a> {
    pub actor: UserId,
    /// The task as the change leaves it (as it was, for a deletion).
    pub task: &'a Task,
    pub kind: ActivityKind,
    pub happening: Happening,
    /// Whether the actor did something that makes them follow (created, commented).
    pub acted: bool,
    /// A user whose follow is written already (a task's creator: with the task, by
    /// `insert_task`): no row is written for them here.
    pub followed: Option<UserId>,
    pub comment: Option<(CommentId, &'a str)>,
    /// The followers, when the caller had to read them earlier (before deleting the task).
    pub followers: Option<Followers>,
    pub at: OffsetDateTime,
}

/// Writes the follows and the notifications `change` owes, in `tx`, and returns each
/// recipient's new inbox seq. Call it after the change's own writes and before `append` (the
/// lock order of `Tx`).
pub(super) async fn notify(tx: &mut dyn Tx, change: TaskChange<'_>) -> Result<Vec<(UserId, i64)>> {
    let TaskChange {
        actor,
        task,
        kind,
        mut happening,
        acted,
        followed,
        comment,
        followers,
        at,
    } = change;
    let mut followers = match (followers, happening.to_followers) {
        (Some(f), _) => f,
        (None, Some(_)) => tx.followers(task.id).await?,
        (None, None) => Followers::default(),
    };
    // Only members may be notified or made to follow: a mention of anyone else stays text, and a
    // follower who left the team hears no more of it.
    let mut candidates: Vec<UserId> = happening.mentioned.clone();
    candidates.extend(happening.assigned);
    candidates.extend(followers.following.iter().copied());
    candidates.retain(|u| *u != actor);
    candidates.sort_unstable();
    candidates.dedup();
    let members: std::collections::HashSet<UserId> = if candidates.is_empty() {
        Default::default()
    } else {
        tx.members_among(task.team_id, &candidates)
            .await?
            .into_iter()
            .collect()
    };
    let is_member = |u: &UserId| *u == actor || members.contains(u);
    happening.mentioned.retain(is_member);
    happening.assigned = happening.assigned.filter(is_member);
    followers.following.retain(is_member);

    if kind != ActivityKind::TaskDeleted {
        // The followers are known when the change notifies them: skip what would change
        // nothing (a follower following again, an involved user who decided before), so no row
        // is written, and no row lock is taken that the task's next comments would queue on.
        let known = happening.to_followers.is_some();
        for (user, how) in follows_after(actor, acted, &happening) {
            let involved = how == AutoFollow::Involved;
            let decided = followers.following.contains(&user)
                || (involved && followers.unfollowed.contains(&user));
            if (known && decided) || followed == Some(user) {
                continue;
            }
            tx.set_following(task.id, task.team_id, user, true, involved)
                .await?;
        }
    }
    let owed = recipients(actor, &happening, &followers);
    if owed.is_empty() {
        return Ok(Vec::new());
    }
    let actor_name = tx
        .user(actor)
        .await?
        .map(|u| u.display_name)
        .unwrap_or_default();
    let quoted = match (kind, comment) {
        (ActivityKind::TaskDeleted, _) => None,
        (_, Some((_, body))) => Some(excerpt(body)),
        _ => Some(excerpt(&task.description)).filter(|e| !e.is_empty()),
    };
    let drafts: Vec<NotificationDraft> = owed
        .into_iter()
        .map(|(user, reasons)| NotificationDraft {
            user_id: user,
            id: crate::domain::NotificationId::from(Uuid::now_v7()),
            team_id: task.team_id,
            task_id: task.id,
            board_id: Some(task.board_id),
            task_title: task.title.clone(),
            activity_kind: kind,
            reasons,
            actor_user_id: actor,
            actor_display_name: actor_name.clone(),
            comment_id: comment.map(|(id, _)| id),
            excerpt: quoted.clone(),
            created_at: at,
        })
        .collect();
    Ok(tx.insert_notifications(&drafts).await?)
}

/// A page of the inbox, with where the stream stands.
#[derive(Debug, Clone)]
pub struct InboxPage {
    pub items: Vec<Notification>,
    pub next_cursor: Option<String>,
    pub seq: i64,
    pub unread_count: i64,
}

/// What `GET /me/notifications` filters by.
#[derive(Debug, Clone, Default)]
pub struct InboxFilter {
    pub since: Option<i64>,
    pub unread_only: bool,
}

impl Services {
    /// Follows or unfollows a task explicitly.
    pub async fn set_following(&self, user: UserId, task: TaskId, following: bool) -> Result<()> {
        let mut tx = self.write_for(OwnedBy::Task(task)).await?;
        let found = tx.task(task).await?.ok_or(DomainError::NotFound)?;
        role_in(&mut *tx, found.team_id, user).await?;
        tx.set_following(task, found.team_id, user, following, false)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The caller's notifications, newest first.
    pub async fn notifications(
        &self,
        user: UserId,
        filter: &InboxFilter,
        req: &PageRequest,
    ) -> Result<InboxPage> {
        let (before, limit) = req.after_seq()?;
        if filter.since.is_some_and(|s| s < 0) {
            return Err(DomainError::invalid("since", "must be 0 or more").into());
        }
        let mut tx = self.store.read().await?;
        let (seq, unread_count) = tx.inbox_state(user).await?;
        let mut items = tx
            .notifications(
                user,
                InboxQuery {
                    since: filter.since.unwrap_or(0),
                    before: before.unwrap_or(i64::MAX),
                    unread_only: filter.unread_only,
                    limit: limit + 1,
                },
            )
            .await?;
        let more = items.len() as i64 > limit;
        items.truncate(limit as usize);
        let next_cursor = if more {
            items.last().map(|n| super::seq_cursor(n.seq))
        } else {
            None
        };
        Ok(InboxPage {
            items,
            next_cursor,
            seq,
            unread_count,
        })
    }

    /// Marks notifications read; the stream's next event records it when something changed.
    /// Returns the stream's latest seq and the unread count after it.
    pub async fn mark_read(&self, user: UserId, mark: MarkRead) -> Result<(i64, i64)> {
        match &mark {
            MarkRead::Ids(ids) if ids.len() > MAX_MARK_IDS => {
                return Err(DomainError::invalid(
                    "ids",
                    format!("at most {MAX_MARK_IDS} ids per request"),
                )
                .into());
            }
            MarkRead::Ids(ids) if ids.is_empty() => {
                return Err(DomainError::invalid("ids", "name at least one id").into());
            }
            MarkRead::Upto(n) if *n < 0 => {
                return Err(DomainError::invalid("upto", "must be 0 or more").into());
            }
            _ => {}
        }
        let mut tx = self.store.write().await?;
        let marked: Option<ReadMark> = tx.mark_read(user, &mark, now()).await?;
        let Some(m) = marked else {
            let state = tx.inbox_state(user).await?;
            // Committed though nothing changed: see `import_tasks`.
            tx.commit().await?;
            return Ok(state);
        };
        tx.commit().await?;
        self.relay.notified(vec![(user, m.seq)]);
        Ok((m.seq, m.unread_count))
    }

    /// The caller's inbox seq and unread count (`GET /me`).
    pub async fn inbox_state(&self, user: UserId) -> Result<(i64, i64)> {
        Ok(self.store.read().await?.inbox_state(user).await?)
    }
}
