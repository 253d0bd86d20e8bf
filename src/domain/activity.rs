//! The activity: the versioned domain event every change emits, and the routing table that says
//! which rooms receive it. The HTTP activity log and the WebSocket layer are both consumers of it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::id::{ActivityId, LabelId, WebhookId};
use super::model::*;
use super::webhook::Webhook;

/// The version of the activity contract.
pub const ACTIVITY_VERSION: u32 = 1;

/// A field's value before and after a change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Change {
    pub from: serde_json::Value,
    pub to: serde_json::Value,
}

/// Declares `ActivityData` and `ActivityKind` from one table, so that each kind's wire name is
/// written once: it is the serde tag of its `ActivityData` variant (hence the OpenAPI and AsyncAPI
/// enums of `type`), and `ActivityKind::as_str` / `parse` / `ALL` (the store's `kind` column, the
/// bus header). Names are `tt`, not `literal`: a `literal` fragment reaches the derives wrapped in
/// an invisible group.
macro_rules! activities {
    ($(
        $(#[$attr:meta])*
        $kind:ident = $name:tt { $($fields:tt)* }
    ),+ $(,)?) => {
        /// The event-specific part of an activity: `type` and `data` on the wire.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
        #[serde(tag = "type", content = "data")]
        pub enum ActivityData {
            $(
                #[serde(rename = $name)]
                $(#[$attr])*
                $kind { $($fields)* },
            )+
        }

        /// The activity types that are logged (presence events are ephemeral and not listed
        /// here).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ActivityKind {
            $($kind),+
        }

        text_enum!(ActivityKind { $($kind = $name),+ });

        impl ActivityData {
            pub fn kind(&self) -> ActivityKind {
                match self {
                    $(Self::$kind { .. } => ActivityKind::$kind),+
                }
            }
        }
    };
}

activities! {
    TaskCreated = "task.created" { task: Task },
    TaskUpdated = "task.updated" {
        task: Task,
        changes: BTreeMap<String, Change>,
    },
    #[serde(rename_all = "camelCase")]
    TaskDeleted = "task.deleted" {
        #[schema(value_type = Uuid)]
        task_id: TaskId,
        #[schema(value_type = Uuid)]
        board_id: BoardId,
    },
    #[serde(rename_all = "camelCase")]
    TaskAssigned = "task.assigned" {
        task: Task,
        #[schema(value_type = Option<Uuid>)]
        assignee_user_id: Option<UserId>,
        #[schema(value_type = Option<Uuid>)]
        previous_assignee_user_id: Option<UserId>,
    },
    /// A bulk import created these tasks on one board, in this order (with `commentCount`
    /// comments among them): one activity for the whole batch, so that a live socket gets one
    /// frame, not a thousand. Read the tasks with `GET /teams/{teamId}/tasks`.
    #[serde(rename_all = "camelCase")]
    TaskImported = "task.imported" {
        #[schema(value_type = Uuid)]
        board_id: BoardId,
        #[schema(value_type = Vec<Uuid>)]
        task_ids: Vec<TaskId>,
        comment_count: u32,
    },
    CommentCreated = "comment.created" { comment: Comment },
    CommentUpdated = "comment.updated" { comment: Comment },
    #[serde(rename_all = "camelCase")]
    CommentDeleted = "comment.deleted" {
        #[schema(value_type = Uuid)]
        comment_id: CommentId,
        #[schema(value_type = Uuid)]
        task_id: TaskId,
    },
    MemberAdded = "member.added" { member: Member },
    MemberUpdated = "member.updated" { member: Member },
    #[serde(rename_all = "camelCase")]
    MemberRemoved = "member.removed" {
        #[schema(value_type = Uuid)]
        user_id: UserId,
    },
    TeamUpdated = "team.updated" { team: Team },
    BoardCreated = "board.created" { board: Board },
    BoardUpdated = "board.updated" { board: Board },
    #[serde(rename_all = "camelCase")]
    BoardDeleted = "board.deleted" {
        #[schema(value_type = Uuid)]
        board_id: BoardId,
    },
    WebhookCreated = "webhook.created" { webhook: Webhook },
    WebhookUpdated = "webhook.updated" { webhook: Webhook },
    #[serde(rename_all = "camelCase")]
    WebhookDeleted = "webhook.deleted" {
        #[schema(value_type = Uuid)]
        webhook_id: WebhookId,
    },
    /// The server disabled the webhook (its receiver answered 410, or failed for too long).
    WebhookDisabled = "webhook.disabled" { webhook: Webhook, reason: String },
    LabelCreated = "label.created" { label: Label },
    LabelUpdated = "label.updated" { label: Label },
    /// The label is gone, and off every task that carried it (those tasks' versions stay).
    #[serde(rename_all = "camelCase")]
    LabelDeleted = "label.deleted" {
        #[schema(value_type = Uuid)]
        label_id: LabelId,
    },
}

impl ActivityKind {
    /// Kinds only a team's owners and admins may read (webhooks: their URLs are the team's
    /// integrations).
    pub fn admins_only(self) -> bool {
        self.is_webhook_change()
    }

    /// A change of one of the team's webhooks.
    pub fn is_webhook_change(self) -> bool {
        use ActivityKind::*;
        matches!(
            self,
            WebhookCreated | WebhookUpdated | WebhookDeleted | WebhookDisabled
        )
    }
}

/// A domain event as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Activity {
    #[schema(value_type = Uuid)]
    pub id: ActivityId,
    /// Contract version, always 1.
    pub v: u32,
    #[serde(flatten)]
    pub data: ActivityData,
    #[schema(value_type = Uuid)]
    pub team_id: TeamId,
    #[schema(value_type = Uuid)]
    pub actor_user_id: UserId,
    #[serde(with = "timestamp")]
    #[schema(value_type = String, format = DateTime)]
    pub ts: OffsetDateTime,
    /// Per-team, gapless, strictly increasing; assigned at commit.
    pub seq: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Uuid>)]
    pub board_id: Option<BoardId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Uuid>)]
    pub task_id: Option<TaskId>,
}

/// A room: the unit of subscription and of fanout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Room {
    Team(TeamId),
    Board(BoardId),
    Task(TaskId),
    /// The user's own sockets (live only, no resume).
    User(UserId),
    /// The team's owners and admins among the team room's sockets: joined with the team scope
    /// by a socket whose user is an owner or admin, left when the role drops.
    Admins(TeamId),
}

impl Room {
    /// The kind of room (`team`, `board`, `task` or `user`), as the AsyncAPI document's
    /// `x-taskforge-routing` names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Room::Team(_) => "team",
            Room::Board(_) => "board",
            Room::Task(_) => "task",
            Room::User(_) => "user",
            Room::Admins(_) => "admins",
        }
    }
}

/// What the routing table needs to know of an activity. It is stored beside each logged activity
/// so that replays route exactly as live deliveries do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub kind: ActivityKind,
    pub team_id: TeamId,
    pub board_id: Option<BoardId>,
    /// The board a task left when it moved, so both boards' rooms see the move.
    pub prev_board_id: Option<BoardId>,
    pub task_id: Option<TaskId>,
    /// The user whose own sockets also receive it (new assignee, added/updated/removed member).
    pub user_id: Option<UserId>,
}

impl Route {
    /// The routing table of the contract: the rooms an activity is delivered to.
    pub fn rooms(&self) -> Vec<Room> {
        use ActivityKind::*;
        let mut rooms = Vec::with_capacity(4);
        let team = matches!(
            self.kind,
            TaskCreated
                | TaskImported
                | TaskDeleted
                | MemberAdded
                | MemberUpdated
                | MemberRemoved
                | TeamUpdated
                | BoardCreated
                | BoardUpdated
                | BoardDeleted
                | LabelCreated
                | LabelUpdated
                | LabelDeleted
        );
        let boards = matches!(
            self.kind,
            TaskCreated | TaskImported | TaskUpdated | TaskDeleted | TaskAssigned
        );
        let task = matches!(
            self.kind,
            TaskUpdated
                | TaskDeleted
                | TaskAssigned
                | CommentCreated
                | CommentUpdated
                | CommentDeleted
        );
        let user = matches!(
            self.kind,
            TaskAssigned | MemberAdded | MemberUpdated | MemberRemoved
        );
        if team {
            rooms.push(Room::Team(self.team_id));
        }
        if self.kind.admins_only() {
            rooms.push(Room::Admins(self.team_id));
        }
        if boards {
            rooms.extend(self.board_id.map(Room::Board));
            if self.prev_board_id != self.board_id {
                rooms.extend(self.prev_board_id.map(Room::Board));
            }
        }
        if task {
            rooms.extend(self.task_id.map(Room::Task));
        }
        if user {
            rooms.extend(self.user_id.map(Room::User));
        }
        rooms
    }

    /// Whether a socket in `room` receives this activity.
    pub fn reaches(&self, room: Room) -> bool {
        self.rooms().contains(&room)
    }

    /// The user whose own sockets receive this activity, if any.
    pub fn recipient(&self) -> Option<UserId> {
        self.user_id.filter(|u| self.reaches(Room::User(*u)))
    }
}

/// What a change asks to append to its team's log; the store assigns `seq` at commit.
#[derive(Debug, Clone)]
pub struct ActivityDraft {
    pub data: ActivityData,
    pub actor_user_id: UserId,
    pub ts: OffsetDateTime,
    pub prev_board_id: Option<BoardId>,
}

impl ActivityDraft {
    pub fn new(data: ActivityData, actor_user_id: UserId, ts: OffsetDateTime) -> Self {
        Self {
            data,
            actor_user_id,
            ts,
            prev_board_id: None,
        }
    }

    /// The draft of a task that moved from `prev` to its current board.
    pub fn moved_from(mut self, prev: BoardId) -> Self {
        self.prev_board_id = Some(prev);
        self
    }

    /// The activity this draft becomes at `seq`, with its route.
    pub fn into_activity(self, team_id: TeamId, seq: i64) -> (Activity, Route) {
        use ActivityData::*;
        let (board_id, task_id, user_id) = match &self.data {
            TaskCreated { task } | TaskUpdated { task, .. } => {
                (Some(task.board_id), Some(task.id), None)
            }
            TaskAssigned {
                task,
                assignee_user_id,
                ..
            } => (Some(task.board_id), Some(task.id), *assignee_user_id),
            TaskDeleted { task_id, board_id } => (Some(*board_id), Some(*task_id), None),
            TaskImported { board_id, .. } => (Some(*board_id), None, None),
            CommentCreated { comment } | CommentUpdated { comment } => {
                (None, Some(comment.task_id), None)
            }
            CommentDeleted { task_id, .. } => (None, Some(*task_id), None),
            MemberAdded { member } | MemberUpdated { member } => (None, None, Some(member.user.id)),
            MemberRemoved { user_id } => (None, None, Some(*user_id)),
            TeamUpdated { .. } => (None, None, None),
            BoardCreated { board } | BoardUpdated { board } => (Some(board.id), None, None),
            BoardDeleted { board_id } => (Some(*board_id), None, None),
            WebhookCreated { .. }
            | WebhookUpdated { .. }
            | WebhookDeleted { .. }
            | WebhookDisabled { .. }
            | LabelCreated { .. }
            | LabelUpdated { .. }
            | LabelDeleted { .. } => (None, None, None),
        };
        let route = Route {
            kind: self.data.kind(),
            team_id,
            board_id,
            prev_board_id: self.prev_board_id,
            task_id,
            user_id,
        };
        let activity = Activity {
            id: ActivityId::from(Uuid::now_v7()),
            v: ACTIVITY_VERSION,
            data: self.data,
            team_id,
            actor_user_id: self.actor_user_id,
            ts: self.ts,
            seq,
            board_id,
            task_id,
        };
        (activity, route)
    }
}

/// Someone viewing a task (presence is ephemeral: no seq, no log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PresenceUser {
    #[schema(value_type = Uuid)]
    pub user_id: UserId,
    pub display_name: String,
}

/// An activity as it sits in a team's log: serialized once, shared by every consumer.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub seq: i64,
    pub route: Route,
    /// The activity's JSON, exactly as clients receive it.
    pub json: Arc<str>,
}

impl LogEntry {
    pub fn team_id(&self) -> TeamId {
        self.route.team_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(kind: ActivityKind) -> Route {
        Route {
            kind,
            team_id: TeamId::from(Uuid::from_u128(1)),
            board_id: Some(BoardId::from(Uuid::from_u128(2))),
            prev_board_id: None,
            task_id: Some(TaskId::from(Uuid::from_u128(3))),
            user_id: Some(UserId::from(Uuid::from_u128(4))),
        }
    }

    #[test]
    fn routing_table_matches_the_contract() {
        let (t, b, k, u) = (
            Room::Team(TeamId::from(Uuid::from_u128(1))),
            Room::Board(BoardId::from(Uuid::from_u128(2))),
            Room::Task(TaskId::from(Uuid::from_u128(3))),
            Room::User(UserId::from(Uuid::from_u128(4))),
        );
        use ActivityKind::*;
        assert_eq!(route(TaskCreated).rooms(), vec![t, b]);
        assert_eq!(route(TaskImported).rooms(), vec![t, b]);
        assert_eq!(route(TaskUpdated).rooms(), vec![b, k]);
        assert_eq!(route(TaskDeleted).rooms(), vec![t, b, k]);
        assert_eq!(route(TaskAssigned).rooms(), vec![b, k, u]);
        assert_eq!(route(CommentCreated).rooms(), vec![k]);
        assert_eq!(route(MemberRemoved).rooms(), vec![t, u]);
        assert_eq!(route(BoardDeleted).rooms(), vec![t]);
        assert_eq!(route(LabelCreated).rooms(), vec![t]);
        assert_eq!(route(LabelDeleted).rooms(), vec![t]);
        let admins = Room::Admins(TeamId::from(Uuid::from_u128(1)));
        assert_eq!(route(WebhookCreated).rooms(), vec![admins]);
        assert_eq!(route(WebhookDisabled).rooms(), vec![admins]);
        let mut moved = route(TaskUpdated);
        let prev = BoardId::from(Uuid::from_u128(9));
        moved.prev_board_id = Some(prev);
        assert_eq!(moved.rooms(), vec![b, Room::Board(prev), k]);
    }

    /// The name `as_str` gives a kind is the `type` its activities carry, and `parse` reads it.
    #[test]
    fn kinds_round_trip_through_their_names() {
        let id = BoardId::from(Uuid::from_u128(2));
        let data = ActivityData::BoardDeleted { board_id: id };
        let json = serde_json::to_value(&data).expect("serializes");
        assert_eq!(json["type"], "board.deleted");
        assert_eq!(data.kind().as_str(), "board.deleted");
        assert_eq!(ActivityKind::ALL.len(), 22);
        for &k in ActivityKind::ALL {
            assert_eq!(ActivityKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(ActivityKind::parse("presence.joined"), None);
    }
}
