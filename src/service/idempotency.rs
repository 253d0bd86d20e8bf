//! `Idempotency-Key` on POST: the first answer to a user's request with a key is kept for 24 hours
//! and replayed to a retry of the same request; the same key with another request is refused.
//!
//! This module applies the rules of `domain::idempotency` to the store; the HTTP edge
//! (`http::idempotency`) carries requests and answers to it. It never runs the request itself.

use time::OffsetDateTime;

use super::{Result, Services, now};
use crate::domain::UserId;
use crate::domain::idempotency::{CLAIM_STALE_AFTER, KEY_LIFETIME, keeps};
use crate::store::{APPLYING_KEY, ApplyingKey, KeyClaim, StoredAnswer};

impl Services {
    /// Runs a keyed request's work (`handle`) as holding the claim `user` took on `key` at
    /// `claimed_at`: each write transaction it commits marks the key applied in that same
    /// transaction (`store::ApplyingKey`).
    pub async fn run_keyed<F: Future>(
        &self,
        user: UserId,
        key: String,
        claimed_at: OffsetDateTime,
        handle: F,
    ) -> F::Output {
        let claim = ApplyingKey {
            user,
            key,
            claimed_at,
        };
        APPLYING_KEY.scope(claim, handle).await
    }

    /// Takes `key` for `user`'s request, or says what it holds; with the claim's time, which
    /// names the claim when its answer is kept or it is given up.
    pub async fn claim_idempotency_key(
        &self,
        user: UserId,
        key: &str,
        fingerprint: &[u8],
    ) -> Result<(KeyClaim, OffsetDateTime)> {
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
        Ok((claim, now))
    }

    /// Keeps the answer of the request that claimed `key` at `at` (or frees the key when the
    /// answer is not one to keep). A claim taken over since (stale) is left alone.
    pub async fn finish_idempotency_key(
        &self,
        user: UserId,
        key: &str,
        fingerprint: &[u8],
        at: OffsetDateTime,
        answer: &StoredAnswer,
    ) -> Result<()> {
        let mut tx = self.store.write().await?;
        if keeps(answer.status) {
            tx.finish_idempotency_key(user, key, fingerprint, at, answer)
                .await?;
        } else {
            tx.release_idempotency_key(user, key, fingerprint, at, false)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Frees the claim of `key` taken at `at`: its request has no answer to keep. A request
    /// that changed something keeps its claim (a retry must not act twice) unless `secret`:
    /// its answer is one never kept, and the request runs as if it had no key.
    pub async fn release_idempotency_key(
        &self,
        user: UserId,
        key: &str,
        fingerprint: &[u8],
        at: OffsetDateTime,
        secret: bool,
    ) -> Result<()> {
        let mut tx = self.store.write().await?;
        tx.release_idempotency_key(user, key, fingerprint, at, secret)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
