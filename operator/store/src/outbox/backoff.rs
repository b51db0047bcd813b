//! Exponential backoff with full jitter.

use std::time::Duration;

use rand::Rng;

/// Retry delays: attempt `n` (0-based) waits a uniformly random time between zero and
/// `min(max, base × 2ⁿ)` ("full jitter"), so that uploads that failed together — a
/// store outage fails a whole batch — do not all retry at the same moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first retry.
    pub base: Duration,
    /// The largest ceiling.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The ceiling after `attempts` failed attempts.
    pub fn ceiling(&self, attempts: i32) -> Duration {
        let exp = u32::try_from(attempts.max(0)).unwrap_or(0).min(30);
        self.base.saturating_mul(1u32 << exp).min(self.max)
    }

    /// A random delay in `[0, ceiling(attempts)]`.
    pub fn delay(&self, attempts: i32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempts);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.random_range(0..=millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_max_and_delays_spread_below_them() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(10),
        };
        let ceilings: Vec<u128> = (0..9).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(
            ceilings,
            [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000]
        );
        assert_eq!(b.ceiling(-3), b.base);
        assert_eq!(b.ceiling(i32::MAX), b.max);
        let mut rng = rand::rng();
        let delays: Vec<Duration> = (0..200).map(|_| b.delay(4, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(1600)));
        // Full jitter: spread over the range, not bunched at the ceiling.
        assert!(delays.iter().any(|d| *d < Duration::from_millis(400)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(1200)));
    }
}
