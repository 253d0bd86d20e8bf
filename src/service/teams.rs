//! Teams, their members and their boards.

use uuid::Uuid;

use super::{
    OwnedBy, Page, PageRequest, Result, Seqd, Services, WRITE_ATTEMPTS, now, page_by_id, role_in,
    seq_of,
};
use crate::domain::activity::{ActivityData, ActivityDraft};
use crate::domain::rules::{Action, check_assignable_role, check_name};
use crate::domain::*;
use crate::store::StoreError;

/// Who to add to a team: by email or by id.
#[derive(Debug, Clone)]
pub enum MemberRef {
    Email(String),
    Id(UserId),
}

impl Services {
    /// Creates a team with the caller as owner and a default board "General". Emits nothing:
    /// nobody can be subscribed to a team that did not exist, and its seq starts at 0.
    pub async fn create_team(&self, actor: UserId, name: &str) -> Result<Team> {
        check_name("name", name)?;
        let at = now();
        let team = Team {
            id: TeamId::from(Uuid::now_v7()),
            name: name.to_owned(),
            created_at: at,
            default_board_id: BoardId::from(Uuid::now_v7()),
        };
        let board = Board {
            id: team.default_board_id,
            team_id: team.id,
            name: "General".into(),
            created_at: at,
        };
        let mut tx = self.store.write().await?;
        tx.insert_team(&team).await?;
        tx.insert_board(&board).await?;
        tx.insert_member(team.id, actor, Role::Owner, at).await?;
        tx.commit().await?;
        Ok(team)
    }

    pub async fn teams(&self, actor: UserId, req: &PageRequest) -> Result<Page<Team>> {
        let page = req.after_id()?;
        let rows = self.store.read().await?.teams_of(actor, page).await?;
        let rows = rows.into_iter().map(|(t, _)| t).collect();
        Ok(page_by_id(rows, page, |t: &Team| t.id))
    }

    pub async fn team(&self, actor: UserId, team: TeamId) -> Result<Seqd<Team>> {
        let mut tx = self.store.read().await?;
        role_in(&mut *tx, team, actor).await?;
        let seq = seq_of(&mut *tx, team).await?;
        let data = tx.team(team).await?.ok_or(DomainError::NotFound)?;
        Ok(Seqd { data, seq })
    }

    pub async fn rename_team(&self, actor: UserId, team: TeamId, name: &str) -> Result<Team> {
        check_name("name", name)?;
        let mut tx = self.write_in(team).await?;
        role_in(&mut *tx, team, actor)
            .await?
            .ensure(Action::EditTeam)?;
        let updated = tx
            .set_team_name(team, name)
            .await?
            .ok_or(DomainError::NotFound)?;
        let draft = ActivityDraft::new(
            ActivityData::TeamUpdated {
                team: updated.clone(),
            },
            actor,
            now(),
        );
        self.commit(tx, team, vec![draft], Vec::new()).await?;
        Ok(updated)
    }

    pub async fn members(
        &self,
        actor: UserId,
        team: TeamId,
        req: &PageRequest,
    ) -> Result<Seqd<Page<Member>>> {
        let page = req.after_id()?;
        let mut tx = self.store.read().await?;
        role_in(&mut *tx, team, actor).await?;
        let seq = seq_of(&mut *tx, team).await?;
        let rows = tx.members(team, page).await?;
        Ok(Seqd {
            data: page_by_id(rows, page, |m: &Member| m.user.id),
            seq,
        })
    }

    pub async fn add_member(
        &self,
        actor: UserId,
        team: TeamId,
        who: MemberRef,
        role: Role,
    ) -> Result<Member> {
        check_assignable_role(role)?;
        let mut tx = self.write_in(team).await?;
        role_in(&mut *tx, team, actor)
            .await?
            .ensure(Action::ManageMembers)?;
        let user = match &who {
            MemberRef::Email(email) => tx
                .user_by_email(&crate::domain::rules::normalize_email(email))
                .await?
                .map(|(u, _)| u),
            MemberRef::Id(id) => tx.user(*id).await?,
        };
        let field = if matches!(who, MemberRef::Email(_)) {
            "email"
        } else {
            "userId"
        };
        let user = user.ok_or_else(|| DomainError::invalid(field, "no user has it"))?;
        let at = now();
        match tx.insert_member(team, user.id, role, at).await {
            Err(StoreError::Duplicate) => {
                return Err(DomainError::Conflict("already a member").into());
            }
            other => other?,
        }
        let member = Member {
            team_id: team,
            user,
            role,
            joined_at: at,
        };
        let draft = ActivityDraft::new(
            ActivityData::MemberAdded {
                member: member.clone(),
            },
            actor,
            at,
        );
        self.commit(tx, team, vec![draft], Vec::new()).await?;
        Ok(member)
    }

    pub async fn set_member_role(
        &self,
        actor: UserId,
        team: TeamId,
        user: UserId,
        role: Role,
    ) -> Result<Member> {
        check_assignable_role(role)?;
        for _ in 0..WRITE_ATTEMPTS {
            let mut tx = self.write_in(team).await?;
            role_in(&mut *tx, team, actor)
                .await?
                .ensure(Action::ManageMembers)?;
            let mut member = tx.member(team, user).await?.ok_or(DomainError::NotFound)?;
            if member.role == Role::Owner {
                return Err(
                    DomainError::Conflict("the owner's membership cannot be changed").into(),
                );
            }
            if member.role == role {
                // Committed though nothing changed: see `import_tasks`.
                tx.commit().await?;
                return Ok(member);
            }
            if !tx.set_role(team, user, member.role, role).await? {
                continue; // changed or removed concurrently: look again
            }
            member.role = role;
            let draft = ActivityDraft::new(
                ActivityData::MemberUpdated {
                    member: member.clone(),
                },
                actor,
                now(),
            );
            self.commit(tx, team, vec![draft], Vec::new()).await?;
            return Ok(member);
        }
        Err(StoreError::Stale.into())
    }

    /// Removes a member (owner/admin, or the member themself). Live subscriptions are revoked by
    /// the realtime layer when it sees the `member.removed` activity.
    pub async fn remove_member(&self, actor: UserId, team: TeamId, user: UserId) -> Result<()> {
        let mut tx = self.write_in(team).await?;
        let actor_role = role_in(&mut *tx, team, actor).await?;
        if actor != user {
            actor_role.ensure(Action::ManageMembers)?;
        }
        let target = tx.role(team, user).await?.ok_or(DomainError::NotFound)?;
        if target == Role::Owner {
            return Err(DomainError::Conflict("the owner's membership cannot be removed").into());
        }
        if !tx.delete_member(team, user).await? {
            return Err(DomainError::NotFound.into());
        }
        let draft = ActivityDraft::new(ActivityData::MemberRemoved { user_id: user }, actor, now());
        self.commit(tx, team, vec![draft], Vec::new()).await?;
        Ok(())
    }

    pub async fn create_board(&self, actor: UserId, team: TeamId, name: &str) -> Result<Board> {
        check_name("name", name)?;
        let mut tx = self.write_in(team).await?;
        role_in(&mut *tx, team, actor)
            .await?
            .ensure(Action::WriteBoards)?;
        let board = Board {
            id: BoardId::from(Uuid::now_v7()),
            team_id: team,
            name: name.to_owned(),
            created_at: now(),
        };
        tx.insert_board(&board).await?;
        let draft = ActivityDraft::new(
            ActivityData::BoardCreated {
                board: board.clone(),
            },
            actor,
            board.created_at,
        );
        self.commit(tx, team, vec![draft], Vec::new()).await?;
        Ok(board)
    }

    pub async fn boards(
        &self,
        actor: UserId,
        team: TeamId,
        req: &PageRequest,
    ) -> Result<Seqd<Page<Board>>> {
        let page = req.after_id()?;
        let mut tx = self.store.read().await?;
        role_in(&mut *tx, team, actor).await?;
        let seq = seq_of(&mut *tx, team).await?;
        let rows = tx.boards(team, page).await?;
        Ok(Seqd {
            data: page_by_id(rows, page, |b: &Board| b.id),
            seq,
        })
    }

    pub async fn rename_board(&self, actor: UserId, board: BoardId, name: &str) -> Result<Board> {
        check_name("name", name)?;
        let mut tx = self.write_for(OwnedBy::Board(board)).await?;
        let found = tx.board(board).await?.ok_or(DomainError::NotFound)?;
        role_in(&mut *tx, found.team_id, actor)
            .await?
            .ensure(Action::WriteBoards)?;
        let updated = tx
            .set_board_name(board, name)
            .await?
            .ok_or(DomainError::NotFound)?;
        let draft = ActivityDraft::new(
            ActivityData::BoardUpdated {
                board: updated.clone(),
            },
            actor,
            now(),
        );
        self.commit(tx, found.team_id, vec![draft], Vec::new())
            .await?;
        Ok(updated)
    }

    pub async fn delete_board(&self, actor: UserId, board: BoardId) -> Result<()> {
        let mut tx = self.write_for(OwnedBy::Board(board)).await?;
        let found = tx.board(board).await?.ok_or(DomainError::NotFound)?;
        role_in(&mut *tx, found.team_id, actor)
            .await?
            .ensure(Action::DeleteBoards)?;
        let team = tx.team(found.team_id).await?.ok_or(DomainError::NotFound)?;
        if team.default_board_id == board {
            return Err(DomainError::Conflict("the default board cannot be deleted").into());
        }
        if tx.board_has_tasks(board).await? {
            return Err(DomainError::Conflict("only an empty board can be deleted").into());
        }
        tx.delete_board(board).await?;
        let draft =
            ActivityDraft::new(ActivityData::BoardDeleted { board_id: board }, actor, now());
        self.commit(tx, found.team_id, vec![draft], Vec::new())
            .await?;
        Ok(())
    }
}
