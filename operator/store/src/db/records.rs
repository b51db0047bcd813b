//! Attestation records: one verdict on one subject, written with its audit row, its
//! sealed bundle and the bundle's outbox rows in one transaction, and listed newest first.

use std::{fmt, str::FromStr};

use anyhow::{Context, Result, bail, ensure};
use jiff::Timestamp;
use lotabots_crds::gpu_attestation::Verdict;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{FromRow, Postgres, QueryBuilder, types::Json};

use super::{Database, chain};
use crate::SealedBundle;

/// What was attested.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordKind {
    /// The GPUs of a node; the subject is the node's name.
    GpuNode,
    /// A model; the subject is its manifest digest.
    Model,
}

impl RecordKind {
    /// The name in the database and the API: `gpu-node` or `model`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GpuNode => "gpu-node",
            Self::Model => "model",
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RecordKind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "gpu-node" => Ok(Self::GpuNode),
            "model" => Ok(Self::Model),
            _ => bail!("unknown record kind {s:?} (expected gpu-node or model)"),
        }
    }
}

/// A record's id: its primary key, also the cursor of [`Page`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RecordId(pub i64);

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A verdict to record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewRecord {
    /// What was attested.
    pub kind: RecordKind,
    /// The node's name, or the model's digest.
    pub subject: String,
    /// The custom resource that asked: `name` (GpuAttestation) or `namespace/name`
    /// (ModelAttestation).
    pub attestation: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Why, in words a person can act on.
    pub reasons: Vec<String>,
    /// `sha256:<hex>` of the policy the evidence was checked against.
    pub policy_digest: String,
    /// `sha256:<hex>` of the evidence's canonical JSON.
    pub evidence_digest: String,
    /// The id of the attestation token issued for this verdict, if any.
    pub token_id: Option<String>,
    /// When the evidence was checked.
    pub observed_at: Timestamp,
    /// Who records it (the audit row's actor), e.g. `lotabots-operator`.
    pub actor: String,
}

impl NewRecord {
    /// Refuses what the database would refuse, with the field named.
    fn validate(&self) -> Result<()> {
        ensure!(!self.subject.is_empty(), "record: the subject is empty");
        ensure!(
            !self.attestation.is_empty(),
            "record: the attestation is empty"
        );
        ensure!(!self.actor.is_empty(), "record: the actor is empty");
        check_prefixed_digest("policy_digest", &self.policy_digest)?;
        check_prefixed_digest("evidence_digest", &self.evidence_digest)?;
        Ok(())
    }
}

/// A stored record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Its id.
    pub id: RecordId,
    /// What was attested.
    pub kind: RecordKind,
    /// The node's name, or the model's digest.
    pub subject: String,
    /// The custom resource that asked.
    pub attestation: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Why.
    pub reasons: Vec<String>,
    /// `sha256:<hex>` of the policy.
    pub policy_digest: String,
    /// `sha256:<hex>` of the evidence.
    pub evidence_digest: String,
    /// The sealed bundle's digest (hex SHA-256 of its ciphertext), if one was stored.
    pub bundle_digest: Option<String>,
    /// The attestation token's id, if one was issued.
    pub token_id: Option<String>,
    /// When the evidence was checked.
    pub observed_at: Timestamp,
    /// When the record was committed.
    pub recorded_at: Timestamp,
}

/// Which records to list; every field set narrows the list.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordFilter {
    /// Only this kind.
    pub kind: Option<RecordKind>,
    /// Only this subject.
    pub subject: Option<String>,
    /// Only records asked for by this custom resource.
    pub attestation: Option<String>,
    /// Only this verdict.
    pub verdict: Option<Verdict>,
    /// Only evidence observed at or after this time.
    pub since: Option<Timestamp>,
}

/// A page of a listing, newest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// At most this many records (1 to [`Page::MAX_LIMIT`]).
    pub limit: u32,
    /// Records older than this one: the previous page's [`RecordPage::next`].
    pub after: Option<RecordId>,
}

impl Page {
    /// The largest page.
    pub const MAX_LIMIT: u32 = 1000;

    /// The first `limit` records.
    pub fn first(limit: u32) -> Self {
        Self { limit, after: None }
    }
}

/// One page of records and where the next begins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordPage {
    /// Newest first.
    pub records: Vec<Record>,
    /// The cursor of the next page; `None` on the last.
    pub next: Option<RecordId>,
}

#[derive(FromRow)]
struct RecordRow {
    id: i64,
    kind: String,
    subject: String,
    attestation: String,
    verdict: String,
    reasons: Json<Vec<String>>,
    policy_digest: String,
    evidence_digest: String,
    bundle_digest: Option<String>,
    token_id: Option<String>,
    observed_at: jiff_sqlx::Timestamp,
    recorded_at: jiff_sqlx::Timestamp,
}

impl TryFrom<RecordRow> for Record {
    type Error = anyhow::Error;

    fn try_from(r: RecordRow) -> Result<Self> {
        let verdict = serde_json::from_value(serde_json::Value::String(r.verdict.clone()))
            .with_context(|| format!("record {}: unknown verdict {:?}", r.id, r.verdict))?;
        Ok(Self {
            id: RecordId(r.id),
            kind: r.kind.parse().with_context(|| format!("record {}", r.id))?,
            subject: r.subject,
            attestation: r.attestation,
            verdict,
            reasons: r.reasons.0,
            policy_digest: r.policy_digest,
            evidence_digest: r.evidence_digest,
            bundle_digest: r.bundle_digest,
            token_id: r.token_id,
            observed_at: r.observed_at.to_jiff(),
            recorded_at: r.recorded_at.to_jiff(),
        })
    }
}

/// What a record's audit row says: the record as committed, and where its bundle goes.
#[derive(Serialize)]
struct RecordAudit<'a> {
    kind: RecordKind,
    subject: &'a str,
    attestation: &'a str,
    verdict: Verdict,
    reasons: &'a [String],
    policy_digest: &'a str,
    evidence_digest: &'a str,
    bundle_digest: Option<&'a str>,
    token_id: Option<&'a str>,
    observed_at: Timestamp,
    stores: &'a [&'a str],
}

const RECORD_COLUMNS: &str = "id, kind, subject, attestation, verdict, reasons, policy_digest, \
     evidence_digest, bundle_digest, token_id, observed_at, recorded_at";

impl Database {
    /// Commits `record`, its audit row, and — with a bundle — the bundle and one outbox
    /// row per store in `stores`, all in ONE transaction: after this returns the bundle
    /// is acknowledged and the outbox will get it to every store; on error nothing was
    /// written. A bundle (or an outbox row) already stored is kept as it is, so retrying
    /// after an unclear failure never duplicates one.
    pub async fn record(
        &self,
        record: &NewRecord,
        bundle: Option<&SealedBundle>,
        stores: &[&str],
    ) -> Result<RecordId> {
        record.validate()?;
        if let Some(b) = bundle {
            check_bundle(b)?;
        }
        check_stores(bundle.is_some(), stores)?;
        // PostgreSQL keeps microseconds: the audit row says what the record holds.
        let observed_at = Timestamp::from_microsecond(record.observed_at.as_microsecond())?;
        // Serialize before the transaction: nothing to roll back if this fails.
        let content = serde_json::to_value(RecordAudit {
            kind: record.kind,
            subject: &record.subject,
            attestation: &record.attestation,
            verdict: record.verdict,
            reasons: &record.reasons,
            policy_digest: &record.policy_digest,
            evidence_digest: &record.evidence_digest,
            bundle_digest: bundle.map(|b| b.digest.as_str()),
            token_id: record.token_id.as_deref(),
            observed_at,
            stores,
        })?;

        let mut tx = self.pool.begin().await.context("beginning a transaction")?;
        if let Some(b) = bundle {
            // One round trip: the outbox rows' foreign key is checked at the end of the
            // statement, when the bundle is in.
            sqlx::query(
                "WITH stored AS ( \
                   INSERT INTO bundles (digest, plaintext_sha256, key_id, ciphertext) \
                   VALUES ($1, $2, $3, $4) ON CONFLICT (digest) DO NOTHING) \
                 INSERT INTO outbox (bundle_digest, store) SELECT $1, unnest($5::text[]) \
                 ON CONFLICT (bundle_digest, store) DO NOTHING",
            )
            .bind(&b.digest)
            .bind(&b.plaintext_sha256)
            .bind(&b.key_id)
            .bind(&b.ciphertext)
            .bind(stores)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("storing bundle {} for {stores:?}", b.digest))?;
        }
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO attestation_records (kind, subject, attestation, verdict, reasons, \
             policy_digest, evidence_digest, bundle_digest, token_id, observed_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
        )
        .bind(record.kind.as_str())
        .bind(&record.subject)
        .bind(&record.attestation)
        .bind(record.verdict.as_str())
        .bind(Json(&record.reasons))
        .bind(&record.policy_digest)
        .bind(&record.evidence_digest)
        .bind(bundle.map(|b| &b.digest))
        .bind(&record.token_id)
        .bind(jiff_sqlx::Timestamp::from(observed_at))
        .fetch_one(&mut *tx)
        .await
        .with_context(|| format!("inserting the record of {}", record.subject))?;
        // Last, so that the chain head stays locked as briefly as possible.
        chain::append(
            &mut tx,
            &[chain::NewAuditEvent {
                actor: record.actor.clone(),
                action: "record".into(),
                subject: record.subject.clone(),
                record_id: Some(RecordId(id)),
                content,
            }],
        )
        .await?;
        tx.commit().await.context("committing the record")?;
        Ok(RecordId(id))
    }

    /// One record.
    pub async fn get_record(&self, id: RecordId) -> Result<Option<Record>> {
        let row: Option<RecordRow> = sqlx::query_as(&format!(
            "SELECT {RECORD_COLUMNS} FROM attestation_records WHERE id = $1"
        ))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await
        .with_context(|| format!("reading record {id}"))?;
        row.map(Record::try_from).transpose()
    }

    /// The records `filter` selects, newest first, one `page` at a time.
    pub async fn list_records(&self, filter: &RecordFilter, page: Page) -> Result<RecordPage> {
        ensure!(
            (1..=Page::MAX_LIMIT).contains(&page.limit),
            "page limit {} is out of range 1..={}",
            page.limit,
            Page::MAX_LIMIT
        );
        // Only the conditions asked for, so that each query can use its index.
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new(format!(
            "SELECT {RECORD_COLUMNS} FROM attestation_records WHERE true"
        ));
        if let Some(kind) = filter.kind {
            q.push(" AND kind = ").push_bind(kind.as_str());
        }
        if let Some(subject) = &filter.subject {
            q.push(" AND subject = ").push_bind(subject);
        }
        if let Some(attestation) = &filter.attestation {
            q.push(" AND attestation = ").push_bind(attestation);
        }
        if let Some(verdict) = filter.verdict {
            q.push(" AND verdict = ").push_bind(verdict.as_str());
        }
        if let Some(since) = filter.since {
            q.push(" AND observed_at >= ")
                .push_bind(jiff_sqlx::Timestamp::from(since));
        }
        if let Some(after) = page.after {
            q.push(" AND id < ").push_bind(after.0);
        }
        // One more than asked: whether there is a next page.
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(page.limit) + 1);
        let rows: Vec<RecordRow> = q
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .context("listing records")?;
        let mut records = rows
            .into_iter()
            .map(Record::try_from)
            .collect::<Result<Vec<_>>>()?;
        let next = if records.len() > page.limit as usize {
            records.truncate(page.limit as usize);
            records.last().map(|r| r.id)
        } else {
            None
        };
        Ok(RecordPage { records, next })
    }
}

/// `sha256:` and 64 lowercase hex digits.
fn check_prefixed_digest(field: &str, value: &str) -> Result<()> {
    match value.strip_prefix("sha256:") {
        Some(hex) if is_sha256_hex(hex) => Ok(()),
        _ => bail!("record: {field} {value:?} is not sha256:<64 lowercase hex digits>"),
    }
}

pub(super) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A bundle is named by the SHA-256 of its ciphertext: one that is not cannot be
/// stored, since every store would hold it under a wrong name.
fn check_bundle(b: &SealedBundle) -> Result<()> {
    ensure!(
        is_sha256_hex(&b.digest),
        "bundle digest {:?} is not 64 lowercase hex digits",
        b.digest
    );
    ensure!(
        is_sha256_hex(&b.plaintext_sha256),
        "bundle {}: plaintext_sha256 {:?} is not 64 lowercase hex digits",
        b.digest,
        b.plaintext_sha256
    );
    ensure!(
        !b.key_id.is_empty(),
        "bundle {}: the key id is empty",
        b.digest
    );
    let actual = hex::encode(Sha256::digest(&b.ciphertext));
    ensure!(
        actual == b.digest,
        "bundle {}: the ciphertext's SHA-256 is {actual} (corrupt bundle)",
        b.digest
    );
    Ok(())
}

fn check_stores(have_bundle: bool, stores: &[&str]) -> Result<()> {
    ensure!(
        have_bundle || stores.is_empty(),
        "stores {stores:?} given without a bundle to upload"
    );
    for (i, s) in stores.iter().enumerate() {
        ensure!(!s.is_empty(), "an empty store name");
        ensure!(!stores[..i].contains(s), "store {s:?} named twice");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(ciphertext: &[u8]) -> SealedBundle {
        SealedBundle {
            digest: hex::encode(Sha256::digest(ciphertext)),
            plaintext_sha256: "ab".repeat(32),
            key_id: "k1".into(),
            ciphertext: ciphertext.to_vec(),
        }
    }

    #[test]
    fn a_bundle_must_be_named_by_its_ciphertext() {
        let good = bundle(b"sealed");
        check_bundle(&good).unwrap();
        let mut corrupt = good.clone();
        corrupt.ciphertext[0] ^= 1;
        let e = check_bundle(&corrupt).unwrap_err().to_string();
        assert!(e.contains("corrupt bundle"), "{e}");
        let mut bad_name = good.clone();
        bad_name.digest = bad_name.digest.to_uppercase();
        assert!(check_bundle(&bad_name).is_err());
        let mut no_key = good;
        no_key.key_id.clear();
        assert!(check_bundle(&no_key).is_err());
    }

    #[test]
    fn stores_are_named_once_and_need_a_bundle() {
        check_stores(true, &["s3", "gcs"]).unwrap();
        check_stores(false, &[]).unwrap();
        assert!(check_stores(false, &["s3"]).is_err());
        assert!(check_stores(true, &["s3", "s3"]).is_err());
        assert!(check_stores(true, &[""]).is_err());
    }

    #[test]
    fn digests_are_checked_with_the_field_named() {
        check_prefixed_digest("policy_digest", &format!("sha256:{}", "0".repeat(64))).unwrap();
        for bad in [
            "",
            "sha256:",
            &"0".repeat(64),
            &format!("sha256:{}", "A".repeat(64)),
        ] {
            let e = check_prefixed_digest("policy_digest", bad).unwrap_err();
            assert!(e.to_string().contains("policy_digest"), "{e}");
        }
    }

    #[test]
    fn kinds_round_trip_through_their_names() {
        for k in [RecordKind::GpuNode, RecordKind::Model] {
            assert_eq!(k.as_str().parse::<RecordKind>().unwrap(), k);
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        assert!("node".parse::<RecordKind>().is_err());
    }
}
