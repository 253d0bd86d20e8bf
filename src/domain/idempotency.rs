//! `Idempotency-Key` rules: which keys are valid, what makes a retry the same request, which
//! answers are kept and for how long. Pure: the store keeps the keys, `service::idempotency`
//! applies these rules, the HTTP edge carries requests and answers.

use sha2::{Digest, Sha256};
use time::Duration;

/// How long a key's answer is kept.
pub const KEY_LIFETIME: Duration = Duration::hours(24);

/// A claim without an answer this old is taken as lost: a keyed request runs to its end even when
/// its client goes away (`http::idempotency`), and none runs longer than the server's 30 s
/// timeout, so only a process that died leaves one. Such a claim is freed for a retry only if its
/// request changed nothing: a change marks its key applied in its own transaction
/// (`store::ApplyingKey`), and an applied claim without an answer is lost for good
/// (`KeyClaim::AnswerLost`), never run again.
pub const CLAIM_STALE_AFTER: Duration = Duration::seconds(60);

/// The longest key accepted (a UUID is 36 characters).
pub const KEY_MAX_LEN: usize = 255;

/// Whether `key` is a usable idempotency key: 1 to 255 visible ASCII characters.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= KEY_MAX_LEN && key.bytes().all(|b| b.is_ascii_graphic())
}

/// What makes a retry the same request: its method, path with query, content type and body.
pub fn fingerprint(method: &str, path_and_query: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    for part in [
        method.as_bytes(),
        path_and_query.as_bytes(),
        content_type.as_bytes(),
        body,
    ] {
        // Length-prefixed, so that no two different requests hash the same parts.
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().to_vec()
}

/// Whether an answer is kept for retries. Answers that a retry should not see again are not:
/// server errors and timeouts (the request may not have happened), conflicts that come and go
/// (409: a concurrent write; 412 is kept: the request as sent will fail again), and rate limits.
pub fn keeps(status: u16) -> bool {
    !(status >= 500 || matches!(status, 408 | 409 | 425 | 429))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii_up_to_255() {
        assert!(valid_key("a"));
        assert!(valid_key("0d6a5b1e-7f0c-4a53-9a6e-2b1c7d9e8f00"));
        assert!(valid_key(&"k".repeat(255)));
        assert!(!valid_key(""));
        assert!(!valid_key(&"k".repeat(256)));
        assert!(!valid_key("has space"));
        assert!(!valid_key("tab\t"));
        assert!(!valid_key("é"));
    }

    #[test]
    fn the_fingerprint_tells_method_path_type_and_body_apart() {
        let j = "application/json";
        let a = fingerprint("POST", "/x", j, b"{}");
        assert_eq!(a, fingerprint("POST", "/x", j, b"{}"));
        assert_ne!(a, fingerprint("POST", "/y", j, b"{}"));
        assert_ne!(a, fingerprint("POST", "/x", j, b"{ }"));
        assert_ne!(a, fingerprint("PUT", "/x", j, b"{}"));
        assert_ne!(a, fingerprint("POST", "/x", "text/plain", b"{}"));
        // Moving a byte between parts changes it (the parts are length-prefixed).
        assert_ne!(
            fingerprint("POST", "/xa", j, b"b"),
            fingerprint("POST", "/x", j, b"ab")
        );
    }

    #[test]
    fn transient_answers_are_not_kept() {
        for s in [200, 201, 204, 400, 401, 403, 404, 412, 413, 422] {
            assert!(keeps(s), "{s}");
        }
        for s in [408, 409, 425, 429, 500, 502, 503] {
            assert!(!keeps(s), "{s}");
        }
    }
}
