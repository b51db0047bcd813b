//! The audit trail behind `GET /v1/audit` and `GET /v1/audit/verify`: a small trait the
//! evidence store implements, so that the API does not depend on how the chain is kept.
//!
//! The evidence store's PostgreSQL log implements it (below). [`MemoryAuditTrail`] is a complete hash chain in memory — each entry's hash covers the
//! previous hash and the entry — for development without a database and for tests of
//! the routes (tampering with an entry is detected at that entry).

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use jiff::Timestamp;
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

/// One entry of the trail.
#[derive(Serialize, Clone, Debug, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    /// When it was recorded (RFC 3339).
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    /// Who did it (the operator, or a user).
    pub actor: String,
    /// What (e.g. `record`).
    pub action: String,
    /// On what (a node, a model digest).
    pub subject: String,
    /// The attestation record it concerns, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_id: Option<i64>,
    /// The details.
    #[schema(value_type = Object)]
    pub content: serde_json::Value,
    /// Hash of the previous entry (hex).
    pub prev_hash: String,
    /// This entry's hash (hex).
    pub hash: String,
}

/// The first link of the chain that does not hold.
#[derive(Serialize, Clone, Debug, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokenLink {
    /// Its sequence number.
    pub seq: i64,
    /// Why (`Modified`, `Relinked`, `Missing`, `Truncated`, `HeadMismatch`).
    pub reason: String,
    /// What a sound chain has there.
    pub expected: String,
    /// What the trail has.
    pub found: String,
}

/// The result of checking the whole chain.
#[derive(Serialize, Clone, Debug, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChainReport {
    /// Entries verified intact before the first broken link.
    pub rows_checked: u64,
    /// The first broken link, if any.
    pub first_broken: Option<BrokenLink>,
}

/// Why the trail could not be read.
#[derive(Debug, thiserror::Error)]
#[error("audit store: {0}")]
pub struct AuditError(pub String);

/// A boxed future of the trait.
pub type AuditFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, AuditError>> + Send + 'a>>;

/// Reads and verifies the audit trail.
pub trait AuditTrail: Send + Sync + 'static {
    /// Up to `limit` entries with `seq > after`, in order.
    fn entries(&self, after: i64, limit: u32) -> AuditFuture<'_, Vec<AuditEntry>>;
    /// Checks every link.
    fn verify(&self) -> AuditFuture<'_, ChainReport>;
}

/// A hash chain kept in memory.
#[derive(Default)]
pub struct MemoryAuditTrail {
    entries: Mutex<Vec<AuditEntry>>,
}

fn link_hash(prev: &str, e: &AuditEntry) -> String {
    let mut h = Sha256::new();
    let fields = [
        prev.to_owned(),
        e.seq.to_string(),
        e.at.to_string(),
        e.actor.clone(),
        e.action.clone(),
        e.subject.clone(),
        e.record_id.map(|r| r.to_string()).unwrap_or_default(),
        e.content.to_string(),
    ];
    // Length-prefixed fields: no two different entries hash the same bytes.
    for field in &fields {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    hex::encode(h.finalize())
}

impl MemoryAuditTrail {
    /// Appends an entry by `actor` and returns it.
    pub fn append(
        &self,
        actor: &str,
        action: &str,
        subject: &str,
        content: serde_json::Value,
        at: Timestamp,
    ) -> AuditEntry {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let prev_hash = entries.last().map(|e| e.hash.clone()).unwrap_or_default();
        let mut entry = AuditEntry {
            seq: entries.len() as i64 + 1,
            at,
            actor: actor.into(),
            action: action.into(),
            subject: subject.into(),
            record_id: None,
            content,
            prev_hash,
            hash: String::new(),
        };
        entry.hash = link_hash(&entry.prev_hash, &entry);
        entries.push(entry.clone());
        entry
    }

    /// Changes entry `seq` in place with `edit`, bypassing the chain (what an attacker
    /// with database access would do); for tests of verification.
    pub fn tamper(&self, seq: i64, edit: impl FnOnce(&mut AuditEntry)) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = entries.iter_mut().find(|e| e.seq == seq) {
            edit(e);
        }
    }
}

impl AuditTrail for MemoryAuditTrail {
    fn entries(&self, after: i64, limit: u32) -> AuditFuture<'_, Vec<AuditEntry>> {
        let page = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|e| e.seq > after)
            .take(limit as usize)
            .cloned()
            .collect();
        Box::pin(async move { Ok(page) })
    }

    fn verify(&self) -> AuditFuture<'_, ChainReport> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Box::pin(async move {
            let mut prev = String::new();
            let mut first_broken = None;
            let mut intact = 0;
            for e in &entries {
                let expected = link_hash(&prev, e);
                if e.prev_hash != prev || e.hash != expected {
                    first_broken = Some(BrokenLink {
                        seq: e.seq,
                        reason: if e.prev_hash != prev {
                            "Relinked"
                        } else {
                            "Modified"
                        }
                        .into(),
                        expected,
                        found: e.hash.clone(),
                    });
                    break;
                }
                intact += 1;
                prev = e.hash.clone();
            }
            Ok(ChainReport {
                rows_checked: intact,
                first_broken,
            })
        })
    }
}

/// The evidence store's PostgreSQL audit log.
impl AuditTrail for lotabots_store::db::Database {
    fn entries(&self, after: i64, limit: u32) -> AuditFuture<'_, Vec<AuditEntry>> {
        Box::pin(async move {
            let rows = self
                .audit_rows(after, limit)
                .await
                .map_err(|e| AuditError(format!("{e:#}")))?;
            Ok(rows
                .into_iter()
                .map(|r| AuditEntry {
                    seq: r.seq,
                    at: r.at,
                    actor: r.actor,
                    action: r.action,
                    subject: r.subject,
                    record_id: r.record_id.map(|id| id.0),
                    content: r.content,
                    prev_hash: r.prev_hash,
                    hash: r.hash,
                })
                .collect())
        })
    }

    fn verify(&self) -> AuditFuture<'_, ChainReport> {
        Box::pin(async move {
            let report = self
                .verify_chain()
                .await
                .map_err(|e| AuditError(format!("{e:#}")))?;
            Ok(ChainReport {
                rows_checked: report.rows_checked,
                first_broken: report.first_broken.map(|b| BrokenLink {
                    seq: b.seq,
                    reason: format!("{:?}", b.reason),
                    expected: b.expected,
                    found: b.found,
                }),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tampered_entry_is_the_first_broken_link() {
        let trail = MemoryAuditTrail::default();
        for i in 0..5 {
            trail.append(
                "op",
                "record",
                &format!("node-{i}"),
                serde_json::json!({"i": i}),
                Timestamp::UNIX_EPOCH,
            );
        }
        assert_eq!(trail.verify().await.unwrap().first_broken, None);
        trail.tamper(3, |e| e.subject = "node-x".into());
        let report = trail.verify().await.unwrap();
        assert_eq!(report.rows_checked, 2);
        let broken = report.first_broken.unwrap();
        assert_eq!((broken.seq, broken.reason.as_str()), (3, "Modified"));
        let page = trail.entries(2, 2).await.unwrap();
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4]);
    }
}
