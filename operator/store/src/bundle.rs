//! Evidence bundles: canonical JSON, envelope-encrypted with AES-256-GCM.
//!
//! # Plaintext
//!
//! The evidence document is serialised as RFC 8785 (JCS) canonical JSON: object members
//! sorted by their UTF-16 code units, no insignificant whitespace, numbers in their
//! shortest ECMAScript form, strings with the minimal escapes. The same document always
//! gives the same bytes, in the operator, the agent and the offline commands, so its
//! SHA-256 ([`SealedBundle::plaintext_sha256`]) identifies it wherever it was produced.
//!
//! # Envelope
//!
//! Every bundle gets a fresh random 256-bit data key. The canonical plaintext is
//! encrypted with AES-256-GCM under that data key; the data key itself is encrypted
//! ("wrapped") with AES-256-GCM under a key-encryption key (KEK) from the [`KeyRing`].
//! A bundle is one byte string, big-endian integers:
//!
//! | bytes | field |
//! | --- | --- |
//! | 4 | magic `LBEB` (lotabots encrypted bundle) |
//! | 1 | format version, `1` |
//! | 1 | length `k` of the KEK id (1–253) |
//! | k | KEK id, ASCII `[A-Za-z0-9._-]` (a Kubernetes Secret key) |
//! | 12 | nonce of the key wrap |
//! | 48 | wrapped data key: the 32-byte key and its 16-byte GCM tag |
//! | 12 | nonce of the payload |
//! | 8 | payload length in bytes (ciphertext with its tag) |
//! | … | payload: the AES-256-GCM ciphertext of the plaintext, then its 16-byte tag |
//!
//! The key wrap authenticates magic, version and KEK id (the wrapped key is bound to the
//! key that wrapped it); the payload authenticates the whole header as associated data,
//! so any changed header byte makes the bundle fail to open. The payload length in the
//! header tells a truncated bundle apart from a corrupted one. Nonces are random: a KEK
//! wraps at most a few million keys before it is rotated, far below GCM's 2^32 bound.

use std::{collections::BTreeMap, fmt};

use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    digest::{SHA256, digest},
    rand::{SecureRandom, SystemRandom},
};
use serde_json::Value;

use crate::SealedBundle;

/// The first bytes of every bundle.
pub const MAGIC: &[u8; 4] = b"LBEB";
/// The format version this module writes and reads.
pub const VERSION: u8 = 1;
/// The Secret entry that names the active key.
pub const ACTIVE_ENTRY: &str = "active";

const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;
const WRAPPED_LEN: usize = KEY_LEN + TAG_LEN;
const MAX_KEY_ID_LEN: usize = 253;

/// Why a bundle could not be sealed or opened. Each failure names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The bytes do not start with [`MAGIC`].
    #[error("not a lotabots evidence bundle: it does not start with the magic bytes \"LBEB\"")]
    NotABundle,
    /// A format version this build does not read.
    #[error("unsupported evidence bundle format version {0} (this build reads version {VERSION})")]
    UnsupportedVersion(u8),
    /// The header is malformed (beyond a wrong magic or version).
    #[error("corrupt evidence bundle header: {0}")]
    CorruptHeader(String),
    /// Fewer bytes than the header announces.
    #[error("truncated evidence bundle: {expected} bytes expected, {actual} present")]
    Truncated {
        /// The length the header announces.
        expected: usize,
        /// The length present.
        actual: usize,
    },
    /// More bytes than the header announces.
    #[error("evidence bundle has {extra} bytes after its payload")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// The header names a key the key ring does not have.
    #[error(
        "evidence bundle was sealed with key {key_id:?}, which the key ring does not hold (it has {known:?})"
    )]
    UnknownKey {
        /// The key id in the header.
        key_id: String,
        /// The ids the ring holds.
        known: Vec<String>,
    },
    /// The data key does not unwrap under the named key.
    #[error(
        "the data key of the evidence bundle does not unwrap with key {key_id:?}: the key ring holds other key material under that id, or the header is corrupt"
    )]
    WrongKey {
        /// The key id in the header.
        key_id: String,
    },
    /// The payload failed authentication.
    #[error("evidence bundle payload failed authentication: the ciphertext or header was modified")]
    Tampered,
    /// The decrypted plaintext is not the one recorded.
    #[error("decrypted evidence has SHA-256 {actual}, the record says {expected}")]
    PlaintextDigest {
        /// The recorded digest.
        expected: String,
        /// The digest of what was decrypted.
        actual: String,
    },
    /// The ciphertext is not the one recorded.
    #[error("evidence bundle has SHA-256 {actual}, the record says {expected}")]
    CiphertextDigest {
        /// The recorded digest.
        expected: String,
        /// The digest of the bytes present.
        actual: String,
    },
    /// The decrypted plaintext is not JSON.
    #[error("decrypted evidence is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The document could not be made canonical (e.g. a number JCS cannot express).
    #[error("evidence cannot be serialised as canonical JSON: {0}")]
    Canonical(String),
    /// The system random number generator failed.
    #[error("no randomness for the data key or nonce")]
    Random,
    /// The plaintext exceeds what one AES-GCM message may hold (about 64 GiB).
    #[error("evidence of {0} bytes is too large to encrypt as one bundle")]
    TooLarge(usize),
}

/// Why a key ring could not be built.
#[derive(Debug, thiserror::Error)]
pub enum KeyRingError {
    /// No entry names the active key.
    #[error("the key Secret has no {ACTIVE_ENTRY:?} entry naming the active key")]
    NoActive,
    /// The active entry names a key the Secret does not hold.
    #[error(
        "the key Secret's {ACTIVE_ENTRY:?} entry names key {0:?}, which the Secret does not hold"
    )]
    ActiveMissing(String),
    /// A key is not 32 bytes.
    #[error("key {key_id:?} is {len} bytes long; an AES-256 key-encryption key is 32 raw bytes")]
    KeyLength {
        /// The id.
        key_id: String,
        /// Its length.
        len: usize,
    },
    /// A key id is not usable in a bundle header (or as a Secret key).
    #[error(
        "key id {0:?} is not 1–253 characters of [A-Za-z0-9._-] (or is the reserved name {ACTIVE_ENTRY:?})"
    )]
    BadKeyId(String),
}

/// The key-encryption keys, by id, and which one seals new bundles.
///
/// Built from a Kubernetes Secret's `data` ([`KeyRing::from_secret_data`]):
///
/// ```yaml
/// apiVersion: v1
/// kind: Secret
/// metadata: {name: lotabots-evidence-keys}
/// data:
///   active: MjAyNi0xMQ==          # "2026-11": the id of the key that seals new bundles
///   "2026-11": <32 random bytes, base64>
///   "2026-05": <32 random bytes, base64>   # an older key, kept to open old bundles
/// ```
///
/// To rotate: add a new key, point `active` at it; keep the old keys as long as bundles
/// sealed under them must open. `Debug` shows the ids, never key material.
pub struct KeyRing {
    active: String,
    keys: BTreeMap<String, LessSafeKey>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("active", &self.active)
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeyRing {
    /// A ring of `keys` (id → 32 raw bytes) sealing with `active`.
    pub fn new<'a>(
        active: &str,
        keys: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Self, KeyRingError> {
        let mut ring = BTreeMap::new();
        for (id, bytes) in keys {
            if !valid_key_id(id) {
                return Err(KeyRingError::BadKeyId(id.to_string()));
            }
            if bytes.len() != KEY_LEN {
                return Err(KeyRingError::KeyLength {
                    key_id: id.to_string(),
                    len: bytes.len(),
                });
            }
            ring.insert(id.to_string(), data_key_of(bytes));
        }
        if !ring.contains_key(active) {
            return Err(KeyRingError::ActiveMissing(active.to_string()));
        }
        Ok(Self {
            active: active.to_string(),
            keys: ring,
        })
    }

    /// The ring described by a Secret's `data` (see the type's documentation): the
    /// [`ACTIVE_ENTRY`] entry names the active key (surrounding whitespace ignored, so a
    /// trailing newline from `kubectl create secret --from-file` does no harm); every
    /// other entry is a key.
    pub fn from_secret_data(data: &BTreeMap<String, Vec<u8>>) -> Result<Self, KeyRingError> {
        let active = data.get(ACTIVE_ENTRY).ok_or(KeyRingError::NoActive)?;
        let active = std::str::from_utf8(active)
            .map_err(|_| KeyRingError::BadKeyId(String::from_utf8_lossy(active).into_owned()))?
            .trim();
        Self::new(
            active,
            data.iter()
                .filter(|(k, _)| k.as_str() != ACTIVE_ENTRY)
                .map(|(k, v)| (k.as_str(), v.as_slice())),
        )
    }

    /// The id of the key that seals new bundles.
    pub fn active_id(&self) -> &str {
        &self.active
    }

    /// The ids the ring holds.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.keys().cloned().collect()
    }

    fn get(&self, id: &str) -> Result<&LessSafeKey, BundleError> {
        self.keys.get(id).ok_or_else(|| BundleError::UnknownKey {
            key_id: id.to_string(),
            known: self.key_ids(),
        })
    }
}

fn valid_key_id(id: &str) -> bool {
    (1..=MAX_KEY_ID_LEN).contains(&id.len())
        && id != ACTIVE_ENTRY
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(digest(&SHA256, bytes))
}

/// The RFC 8785 canonical JSON bytes of `doc`.
pub fn canonical_json(doc: &Value) -> Result<Vec<u8>, BundleError> {
    serde_json_canonicalizer::to_vec(doc).map_err(|e| BundleError::Canonical(e.to_string()))
}

/// Seals `doc` under the ring's active key: canonical JSON, a fresh data key, the
/// envelope described in the module documentation.
pub fn seal(doc: &Value, keys: &KeyRing) -> Result<SealedBundle, BundleError> {
    let plaintext = canonical_json(doc)?;
    let rng = SystemRandom::new();
    let mut data_key = [0u8; KEY_LEN];
    rng.fill(&mut data_key).map_err(|_| BundleError::Random)?;
    let kek = keys.get(&keys.active)?;

    let mut header = Vec::with_capacity(6 + keys.active.len() + NONCE_LEN * 2 + WRAPPED_LEN + 8);
    header.extend_from_slice(MAGIC);
    header.push(VERSION);
    // valid_key_id bounds the length to 253.
    header.push(keys.active.len() as u8);
    header.extend_from_slice(keys.active.as_bytes());
    let wrap_aad = header.clone();

    let wrap_nonce = random_nonce(&rng)?;
    let mut wrapped = data_key.to_vec();
    kek.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(wrap_nonce),
        Aad::from(&wrap_aad),
        &mut wrapped,
    )
    .map_err(|_| BundleError::TooLarge(KEY_LEN))?;
    header.extend_from_slice(&wrap_nonce);
    header.extend_from_slice(&wrapped);

    let payload_nonce = random_nonce(&rng)?;
    header.extend_from_slice(&payload_nonce);
    let payload_len = (plaintext.len() + TAG_LEN) as u64;
    header.extend_from_slice(&payload_len.to_be_bytes());

    let dek = data_key_of(&data_key);
    let mut out = header.clone();
    out.reserve(plaintext.len() + TAG_LEN);
    let header_len = out.len();
    out.extend_from_slice(&plaintext);
    let tag = dek
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(payload_nonce),
            Aad::from(&header),
            &mut out[header_len..],
        )
        .map_err(|_| BundleError::TooLarge(plaintext.len()))?;
    out.extend_from_slice(tag.as_ref());

    Ok(SealedBundle {
        digest: sha256_hex(&out),
        plaintext_sha256: sha256_hex(&plaintext),
        key_id: keys.active.clone(),
        ciphertext: out,
    })
}

/// Opens a bundle read from a store and checks its plaintext against the recorded
/// `expected_plaintext_sha256` (hex).
pub fn open(
    bundle: &[u8],
    keys: &KeyRing,
    expected_plaintext_sha256: &str,
) -> Result<Value, BundleError> {
    let plaintext = decrypt(bundle, keys)?;
    let actual = sha256_hex(&plaintext);
    if !actual.eq_ignore_ascii_case(expected_plaintext_sha256) {
        return Err(BundleError::PlaintextDigest {
            expected: expected_plaintext_sha256.to_string(),
            actual,
        });
    }
    serde_json::from_slice(&plaintext).map_err(BundleError::NotJson)
}

/// Opens a [`SealedBundle`], checking both the ciphertext and the plaintext digest.
pub fn open_sealed(bundle: &SealedBundle, keys: &KeyRing) -> Result<Value, BundleError> {
    check_digest(&bundle.ciphertext, &bundle.digest)?;
    open(&bundle.ciphertext, keys, &bundle.plaintext_sha256)
}

/// Fails with [`BundleError::CiphertextDigest`] unless `bytes` hash to `expected` (hex).
pub fn check_digest(bytes: &[u8], expected: &str) -> Result<(), BundleError> {
    let actual = sha256_hex(bytes);
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(BundleError::CiphertextDigest {
            expected: expected.to_string(),
            actual,
        })
    }
}

/// The parsed header of a bundle.
#[derive(Debug)]
pub struct Header<'a> {
    /// The KEK id.
    pub key_id: &'a str,
    wrap_aad: &'a [u8],
    wrap_nonce: [u8; NONCE_LEN],
    wrapped: &'a [u8],
    payload_nonce: [u8; NONCE_LEN],
    /// The header bytes (the payload's associated data).
    bytes: &'a [u8],
    payload: &'a [u8],
}

/// Parses a bundle's header and checks its length, without any key.
pub fn parse(bundle: &[u8]) -> Result<Header<'_>, BundleError> {
    let mut r = Reader {
        buf: bundle,
        pos: 0,
    };
    if r.take(MAGIC.len())? != MAGIC {
        return Err(BundleError::NotABundle);
    }
    let version = r.take(1)?[0];
    if version != VERSION {
        return Err(BundleError::UnsupportedVersion(version));
    }
    let id_len = usize::from(r.take(1)?[0]);
    let key_id = std::str::from_utf8(r.take(id_len)?)
        .ok()
        .filter(|id| valid_key_id(id))
        .ok_or_else(|| BundleError::CorruptHeader("the key id is not a valid key id".into()))?;
    let wrap_aad = &bundle[..r.pos];
    let wrap_nonce = r.take(NONCE_LEN)?.try_into().expect("NONCE_LEN bytes");
    let wrapped = r.take(WRAPPED_LEN)?;
    let payload_nonce = r.take(NONCE_LEN)?.try_into().expect("NONCE_LEN bytes");
    let len = u64::from_be_bytes(r.take(8)?.try_into().expect("8 bytes"));
    let header_len = r.pos;
    let payload_len = usize::try_from(len)
        .ok()
        .filter(|l| *l >= TAG_LEN)
        .ok_or_else(|| BundleError::CorruptHeader(format!("impossible payload length {len}")))?;
    let expected = header_len.saturating_add(payload_len);
    if bundle.len() < expected {
        return Err(BundleError::Truncated {
            expected,
            actual: bundle.len(),
        });
    }
    if bundle.len() > expected {
        return Err(BundleError::TrailingBytes {
            extra: bundle.len() - expected,
        });
    }
    Ok(Header {
        key_id,
        wrap_aad,
        wrap_nonce,
        wrapped,
        payload_nonce,
        bytes: &bundle[..header_len],
        payload: &bundle[header_len..],
    })
}

/// The canonical plaintext of a bundle.
fn decrypt(bundle: &[u8], keys: &KeyRing) -> Result<Vec<u8>, BundleError> {
    let h = parse(bundle)?;
    let kek = keys.get(h.key_id)?;
    let mut data_key = h.wrapped.to_vec();
    let data_key = kek
        .open_in_place(
            Nonce::assume_unique_for_key(h.wrap_nonce),
            Aad::from(h.wrap_aad),
            &mut data_key,
        )
        .map_err(|_| BundleError::WrongKey {
            key_id: h.key_id.to_string(),
        })?;
    let dek = data_key_of(data_key);
    let mut payload = h.payload.to_vec();
    let plaintext_len = dek
        .open_in_place(
            Nonce::assume_unique_for_key(h.payload_nonce),
            Aad::from(h.bytes),
            &mut payload,
        )
        .map_err(|_| BundleError::Tampered)?
        .len();
    payload.truncate(plaintext_len);
    Ok(payload)
}

/// An AES-256-GCM key from 32 bytes (callers check the length).
fn data_key_of(bytes: &[u8]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte AES-256 key"))
}

fn random_nonce(rng: &SystemRandom) -> Result<[u8; NONCE_LEN], BundleError> {
    let mut n = [0u8; NONCE_LEN];
    rng.fill(&mut n).map_err(|_| BundleError::Random)?;
    Ok(n)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BundleError> {
        let end = self.pos + n;
        let s = self.buf.get(self.pos..end).ok_or(BundleError::Truncated {
            expected: end,
            actual: self.buf.len(),
        })?;
        self.pos = end;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ring(active: &str, ids: &[(&str, u8)]) -> KeyRing {
        let keys: Vec<(String, Vec<u8>)> = ids
            .iter()
            .map(|(id, b)| (id.to_string(), vec![*b; 32]))
            .collect();
        KeyRing::new(active, keys.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).unwrap()
    }

    fn doc() -> Value {
        json!({"subject": "node-a", "verdict": "Attested", "gpus": [{"uuid": "GPU-1", "vbios": "96.00.5E.00.01"}], "a": 1})
    }

    #[test]
    fn round_trip_is_canonical_and_checks_digests() {
        let keys = ring("k1", &[("k1", 1)]);
        let sealed = seal(&doc(), &keys).unwrap();
        assert_eq!(sealed.key_id, "k1");
        assert_eq!(sealed.digest, sha256_hex(&sealed.ciphertext));
        let canonical = br#"{"a":1,"gpus":[{"uuid":"GPU-1","vbios":"96.00.5E.00.01"}],"subject":"node-a","verdict":"Attested"}"#;
        assert_eq!(sealed.plaintext_sha256, sha256_hex(canonical));
        assert_eq!(open_sealed(&sealed, &keys).unwrap(), doc());
        // Numbers take their shortest form: what opens is the canonical document.
        assert_eq!(
            canonical_json(&json!({"x": 1.0, "y": 1e21})).unwrap(),
            br#"{"x":1,"y":1e+21}"#
        );
        // The plaintext is not in the ciphertext, and two seals differ (fresh key, nonces).
        assert!(!sealed.ciphertext.windows(6).any(|w| w == b"node-a"));
        assert_ne!(seal(&doc(), &keys).unwrap().ciphertext, sealed.ciphertext);
        let err = open(&sealed.ciphertext, &keys, &sha256_hex(b"other")).unwrap_err();
        assert!(matches!(err, BundleError::PlaintextDigest { .. }), "{err}");
        let mut wrong = sealed.clone();
        wrong.digest = sha256_hex(b"x");
        let err = open_sealed(&wrong, &keys).unwrap_err();
        assert!(matches!(err, BundleError::CiphertextDigest { .. }), "{err}");
    }

    #[test]
    fn old_keys_open_after_rotation_and_unknown_or_wrong_keys_fail_clearly() {
        let old = ring("k1", &[("k1", 1)]);
        let sealed = seal(&doc(), &old).unwrap();
        let rotated = ring("k2", &[("k1", 1), ("k2", 2)]);
        assert_eq!(open_sealed(&sealed, &rotated).unwrap(), doc());
        assert_eq!(seal(&doc(), &rotated).unwrap().key_id, "k2");

        let without_k1 = ring("k2", &[("k2", 2)]);
        let err = open_sealed(&sealed, &without_k1).unwrap_err();
        assert!(
            matches!(&err, BundleError::UnknownKey { key_id, known } if key_id == "k1" && known == &["k2"]),
            "{err}"
        );
        assert!(err.to_string().contains("\"k1\""), "{err}");
        let other_bytes = ring("k1", &[("k1", 9)]);
        let err = open_sealed(&sealed, &other_bytes).unwrap_err();
        assert!(matches!(err, BundleError::WrongKey { .. }), "{err}");
    }

    #[test]
    fn corruption_truncation_and_flipped_bits_are_told_apart() {
        let keys = ring("k1", &[("k1", 1)]);
        let c = seal(&doc(), &keys).unwrap().ciphertext;
        let open = |b: &[u8]| decrypt(b, &keys).unwrap_err();

        assert!(matches!(open(b"{\"json\":1}"), BundleError::NotABundle));
        let mut v = c.clone();
        v[4] = 7;
        assert!(matches!(open(&v), BundleError::UnsupportedVersion(7)));
        let mut v = c.clone();
        v[6] = b'/';
        assert!(matches!(open(&v), BundleError::CorruptHeader(_)));
        assert!(matches!(
            open(&c[..c.len() - 1]),
            BundleError::Truncated { .. }
        ));
        assert!(matches!(open(&c[..10]), BundleError::Truncated { .. }));
        let mut v = c.clone();
        v.push(0);
        assert!(matches!(open(&v), BundleError::TrailingBytes { extra: 1 }));
        // A flipped bit in the payload, in the payload nonce (header, authenticated as
        // associated data) and in the wrapped key.
        let header_len = c.len() - (canonical_json(&doc()).unwrap().len() + TAG_LEN);
        for (at, what) in [(c.len() - 20, "payload"), (header_len - 9, "payload nonce")] {
            let mut v = c.clone();
            v[at] ^= 1;
            assert!(matches!(open(&v), BundleError::Tampered), "{what}");
        }
        let mut v = c.clone();
        v[6 + 2 + 12 + 3] ^= 0x80;
        assert!(matches!(open(&v), BundleError::WrongKey { .. }));
        let mut v = c.clone();
        v[7] = b'x'; // the key id changes to "kx"
        assert!(matches!(open(&v), BundleError::UnknownKey { .. }));
    }

    #[test]
    fn key_ring_from_a_secret_validates_and_hides_key_bytes() {
        let mut data = BTreeMap::new();
        data.insert("2026-11".to_string(), vec![0xAB; 32]);
        data.insert("2026-05".to_string(), vec![0xCD; 32]);
        data.insert(ACTIVE_ENTRY.to_string(), b"2026-11\n".to_vec());
        let ring = KeyRing::from_secret_data(&data).unwrap();
        assert_eq!(ring.active_id(), "2026-11");
        assert_eq!(ring.key_ids(), ["2026-05", "2026-11"]);
        let dbg = format!("{ring:?}");
        assert!(
            dbg.contains("2026-11")
                && !dbg.to_lowercase().contains("ab, ab")
                && !dbg.contains("171"),
            "{dbg}"
        );

        let mut bad = data.clone();
        bad.insert(ACTIVE_ENTRY.into(), b"nope".to_vec());
        assert!(
            matches!(KeyRing::from_secret_data(&bad), Err(KeyRingError::ActiveMissing(id)) if id == "nope")
        );
        let mut bad = data.clone();
        bad.remove(ACTIVE_ENTRY);
        assert!(matches!(
            KeyRing::from_secret_data(&bad),
            Err(KeyRingError::NoActive)
        ));
        let mut bad = data.clone();
        bad.insert("short".into(), vec![1; 16]);
        assert!(matches!(
            KeyRing::from_secret_data(&bad),
            Err(KeyRingError::KeyLength { len: 16, .. })
        ));
        let mut bad = data;
        bad.insert("has space".into(), vec![1; 32]);
        assert!(matches!(
            KeyRing::from_secret_data(&bad),
            Err(KeyRingError::BadKeyId(_))
        ));
    }

    #[test]
    fn the_largest_exact_integer_survives_the_round_trip() {
        let keys = ring("k1", &[("k1", 1)]);
        let d = json!({"n": 9007199254740991u64});
        let s = seal(&d, &keys).unwrap();
        assert_eq!(open_sealed(&s, &keys).unwrap(), d);
    }
}
