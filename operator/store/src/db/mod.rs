//! PostgreSQL: migrations, attestation records, the audit hash chain and the outbox.
//!
//! [`Database`] is a pool over sqlx (runtime tokio, rustls). [`Database::connect`] checks
//! that the server is reachable and the credentials work on one connection first, so that
//! a wrong password or a closed port fail at once with the real reason, then applies the
//! embedded migrations under an advisory lock ([`migrate`]) before opening the pool.
//!
//! Queries are plain `sqlx::query` with binds: nothing needs a live database at compile
//! time. Every write that belongs together ([`Database::record`]) is one transaction.

mod chain;
mod config;
mod migrate;
mod queue;
mod records;
mod shared;

use std::{fmt, sync::Arc};

use anyhow::{Context, Result};
use sqlx::{Connection, PgConnection, PgPool, postgres::PgPoolOptions};

pub use chain::{AuditRow, BreakReason, BrokenLink, ChainReport, NewAuditEvent};
pub use config::{DbOptions, SslMode, redact_url};
pub use migrate::MIGRATION_LOCK_KEY;
pub use queue::{BundleCopy, CopyState};
pub use records::{NewRecord, Page, Record, RecordFilter, RecordId, RecordKind, RecordPage};
pub use shared::{Acceptance, EVIDENCE_CHANNEL, EvidenceListener, NodeEvidenceRow};

/// The evidence store's PostgreSQL database: a connection pool with the schema applied.
/// Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Database {
    pool: PgPool,
    /// The URL with the password masked: for errors and logs.
    target: Arc<str>,
}

impl fmt::Debug for Database {
    // The connect options hold the password: only the redacted URL is printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("target", &self.target)
            .field("connections", &self.pool.size())
            .finish()
    }
}

impl Database {
    /// Connects to `url` (`postgres://user:password@host:port/db?sslmode=…&sslrootcert=…`)
    /// with the default [`DbOptions`] and applies the migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(&DbOptions::new(url)).await
    }

    /// Connects as `options` say and applies the migrations (under an advisory lock, so
    /// that replicas starting together apply them once).
    pub async fn connect_with(options: &DbOptions) -> Result<Self> {
        let target: Arc<str> = options.redacted_url().into();
        let connect = options.connect_options()?;
        // One connection first: the pool retries a refused connection until its timeout
        // and then only says that it timed out, while this one fails with the reason.
        let mut conn = tokio::time::timeout(
            options.connect_timeout,
            PgConnection::connect_with(&connect),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "connecting to PostgreSQL at {target}: no answer within {:?}",
                options.connect_timeout
            )
        })?
        .with_context(|| format!("connecting to PostgreSQL at {target}"))?;
        let migrated = migrate::run(&mut conn)
            .await
            .with_context(|| format!("migrating the evidence store at {target}"));
        // Closing ends the session, and with it any advisory lock a failure left held.
        let _ = conn.close().await;
        migrated?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.connect_timeout)
            .connect_with(connect)
            .await
            .with_context(|| format!("opening a connection pool to PostgreSQL at {target}"))?;
        tracing::info!(target = %target, "evidence store database ready");
        Ok(Self { pool, target })
    }

    /// The database's URL with the password masked.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// One round trip to the server, for readiness checks.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .with_context(|| format!("PostgreSQL at {} does not answer", self.target))?;
        Ok(())
    }

    /// Closes every connection of the pool; later calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OutboxQueue;

    fn spawnable<T: Send + 'static>(_: T) {}

    /// The operator spawns these on tokio's multi-threaded runtime: each future must be
    /// `Send` for every lifetime of its arguments (sqlx's generic executors easily make
    /// one that is not).
    #[allow(dead_code)]
    fn every_future_can_be_spawned(db: Database, record: NewRecord, bundle: crate::SealedBundle) {
        spawnable(async move { Database::connect("postgres://x").await });
        let d = db.clone();
        spawnable(async move { d.record(&record, Some(&bundle), &["s3"]).await });
        let d = db.clone();
        spawnable(async move { d.verify_chain().await });
        let d = db.clone();
        spawnable(async move { d.audit(&[]).await });
        let d = db.clone();
        spawnable(async move { d.audit_rows(0, 1).await });
        let d = db.clone();
        spawnable(async move {
            d.list_records(&RecordFilter::default(), Page::first(1))
                .await
        });
        let d = db.clone();
        spawnable(async move { d.due("s3", 1).await });
        let d = db.clone();
        spawnable(async move { d.uploaded(1, "x").await });
        let d = db.clone();
        spawnable(async move { d.failed(1, "x", jiff::Timestamp::now()).await });
        let d = db.clone();
        spawnable(async move { d.bundle_locations("x").await });
        let d = db.clone();
        spawnable(async move { d.outbox_backlog().await });
        let d = db.clone();
        spawnable(async move { d.ping().await });
        let d = db.clone();
        spawnable(async move {
            let row = NodeEvidenceRow {
                node: "n".into(),
                nonce: vec![0; 32],
                digest: String::new(),
                evidence: serde_json::Value::Null,
                received_at: jiff::Timestamp::now(),
            };
            d.accept_evidence(&row, jiff::Timestamp::now()).await
        });
        let d = db.clone();
        spawnable(async move { d.all_node_evidence().await });
        let d = db.clone();
        spawnable(async move { d.node_evidence("n").await });
        let d = db.clone();
        spawnable(async move { d.prune_consumed_nonces(jiff::Timestamp::now()).await });
        let d = db.clone();
        spawnable(async move { d.listen_evidence().await?.next().await });
        spawnable(async move { db.bundle("x").await });
    }
}
