//! Level 3 of moderation, the human review queue: which logged exchanges go to it.
//! Every exchange with a moderation hit does (`flagged`); of the others, each is drawn
//! with probability `--review-sample-rate` (`sampled`).
//!
//! Invariant: only unflagged exchanges draw from the random stream, one draw each, so
//! with a seed the number sampled out of N unflagged exchanges is the same whatever
//! order they finish in (tests replay the stream to know it exactly).

use std::sync::Mutex;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::store::ReviewReason;

/// Draws the random sample of the review queue.
pub struct ReviewSampler {
    rate: f64,
    rng: Mutex<StdRng>,
}

impl ReviewSampler {
    /// Samples with probability `rate` (0..=1); `seed` makes the draws reproducible.
    pub fn new(rate: f64, seed: Option<u64>) -> Self {
        let rng = match seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            rate: rate.clamp(0.0, 1.0),
            rng: Mutex::new(rng),
        }
    }

    /// One draw: whether an unflagged exchange is sampled.
    pub fn draw(&self) -> bool {
        if self.rate <= 0.0 {
            return false;
        }
        let mut rng = match self.rng.lock() {
            Ok(rng) => rng,
            Err(poisoned) => poisoned.into_inner(),
        };
        rng.random::<f64>() < self.rate
    }

    /// Why an exchange goes to the review queue, if it does (`flagged`: it had a hit).
    pub fn reason(&self, flagged: bool) -> Option<ReviewReason> {
        if flagged {
            Some(ReviewReason::Flagged)
        } else {
            self.draw().then_some(ReviewReason::Sampled)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flagged_exchanges_always_go_and_the_rest_at_the_rate() {
        let sampler = ReviewSampler::new(0.1, Some(7));
        assert_eq!(sampler.reason(true), Some(ReviewReason::Flagged));
        let sampled = (0..10_000).filter(|_| sampler.draw()).count();
        assert!((800..1200).contains(&sampled), "{sampled}");
        // The same seed gives the same draws.
        let (a, b) = (
            ReviewSampler::new(0.3, Some(1)),
            ReviewSampler::new(0.3, Some(1)),
        );
        let draws = |s: &ReviewSampler| (0..64).map(|_| s.draw()).collect::<Vec<_>>();
        assert_eq!(draws(&a), draws(&b));
        assert!(!ReviewSampler::new(0.0, None).draw());
        assert!(ReviewSampler::new(1.0, None).draw());
    }
}
