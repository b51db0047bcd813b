//! Limits of the client API: requests per client address (checked before the token is,
//! so a flood of bad tokens cannot keep the API server's TokenReview busy) and per
//! identity (after), body size, and a deadline per request.

use std::net::IpAddr;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::problem::ApiError;
use crate::evidence_api::RateLimit;

/// The limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request body.
    pub body_bytes: usize,
    /// Longest a request may take.
    pub timeout: Duration,
    /// Per authenticated identity.
    pub per_identity: RateLimit,
    /// Per client address.
    pub per_address: RateLimit,
}

impl Default for Limits {
    fn default() -> Self {
        let rate = |per_minute, burst| RateLimit {
            per_minute: std::num::NonZeroU32::new(per_minute).expect("non-zero"),
            burst: std::num::NonZeroU32::new(burst).expect("non-zero"),
        };
        Self {
            // A ModelAttestation spec is a few KiB; nothing the API takes is larger.
            body_bytes: 64 * 1024,
            timeout: Duration::from_secs(10),
            per_identity: rate(600, 100),
            per_address: rate(1200, 200),
        }
    }
}

/// The rate limiters.
pub struct RateLimiters {
    identity: DefaultKeyedRateLimiter<String>,
    address: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

fn quota(rate: RateLimit) -> Quota {
    Quota::per_minute(rate.per_minute).allow_burst(rate.burst)
}

impl RateLimiters {
    /// Limiters for `limits`.
    pub fn new(limits: &Limits) -> Self {
        Self {
            identity: RateLimiter::keyed(quota(limits.per_identity)),
            address: RateLimiter::keyed(quota(limits.per_address)),
            clock: DefaultClock::default(),
        }
    }

    /// Charges one request to `addr`.
    pub fn check_address(&self, addr: IpAddr) -> Result<(), ApiError> {
        self.address
            .check_key(&addr)
            .map_err(|not_until| ApiError::RateLimited {
                scope: format!("from {addr}"),
                retry_after: not_until.wait_time_from(self.clock.now()),
            })
    }

    /// Charges one request to `user`.
    pub fn check_identity(&self, user: &str) -> Result<(), ApiError> {
        self.identity
            .check_key(&user.to_owned())
            .map_err(|not_until| ApiError::RateLimited {
                scope: format!("for {user}"),
                retry_after: not_until.wait_time_from(self.clock.now()),
            })
    }

    /// Forgets keys whose quota is full again, so that memory follows the active clients.
    pub fn housekeep(&self) {
        self.identity.retain_recent();
        self.address.retain_recent();
        self.identity.shrink_to_fit();
        self.address.shrink_to_fit();
    }
}
