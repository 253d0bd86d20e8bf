//! A team's labels: create, list, rename or recolor, delete.

use uuid::Uuid;

use super::{OwnedBy, Page, PageRequest, Result, Seqd, Services, now, page_by_id, role_in, seq_of};
use crate::domain::activity::{ActivityData, ActivityDraft};
use crate::domain::rules::{Action, LabelPatch, NewLabel};
use crate::domain::*;
use crate::store::StoreError;

/// The most labels a team may have: a filter bar lists them all.
pub const LABELS_PER_TEAM: i64 = 200;

fn name_taken(e: StoreError) -> super::ServiceError {
    match e {
        StoreError::Duplicate => DomainError::Conflict("the team has a label of that name").into(),
        other => other.into(),
    }
}

impl Services {
    /// Creates a label (members and above); emits `label.created`.
    pub async fn create_label(
        &self,
        actor: UserId,
        team: TeamId,
        input: NewLabel,
    ) -> Result<Label> {
        let (name, color) = input.check()?;
        let mut tx = self.write_in(team).await?;
        role_in(&mut *tx, team, actor)
            .await?
            .ensure(Action::WriteTasks)?;
        let label = Label {
            id: LabelId::from(Uuid::now_v7()),
            team_id: team,
            name,
            color,
            created_at: now(),
        };
        tx.insert_label(&label).await.map_err(name_taken)?;
        let draft = ActivityDraft::new(
            ActivityData::LabelCreated {
                label: label.clone(),
            },
            actor,
            label.created_at,
        );
        let entries = tx.append(team, vec![draft]).await?;
        // Counted once `append` holds the team's row: two racing creates cannot both pass.
        if tx.count_labels(team).await? > LABELS_PER_TEAM {
            return Err(DomainError::Conflict("the team has as many labels as it may").into());
        }
        self.commit_appended(tx, entries).await?;
        Ok(label)
    }

    pub async fn labels(
        &self,
        actor: UserId,
        team: TeamId,
        req: &PageRequest,
    ) -> Result<Seqd<Page<Label>>> {
        let page = req.after_id()?;
        let mut tx = self.store.read().await?;
        role_in(&mut *tx, team, actor).await?;
        let seq = seq_of(&mut *tx, team).await?;
        let rows = tx.labels(team, page).await?;
        Ok(Seqd {
            data: page_by_id(rows, page, |l: &Label| l.id),
            seq,
        })
    }

    /// Renames or recolors a label; emits `label.updated` when something changed.
    pub async fn update_label(
        &self,
        actor: UserId,
        id: LabelId,
        patch: LabelPatch,
    ) -> Result<Label> {
        let mut tx = self.write_for(OwnedBy::Label(id)).await?;
        let label = tx.label(id).await?.ok_or(DomainError::NotFound)?;
        role_in(&mut *tx, label.team_id, actor)
            .await?
            .ensure(Action::WriteTasks)?;
        let Some(next) = patch.apply(&label)? else {
            // Committed though nothing changed: see `import_tasks`.
            tx.commit().await?;
            return Ok(label);
        };
        if !tx.update_label(&next).await.map_err(name_taken)? {
            return Err(DomainError::NotFound.into());
        }
        let draft = ActivityDraft::new(
            ActivityData::LabelUpdated {
                label: next.clone(),
            },
            actor,
            now(),
        );
        self.commit(tx, next.team_id, vec![draft], Vec::new())
            .await?;
        Ok(next)
    }

    /// Deletes a label and takes it off its tasks, in one transaction; emits `label.deleted`.
    pub async fn delete_label(&self, actor: UserId, id: LabelId) -> Result<()> {
        let mut tx = self.write_for(OwnedBy::Label(id)).await?;
        let label = tx.label(id).await?.ok_or(DomainError::NotFound)?;
        role_in(&mut *tx, label.team_id, actor)
            .await?
            .ensure(Action::WriteTasks)?;
        if !tx.delete_label(id).await? {
            return Err(DomainError::NotFound.into());
        }
        let draft = ActivityDraft::new(ActivityData::LabelDeleted { label_id: id }, actor, now());
        self.commit(tx, label.team_id, vec![draft], Vec::new())
            .await?;
        Ok(())
    }
}
