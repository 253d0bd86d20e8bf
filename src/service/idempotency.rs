//! `Idempotency-Key` on POST: the first answer to a user's request with a key is kept for 24 hours
//! and replayed to a retry of the same request; the same key with another request is refused.
//!
//! This module applies the rules of `domain::idempotency` to the store; the HTTP edge
//! (`http::idempotency`) carries requests and answers to it. It never runs the request itself.

use super::{Result, Services, now};
use crate::domain::UserId;
use crate::domain::idempotency::{CLAIM_STALE_AFTER, KEY_LIFETIME, keeps};
use crate::store::{KeyClaim, StoredAnswer};

impl Services {
    /// Takes `key` for `user`'s request, or says what it holds.
    pub async fn claim_idempotency_key(
        &self,
        user: UserId,
        key: &str,
        fingerprint: &[u8],
    ) -> Result<KeyClaim> {
        let now = now();
        let mut tx = self.store.write().await?;
        let claim = tx
            .claim_idempotency_key(
                user,
                key,
                fingerprint,
                now,
                now - KEY_LIFETIME,
                now - CLAIM_STALE_AFTER,
            )
            .await?;
        tx.commit().await?;
        Ok(claim)
    }

    /// Keeps the answer of the request that claimed `key` (or frees the key when the answer is
    /// not one to keep).
    pub async fn finish_idempotency_key(
        &self,
        user: UserId,
        key: &str,
        answer: &StoredAnswer,
    ) -> Result<()> {
        let mut tx = self.store.write().await?;
        if keeps(answer.status) {
            tx.finish_idempotency_key(user, key, answer).await?;
        } else {
            tx.release_idempotency_key(user, key).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
