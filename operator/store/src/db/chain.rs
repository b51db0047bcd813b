//! The audit log: append-only rows, each carrying the SHA-256 of its content and of the
//! previous row, so that changing, removing or reordering any row breaks every link after
//! it.
//!
//! # What is hashed
//!
//! ```text
//! hash(row) = SHA-256( prev_hash ‖ JCS(entry) )
//! ```
//!
//! - `prev_hash`: the 32 raw bytes of the previous row's `hash`; 32 zero bytes for the
//!   first row (seq 1).
//! - `JCS(entry)`: the UTF-8 bytes of the RFC 8785 canonical JSON of the object
//!   `{"action", "actor", "at", "content", "record_id", "seq", "subject"}` — the row's
//!   columns, with `at` as an integer count of microseconds since 1970-01-01T00:00:00Z
//!   (PostgreSQL's precision), `record_id` an integer or `null`, `content` the JSON
//!   document as stored.
//!
//! The sequence number is inside the hash, so a row moved to another position or
//! renumbered to hide a gap no longer matches; seq is gapless (see the migration), so a
//! missing number is a deleted row; and the chain head (`audit_chain_head`) names the last
//! row, so rows deleted from the end are noticed too.
//!
//! Writers serialize on the chain head (`SELECT … FOR UPDATE` in their transaction), so
//! the chain never forks. The link covers one row; a writer that group-commits would
//! append several rows under one lock, each linked as here, and verification would not
//! change.

use std::fmt;

use anyhow::{Context, Result, ensure};
use futures::TryStreamExt;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{FromRow, PgConnection, types::Json};

use super::{Database, RecordId};

/// An event to append to the audit log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewAuditEvent {
    /// Who did it, e.g. `lotabots-operator` or a user name.
    pub actor: String,
    /// What, e.g. `record`.
    pub action: String,
    /// On what, e.g. a node name or a model digest.
    pub subject: String,
    /// The attestation record it concerns, if any.
    pub record_id: Option<RecordId>,
    /// The details, as a JSON document.
    pub content: Value,
}

/// One row of the audit log as the API shows it (hashes in hex).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRow {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    /// When it was appended (microseconds).
    pub at: Timestamp,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub subject: String,
    /// The record it concerns.
    pub record_id: Option<RecordId>,
    /// The details.
    pub content: Value,
    /// The previous row's hash (hex).
    pub prev_hash: String,
    /// This row's hash (hex).
    pub hash: String,
}

/// The outcome of [`Database::verify_chain`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainReport {
    /// Rows verified intact before the first broken link (all of them when none is).
    pub rows_checked: u64,
    /// The first broken link, if any.
    pub first_broken: Option<BrokenLink>,
}

/// Where and how the chain breaks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokenLink {
    /// The first sequence number that does not verify.
    pub seq: i64,
    /// Why.
    pub reason: BreakReason,
    /// What a sound chain has there (a hash in hex, or a sequence number).
    pub expected: String,
    /// What the log has.
    pub found: String,
}

/// Kinds of broken links.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakReason {
    /// The row's hash does not match its content: the row was changed.
    Modified,
    /// The row does not link to the row before it: a row before it was removed or
    /// rows were reordered.
    Relinked,
    /// The sequence number is missing: the row was deleted.
    Missing,
    /// The log ends before the chain head says it does: rows were deleted from the end.
    Truncated,
    /// The log's last row is not the one the chain head names: rows were added behind
    /// the store's back, or the head or the last row was rewritten.
    HeadMismatch,
}

impl fmt::Display for BrokenLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.reason {
            BreakReason::Modified => "the row's content does not match its hash (modified)",
            BreakReason::Relinked => {
                "the row does not link to the previous one (a row was removed or rows were reordered)"
            }
            BreakReason::Missing => "the row is missing (deleted)",
            BreakReason::Truncated => "the log ends before its recorded head (rows deleted)",
            BreakReason::HeadMismatch => "the log's last row is not the recorded head",
        };
        write!(
            f,
            "audit chain broken at seq {}: {what}; expected {}, found {}",
            self.seq, self.expected, self.found
        )
    }
}

/// What [`link_hash`] hashes besides the previous hash: the row, keys in JCS order.
#[derive(Serialize)]
struct Entry<'a> {
    action: &'a str,
    actor: &'a str,
    /// Microseconds since the Unix epoch.
    at: i64,
    content: &'a Value,
    record_id: Option<i64>,
    seq: i64,
    subject: &'a str,
}

/// `SHA-256(prev_hash ‖ JCS(entry))`, as the module documentation describes.
fn link_hash(prev_hash: &[u8; 32], entry: &Entry<'_>) -> Result<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(prev_hash);
    serde_json_canonicalizer::to_writer(entry, &mut h).context("canonicalizing an audit row")?;
    Ok(h.finalize().into())
}

#[derive(FromRow)]
struct LogRow {
    seq: i64,
    at: jiff_sqlx::Timestamp,
    actor: String,
    action: String,
    subject: String,
    record_id: Option<i64>,
    content: Json<Value>,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
}

impl LogRow {
    fn entry(&self) -> Entry<'_> {
        Entry {
            action: &self.action,
            actor: &self.actor,
            at: self.at.to_jiff().as_microsecond(),
            content: &self.content.0,
            record_id: self.record_id,
            seq: self.seq,
            subject: &self.subject,
        }
    }

    /// The first thing wrong with this row, given the sequence number and previous hash
    /// a sound chain has at this point.
    fn check(&self, expected_seq: i64, expected_prev: &[u8; 32]) -> Result<Option<BrokenLink>> {
        let broken = |reason, expected: String, found: String| BrokenLink {
            seq: expected_seq,
            reason,
            expected,
            found,
        };
        if self.seq != expected_seq {
            return Ok(Some(broken(
                BreakReason::Missing,
                format!("seq {expected_seq}"),
                format!("seq {}", self.seq),
            )));
        }
        if self.prev_hash != expected_prev {
            return Ok(Some(broken(
                BreakReason::Relinked,
                hex::encode(expected_prev),
                hex::encode(&self.prev_hash),
            )));
        }
        let computed = link_hash(expected_prev, &self.entry())?;
        if self.hash != computed {
            return Ok(Some(broken(
                BreakReason::Modified,
                hex::encode(computed),
                hex::encode(&self.hash),
            )));
        }
        Ok(None)
    }
}

impl From<LogRow> for AuditRow {
    fn from(r: LogRow) -> Self {
        Self {
            seq: r.seq,
            at: r.at.to_jiff(),
            actor: r.actor,
            action: r.action,
            subject: r.subject,
            record_id: r.record_id.map(RecordId),
            content: r.content.0,
            prev_hash: hex::encode(r.prev_hash),
            hash: hex::encode(r.hash),
        }
    }
}

/// When every row links up, the last one must be the head's: compares them.
fn head_mismatch(
    last_seq: i64,
    last_hash: &[u8; 32],
    head_seq: i64,
    head_hash: &[u8],
) -> Option<BrokenLink> {
    if last_seq == head_seq && last_hash.as_slice() == head_hash {
        return None;
    }
    let (seq, reason) = match last_seq.cmp(&head_seq) {
        std::cmp::Ordering::Less => (last_seq + 1, BreakReason::Truncated),
        std::cmp::Ordering::Greater => (head_seq + 1, BreakReason::HeadMismatch),
        std::cmp::Ordering::Equal => (last_seq, BreakReason::HeadMismatch),
    };
    Some(BrokenLink {
        seq,
        reason,
        expected: format!(
            "rows up to seq {head_seq}, ending in {}",
            hex::encode(head_hash)
        ),
        found: format!(
            "rows up to seq {last_seq}, ending in {}",
            hex::encode(last_hash)
        ),
    })
}

fn hash32(bytes: Vec<u8>, what: &str) -> Result<[u8; 32]> {
    let len = bytes.len();
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("{what} is {len} bytes, not 32"))
}

/// Appends `events`, in order, inside the caller's transaction `tx`: locks the chain head
/// until the transaction ends, links each row to the one before, and moves the head.
/// Returns the seq of the last row. One lock and one insert for the whole batch: the
/// group commit that keeps the chain from capping ingest.
pub(super) async fn append(tx: &mut PgConnection, events: &[NewAuditEvent]) -> Result<i64> {
    for e in events {
        ensure!(!e.actor.is_empty(), "audit event: the actor is empty");
        ensure!(!e.action.is_empty(), "audit event: the action is empty");
    }
    let (head_seq, head_hash): (i64, Vec<u8>) =
        sqlx::query_as("SELECT seq, hash FROM audit_chain_head FOR UPDATE")
            .fetch_one(&mut *tx)
            .await
            .context("locking the audit chain head")?;
    let mut prev = hash32(head_hash, "the audit chain head's hash")?;
    // PostgreSQL keeps microseconds: hash what it will give back.
    let at = Timestamp::from_microsecond(Timestamp::now().as_microsecond())?;
    let n = events.len();
    let (mut seqs, mut prevs, mut hashes) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (seq, e) in (head_seq + 1..).zip(events) {
        let hash = link_hash(
            &prev,
            &Entry {
                action: &e.action,
                actor: &e.actor,
                at: at.as_microsecond(),
                content: &e.content,
                record_id: e.record_id.map(|r| r.0),
                seq,
                subject: &e.subject,
            },
        )?;
        seqs.push(seq);
        prevs.push(prev.to_vec());
        hashes.push(hash.to_vec());
        prev = hash;
    }
    let last_seq = head_seq + i64::try_from(n)?;
    // One round trip while the head is locked: the rows and the head move together.
    sqlx::query(
        "WITH appended AS ( \
           INSERT INTO audit_log (seq, at, actor, action, subject, record_id, content, prev_hash, hash) \
           SELECT seq, $2, actor, action, subject, record_id, content, prev_hash, hash \
           FROM unnest($1::int8[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::jsonb[], \
                       $8::bytea[], $9::bytea[]) \
             AS r(seq, actor, action, subject, record_id, content, prev_hash, hash)) \
         UPDATE audit_chain_head SET seq = $10, hash = $11",
    )
    .bind(&seqs)
    .bind(jiff_sqlx::Timestamp::from(at))
    .bind(events.iter().map(|e| e.actor.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.action.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.subject.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.record_id.map(|r| r.0)).collect::<Vec<_>>())
    .bind(events.iter().map(|e| Json(&e.content)).collect::<Vec<_>>())
    .bind(&prevs)
    .bind(&hashes)
    .bind(last_seq)
    .bind(prev.as_slice())
    .execute(&mut *tx)
    .await
    .with_context(|| format!("appending audit rows {}..={last_seq}", head_seq + 1))?;
    Ok(last_seq)
}

const LOG_COLUMNS: &str = "seq, at, actor, action, subject, record_id, content, prev_hash, hash";

impl Database {
    /// Appends events that are not records (e.g. a key rotation) to the audit log, in
    /// order, in one transaction. Returns the seq of the last one.
    pub async fn audit(&self, events: &[NewAuditEvent]) -> Result<i64> {
        ensure!(!events.is_empty(), "no audit events to append");
        let mut tx = self.pool.begin().await.context("beginning a transaction")?;
        let seq = append(&mut tx, events).await?;
        tx.commit().await.context("committing the audit rows")?;
        Ok(seq)
    }

    /// Up to `limit` (1 to 1000) audit rows after `after_seq` (0: from the start), in
    /// order.
    pub async fn audit_rows(&self, after_seq: i64, limit: u32) -> Result<Vec<AuditRow>> {
        ensure!(
            (1..=1000).contains(&limit),
            "audit rows: limit {limit} is out of range 1..=1000"
        );
        let rows: Vec<LogRow> = sqlx::query_as(&format!(
            "SELECT {LOG_COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"
        ))
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .context("reading audit rows")?;
        Ok(rows.into_iter().map(AuditRow::from).collect())
    }

    /// Verifies the whole chain, streaming the rows in seq order (memory stays flat
    /// whatever the size of the log), and reports the first broken link. Reads one
    /// snapshot, so rows appended meanwhile are neither half-seen nor reported broken.
    pub async fn verify_chain(&self) -> Result<ChainReport> {
        let mut tx = self.pool.begin().await.context("beginning a transaction")?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .context("starting a snapshot")?;
        let (head_seq, head_hash): (i64, Vec<u8>) =
            sqlx::query_as("SELECT seq, hash FROM audit_chain_head")
                .fetch_one(&mut *tx)
                .await
                .context("reading the audit chain head")?;
        let mut prev = [0u8; 32];
        let mut rows_checked: u64 = 0;
        let mut expected_seq: i64 = 1;
        let select = format!("SELECT {LOG_COLUMNS} FROM audit_log ORDER BY seq");
        let first_broken = {
            let mut rows = sqlx::query_as::<_, LogRow>(&select).fetch(&mut *tx);
            let mut broken = None;
            while let Some(row) = rows.try_next().await.context("reading the audit log")? {
                if let Some(b) = row.check(expected_seq, &prev)? {
                    broken = Some(b);
                    break;
                }
                // check() compared the stored hash with the computed one: 32 bytes.
                prev = hash32(row.hash, "an audit row's hash")?;
                rows_checked += 1;
                expected_seq += 1;
            }
            broken
        };
        let first_broken =
            first_broken.or_else(|| head_mismatch(expected_seq - 1, &prev, head_seq, &head_hash));
        tx.commit().await.ok();
        if let Some(b) = &first_broken {
            tracing::warn!(%b, "audit chain verification failed");
        }
        Ok(ChainReport {
            rows_checked,
            first_broken,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(seq: i64, content: &'a Value) -> Entry<'a> {
        Entry {
            action: "record",
            actor: "lotabots-operator",
            at: 1_764_417_600_123_456,
            content,
            record_id: Some(7),
            seq,
            subject: "node-a",
        }
    }

    #[test]
    fn the_hash_is_sha256_of_the_previous_hash_and_the_canonical_row() {
        let content = serde_json::json!({"verdict": "Attested", "b": [1, 2.5], "a": "x"});
        let prev = [7u8; 32];
        // The documented bytes, written out by hand: keys sorted, no whitespace.
        let jcs = r#"{"action":"record","actor":"lotabots-operator","at":1764417600123456,"content":{"a":"x","b":[1,2.5],"verdict":"Attested"},"record_id":7,"seq":3,"subject":"node-a"}"#;
        let mut h = Sha256::new();
        h.update(prev);
        h.update(jcs.as_bytes());
        let want: [u8; 32] = h.finalize().into();
        assert_eq!(link_hash(&prev, &entry(3, &content)).unwrap(), want);
    }

    #[test]
    fn every_field_and_the_previous_hash_change_the_hash() {
        let content = serde_json::json!({"v": 1});
        let other = serde_json::json!({"v": 2});
        let base = link_hash(&[0; 32], &entry(1, &content)).unwrap();
        assert_ne!(base, link_hash(&[1; 32], &entry(1, &content)).unwrap());
        assert_ne!(base, link_hash(&[0; 32], &entry(2, &content)).unwrap());
        assert_ne!(base, link_hash(&[0; 32], &entry(1, &other)).unwrap());
        let mut e = entry(1, &content);
        e.actor = "someone-else";
        assert_ne!(base, link_hash(&[0; 32], &e).unwrap());
        let mut e = entry(1, &content);
        e.at += 1;
        assert_ne!(base, link_hash(&[0; 32], &e).unwrap());
        let mut e = entry(1, &content);
        e.record_id = None;
        assert_ne!(base, link_hash(&[0; 32], &e).unwrap());
    }

    #[test]
    fn the_head_must_name_the_last_row() {
        let h = [5u8; 32];
        assert_eq!(head_mismatch(0, &[0; 32], 0, &[0; 32]), None);
        assert_eq!(head_mismatch(9, &h, 9, &h), None);
        let t = head_mismatch(7, &h, 9, &[6; 32]).unwrap();
        assert_eq!((t.seq, t.reason), (8, BreakReason::Truncated));
        let t = head_mismatch(0, &[0; 32], 3, &h).unwrap();
        assert_eq!((t.seq, t.reason), (1, BreakReason::Truncated));
        let t = head_mismatch(9, &h, 9, &[6; 32]).unwrap();
        assert_eq!((t.seq, t.reason), (9, BreakReason::HeadMismatch));
        let t = head_mismatch(10, &h, 9, &[6; 32]).unwrap();
        assert_eq!((t.seq, t.reason), (10, BreakReason::HeadMismatch));
    }

    #[test]
    fn a_broken_link_says_where_and_why() {
        let b = BrokenLink {
            seq: 42,
            reason: BreakReason::Modified,
            expected: "aa".into(),
            found: "bb".into(),
        };
        let s = b.to_string();
        assert!(s.contains("seq 42") && s.contains("modified"), "{s}");
    }
}
