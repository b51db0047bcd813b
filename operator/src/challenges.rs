//! Freshness challenges: 32-byte nonces that carry their own proof, so that every replica
//! of the operator can check one another replica issued.
//!
//! Evidence is only as fresh as its nonce: an agent that could reuse a nonce, or use one
//! issued to another node, could replay old facts or speak for a node it does not run on.
//! A nonce is therefore bound to its node and its expiry by a MAC under a key all
//! replicas share ([`key`]: the Secret `lotabots-challenge-key`):
//!
//! ```text
//! nonce = expiry (u64 BE, unix milliseconds) ‖ random (8 bytes) ‖ MAC (16 bytes)
//! MAC   = HMAC-SHA256(key, "lotabots-challenge-v1" ‖ len(node) (u16 BE) ‖ node
//!                          ‖ expiry ‖ random), first 16 bytes
//! ```
//!
//! Checking node binding, MAC and expiry needs no state ([`Challenges::verify`]). Single
//! use does: with the evidence store, consuming a nonce is an insert into PostgreSQL
//! shared by all replicas (`lotabots_store::db::Database::accept_evidence`); without it,
//! [`Challenges::consume_locally`] remembers used nonces in this process until they
//! expire, which is single use for one replica only (run one replica without a store).
//!
//! Time is passed in, so that expiry is tested without sleeping.

pub mod key;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;
use lotabots_crds::evidence::NONCE_LEN;
use rand::RngCore;
use ring::hmac;

pub use key::ChallengeKey;

/// What the MAC covers first: the format's name and version, so that a MAC made for
/// anything else under the same key is never a valid nonce.
const CONTEXT: &[u8] = b"lotabots-challenge-v1";
/// Bytes of the expiry, the random part and the MAC.
const EXPIRY_LEN: usize = 8;
const RANDOM_LEN: usize = 8;
const MAC_LEN: usize = NONCE_LEN - EXPIRY_LEN - RANDOM_LEN;

/// A nonce as issued.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nonce(pub [u8; NONCE_LEN]);

impl Nonce {
    /// Lower-case hex, as evidence carries it.
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    /// The expiry it claims (checked only together with the MAC).
    pub fn expiry(&self) -> Timestamp {
        let mut ms = [0u8; EXPIRY_LEN];
        ms.copy_from_slice(&self.0[..EXPIRY_LEN]);
        // Beyond jiff's range only for a forged nonce, whose MAC fails anyway.
        Timestamp::from_millisecond(i64::try_from(u64::from_be_bytes(ms)).unwrap_or(i64::MAX))
            .unwrap_or(Timestamp::MAX)
    }

    /// Its first 12 hex characters, all a message or log needs.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_owned()
    }
}

impl std::fmt::Debug for Nonce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A nonce is not a secret, but a short prefix is all a log needs.
        write!(f, "Nonce({}…)", self.short())
    }
}

/// Why a nonce was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    /// Its MAC does not hold for the presenting node: forged, altered, made under
    /// another key, or issued to another node.
    #[error(
        "nonce {nonce}… was not issued by this operator to node {node:?} (forged, altered, \
         or issued to another node)"
    )]
    Unknown {
        /// Its first 12 hex characters.
        nonce: String,
        /// The node that presented it.
        node: String,
    },
    /// Issued, but its time ran out.
    #[error("nonce {nonce}… expired {ago_ms} ms ago; fetch a new challenge")]
    Expired {
        /// Its first 12 hex characters.
        nonce: String,
        /// How long ago.
        ago_ms: i64,
    },
    /// Valid, but a submission already used it.
    #[error("nonce {0}… was already used; fetch a new challenge")]
    Replayed(String),
}

impl ChallengeError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ChallengeError::Unknown { .. } => "unknown_nonce",
            ChallengeError::Expired { .. } => "expired_nonce",
            ChallengeError::Replayed(_) => "replayed_nonce",
        }
    }
}

/// A nonce that passed [`Challenges::verify`]: issued by a replica holding the key, to
/// this node, not yet expired. Whether it was used before is a separate question.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The nonce.
    pub nonce: Nonce,
    /// Until when it is valid: how long its single-use record must be kept.
    pub expires_at: Timestamp,
}

/// Issues and checks challenges.
pub struct Challenges {
    key: ChallengeKey,
    ttl: Duration,
    /// Nonces used in this process, with their expiry (the store-less single use).
    used: Mutex<HashMap<Nonce, Timestamp>>,
}

impl Challenges {
    /// Nonces valid for `ttl`, authenticated with `key`.
    pub fn new(key: ChallengeKey, ttl: Duration) -> Self {
        Self {
            key,
            ttl,
            used: Mutex::default(),
        }
    }

    /// How long a nonce stays valid.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Issues a fresh nonce to `node` at `now`; it expires at `now + ttl` (milliseconds).
    pub fn issue(&self, node: &str, now: Timestamp) -> (Nonce, Timestamp) {
        let ttl = jiff::SignedDuration::try_from(self.ttl).unwrap_or(jiff::SignedDuration::MAX);
        let expires = now.checked_add(ttl).unwrap_or(Timestamp::MAX);
        let expiry = u64::try_from(expires.as_millisecond()).unwrap_or(0);
        let mut bytes = [0u8; NONCE_LEN];
        bytes[..EXPIRY_LEN].copy_from_slice(&expiry.to_be_bytes());
        rand::rng().fill_bytes(&mut bytes[EXPIRY_LEN..EXPIRY_LEN + RANDOM_LEN]);
        let tag = self.mac(node, &bytes[..EXPIRY_LEN + RANDOM_LEN]);
        bytes[EXPIRY_LEN + RANDOM_LEN..].copy_from_slice(&tag.as_ref()[..MAC_LEN]);
        let nonce = Nonce(bytes);
        (nonce, nonce.expiry())
    }

    /// Checks, without state, that `nonce` was issued to `node` under this key and has
    /// not expired at `now`. The MAC is checked first, so that nothing about a forged
    /// nonce (not even its claimed expiry) is believed.
    pub fn verify(
        &self,
        nonce: Nonce,
        node: &str,
        now: Timestamp,
    ) -> Result<Verified, ChallengeError> {
        let (signed, tag) = nonce.0.split_at(EXPIRY_LEN + RANDOM_LEN);
        let expected = self.mac(node, signed);
        // Every byte is compared whatever the first difference (no early exit), so the
        // time taken says nothing about how much of a guessed MAC was right.
        let difference = expected.as_ref()[..MAC_LEN]
            .iter()
            .zip(tag)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if difference != 0 {
            return Err(ChallengeError::Unknown {
                nonce: nonce.short(),
                node: node.to_owned(),
            });
        }
        let expires_at = nonce.expiry();
        if now > expires_at {
            return Err(ChallengeError::Expired {
                nonce: nonce.short(),
                ago_ms: now.duration_since(expires_at).as_millis() as i64,
            });
        }
        Ok(Verified { nonce, expires_at })
    }

    /// Marks a verified nonce used in this process: succeeds once. Used nonces are kept
    /// until they expire (after which [`Challenges::verify`] refuses them anyway), so
    /// memory is bounded by the rate limit times the ttl.
    pub fn consume_locally(&self, v: Verified, now: Timestamp) -> Result<(), ChallengeError> {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        used.retain(|_, expires| *expires >= now);
        if used.insert(v.nonce, v.expires_at).is_some() {
            return Err(ChallengeError::Replayed(v.nonce.short()));
        }
        Ok(())
    }

    /// Nonces remembered as used in this process (for tests).
    pub fn used_locally(&self) -> usize {
        self.used.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn mac(&self, node: &str, signed: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(self.key.hmac());
        ctx.update(CONTEXT);
        // Node names are at most 253 bytes; the length keeps node and expiry apart.
        ctx.update(&u16::try_from(node.len()).unwrap_or(u16::MAX).to_be_bytes());
        ctx.update(node.as_bytes());
        ctx.update(signed);
        ctx.sign()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    fn challenges() -> Challenges {
        Challenges::new(ChallengeKey::from_bytes(&[7; 32]).unwrap(), TTL)
    }

    fn now() -> Timestamp {
        "2026-11-29T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn a_nonce_verifies_for_its_node_until_it_expires() {
        let c = challenges();
        let (n, expires) = c.issue("gpu-1", now());
        assert_eq!(expires, now() + jiff::SignedDuration::from_secs(60));
        let v = c.verify(n, "gpu-1", now()).unwrap();
        assert_eq!(v.expires_at, expires);
        assert!(
            c.verify(n, "gpu-1", expires).is_ok(),
            "valid up to its expiry"
        );
        let err = c
            .verify(n, "gpu-1", expires + jiff::SignedDuration::from_millis(5))
            .unwrap_err();
        assert_eq!(
            err,
            ChallengeError::Expired {
                nonce: n.short(),
                ago_ms: 5
            }
        );
        assert_eq!(err.label(), "expired_nonce");
    }

    #[test]
    fn another_replica_with_the_same_key_accepts_it_and_one_with_another_key_does_not() {
        let (n, _) = challenges().issue("gpu-1", now());
        assert!(challenges().verify(n, "gpu-1", now()).is_ok());
        let other = Challenges::new(ChallengeKey::from_bytes(&[8; 32]).unwrap(), TTL);
        assert_eq!(
            other.verify(n, "gpu-1", now()).unwrap_err().label(),
            "unknown_nonce"
        );
    }

    #[test]
    fn another_nodes_nonce_is_refused() {
        let c = challenges();
        let (n, _) = c.issue("gpu-1", now());
        let err = c.verify(n, "gpu-2", now()).unwrap_err();
        assert_eq!(err.label(), "unknown_nonce");
        assert!(err.to_string().contains("to node \"gpu-2\""), "{err}");
        // A node name that only differs by where the bytes split is another node.
        let (n, _) = c.issue("gpu-1", now());
        assert!(c.verify(n, "gpu-", now()).is_err());
    }

    #[test]
    fn tampering_with_any_byte_is_detected() {
        let c = challenges();
        let (n, _) = c.issue("gpu-1", now());
        for i in 0..NONCE_LEN {
            let mut bad = n;
            bad.0[i] ^= 0x01;
            assert_eq!(
                c.verify(bad, "gpu-1", now()).unwrap_err().label(),
                "unknown_nonce",
                "byte {i} (expiry 0..8, random 8..16, MAC 16..32)"
            );
        }
    }

    #[test]
    fn a_later_expiry_cannot_be_forged() {
        let c = challenges();
        let (n, expires) = c.issue("gpu-1", now());
        let mut extended = n;
        let later = u64::try_from((expires + jiff::SignedDuration::from_hours(1)).as_millisecond())
            .unwrap();
        extended.0[..8].copy_from_slice(&later.to_be_bytes());
        let at = expires + jiff::SignedDuration::from_secs(1);
        assert_eq!(
            c.verify(extended, "gpu-1", at).unwrap_err().label(),
            "unknown_nonce"
        );
    }

    #[test]
    fn a_nonce_never_issued_is_unknown() {
        let err = challenges()
            .verify(Nonce([7; NONCE_LEN]), "gpu-1", now())
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("nonce 070707070707… was not issued"),
            "{err}"
        );
    }

    #[test]
    fn local_single_use_refuses_a_replay_and_forgets_expired_nonces() {
        let c = challenges();
        let (n, _) = c.issue("gpu-1", now());
        let v = c.verify(n, "gpu-1", now()).unwrap();
        assert_eq!(c.consume_locally(v, now()), Ok(()));
        let err = c.consume_locally(v, now()).unwrap_err();
        assert_eq!(err.label(), "replayed_nonce");
        assert_eq!(c.used_locally(), 1);
        let (m, _) = c.issue("gpu-1", now());
        let later = now() + jiff::SignedDuration::from_secs(120);
        let w = Verified {
            nonce: m,
            expires_at: later,
        };
        c.consume_locally(w, later).unwrap();
        assert_eq!(c.used_locally(), 1, "the expired entry is swept");
    }

    #[test]
    fn nonces_are_distinct_and_debug_shows_a_prefix_only() {
        let c = challenges();
        let (a, _) = c.issue("n", now());
        let (b, _) = c.issue("n", now());
        assert_ne!(a, b);
        assert_eq!(format!("{a:?}").len(), "Nonce(".len() + 12 + "…)".len());
    }
}
