//! The activity: the versioned domain event every change emits, and the routing table that says
//! which rooms receive it. The HTTP activity log and the WebSocket layer are both consumers of it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::id::ActivityId;
use super::model::*;

/// The version of the activity contract.
pub const ACTIVITY_VERSION: u32 = 1;

/// A field's value before and after a change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Change {
    pub from: serde_json::Value,
    pub to: serde_json::Value,
}

/// The event-specific part of an activity: `type` and `data` on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", content = "data")]
pub enum ActivityData {
    #[serde(rename = "task.created")]
    TaskCreated { task: Task },
    #[serde(rename = "task.updated")]
    TaskUpdated {
        task: Task,
        changes: BTreeMap<String, Change>,
    },
    #[serde(rename = "task.deleted", rename_all = "camelCase")]
    TaskDeleted {
        #[schema(value_type = Uuid)]
        task_id: TaskId,
        #[schema(value_type = Uuid)]
        board_id: BoardId,
    },
    #[serde(rename = "task.assigned", rename_all = "camelCase")]
    TaskAssigned {
        task: Task,
        #[schema(value_type = Option<Uuid>)]
        assignee_user_id: Option<UserId>,
        #[schema(value_type = Option<Uuid>)]
        previous_assignee_user_id: Option<UserId>,
    },
    #[serde(rename = "comment.created")]
    CommentCreated { comment: Comment },
    #[serde(rename = "comment.updated")]
    CommentUpdated { comment: Comment },
    #[serde(rename = "comment.deleted", rename_all = "camelCase")]
    CommentDeleted {
        #[schema(value_type = Uuid)]
        comment_id: CommentId,
        #[schema(value_type = Uuid)]
        task_id: TaskId,
    },
    #[serde(rename = "member.added")]
    MemberAdded { member: Member },
    #[serde(rename = "member.updated")]
    MemberUpdated { member: Member },
    #[serde(rename = "member.removed", rename_all = "camelCase")]
    MemberRemoved {
        #[schema(value_type = Uuid)]
        user_id: UserId,
    },
    #[serde(rename = "team.updated")]
    TeamUpdated { team: Team },
    #[serde(rename = "board.created")]
    BoardCreated { board: Board },
    #[serde(rename = "board.updated")]
    BoardUpdated { board: Board },
    #[serde(rename = "board.deleted", rename_all = "camelCase")]
    BoardDeleted {
        #[schema(value_type = Uuid)]
        board_id: BoardId,
    },
}

/// The activity types that are logged (presence events are ephemeral and not listed here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActivityKind {
    TaskCreated,
    TaskUpdated,
    TaskDeleted,
    TaskAssigned,
    CommentCreated,
    CommentUpdated,
    CommentDeleted,
    MemberAdded,
    MemberUpdated,
    MemberRemoved,
    TeamUpdated,
    BoardCreated,
    BoardUpdated,
    BoardDeleted,
}

impl ActivityKind {
    pub const ALL: [ActivityKind; 14] = [
        Self::TaskCreated,
        Self::TaskUpdated,
        Self::TaskDeleted,
        Self::TaskAssigned,
        Self::CommentCreated,
        Self::CommentUpdated,
        Self::CommentDeleted,
        Self::MemberAdded,
        Self::MemberUpdated,
        Self::MemberRemoved,
        Self::TeamUpdated,
        Self::BoardCreated,
        Self::BoardUpdated,
        Self::BoardDeleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::TaskCreated => "task.created",
            Self::TaskUpdated => "task.updated",
            Self::TaskDeleted => "task.deleted",
            Self::TaskAssigned => "task.assigned",
            Self::CommentCreated => "comment.created",
            Self::CommentUpdated => "comment.updated",
            Self::CommentDeleted => "comment.deleted",
            Self::MemberAdded => "member.added",
            Self::MemberUpdated => "member.updated",
            Self::MemberRemoved => "member.removed",
            Self::TeamUpdated => "team.updated",
            Self::BoardCreated => "board.created",
            Self::BoardUpdated => "board.updated",
            Self::BoardDeleted => "board.deleted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl ActivityData {
    pub fn kind(&self) -> ActivityKind {
        match self {
            Self::TaskCreated { .. } => ActivityKind::TaskCreated,
            Self::TaskUpdated { .. } => ActivityKind::TaskUpdated,
            Self::TaskDeleted { .. } => ActivityKind::TaskDeleted,
            Self::TaskAssigned { .. } => ActivityKind::TaskAssigned,
            Self::CommentCreated { .. } => ActivityKind::CommentCreated,
            Self::CommentUpdated { .. } => ActivityKind::CommentUpdated,
            Self::CommentDeleted { .. } => ActivityKind::CommentDeleted,
            Self::MemberAdded { .. } => ActivityKind::MemberAdded,
            Self::MemberUpdated { .. } => ActivityKind::MemberUpdated,
            Self::MemberRemoved { .. } => ActivityKind::MemberRemoved,
            Self::TeamUpdated { .. } => ActivityKind::TeamUpdated,
            Self::BoardCreated { .. } => ActivityKind::BoardCreated,
            Self::BoardUpdated { .. } => ActivityKind::BoardUpdated,
            Self::BoardDeleted { .. } => ActivityKind::BoardDeleted,
        }
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
                | TaskDeleted
                | MemberAdded
                | MemberUpdated
                | MemberRemoved
                | TeamUpdated
                | BoardCreated
                | BoardUpdated
                | BoardDeleted
        );
        let boards = matches!(
            self.kind,
            TaskCreated | TaskUpdated | TaskDeleted | TaskAssigned
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
            CommentCreated { comment } | CommentUpdated { comment } => {
                (None, Some(comment.task_id), None)
            }
            CommentDeleted { task_id, .. } => (None, Some(*task_id), None),
            MemberAdded { member } | MemberUpdated { member } => (None, None, Some(member.user.id)),
            MemberRemoved { user_id } => (None, None, Some(*user_id)),
            TeamUpdated { .. } => (None, None, None),
            BoardCreated { board } | BoardUpdated { board } => (Some(board.id), None, None),
            BoardDeleted { board_id } => (Some(*board_id), None, None),
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
        assert_eq!(route(TaskUpdated).rooms(), vec![b, k]);
        assert_eq!(route(TaskDeleted).rooms(), vec![t, b, k]);
        assert_eq!(route(TaskAssigned).rooms(), vec![b, k, u]);
        assert_eq!(route(CommentCreated).rooms(), vec![k]);
        assert_eq!(route(MemberRemoved).rooms(), vec![t, u]);
        assert_eq!(route(BoardDeleted).rooms(), vec![t]);
        let mut moved = route(TaskUpdated);
        let prev = BoardId::from(Uuid::from_u128(9));
        moved.prev_board_id = Some(prev);
        assert_eq!(moved.rooms(), vec![b, Room::Board(prev), k]);
    }

    #[test]
    fn kinds_round_trip_through_their_names() {
        for k in ActivityKind::ALL {
            assert_eq!(ActivityKind::parse(k.as_str()), Some(k));
        }
    }
}
