//! The keys attestation tokens are signed with: ES256 (ECDSA P-256), kept in a Secret the
//! operator creates and rotates itself, swapped in memory without a restart.
//!
//! The Secret holds the current key and, for an overlap after a rotation, the previous
//! one: tokens signed just before the rotation stay verifiable against the published
//! JWKS until they have expired. What to do with the stored keys is a pure function of
//! them and the time ([`next_keys`]), so every rotation rule is tested without a cluster.
//! Key ids are RFC 7638 thumbprints, so a key's id follows from the key itself.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jiff::Timestamp;
use jsonwebtoken::jwk::{
    CommonParameters, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse, ThumbprintHash,
};
use jsonwebtoken::{Algorithm, EncodingKey};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};

/// The signing algorithm, pinned.
pub const ALGORITHM: Algorithm = Algorithm::ES256;

/// Secret data keys.
const CURRENT_KEY: &str = "current.pem";
const CURRENT_CREATED: &str = "current.created";
const PREVIOUS_KEY: &str = "previous.pem";
const PREVIOUS_RETIRED: &str = "previous.retired";

/// Why a key could not be made, read or stored.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Generating a key failed.
    #[error("generating a signing key: {0}")]
    Generate(String),
    /// A stored key does not parse.
    #[error("signing key: {0}")]
    Parse(String),
    /// The Secret could not be read or written.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// One ES256 signing key. Its private half never appears in `Debug` output or logs.
pub struct SigningKey {
    kid: String,
    created: Timestamp,
    pem: String,
    encoding: EncodingKey,
    jwk: Jwk,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("created", &self.created)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

impl SigningKey {
    /// A new random key, created at `now`.
    pub fn generate(now: Timestamp) -> Result<Self, KeyError> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        Self::from_pem(&pair.serialize_pem(), now)
    }

    /// The key in `pem` (PKCS#8), created at `created`.
    pub fn from_pem(pem: &str, created: Timestamp) -> Result<Self, KeyError> {
        let encoding = EncodingKey::from_ec_pem(pem.as_bytes())
            .map_err(|e| KeyError::Parse(format!("not a P-256 PKCS#8 key: {e}")))?;
        let mut jwk = Jwk::from_encoding_key(&encoding, ALGORITHM)
            .map_err(|e| KeyError::Parse(format!("no public key: {e}")))?;
        let kid = jwk.thumbprint(ThumbprintHash::SHA256);
        jwk.common = CommonParameters {
            public_key_use: Some(PublicKeyUse::Signature),
            key_algorithm: Some(KeyAlgorithm::ES256),
            key_id: Some(kid.clone()),
            ..Default::default()
        };
        Ok(Self {
            kid,
            created,
            pem: pem.to_owned(),
            encoding,
            jwk,
        })
    }

    /// The key id (RFC 7638 SHA-256 thumbprint).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// When the key was created.
    pub fn created(&self) -> Timestamp {
        self.created
    }

    /// The public key as a JWK (`use: sig`, `alg: ES256`, `kid`).
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    pub(crate) fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }
}

/// The keys in use: the current one signs; the previous one, retired at the given time,
/// is still published until the overlap has passed.
#[derive(Debug, Clone)]
pub struct KeySet {
    /// Signs every new token.
    pub current: Arc<SigningKey>,
    /// The key before, and when it was retired.
    pub previous: Option<(Arc<SigningKey>, Timestamp)>,
}

impl KeySet {
    /// The public keys to publish (current first).
    pub fn jwks(&self) -> JwkSet {
        let mut keys = vec![self.current.jwk().clone()];
        if let Some((prev, _)) = &self.previous {
            keys.push(prev.jwk().clone());
        }
        JwkSet { keys }
    }
}

/// When keys rotate.
#[derive(Clone, Copy, Debug)]
pub struct Rotation {
    /// A key signs for this long, then a new one takes over.
    pub every: Duration,
    /// A retired key stays published this long: at least the tokens' lifetime plus the
    /// relying parties' JWKS cache time.
    pub overlap: Duration,
}

impl Default for Rotation {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(30 * 24 * 3600),
            overlap: Duration::from_secs(24 * 3600),
        }
    }
}

/// The keys as stored: PEM and times, either possibly missing or corrupt.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StoredKeys {
    /// Data of the Secret, by key.
    pub data: BTreeMap<String, String>,
}

impl StoredKeys {
    fn key(&self, pem: &str, at: &str) -> Option<(Arc<SigningKey>, Timestamp)> {
        let when: Timestamp = self.data.get(at)?.parse().ok()?;
        let key = SigningKey::from_pem(self.data.get(pem)?, when).ok()?;
        Some((Arc::new(key), when))
    }

    fn from_set(set: &KeySet) -> Self {
        let mut data = BTreeMap::from([
            (CURRENT_KEY.to_owned(), set.current.pem.clone()),
            (CURRENT_CREATED.to_owned(), set.current.created.to_string()),
        ]);
        if let Some((prev, retired)) = &set.previous {
            data.insert(PREVIOUS_KEY.into(), prev.pem.clone());
            data.insert(PREVIOUS_RETIRED.into(), retired.to_string());
        }
        Self { data }
    }
}

/// The keys to use at `now`, from what is stored, and what changed (empty: store
/// nothing). A missing or unreadable current key is replaced; a current key older than
/// `rotation.every` is retired into `previous`; a previous key retired longer than
/// `rotation.overlap` ago is dropped.
pub fn next_keys(
    stored: &StoredKeys,
    rotation: &Rotation,
    now: Timestamp,
) -> Result<(KeySet, Vec<String>), KeyError> {
    let mut changes = Vec::new();
    let mut previous = stored.key(PREVIOUS_KEY, PREVIOUS_RETIRED);
    let current = match stored.key(CURRENT_KEY, CURRENT_CREATED) {
        Some((key, created)) if now.duration_since(created).unsigned_abs() < rotation.every => key,
        Some((old, _)) => {
            let new = Arc::new(SigningKey::generate(now)?);
            changes.push(format!(
                "rotated the signing key {} to {} (older than {}s)",
                old.kid,
                new.kid,
                rotation.every.as_secs()
            ));
            previous = Some((old, now));
            new
        }
        None => {
            let new = Arc::new(SigningKey::generate(now)?);
            let why = if stored.data.contains_key(CURRENT_KEY) {
                "the stored one does not load"
            } else {
                "none yet"
            };
            changes.push(format!("new signing key {} ({why})", new.kid));
            new
        }
    };
    if let Some((prev, retired)) = &previous
        && now.duration_since(*retired).unsigned_abs() >= rotation.overlap
    {
        changes.push(format!(
            "dropped the previous signing key {} (retired {retired}, overlap {}s over)",
            prev.kid,
            rotation.overlap.as_secs()
        ));
        previous = None;
    }
    let set = KeySet { current, previous };
    // A stored previous key that no longer loads is dropped silently by the above; make
    // sure the Secret is rewritten then too.
    if changes.is_empty() && StoredKeys::from_set(&set) != *stored {
        changes.push("rewrote the signing keys".into());
    }
    Ok((set, changes))
}

/// The keys the API signs with, swapped as a whole when they rotate.
#[derive(Debug)]
pub struct KeyRing {
    keys: RwLock<Arc<KeySet>>,
}

impl KeyRing {
    /// A ring holding `keys`.
    pub fn new(keys: KeySet) -> Self {
        Self {
            keys: RwLock::new(Arc::new(keys)),
        }
    }

    /// The keys now.
    pub fn get(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the keys; tokens issued from now on use the new current key.
    pub fn set(&self, keys: KeySet) {
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
    }
}

/// Where the keys are kept.
#[derive(Clone, Debug)]
pub struct KeyStore {
    /// The operator's namespace.
    pub namespace: String,
    /// The Secret's name.
    pub secret: String,
    /// When to rotate.
    pub rotation: Rotation,
}

impl KeyStore {
    /// Reads the Secret, rotates as due at `now`, writes it back when something changed,
    /// and returns the keys with the changes.
    pub async fn reconcile(
        &self,
        client: &Client,
        now: Timestamp,
    ) -> Result<(KeySet, Vec<String>), KeyError> {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &self.namespace);
        let stored = StoredKeys {
            data: secrets
                .get_opt(&self.secret)
                .await?
                .and_then(|s| s.data)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(k, v)| Some((k, String::from_utf8(v.0).ok()?)))
                .collect(),
        };
        let (set, changes) = next_keys(&stored, &self.rotation, now)?;
        if !changes.is_empty() {
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(self.secret.clone()),
                    namespace: Some(self.namespace.clone()),
                    labels: Some(crate::certs::managed_by()),
                    ..Default::default()
                },
                type_: Some("Opaque".into()),
                data: Some(
                    StoredKeys::from_set(&set)
                        .data
                        .into_iter()
                        .map(|(k, v)| (k, ByteString(v.into_bytes())))
                        .collect(),
                ),
                ..Default::default()
            };
            let mut body = serde_json::to_value(&secret).unwrap_or_default();
            body["apiVersion"] = "v1".into();
            body["kind"] = "Secret".into();
            // Server-side apply under one field manager: keys left out (a dropped previous
            // key) are removed from the Secret.
            secrets
                .patch(
                    &self.secret,
                    &PatchParams::apply("lotabots-operator").force(),
                    &Patch::Apply(&body),
                )
                .await?;
        }
        Ok((set, changes))
    }

    /// Keeps `ring` current: reconciles every `check` (a failed round is retried in a
    /// minute) and swaps the ring's keys when they change. Runs until dropped.
    pub async fn keep_current(self, client: Client, ring: Arc<KeyRing>, check: Duration) {
        loop {
            let wait = match self.reconcile(&client, Timestamp::now()).await {
                Ok((set, changes)) => {
                    for change in &changes {
                        tracing::info!(%change, secret = %self.secret, "token signing keys");
                    }
                    if !changes.is_empty() {
                        ring.set(set);
                    }
                    check
                }
                Err(e) => {
                    tracing::warn!(error = %e, "token signing key round failed; retrying in a minute");
                    Duration::from_secs(60)
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn at(days: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + days * 86_400).unwrap()
    }

    fn rotation() -> Rotation {
        Rotation {
            every: 30 * DAY,
            overlap: DAY,
        }
    }

    #[test]
    fn a_first_key_is_made_then_kept() {
        let (set, changes) = next_keys(&StoredKeys::default(), &rotation(), at(0)).unwrap();
        assert!(changes[0].contains("none yet"), "{changes:?}");
        assert!(set.previous.is_none());
        let stored = StoredKeys::from_set(&set);
        let (again, changes) = next_keys(&stored, &rotation(), at(29)).unwrap();
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(again.current.kid(), set.current.kid());
    }

    #[test]
    fn rotation_keeps_the_previous_key_for_the_overlap_then_drops_it() {
        let (first, _) = next_keys(&StoredKeys::default(), &rotation(), at(0)).unwrap();
        let (rotated, changes) =
            next_keys(&StoredKeys::from_set(&first), &rotation(), at(30)).unwrap();
        assert!(changes[0].starts_with("rotated"), "{changes:?}");
        assert_ne!(rotated.current.kid(), first.current.kid());
        let (prev, retired) = rotated.previous.clone().unwrap();
        assert_eq!((prev.kid(), retired), (first.current.kid(), at(30)));
        let kids: Vec<_> = rotated
            .jwks()
            .keys
            .iter()
            .map(|k| k.common.key_id.clone().unwrap())
            .collect();
        assert_eq!(kids, [rotated.current.kid(), first.current.kid()]);

        let stored = StoredKeys::from_set(&rotated);
        let within = at(30) + jiff::SignedDuration::from_hours(23);
        let (still, changes) = next_keys(&stored, &rotation(), within).unwrap();
        assert!(
            changes.is_empty() && still.previous.is_some(),
            "{changes:?}"
        );
        let (after, changes) = next_keys(&stored, &rotation(), at(31)).unwrap();
        assert!(changes[0].starts_with("dropped"), "{changes:?}");
        assert!(after.previous.is_none());
        assert_eq!(after.current.kid(), rotated.current.kid());
    }

    #[test]
    fn a_corrupt_key_is_replaced_and_the_private_key_is_never_debug_printed() {
        let stored = StoredKeys {
            data: BTreeMap::from([
                (CURRENT_KEY.into(), "garbage".into()),
                (CURRENT_CREATED.into(), at(0).to_string()),
            ]),
        };
        let (set, changes) = next_keys(&stored, &rotation(), at(1)).unwrap();
        assert!(changes[0].contains("does not load"), "{changes:?}");
        let debug = format!("{set:?}");
        assert!(!debug.contains("PRIVATE KEY") && debug.contains("<redacted>"));
        assert!(!set.current.pem.is_empty());
    }

    #[test]
    fn the_kid_is_the_rfc7638_thumbprint_of_the_public_key() {
        let key = SigningKey::generate(at(0)).unwrap();
        let again = SigningKey::from_pem(&key.pem, at(5)).unwrap();
        assert_eq!(key.kid(), again.kid());
        assert_eq!(key.kid().len(), 43, "base64url of 32 bytes");
    }
}
