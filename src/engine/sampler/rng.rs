//! `SeqRng`: one request's private random stream.
//!
//! The generator is xoshiro256++ (Blackman & Vigna) seeded through SplitMix64, written
//! here so that the stream is fixed by this file alone: the same seed gives the same
//! numbers on every machine, OS, compiler and dependency version. Known-answer tests at
//! the bottom pin the stream; changing them changes every seeded completion.
//!
//! Invariant: the stream advances only when its own request draws a number (one
//! `next_f64` per sampled token in the non-greedy path), so a request's tokens never
//! depend on which other requests share its batch.

use rand::TryRngCore;

/// Added by SplitMix64 at each step (2^64 / golden ratio).
const SPLITMIX_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// One request's deterministic random stream (xoshiro256++ state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqRng {
    state: [u64; 4],
}

impl SeqRng {
    /// Seeded from `seed` when given (reproducible), else from OS entropy.
    pub fn new(seed: Option<u64>) -> Self {
        match seed {
            Some(seed) => Self::from_seed(seed),
            None => Self::from_entropy(),
        }
    }

    /// The reproducible stream for `seed`: the state is four SplitMix64 outputs.
    pub fn from_seed(seed: u64) -> Self {
        let mut splitmix_state = seed;
        let mut state = [0u64; 4];
        for word in &mut state {
            *word = splitmix64(&mut splitmix_state);
        }
        // SplitMix64 is a bijection of its counter, so four consecutive outputs are
        // never all zero (the one state xoshiro must avoid).
        Self { state }
    }

    /// A fresh, unpredictable stream. Falls back to a clock- and counter-derived seed
    /// when the OS entropy source fails, so this never panics.
    pub fn from_entropy() -> Self {
        let seed = rand::rngs::OsRng
            .try_next_u64()
            .unwrap_or_else(|_| fallback_seed());
        Self::from_seed(seed)
    }

    /// Next 64 random bits (xoshiro256++).
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let shifted = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= shifted;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 53 random bits (every value is a multiple of 2^-53).
    pub fn next_f64(&mut self) -> f64 {
        const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
        (self.next_u64() >> 11) as f64 * SCALE
    }
}

/// One SplitMix64 step: advances `counter` and returns a well-mixed 64-bit value.
fn splitmix64(counter: &mut u64) -> u64 {
    *counter = counter.wrapping_add(SPLITMIX_GAMMA);
    let mut z = *counter;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Seed used only when the OS entropy source is unavailable: wall-clock nanoseconds
/// mixed with a process-wide counter, so two requests in the same nanosecond differ.
fn fallback_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(0);
    let mut mixed = nanos ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(32);
    splitmix64(&mut mixed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_reference_values() {
        // Reference: Vigna's splitmix64.c with x = 0 gives these first three outputs.
        let mut counter = 0u64;
        assert_eq!(splitmix64(&mut counter), 0xe220_a839_7b1d_cdaf);
        assert_eq!(splitmix64(&mut counter), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(splitmix64(&mut counter), 0x06c4_5d18_8009_454f);
    }

    #[test]
    fn xoshiro_step_matches_reference_on_small_state() {
        // xoshiro256++ from state {1, 2, 3, 4}: rotl(1 + 4, 23) + 1.
        let mut rng = SeqRng {
            state: [1, 2, 3, 4],
        };
        assert_eq!(rng.next_u64(), 41_943_041);
        assert_eq!(rng.next_u64(), 58_720_359);
        assert_eq!(rng.next_u64(), 3_588_806_011_781_223);
    }

    #[test]
    fn seeded_stream_is_pinned() {
        // Pinned values for seed 42 (computed by an independent Python implementation).
        // If this fails, every seeded completion served so far would change.
        let mut rng = SeqRng::from_seed(42);
        let got: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        assert_eq!(got, PINNED_SEED_42);
    }

    const PINNED_SEED_42: [u64; 3] = [
        0xd076_4d4f_4476_689f,
        0x519e_4174_576f_3791,
        0xfbe0_7cfb_0c24_ed8c,
    ];

    #[test]
    fn same_seed_same_stream_different_seed_different_stream() {
        let mut first = SeqRng::new(Some(7));
        let mut second = SeqRng::new(Some(7));
        let mut other = SeqRng::new(Some(8));
        let a: Vec<u64> = (0..16).map(|_| first.next_u64()).collect();
        let b: Vec<u64> = (0..16).map(|_| second.next_u64()).collect();
        let c: Vec<u64> = (0..16).map(|_| other.next_u64()).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn entropy_streams_differ() {
        let mut first = SeqRng::new(None);
        let mut second = SeqRng::new(None);
        assert_ne!(first.next_u64(), second.next_u64());
    }

    #[test]
    fn next_f64_is_in_unit_interval_and_spread() {
        let mut rng = SeqRng::from_seed(3);
        let draws: Vec<f64> = (0..10_000).map(|_| rng.next_f64()).collect();
        assert!(draws.iter().all(|&u| (0.0..1.0).contains(&u)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
        let below_tenth = draws.iter().filter(|&&u| u < 0.1).count();
        assert!((800..1200).contains(&below_tenth), "{below_tenth}");
    }
}
