//! Accounts and sessions: registration, login, refresh-token rotation with reuse detection,
//! logout, and access tokens (HS256 JWTs with a pinned algorithm, `exp`, `nbf` and `iss` checked).

use std::sync::LazyLock;
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Result, ServiceError, Services, now};
use crate::domain::rules::{
    check_credential_sizes, check_display_name, check_registration, normalize_email,
};
use crate::domain::{DomainError, Role, SessionId, Team, User, UserId};
use crate::store::{PageAfter, StoreError};

pub const ISSUER: &str = "taskforge";
/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 5;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iss: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is invalid")]
    Invalid,
}

/// A verified access token.
#[derive(Debug, Clone, Copy)]
pub struct Principal {
    pub user_id: UserId,
    pub expires_at: OffsetDateTime,
}

/// Issues and verifies access tokens.
pub struct TokenService {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
}

impl TokenService {
    pub fn new(secret: &[u8], access_ttl: Duration, refresh_ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            access_ttl,
            refresh_ttl,
        }
    }

    pub fn issue(&self, user: UserId) -> Result<String> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let claims = Claims {
            sub: user.to_string(),
            iss: ISSUER.to_owned(),
            iat: now,
            nbf: now,
            exp: now + self.access_ttl.as_secs() as i64,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ServiceError::Internal(format!("signing a token failed: {e}")))
    }

    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            })?;
        let user_id: UserId = data.claims.sub.parse().map_err(|_| AuthError::Invalid)?;
        let expires_at =
            OffsetDateTime::from_unix_timestamp(data.claims.exp).map_err(|_| AuthError::Invalid)?;
        Ok(Principal {
            user_id,
            expires_at,
        })
    }
}

/// What register, login and refresh answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub user: User,
    pub access_token: String,
    pub refresh_token: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

/// `GET /me`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Me {
    pub user: User,
    pub teams: Vec<TeamRole>,
    /// Unread notifications (of the teams above).
    #[serde(rename = "unreadNotifications")]
    pub unread_notifications: i64,
    /// The latest seq of the caller's inbox stream.
    #[serde(rename = "inboxSeq")]
    pub inbox_seq: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TeamRole {
    pub team: Team,
    pub role: Role,
}

fn random_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| ServiceError::Internal(format!("no randomness: {e}")))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Refresh tokens are stored as their SHA-256 only.
fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Argon2id costs tens of milliseconds and 19 MiB by design: at most one hash per core runs at
/// once, on the blocking pool. A few more may wait their turn (`HASH_QUEUE_PER_CORE` per core, so
/// the wait stays well under a second, and never longer than `HASH_QUEUE_DEADLINE`); past that a
/// sign-up or log-in answers 503 `unavailable` with `Retry-After` at once. A log-in storm larger
/// than the CPU can hash then costs neither gigabytes nor a queue that makes everyone wait for
/// seconds: those that get in are answered promptly, the rest are told to retry.
pub struct PasswordHashing {
    running: tokio::sync::Semaphore,
    waiting: std::sync::atomic::AtomicUsize,
    max_waiting: usize,
}

impl PasswordHashing {
    /// One hash per core of this machine, `HASH_QUEUE_PER_CORE` waiting per core. One per
    /// server: servers in one process (tests) do not eat each other's budget.
    pub fn for_this_machine() -> PasswordHashing {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        PasswordHashing {
            running: tokio::sync::Semaphore::new(cores),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            max_waiting: cores * HASH_QUEUE_PER_CORE,
        }
    }

    /// Runs `work` on the blocking pool once a core is free, or refuses at once (`Busy`) when
    /// the queue is full or the wait would pass `HASH_QUEUE_DEADLINE`.
    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        use std::sync::atomic::Ordering;
        let permit = match self.running.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.max_waiting {
                    self.waiting.fetch_sub(1, Ordering::Relaxed);
                    return Err(busy());
                }
                let _waiting = Waiting(&self.waiting);
                tokio::time::timeout(HASH_QUEUE_DEADLINE, self.running.acquire())
                    .await
                    .map_err(|_| busy())?
                    .map_err(|e| ServiceError::Internal(format!("hashing queue closed: {e}")))?
            }
        };
        let out = tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| ServiceError::Internal(format!("hashing task failed: {e}")));
        drop(permit);
        out
    }
}

/// Hashes allowed to wait per core.
const HASH_QUEUE_PER_CORE: usize = 4;
/// The longest a password hash waits for a core.
const HASH_QUEUE_DEADLINE: Duration = Duration::from_secs(2);

fn busy() -> ServiceError {
    metrics::counter!(crate::telemetry::HASHES_REFUSED).increment(1);
    ServiceError::Busy(
        "too many sign-ups and log-ins at once; retry shortly",
        Duration::from_secs(1),
    )
}

/// Counts a waiting hash for as long as it waits.
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn hash_password(hashing: &PasswordHashing, password: String) -> Result<String> {
    hashing
        .run(move || {
            Argon2::default()
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| ServiceError::Internal(format!("hashing failed: {e}")))
        })
        .await?
}

/// Verifies against `hash`, or against a throwaway hash when the account is unknown, so that both
/// failures take as long.
async fn verify_password(
    hashing: &PasswordHashing,
    password: String,
    hash: Option<String>,
) -> Result<bool> {
    static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
        Argon2::default()
            .hash_password(b"no account has this password")
            .map(|h| h.to_string())
            .unwrap_or_default()
    });
    hashing
        .run(move || {
            let hash = hash.as_deref().unwrap_or(DUMMY_HASH.as_str());
            Argon2::default()
                .verify_password(password.as_bytes(), hash)
                .is_ok()
        })
        .await
}

fn unauthorized() -> ServiceError {
    DomainError::Unauthorized("invalid credentials").into()
}

impl Services {
    pub async fn register(
        &self,
        email: &str,
        password: &str,
        display_name: &str,
    ) -> Result<Session> {
        let email = normalize_email(email);
        check_registration(&email, password, display_name)?;
        let hash = hash_password(&self.hashing, password.to_owned()).await?;
        let user = User {
            id: UserId::from(Uuid::now_v7()),
            email,
            display_name: display_name.to_owned(),
            created_at: now(),
        };
        let mut tx = self.store.write().await?;
        match tx.insert_user(&user, &hash).await {
            Err(StoreError::Duplicate) => {
                return Err(DomainError::Conflict("that email is already registered").into());
            }
            other => other?,
        }
        let refresh = self.new_family(&mut *tx, user.id).await?;
        tx.commit().await?;
        self.session(user, refresh)
    }

    pub async fn login(&self, email: &str, password: &str) -> Result<Session> {
        let email = normalize_email(email);
        // Nothing longer than an account can have is looked up or hashed.
        check_credential_sizes(&email, password)?;
        let found = self.store.read().await?.user_by_email(&email).await?;
        let (user, hash) = found.map_or((None, None), |(u, h)| (Some(u), Some(h)));
        let ok = verify_password(&self.hashing, password.to_owned(), hash).await?;
        let Some(user) = user.filter(|_| ok) else {
            return Err(unauthorized());
        };
        let mut tx = self.store.write().await?;
        let refresh = self.new_family(&mut *tx, user.id).await?;
        tx.commit().await?;
        self.session(user, refresh)
    }

    /// Rotates a refresh token. Presenting one that was already rotated revokes its whole family:
    /// either the client or a thief holds a copy, and neither can be told apart.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Session> {
        let hash = token_hash(refresh_token);
        let at = now();
        // Tokens that cannot succeed and need nothing written are refused from a read snapshot,
        // so guessing never queues for SQLite's single writer. A used token goes on: presenting
        // it again revokes its family, which is a write.
        match self.store.read().await?.refresh_token(&hash).await? {
            None => return Err(unauthorized()),
            Some(t) if t.family_revoked || (!t.used && t.expires_at <= at) => {
                return Err(unauthorized());
            }
            Some(_) => {}
        }
        let mut tx = self.store.write().await?;
        let Some(stored) = tx.refresh_token(&hash).await? else {
            return Err(unauthorized());
        };
        if stored.family_revoked {
            return Err(unauthorized());
        }
        if stored.used || !tx.use_refresh_token(&hash, at).await? {
            tx.revoke_refresh_family(stored.family_id, at).await?;
            tx.commit().await?;
            tracing::warn!(user = %stored.user_id, "refresh token reuse: family revoked");
            return Err(unauthorized());
        }
        if stored.expires_at <= at {
            return Err(unauthorized());
        }
        let Some(user) = tx.user(stored.user_id).await? else {
            return Err(unauthorized());
        };
        let next = random_token()?;
        tx.insert_refresh_token(
            &token_hash(&next),
            stored.family_id,
            self.refresh_expiry(at),
        )
        .await?;
        tx.commit().await?;
        self.session(user, next)
    }

    /// Revokes the family of a refresh token. Unknown tokens are ignored (nothing to revoke).
    pub async fn logout(&self, refresh_token: &str) -> Result<()> {
        let hash = token_hash(refresh_token);
        // Nothing to revoke for an unknown token, a revoked family, or an expired token nobody
        // rotated (its family has no valid token left): decided without the writer.
        match self.store.read().await?.refresh_token(&hash).await? {
            None => return Ok(()),
            Some(t) if t.family_revoked || (!t.used && t.expires_at <= now()) => return Ok(()),
            Some(_) => {}
        }
        let mut tx = self.store.write().await?;
        if let Some(stored) = tx.refresh_token(&hash).await? {
            tx.revoke_refresh_family(stored.family_id, now()).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn me(&self, user: UserId) -> Result<Me> {
        let mut tx = self.store.read().await?;
        let Some(me) = tx.user(user).await? else {
            return Err(unauthorized());
        };
        let mut teams = Vec::new();
        let mut after = None;
        // Bounded by the number of teams the user belongs to, read in pages.
        loop {
            let page = tx.teams_of(user, PageAfter { after, limit: 500 }).await?;
            let done = page.len() < 500;
            after = page.last().map(|(t, _)| t.id);
            teams.extend(page.into_iter().map(|(team, role)| TeamRole { team, role }));
            if done {
                break;
            }
        }
        let (inbox_seq, unread_notifications) = tx.inbox_state(user).await?;
        Ok(Me {
            user: me,
            teams,
            unread_notifications,
            inbox_seq,
        })
    }

    pub async fn set_display_name(&self, user: UserId, name: &str) -> Result<User> {
        check_display_name(name)?;
        let mut tx = self.store.write().await?;
        let updated = tx
            .set_display_name(user, name)
            .await?
            .ok_or_else(unauthorized)?;
        tx.commit().await?;
        Ok(updated)
    }

    async fn new_family(&self, tx: &mut dyn crate::store::Tx, user: UserId) -> Result<String> {
        let at = now();
        let family = SessionId::from(Uuid::now_v7());
        let token = random_token()?;
        tx.insert_refresh_family(family, user, at).await?;
        tx.insert_refresh_token(&token_hash(&token), family, self.refresh_expiry(at))
            .await?;
        Ok(token)
    }

    fn refresh_expiry(&self, at: OffsetDateTime) -> OffsetDateTime {
        at + time::Duration::try_from(self.tokens.refresh_ttl).unwrap_or(time::Duration::days(30))
    }

    fn session(&self, user: User, refresh_token: String) -> Result<Session> {
        Ok(Session {
            access_token: self.tokens.issue(user.id)?,
            refresh_token,
            expires_in: self.tokens.access_ttl.as_secs(),
            user,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// However many log-ins arrive at once, no more hashes run than there are permits (cores).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hashing_runs_at_most_one_per_core() {
        static RUNNING: AtomicUsize = AtomicUsize::new(0);
        static PEAK: AtomicUsize = AtomicUsize::new(0);
        let hashing = Arc::new(PasswordHashing::for_this_machine());
        let jobs: Vec<_> = (0..24)
            .map(|_| {
                let hashing = hashing.clone();
                tokio::spawn(async move {
                    hashing
                        .run(|| {
                            let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
                            PEAK.fetch_max(now, Ordering::SeqCst);
                            // Long enough that every job has asked before the first is done.
                            std::thread::sleep(Duration::from_millis(200));
                            RUNNING.fetch_sub(1, Ordering::SeqCst);
                        })
                        .await
                })
            })
            .collect();
        let (mut hashed, mut refused) = (0, 0);
        for j in jobs {
            match j.await.expect("joined") {
                Ok(()) => hashed += 1,
                Err(ServiceError::Busy(..)) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        let peak = PEAK.load(Ordering::SeqCst);
        assert!(peak >= 1 && peak <= cores, "peak {peak} with {cores} cores");
        // Those that found no core and no place in the queue were refused, not queued.
        assert!(hashed >= cores, "{hashed} hashed");
        assert!(
            hashed <= cores * (1 + HASH_QUEUE_PER_CORE),
            "{hashed} hashed, {refused} refused: more than the queue holds got in"
        );
        assert_eq!(hashed + refused, 24);
    }

    #[test]
    fn tokens_round_trip_and_reject_tampering() {
        let svc = TokenService::new(
            b"0123456789abcdef0123456789abcdef",
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        let user = UserId::from(Uuid::now_v7());
        let token = svc.issue(user).expect("issue");
        assert_eq!(svc.verify(&token).expect("verify").user_id, user);
        let other = TokenService::new(
            b"another-secret-another-secret-xx",
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        assert_eq!(other.verify(&token).unwrap_err(), AuthError::Invalid);
    }
}
