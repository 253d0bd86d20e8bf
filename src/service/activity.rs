//! Reading a team's activity log: what the socket delivers, from the durable log.

use super::{Page, PageRequest, Result, Seqd, Services, role_in, seq_cursor};
use crate::domain::activity::LogEntry;
use crate::domain::{DomainError, Role, TeamId, UserId};
use crate::store::Tx;

impl Services {
    /// Activities with `seq > since`, oldest first. A `since` below the retained log, or above the
    /// team's latest seq, cannot be served faithfully and answers `ResumeUnavailable`.
    pub async fn activity(
        &self,
        actor: UserId,
        team: TeamId,
        since: Option<i64>,
        req: &PageRequest,
    ) -> Result<Seqd<Page<LogEntry>>> {
        let since = since.unwrap_or(0);
        if since < 0 {
            return Err(DomainError::invalid("since", "must be a seq (0 or more)").into());
        }
        let (after, limit) = req.after_seq()?;
        let mut tx = self.store.read().await?;
        let role = role_in(&mut *tx, team, actor).await?;
        let (mut entries, seq) = read_log(
            &mut *tx,
            team,
            since,
            after.unwrap_or(since).max(since),
            limit,
        )
        .await?;
        let next_cursor = match entries.last() {
            // The log is gapless: anything below the latest seq is more to read (a page may
            // stop short of `limit` when its activities are large, or of what it read when
            // some of it is for owners and admins only).
            Some(last) if last.seq < seq => Some(seq_cursor(last.seq)),
            _ => None,
        };
        if role < Role::Admin {
            entries.retain(|e| !e.route.kind.admins_only());
        }
        Ok(Seqd {
            data: Page {
                items: entries,
                next_cursor,
            },
            seq,
        })
    }
}

/// Checks `since` against the log's bounds and reads up to `limit` entries after `from`.
pub(crate) async fn read_log(
    tx: &mut dyn Tx,
    team: TeamId,
    since: i64,
    from: i64,
    limit: i64,
) -> Result<(Vec<LogEntry>, i64)> {
    let bounds = tx.log_bounds(team).await?.ok_or(DomainError::NotFound)?;
    if since < bounds.oldest_since || since > bounds.last_seq {
        return Err(DomainError::ResumeUnavailable.into());
    }
    let entries = tx.activities(team, from, bounds.last_seq, limit).await?;
    Ok((entries, bounds.last_seq))
}
