//! Freshness challenges: single-use 32-byte nonces, each bound to the node that asked for
//! it and valid for a short time.
//!
//! Evidence is only as fresh as its nonce: an agent that could reuse a nonce, or use one
//! issued to another node, could replay old facts or speak for a node it does not run on.
//! So a nonce is consumed by the first submission that names it, whatever the outcome.
//!
//! Memory is bounded: each node holds at most [`MAX_PENDING_PER_NODE`] outstanding nonces
//! (the oldest is dropped when it asks for more), and expired ones are swept on every
//! issue. Time is passed in, so that expiry is tested without sleeping.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lotabots_crds::evidence::NONCE_LEN;
use rand::RngCore;

/// Outstanding nonces one node may hold; an agent needs one per probe in flight.
pub const MAX_PENDING_PER_NODE: usize = 4;

/// A nonce as issued.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nonce(pub [u8; NONCE_LEN]);

impl Nonce {
    /// Lower-case hex, as evidence carries it.
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for Nonce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A nonce is not a secret, but a short prefix is all a log needs.
        write!(f, "Nonce({}…)", &self.to_hex()[..12])
    }
}

/// Why a nonce was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    /// Never issued, already used, or swept after expiry.
    #[error("nonce {0}… was not issued by this operator or was already used")]
    Unknown(String),
    /// Issued, but its time ran out.
    #[error("nonce {nonce}… expired {ago_ms} ms ago")]
    Expired {
        /// Its first 12 hex characters.
        nonce: String,
        /// How long ago.
        ago_ms: u128,
    },
    /// Issued to another node.
    #[error("nonce {nonce}… was issued to node {issued_to:?}, not to {presented_by:?}")]
    WrongNode {
        /// Its first 12 hex characters.
        nonce: String,
        /// The node it was issued to.
        issued_to: String,
        /// The node that presented it.
        presented_by: String,
    },
}

impl ChallengeError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ChallengeError::Unknown(_) => "unknown_nonce",
            ChallengeError::Expired { .. } => "expired_nonce",
            ChallengeError::WrongNode { .. } => "wrong_node_nonce",
        }
    }
}

struct Pending {
    node: String,
    expires: Instant,
}

#[derive(Default)]
struct Inner {
    pending: HashMap<Nonce, Pending>,
    /// Per node, its outstanding nonces oldest first.
    by_node: HashMap<String, VecDeque<Nonce>>,
}

/// The outstanding challenges.
pub struct Challenges {
    ttl: Duration,
    inner: Mutex<Inner>,
}

impl Challenges {
    /// Nonces valid for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            inner: Mutex::default(),
        }
    }

    /// How long a nonce stays valid.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Issues a fresh nonce to `node`.
    pub fn issue(&self, node: &str, now: Instant) -> Nonce {
        let mut bytes = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut bytes);
        let nonce = Nonce(bytes);
        let mut inner = self.lock();
        inner.sweep(now);
        let queue = inner.by_node.entry(node.to_owned()).or_default();
        queue.push_back(nonce);
        let evicted = if queue.len() > MAX_PENDING_PER_NODE {
            queue.pop_front()
        } else {
            None
        };
        if let Some(old) = evicted {
            inner.pending.remove(&old);
        }
        inner.pending.insert(
            nonce,
            Pending {
                node: node.to_owned(),
                expires: now + self.ttl,
            },
        );
        nonce
    }

    /// Consumes `nonce` for `node`: succeeds once, for the node it was issued to, before
    /// it expires. A nonce presented by the wrong node is consumed too, so that a stolen
    /// nonce cannot be tried again.
    pub fn consume(&self, nonce: Nonce, node: &str, now: Instant) -> Result<(), ChallengeError> {
        let short = nonce.to_hex()[..12].to_owned();
        let mut inner = self.lock();
        let Some(pending) = inner.pending.remove(&nonce) else {
            return Err(ChallengeError::Unknown(short));
        };
        if let Some(queue) = inner.by_node.get_mut(&pending.node) {
            queue.retain(|n| *n != nonce);
            if queue.is_empty() {
                inner.by_node.remove(&pending.node);
            }
        }
        if pending.node != node {
            return Err(ChallengeError::WrongNode {
                nonce: short,
                issued_to: pending.node,
                presented_by: node.to_owned(),
            });
        }
        if now > pending.expires {
            return Err(ChallengeError::Expired {
                nonce: short,
                ago_ms: (now - pending.expires).as_millis(),
            });
        }
        Ok(())
    }

    /// Outstanding nonces (for metrics and tests).
    pub fn outstanding(&self) -> usize {
        self.lock().pending.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The map stays consistent at every await-free step, so a poisoned lock (a panic
        // elsewhere while holding it) leaves nothing half-done.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    fn sweep(&mut self, now: Instant) {
        let before = self.pending.len();
        self.pending.retain(|_, p| p.expires >= now);
        if self.pending.len() != before {
            let pending = &self.pending;
            self.by_node.retain(|_, q| {
                q.retain(|n| pending.contains_key(n));
                !q.is_empty()
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn a_nonce_is_accepted_once_for_its_node() {
        let c = Challenges::new(TTL);
        let t = Instant::now();
        let n = c.issue("gpu-1", t);
        assert_eq!(c.consume(n, "gpu-1", t), Ok(()));
        assert!(matches!(
            c.consume(n, "gpu-1", t),
            Err(ChallengeError::Unknown(_))
        ));
        assert_eq!(c.outstanding(), 0);
    }

    #[test]
    fn another_nodes_nonce_is_rejected_and_burnt() {
        let c = Challenges::new(TTL);
        let t = Instant::now();
        let n = c.issue("gpu-1", t);
        let err = c.consume(n, "gpu-2", t).unwrap_err();
        assert_eq!(err.label(), "wrong_node_nonce");
        assert!(
            err.to_string()
                .contains("issued to node \"gpu-1\", not to \"gpu-2\""),
            "{err}"
        );
        assert!(matches!(
            c.consume(n, "gpu-1", t),
            Err(ChallengeError::Unknown(_))
        ));
    }

    #[test]
    fn an_expired_nonce_is_rejected() {
        let c = Challenges::new(TTL);
        let t = Instant::now();
        let n = c.issue("gpu-1", t);
        let err = c
            .consume(n, "gpu-1", t + TTL + Duration::from_millis(5))
            .unwrap_err();
        assert!(
            matches!(err, ChallengeError::Expired { ago_ms: 5, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn a_nonce_never_issued_is_unknown() {
        let c = Challenges::new(TTL);
        let err = c
            .consume(Nonce([7; NONCE_LEN]), "gpu-1", Instant::now())
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("nonce 070707070707… was not issued"),
            "{err}"
        );
    }

    #[test]
    fn memory_is_bounded_per_node_and_expired_nonces_are_swept() {
        let c = Challenges::new(TTL);
        let t = Instant::now();
        let first = c.issue("gpu-1", t);
        for _ in 0..10 {
            c.issue("gpu-1", t);
        }
        assert_eq!(c.outstanding(), MAX_PENDING_PER_NODE);
        assert!(matches!(
            c.consume(first, "gpu-1", t),
            Err(ChallengeError::Unknown(_))
        ));
        c.issue("gpu-2", t + TTL * 2);
        assert_eq!(c.outstanding(), 1, "gpu-1's expired nonces are swept");
    }

    #[test]
    fn nonces_are_distinct_and_debug_shows_a_prefix_only() {
        let c = Challenges::new(TTL);
        let t = Instant::now();
        let a = c.issue("n", t);
        let b = c.issue("n", t);
        assert_ne!(a, b);
        assert_eq!(format!("{a:?}").len(), "Nonce(".len() + 12 + "…)".len());
    }
}
