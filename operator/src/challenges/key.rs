//! The challenge key: 32 random bytes every replica holds, in the Secret
//! [`SECRET_NAME`] of the operator's namespace.
//!
//! Whichever replica finds the Secret missing creates it. Creation is create-only (a
//! POST, not an apply): when two replicas race, the API server accepts one and answers
//! the other 409, and the loser reads back the winner's key — so both end with the same
//! key, which server-side apply (last writer wins) would not guarantee. A Secret that
//! exists but holds no usable key is an error naming it, never overwritten: another
//! replica may be issuing nonces under whatever it holds.
//!
//! The key never appears in `Debug` output or logs.

use anyhow::{Context as _, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use rand::RngCore;
use ring::hmac;

/// The Secret holding the key (RBAC grants `get` on this name only).
pub const SECRET_NAME: &str = "lotabots-challenge-key";
/// Its data key.
pub const DATA_KEY: &str = "key";
/// Key length in bytes (HMAC-SHA256's block-size-independent security level).
pub const KEY_LEN: usize = 32;

/// An HMAC-SHA256 key for challenges.
#[derive(Clone)]
pub struct ChallengeKey(hmac::Key);

impl std::fmt::Debug for ChallengeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChallengeKey(<redacted>)")
    }
}

impl ChallengeKey {
    /// The key of exactly [`KEY_LEN`] bytes.
    pub fn from_bytes(bytes: &[u8]) -> anyhow::Result<Self> {
        if bytes.len() != KEY_LEN {
            bail!(
                "a challenge key must be {KEY_LEN} bytes, not {}",
                bytes.len()
            );
        }
        Ok(Self(hmac::Key::new(hmac::HMAC_SHA256, bytes)))
    }

    /// A fresh random key, known to this process only: enough for one replica without
    /// a cluster (tests, benchmarks).
    pub fn random() -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, &random_bytes()))
    }

    pub(super) fn hmac(&self) -> &hmac::Key {
        &self.0
    }

    /// The key in Secret `name` of `secrets`' namespace, created when missing.
    pub async fn load_or_create(secrets: &Api<Secret>, name: &str) -> anyhow::Result<Self> {
        if let Some(secret) = read(secrets, name).await? {
            return from_secret(&secret, name);
        }
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(crate::certs::managed_by()),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some([(DATA_KEY.to_owned(), ByteString(random_bytes().to_vec()))].into()),
            ..Default::default()
        };
        match secrets.create(&PostParams::default(), &secret).await {
            Ok(created) => {
                tracing::info!(secret = name, "created the challenge key");
                from_secret(&created, name)
            }
            // Another replica created it first: use its key.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let secret = read(secrets, name)
                    .await?
                    .with_context(|| format!("Secret {name} was created, then vanished"))?;
                from_secret(&secret, name)
            }
            Err(e) => {
                Err(anyhow::Error::new(e)
                    .context(format!("creating the challenge key Secret {name}")))
            }
        }
    }
}

async fn read(secrets: &Api<Secret>, name: &str) -> anyhow::Result<Option<Secret>> {
    secrets
        .get_opt(name)
        .await
        .with_context(|| format!("reading the challenge key Secret {name}"))
}

fn from_secret(secret: &Secret, name: &str) -> anyhow::Result<ChallengeKey> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(DATA_KEY))
        .with_context(|| {
            format!("Secret {name} has no {DATA_KEY:?} entry; delete it to have a new key created")
        })?;
    ChallengeKey::from_bytes(&bytes.0).with_context(|| {
        format!("Secret {name}, entry {DATA_KEY:?}; delete it to have a new key created")
    })
}

fn random_bytes() -> [u8; KEY_LEN] {
    let mut bytes = [0u8; KEY_LEN];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_key() {
        let key = ChallengeKey::from_bytes(&[0x41; KEY_LEN]).unwrap();
        let shown = format!("{key:?}");
        assert_eq!(shown, "ChallengeKey(<redacted>)");
    }

    #[test]
    fn a_key_of_the_wrong_length_is_refused() {
        let err = ChallengeKey::from_bytes(&[1; 16]).unwrap_err();
        assert!(err.to_string().contains("32 bytes, not 16"), "{err}");
    }

    #[test]
    fn a_secret_without_a_usable_key_is_an_error_naming_it() {
        let mut secret = Secret::default();
        let err = from_secret(&secret, "k").unwrap_err();
        assert!(
            format!("{err:#}").contains("Secret k has no \"key\""),
            "{err:#}"
        );
        secret.data = Some([(DATA_KEY.to_owned(), ByteString(vec![1; 3]))].into());
        let err = from_secret(&secret, "k").unwrap_err();
        assert!(format!("{err:#}").contains("32 bytes, not 3"), "{err:#}");
        secret.data = Some([(DATA_KEY.to_owned(), ByteString(vec![1; KEY_LEN]))].into());
        assert!(from_secret(&secret, "k").is_ok());
    }
}
