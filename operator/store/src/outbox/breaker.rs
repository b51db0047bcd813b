//! A circuit breaker per object store.

use std::time::{Duration, Instant};

/// When a breaker opens and how long it stays open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open it.
    pub failures: u32,
    /// How long it stays open before one probe upload is let through.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            cool_down: Duration::from_secs(30),
        }
    }
}

/// What the breaker allows now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permit {
    /// Closed: upload freely.
    Closed,
    /// Half-open: one probe upload decides.
    Probe,
    /// Open: nothing until then.
    WaitUntil(Instant),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// Stops hammering a store that is down: after [`BreakerConfig::failures`] consecutive
/// failed uploads the store gets nothing for the cool-down, then one probe; its success
/// closes the breaker, its failure opens it for another cool-down. While it is open,
/// pending uploads are not attempted, so their attempt counts (and backoff) do not grow
/// during an outage.
#[derive(Clone, Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: State::Closed { failures: 0 },
        }
    }

    /// What may be done at `now`; an open breaker whose cool-down is over turns
    /// half-open.
    pub fn permit(&mut self, now: Instant) -> Permit {
        match self.state {
            State::Closed { .. } => Permit::Closed,
            State::HalfOpen => Permit::Probe,
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen;
                Permit::Probe
            }
            State::Open { until } => Permit::WaitUntil(until),
        }
    }

    /// An upload succeeded.
    pub fn success(&mut self) {
        self.state = State::Closed { failures: 0 };
    }

    /// An upload failed because of the store; true if this opened the breaker.
    pub fn failure(&mut self, now: Instant) -> bool {
        let open = match self.state {
            State::Closed { failures } => {
                let failures = failures + 1;
                self.state = State::Closed { failures };
                failures >= self.config.failures
            }
            State::HalfOpen => true,
            // Uploads that were in flight when it opened.
            State::Open { .. } => false,
        };
        if open {
            self.state = State::Open {
                until: now + self.config.cool_down,
            };
        }
        open
    }

    /// Whether it is open (half-open counts as open: the store is not trusted yet).
    pub fn is_open(&self) -> bool {
        !matches!(self.state, State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_n_failures_probes_after_the_cool_down_and_closes_on_success() {
        let cfg = BreakerConfig {
            failures: 3,
            cool_down: Duration::from_secs(10),
        };
        let mut b = Breaker::new(cfg);
        let t0 = Instant::now();
        assert!(!b.failure(t0) && !b.failure(t0));
        b.success(); // a success resets the count
        assert!(!b.failure(t0) && !b.failure(t0));
        assert_eq!(b.permit(t0), Permit::Closed);
        assert!(b.failure(t0), "the third consecutive failure opens it");
        assert!(b.is_open());
        assert_eq!(
            b.permit(t0 + Duration::from_secs(9)),
            Permit::WaitUntil(t0 + cfg.cool_down)
        );
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.permit(t1), Permit::Probe);
        assert!(b.failure(t1), "a failed probe opens it again");
        assert_eq!(
            b.permit(t1 + Duration::from_secs(5)),
            Permit::WaitUntil(t1 + cfg.cool_down)
        );
        assert_eq!(b.permit(t1 + cfg.cool_down), Permit::Probe);
        b.success();
        assert!(!b.is_open());
        assert_eq!(b.permit(t1), Permit::Closed);
    }
}
