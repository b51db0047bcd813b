//! lotabots evidence store: PostgreSQL records and audit chain, encrypted evidence bundles,
//! S3 primary and GCS backup through an outbox.
//!
//! How a verdict becomes durable proof:
//!
//! 1. The evidence is sealed into a [`SealedBundle`] ([`bundle`]): canonical JSON,
//!    envelope-encrypted, named by the SHA-256 of its ciphertext.
//! 2. [`db`] commits the attestation record, its audit row (hash-chained to the previous
//!    one), the sealed bundle and one outbox row per object store in ONE transaction. From
//!    then on the bundle is acknowledged: it can no longer be lost.
//! 3. The [`outbox`] worker uploads each pending bundle to every store independently
//!    ([`objects`]), create-only, keyed by the content digest, and marks each upload done
//!    through [`OutboxQueue`]. A store that is down only delays its own copies.

pub mod bundle;
pub mod db;
pub mod objects;
pub mod outbox;

use std::future::Future;

/// An evidence bundle ready to store: the ciphertext and what identifies it. Made by
/// [`bundle`]; stored in PostgreSQL until every object store has a copy.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedBundle {
    /// Hex SHA-256 of `ciphertext`: the bundle's name in every store, so a retried upload
    /// writes the same object.
    pub digest: String,
    /// Hex SHA-256 of the canonical plaintext, recorded so that a decrypted bundle can be
    /// checked against the record.
    pub plaintext_sha256: String,
    /// The id of the key-encryption key that wrapped the data key.
    pub key_id: String,
    /// The encrypted bundle, header included.
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for SealedBundle {
    // The ciphertext is opaque and can be megabytes: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedBundle")
            .field("digest", &self.digest)
            .field("plaintext_sha256", &self.plaintext_sha256)
            .field("key_id", &self.key_id)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

/// One copy of one bundle that a store does not have yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingUpload {
    /// The outbox row.
    pub id: i64,
    /// The store's name, as configured (`s3`, `gcs`, `local`).
    pub store: String,
    /// The bundle.
    pub bundle: SealedBundle,
    /// Upload attempts so far.
    pub attempts: i32,
}

/// The outbox as the upload worker sees it. [`db::Database`] implements it on PostgreSQL;
/// tests may implement it in memory.
pub trait OutboxQueue: Send + Sync {
    /// Up to `limit` uploads for `store` that are due now (never attempted, or whose
    /// backoff has passed), oldest first.
    fn due(
        &self,
        store: &str,
        limit: i64,
    ) -> impl Future<Output = anyhow::Result<Vec<PendingUpload>>> + Send;

    /// The upload `id` is in its store at `location` (e.g. `s3://bucket/key`).
    fn uploaded(&self, id: i64, location: &str) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// The upload `id` failed with `error`; try again no earlier than `retry_at`.
    fn failed(
        &self,
        id: i64,
        error: &str,
        retry_at: jiff::Timestamp,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}
