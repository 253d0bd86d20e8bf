//! Auditing streams of frames: which frames are logged activities or presence, and a seeded RNG
//! for randomized tests (the seed is printed so a failure can be replayed).

use serde_json::Value;

/// Whether a frame is an activity with a `seq` (not an ephemeral presence event).
pub fn is_logged_activity(frame: &Value) -> bool {
    frame["type"] == "activity" && frame["activity"]["seq"].is_i64()
}

/// Whether a frame is a presence activity.
pub fn is_presence(frame: &Value) -> bool {
    frame["type"] == "activity"
        && frame["activity"]["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("presence."))
}

/// The `activity` objects of logged activity frames in `frames`.
pub fn logged_activities(frames: &[Value]) -> Vec<Value> {
    frames
        .iter()
        .filter(|f| is_logged_activity(f))
        .map(|f| f["activity"].clone())
        .collect()
}

/// A small deterministic RNG (splitmix64) for seeded randomized tests.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    /// A seed from `TASKFORGE_TEST_SEED`, or from the clock.
    pub fn seed_from_env() -> u64 {
        std::env::var("TASKFORGE_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            })
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}
