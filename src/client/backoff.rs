//! Exponential backoff with jitter, as the Java client's `ExponentialBackoff`: the wait
//! after the n-th consecutive failure (n from 0) is `initial * 2^n`, capped at `max`, times a
//! random factor in [0.8, 1.2]. The randomness comes from a seeded stream, so a simulated run
//! replays exactly.

use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Relative jitter applied to every backoff (Kafka's `ExponentialBackoff` uses 0.2).
const JITTER_RATIO: f64 = 0.2;

/// Backoff parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait after `failures` consecutive failures (0 = after the first failure).
    pub fn delay(&self, failures: u32, rng: &mut ChaCha8Rng) -> Duration {
        let exponent = failures.min(32);
        let term = self.initial.saturating_mul(1u32 << exponent.min(31));
        let capped = term.min(self.max.max(self.initial));
        let factor = rng.gen_range((1.0 - JITTER_RATIO)..=(1.0 + JITTER_RATIO));
        capped.mul_f64(factor)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn grows_exponentially_up_to_the_cap_with_bounded_jitter() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for (failures, base_ms) in [(0, 100.0), (1, 200.0), (2, 400.0), (3, 800.0), (4, 1000.0)] {
            for _ in 0..50 {
                let d = backoff.delay(failures, &mut rng).as_secs_f64() * 1000.0;
                assert!(
                    d >= base_ms * 0.8 - 1e-6 && d <= base_ms * 1.2 + 1e-6,
                    "{failures}: {d}"
                );
            }
        }
        assert!(backoff.delay(u32::MAX, &mut rng) <= Duration::from_millis(1200));
    }

    #[test]
    fn same_seed_same_delays() {
        let backoff = Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(1),
        };
        let mut a = ChaCha8Rng::seed_from_u64(1);
        let mut b = ChaCha8Rng::seed_from_u64(1);
        let xs: Vec<_> = (0..10).map(|n| backoff.delay(n, &mut a)).collect();
        let ys: Vec<_> = (0..10).map(|n| backoff.delay(n, &mut b)).collect();
        assert_eq!(xs, ys);
    }
}
