//! The outbox on PostgreSQL: which copies of which bundles each object store still
//! needs, as the upload worker ([`OutboxQueue`]) and the API and metrics see it.
//!
//! No row is leased: the operator is leader-elected, and an upload that two workers
//! did at once would write the same object twice (create-only, named by digest).

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail, ensure};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sqlx::FromRow;

use super::{Database, records::is_sha256_hex};
use crate::{OutboxQueue, PendingUpload, SealedBundle};

/// Where one store's copy of a bundle is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleCopy {
    /// The store's name (`s3`, `gcs`, …).
    pub store: String,
    /// Stored, or still pending.
    #[serde(flatten)]
    pub state: CopyState,
}

/// The state of one copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum CopyState {
    /// In the store.
    Stored {
        /// Where, e.g. `s3://bucket/key`.
        location: String,
        /// When the upload was confirmed.
        uploaded_at: Timestamp,
        /// Attempts it took.
        attempts: i32,
    },
    /// Not yet.
    Pending {
        /// Failed attempts so far.
        attempts: i32,
        /// The last attempt's error.
        last_error: Option<String>,
        /// When the worker tries next.
        next_attempt_at: Timestamp,
    },
}

/// The longest error kept per outbox row: a store can answer with a whole HTML page.
const MAX_ERROR_LEN: usize = 2000;

#[derive(FromRow)]
struct DueRow {
    id: i64,
    store: String,
    attempts: i32,
    digest: String,
    plaintext_sha256: String,
    key_id: String,
    ciphertext: Vec<u8>,
}

#[derive(FromRow)]
struct CopyRow {
    store: String,
    attempts: i32,
    next_attempt_at: jiff_sqlx::Timestamp,
    last_error: Option<String>,
    uploaded_at: Option<jiff_sqlx::Timestamp>,
    location: Option<String>,
}

impl From<CopyRow> for BundleCopy {
    fn from(r: CopyRow) -> Self {
        let state = match (r.uploaded_at, r.location) {
            (Some(at), Some(location)) => CopyState::Stored {
                location,
                uploaded_at: at.to_jiff(),
                attempts: r.attempts,
            },
            // The table's CHECK keeps both set or neither.
            _ => CopyState::Pending {
                attempts: r.attempts,
                last_error: r.last_error,
                next_attempt_at: r.next_attempt_at.to_jiff(),
            },
        };
        Self {
            store: r.store,
            state,
        }
    }
}

/// `error` cut to [`MAX_ERROR_LEN`] bytes, on a character boundary.
fn truncate_error(error: &str) -> &str {
    if error.len() <= MAX_ERROR_LEN {
        return error;
    }
    let mut end = MAX_ERROR_LEN;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    &error[..end]
}

impl Database {
    /// A stored bundle, to read it back or upload it again.
    pub async fn bundle(&self, digest: &str) -> Result<Option<SealedBundle>> {
        let row: Option<(String, String, String, Vec<u8>)> = sqlx::query_as(
            "SELECT digest, plaintext_sha256, key_id, ciphertext FROM bundles WHERE digest = $1",
        )
        .bind(digest)
        .fetch_optional(&self.pool)
        .await
        .with_context(|| format!("reading bundle {digest}"))?;
        Ok(row.map(
            |(digest, plaintext_sha256, key_id, ciphertext)| SealedBundle {
                digest,
                plaintext_sha256,
                key_id,
                ciphertext,
            },
        ))
    }

    /// Where each copy of bundle `digest` is, one entry per store it was queued for, by
    /// store name; `None` when no such bundle is stored.
    pub async fn bundle_locations(&self, digest: &str) -> Result<Option<Vec<BundleCopy>>> {
        ensure!(
            is_sha256_hex(digest),
            "bundle digest {digest:?} is not 64 lowercase hex digits"
        );
        let (known,): (bool,) =
            sqlx::query_as("SELECT EXISTS (SELECT 1 FROM bundles WHERE digest = $1)")
                .bind(digest)
                .fetch_one(&self.pool)
                .await
                .with_context(|| format!("looking up bundle {digest}"))?;
        if !known {
            return Ok(None);
        }
        let rows: Vec<CopyRow> = sqlx::query_as(
            "SELECT store, attempts, next_attempt_at, last_error, uploaded_at, location \
             FROM outbox WHERE bundle_digest = $1 ORDER BY store",
        )
        .bind(digest)
        .fetch_all(&self.pool)
        .await
        .with_context(|| format!("reading where bundle {digest} is"))?;
        Ok(Some(rows.into_iter().map(BundleCopy::from).collect()))
    }

    /// Copies not yet uploaded, per store (for metrics). Stores with nothing pending are
    /// absent: the caller knows which stores it configured.
    pub async fn outbox_backlog(&self) -> Result<BTreeMap<String, u64>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT store, count(*) FROM outbox WHERE uploaded_at IS NULL GROUP BY store",
        )
        .fetch_all(&self.pool)
        .await
        .context("counting the outbox backlog")?;
        Ok(rows
            .into_iter()
            .map(|(store, n)| (store, n.unsigned_abs()))
            .collect())
    }

    /// Why `id` was not updated: it does not exist, or (`Ok(Some(location))`) it was
    /// uploaded already.
    async fn settled_location(&self, id: i64) -> Result<Option<String>> {
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT location FROM outbox WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .with_context(|| format!("reading outbox row {id}"))?;
        match row {
            None => bail!("no outbox row {id}"),
            Some((location,)) => Ok(location),
        }
    }
}

impl OutboxQueue for Database {
    async fn due(&self, store: &str, limit: i64) -> Result<Vec<PendingUpload>> {
        ensure!(limit > 0, "outbox: limit {limit} must be positive");
        let rows: Vec<DueRow> = sqlx::query_as(
            "SELECT o.id, o.store, o.attempts, b.digest, b.plaintext_sha256, b.key_id, b.ciphertext \
             FROM outbox o JOIN bundles b ON b.digest = o.bundle_digest \
             WHERE o.store = $1 AND o.uploaded_at IS NULL AND o.next_attempt_at <= now() \
             ORDER BY o.id LIMIT $2",
        )
        .bind(store)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .with_context(|| format!("reading the uploads due for {store}"))?;
        Ok(rows
            .into_iter()
            .map(|r| PendingUpload {
                id: r.id,
                store: r.store,
                attempts: r.attempts,
                bundle: SealedBundle {
                    digest: r.digest,
                    plaintext_sha256: r.plaintext_sha256,
                    key_id: r.key_id,
                    ciphertext: r.ciphertext,
                },
            })
            .collect())
    }

    /// Idempotent: confirming an upload again at the same location changes nothing; at
    /// another location it is an error (the first location stays).
    async fn uploaded(&self, id: i64, location: &str) -> Result<()> {
        ensure!(!location.is_empty(), "outbox row {id}: empty location");
        let done = sqlx::query(
            "UPDATE outbox SET uploaded_at = now(), location = $2, attempts = attempts + 1, \
             last_error = NULL WHERE id = $1 AND uploaded_at IS NULL",
        )
        .bind(id)
        .bind(location)
        .execute(&self.pool)
        .await
        .with_context(|| format!("marking outbox row {id} uploaded"))?;
        if done.rows_affected() == 1 {
            return Ok(());
        }
        match self.settled_location(id).await? {
            Some(l) if l == location => Ok(()),
            Some(l) => bail!("outbox row {id} was already uploaded to {l}, not {location}"),
            None => bail!("outbox row {id} changed while being marked uploaded"),
        }
    }

    /// A failure reported after the upload was confirmed changes nothing: a stored copy
    /// is never marked pending again.
    async fn failed(&self, id: i64, error: &str, retry_at: Timestamp) -> Result<()> {
        let done = sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, last_error = $2, next_attempt_at = $3 \
             WHERE id = $1 AND uploaded_at IS NULL",
        )
        .bind(id)
        .bind(truncate_error(error))
        .bind(jiff_sqlx::Timestamp::from(retry_at))
        .execute(&self.pool)
        .await
        .with_context(|| format!("recording the failed upload of outbox row {id}"))?;
        if done.rows_affected() == 0 {
            self.settled_location(id).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        assert_eq!(truncate_error("short"), "short");
        let long = "é".repeat(MAX_ERROR_LEN);
        let cut = truncate_error(&long);
        assert!(cut.len() <= MAX_ERROR_LEN && cut.len() >= MAX_ERROR_LEN - 1);
        assert!(long.starts_with(cut));
    }

    #[test]
    fn copies_serialize_with_their_state() {
        let c = BundleCopy {
            store: "s3".into(),
            state: CopyState::Pending {
                attempts: 2,
                last_error: Some("503".into()),
                next_attempt_at: Timestamp::UNIX_EPOCH,
            },
        };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["store"], "s3");
        assert_eq!(v["state"], "pending");
        assert_eq!(v["attempts"], 2);
    }
}
