//! What operator replicas share through PostgreSQL so that any replica can serve the
//! evidence API while only the leader judges: used challenge nonces (single use across
//! replicas) and the newest accepted evidence of each node, announced on the channel
//! [`EVIDENCE_CHANNEL`].
//!
//! Accepting evidence is one transaction ([`Database::accept_evidence`]): the nonce is
//! consumed, the evidence stored, and the notification sent on commit — so a replay never
//! stores anything, and stored evidence is always announced.

use anyhow::{Context, Result, ensure};
use jiff::Timestamp;
use sqlx::FromRow;
use sqlx::postgres::PgListener;

use super::Database;

/// The NOTIFY channel; each payload is the name of a node whose evidence was stored.
pub const EVIDENCE_CHANNEL: &str = "lotabots_evidence";

/// One node's newest accepted evidence.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeEvidenceRow {
    /// The node.
    pub node: String,
    /// The nonce it answered.
    pub nonce: Vec<u8>,
    /// `sha256:` over its canonical JSON.
    pub digest: String,
    /// The evidence document.
    pub evidence: serde_json::Value,
    /// When a replica accepted it.
    pub received_at: Timestamp,
}

/// What [`Database::accept_evidence`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acceptance {
    /// The nonce was unused: it is consumed and the evidence stored and announced.
    Accepted,
    /// The nonce was used before: nothing was written.
    Replayed,
}

#[derive(FromRow)]
struct Row {
    node: String,
    nonce: Vec<u8>,
    digest: String,
    evidence: sqlx::types::Json<serde_json::Value>,
    received_at: jiff_sqlx::Timestamp,
}

impl From<Row> for NodeEvidenceRow {
    fn from(r: Row) -> Self {
        Self {
            node: r.node,
            nonce: r.nonce,
            digest: r.digest,
            evidence: r.evidence.0,
            received_at: r.received_at.to_jiff(),
        }
    }
}

const SELECT: &str = "SELECT node, nonce, digest, evidence, received_at FROM node_evidence";

impl Database {
    /// Consumes `row.nonce` (valid until `nonce_expires_at`) and stores `row` as its
    /// node's newest evidence, announcing it on [`EVIDENCE_CHANNEL`] — or, when the nonce
    /// was consumed before, writes nothing and says so. Evidence older than what is
    /// stored for the node (a slow replica) is not stored over it, but its nonce is
    /// still consumed.
    pub async fn accept_evidence(
        &self,
        row: &NodeEvidenceRow,
        nonce_expires_at: Timestamp,
    ) -> Result<Acceptance> {
        ensure!(!row.node.is_empty(), "evidence without a node");
        let mut tx = self.pool.begin().await.context("starting a transaction")?;
        let consumed = sqlx::query(
            "INSERT INTO consumed_nonces (nonce, node, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (nonce) DO NOTHING",
        )
        .bind(&row.nonce)
        .bind(&row.node)
        .bind(jiff_sqlx::Timestamp::from(nonce_expires_at))
        .execute(&mut *tx)
        .await
        .context("consuming the nonce")?
        .rows_affected();
        if consumed == 0 {
            tx.rollback().await.context("rolling back a replay")?;
            return Ok(Acceptance::Replayed);
        }
        sqlx::query(
            "INSERT INTO node_evidence (node, nonce, digest, evidence, received_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (node) DO UPDATE SET nonce = EXCLUDED.nonce, digest = EXCLUDED.digest, \
               evidence = EXCLUDED.evidence, received_at = EXCLUDED.received_at \
             WHERE node_evidence.received_at <= EXCLUDED.received_at",
        )
        .bind(&row.node)
        .bind(&row.nonce)
        .bind(&row.digest)
        .bind(sqlx::types::Json(&row.evidence))
        .bind(jiff_sqlx::Timestamp::from(row.received_at))
        .execute(&mut *tx)
        .await
        .with_context(|| format!("storing the evidence of node {}", row.node))?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(EVIDENCE_CHANNEL)
            .bind(&row.node)
            .execute(&mut *tx)
            .await
            .context("announcing the evidence")?;
        tx.commit().await.context("committing the evidence")?;
        Ok(Acceptance::Accepted)
    }

    /// The newest evidence of `node`.
    pub async fn node_evidence(&self, node: &str) -> Result<Option<NodeEvidenceRow>> {
        let row: Option<Row> = sqlx::query_as(&format!("{SELECT} WHERE node = $1"))
            .bind(node)
            .fetch_optional(&self.pool)
            .await
            .with_context(|| format!("reading the evidence of node {node}"))?;
        Ok(row.map(Into::into))
    }

    /// The newest evidence of every node.
    pub async fn all_node_evidence(&self) -> Result<Vec<NodeEvidenceRow>> {
        let rows: Vec<Row> = sqlx::query_as(&format!("{SELECT} ORDER BY node"))
            .fetch_all(&self.pool)
            .await
            .context("reading the evidence of every node")?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Deletes consumed nonces that expired before `now` (an expired nonce is refused
    /// before this table is asked); returns how many.
    pub async fn prune_consumed_nonces(&self, now: Timestamp) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM consumed_nonces WHERE expires_at < $1")
                .bind(jiff_sqlx::Timestamp::from(now))
                .execute(&self.pool)
                .await
                .context("pruning expired nonces")?
                .rows_affected(),
        )
    }

    /// A connection listening on [`EVIDENCE_CHANNEL`] (its own, outside the pool).
    pub async fn listen_evidence(&self) -> Result<EvidenceListener> {
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .with_context(|| format!("connecting a listener to {}", self.target))?;
        listener
            .listen(EVIDENCE_CHANNEL)
            .await
            .with_context(|| format!("LISTEN {EVIDENCE_CHANNEL}"))?;
        Ok(EvidenceListener(listener))
    }
}

/// Announcements of stored evidence.
pub struct EvidenceListener(PgListener);

impl EvidenceListener {
    /// The next node whose evidence was stored, or `None` when the connection was lost:
    /// announcements made while disconnected are gone, so read everything again
    /// ([`Database::all_node_evidence`]). The next call reconnects and listens again.
    pub async fn next(&mut self) -> Result<Option<String>> {
        Ok(self
            .0
            .try_recv()
            .await
            .context("receiving evidence announcements")?
            .map(|n| n.payload().to_owned()))
    }
}
