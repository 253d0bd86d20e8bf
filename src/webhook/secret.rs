//! Webhook secrets: made here, sealed at rest with the server's webhook key, and used to sign
//! requests as the Standard Webhooks specification says. Secrets never leave this module except
//! sealed, or once in plain text (`whsec_…`) to the owner who created or rotated them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;

use crate::domain::WebhookId;

/// Bytes of a webhook secret (the specification asks for 24 to 64).
const SECRET_LEN: usize = 32;
/// The first byte of a sealed secret: the format, so that a later one can be told apart.
const SEALED_V1: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the webhook key must be 32 bytes in base64")]
    BadKey,
    #[error("no randomness: {0}")]
    Random(String),
    /// Sealed with another key (or damaged): the webhook needs a new secret.
    #[error("the secret cannot be opened with this server's webhook key")]
    Unsealable,
}

/// A webhook secret in plain text. Its `Debug` does not show it.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Secret {
    pub fn generate() -> Result<Self, SecretError> {
        let mut bytes = vec![0u8; SECRET_LEN];
        getrandom::fill(&mut bytes).map_err(|e| SecretError::Random(e.to_string()))?;
        Ok(Self(bytes))
    }

    /// The form the specification gives secrets to receivers in: `whsec_<base64>`.
    pub fn to_whsec(&self) -> String {
        format!("whsec_{}", STANDARD.encode(&self.0))
    }
}

/// The server's key for webhook secrets at rest (AES-256-GCM, the webhook's id as associated
/// data, so a sealed secret copied to another row does not open).
pub struct SecretKey(LessSafeKey);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(…)")
    }
}

impl SecretKey {
    /// From `TASKFORGE_WEBHOOK_SECRET_KEY` (32 bytes, base64).
    pub fn from_base64(s: &str) -> Result<Self, SecretError> {
        let bytes = STANDARD.decode(s.trim()).map_err(|_| SecretError::BadKey)?;
        Self::from_bytes(&bytes)
    }

    /// Derived from another secret of the server's environment (the JWT secret) when no webhook
    /// key is set: HMAC-SHA256 under a label of its own, so neither key reveals the other.
    pub fn derived_from(secret: &[u8]) -> Result<Self, SecretError> {
        let k = hmac::Key::new(hmac::HMAC_SHA256, secret);
        Self::from_bytes(hmac::sign(&k, b"taskforge webhook secrets v1").as_ref())
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, SecretError> {
        let key = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| SecretError::BadKey)?;
        Ok(Self(LessSafeKey::new(key)))
    }

    pub fn seal(&self, webhook: WebhookId, secret: &Secret) -> Result<Vec<u8>, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| SecretError::Random(e.to_string()))?;
        let mut data = secret.0.clone();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(webhook.as_uuid().as_bytes()),
                &mut data,
            )
            .map_err(|_| SecretError::BadKey)?;
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + data.len());
        sealed.push(SEALED_V1);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&data);
        Ok(sealed)
    }

    pub fn open(&self, webhook: WebhookId, sealed: &[u8]) -> Result<Secret, SecretError> {
        let Some((&SEALED_V1, rest)) = sealed.split_first() else {
            return Err(SecretError::Unsealable);
        };
        if rest.len() < NONCE_LEN {
            return Err(SecretError::Unsealable);
        }
        let (nonce, data) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Unsealable)?;
        let mut data = data.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(webhook.as_uuid().as_bytes()), &mut data)
            .map_err(|_| SecretError::Unsealable)?;
        Ok(Secret(plain.to_vec()))
    }
}

/// The `webhook-signature` header: `v1,<base64 HMAC-SHA256>` of `{id}.{timestamp}.{body}` under
/// each secret, separated by spaces (two while a rotated-out secret still signs).
pub fn signature(secrets: &[Secret], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut content = Vec::with_capacity(msg_id.len() + 24 + body.len());
    content.extend_from_slice(msg_id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(timestamp.to_string().as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    secrets
        .iter()
        .map(|s| {
            let key = hmac::Key::new(hmac::HMAC_SHA256, &s.0);
            format!("v1,{}", STANDARD.encode(hmac::sign(&key, &content)))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_its_row() {
        let key = SecretKey::derived_from(b"some jwt secret of enough length!!").expect("key");
        let other = SecretKey::from_base64(&STANDARD.encode([7u8; 32])).expect("key");
        let (a, b) = (
            WebhookId::from(Uuid::now_v7()),
            WebhookId::from(Uuid::now_v7()),
        );
        let secret = Secret::generate().expect("random");
        let sealed = key.seal(a, &secret).expect("seal");
        assert!(!sealed.windows(SECRET_LEN).any(|w| w == secret.0.as_slice()));
        assert_eq!(key.open(a, &sealed).expect("opens").0, secret.0);
        assert!(key.open(b, &sealed).is_err(), "another row");
        assert!(other.open(a, &sealed).is_err(), "another key");
        assert!(SecretKey::from_base64("c2hvcnQ=").is_err());
        assert!(secret.to_whsec().starts_with("whsec_"));
        assert_eq!(format!("{secret:?}"), "Secret(…)");
    }

    /// The example of the Standard Webhooks specification's reference libraries.
    #[test]
    fn signs_as_the_specification_s_example() {
        let secret = Secret(
            STANDARD
                .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .expect("base64"),
        );
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&[secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
