//! Benchmark of the evidence store's PostgreSQL half on the harness's PostgreSQL 15
//! (fsync off, as in the tests — figures for the store's own cost, not the disk's):
//!
//! - records per second through `Database::record` (record + audit row + bundle + two
//!   outbox rows, one transaction each), sequentially and from 4 concurrent writers;
//! - audit rows per second appended in batches (`Database::audit`, one lock per batch);
//! - chain verification rows per second over the whole log (≥ 100,000 rows).
//!
//! `cargo bench -p lotabots-e2e --bench store_db` (release). `STORE_DB_BENCH_ROWS` sets
//! the size of the verified log (default 120,000).

use std::{sync::Arc, time::Instant};

use anyhow::{Context, Result, ensure};
use jiff::Timestamp;
use lotabots_crds::gpu_attestation::Verdict;
use lotabots_e2e::ControlPlane;
use lotabots_store::{
    SealedBundle,
    db::{Database, DbOptions, NewAuditEvent, NewRecord, RecordKind},
};
use sha2::{Digest, Sha256};

const SEQUENTIAL: usize = 2_000;
const WRITERS: usize = 4;
const PER_WRITER: usize = 1_000;
const BATCH: usize = 1_000;

fn main() -> Result<()> {
    // `cargo bench` passes --bench; there is nothing to filter.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let plane = rt.block_on(
        ControlPlane::builder()
            .without_controller_manager()
            .without_scheduler()
            .without_kwok()
            .with_stores()
            .start(),
    )?;
    let outcome = rt.block_on(run(&plane));
    let teardown = plane.shutdown();
    eprintln!("{teardown}");
    outcome
}

fn hex_sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A verdict as the operator records it, with a 4 KiB bundle.
fn sample(writer: usize, i: usize) -> (NewRecord, SealedBundle) {
    let node = format!("bench-node-{writer}");
    let mut ciphertext = vec![0u8; 4096];
    ciphertext[..16].copy_from_slice(
        &(writer as u64 * 1_000_000 + i as u64)
            .to_le_bytes()
            .repeat(2),
    );
    let record = NewRecord {
        kind: RecordKind::GpuNode,
        subject: node.clone(),
        attestation: "h100-fleet".into(),
        verdict: Verdict::Attested,
        reasons: vec!["8 GPUs match the policy".into()],
        policy_digest: format!("sha256:{}", hex_sha256(b"policy")),
        evidence_digest: format!("sha256:{}", hex_sha256(format!("{node} {i}").as_bytes())),
        token_id: Some(format!("tok-{writer}-{i}")),
        observed_at: Timestamp::now(),
        actor: "lotabots-operator".into(),
    };
    let bundle = SealedBundle {
        digest: hex_sha256(&ciphertext),
        plaintext_sha256: hex_sha256(node.as_bytes()),
        key_id: "kek-1".into(),
        ciphertext,
    };
    (record, bundle)
}

/// The URL of database `name` on the harness's PostgreSQL.
fn db_url(plane: &ControlPlane, name: &str) -> Result<String> {
    let url = plane.stores()?.postgres.url();
    let (base, _) = url.rsplit_once('/').context("database URL")?;
    Ok(format!("{base}/{name}"))
}

/// A new database `name`, migrated.
async fn fresh(plane: &ControlPlane, name: &str) -> Result<Database> {
    let pg = &plane.stores()?.postgres;
    pg.query(&format!("CREATE DATABASE {name}")).await?;
    let mut options = DbOptions::new(db_url(plane, name)?);
    options.max_connections = WRITERS as u32 + 1;
    Database::connect_with(&options).await
}

async fn run(plane: &ControlPlane) -> Result<()> {
    let rows: usize = std::env::var("STORE_DB_BENCH_ROWS")
        .ok()
        .map(|v| v.parse())
        .transpose()
        .context("STORE_DB_BENCH_ROWS")?
        .unwrap_or(120_000);

    // Records, one writer.
    let db = fresh(plane, "bench_sequential").await?;
    let samples: Vec<_> = (0..SEQUENTIAL).map(|i| sample(0, i)).collect();
    let began = Instant::now();
    for (r, b) in &samples {
        db.record(r, Some(b), &["s3", "gcs"]).await?;
    }
    let seq_rate = SEQUENTIAL as f64 / began.elapsed().as_secs_f64();
    println!("records + audit rows, 1 writer:  {seq_rate:>9.0} /s ({SEQUENTIAL} records)");

    // Records, four writers.
    let db = Arc::new(fresh(plane, "bench_concurrent").await?);
    let began = Instant::now();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let db = db.clone();
            let samples: Vec<_> = (0..PER_WRITER).map(|i| sample(w + 1, i)).collect();
            tokio::spawn(async move {
                for (r, b) in &samples {
                    db.record(r, Some(b), &["s3", "gcs"]).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let n = WRITERS * PER_WRITER;
    let conc_rate = n as f64 / began.elapsed().as_secs_f64();
    println!("records + audit rows, {WRITERS} writers: {conc_rate:>9.0} /s ({n} records)");

    // Audit rows in batches, then verify the whole log.
    let db = fresh(plane, "bench_chain").await?;
    let began = Instant::now();
    let mut appended = 0;
    while appended < rows {
        let events: Vec<NewAuditEvent> = (appended..(appended + BATCH).min(rows))
            .map(|i| NewAuditEvent {
                actor: "lotabots-operator".into(),
                action: "record".into(),
                subject: format!("bench-node-{}", i % 64),
                record_id: None,
                content: serde_json::json!({
                    "kind": "gpu-node",
                    "verdict": "Attested",
                    "reasons": ["8 GPUs match the policy"],
                    "policy_digest": format!("sha256:{}", "ab".repeat(32)),
                    "evidence_digest": format!("sha256:{}", hex_sha256(&i.to_le_bytes())),
                    "stores": ["s3", "gcs"],
                }),
            })
            .collect();
        appended += events.len();
        db.audit(&events).await?;
    }
    let batch_rate = rows as f64 / began.elapsed().as_secs_f64();
    println!("audit rows in batches of {BATCH}:  {batch_rate:>9.0} /s ({rows} rows)");

    let mut rates = Vec::new();
    for _ in 0..3 {
        let began = Instant::now();
        let report = db.verify_chain().await?;
        let took = began.elapsed().as_secs_f64();
        ensure!(
            report.first_broken.is_none() && report.rows_checked == rows as u64,
            "{report:?}"
        );
        rates.push(rows as f64 / took);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "chain verification:              {:>9.0} rows/s median of 3 ({rows} rows; min {:.0}, max {:.0})",
        rates[1], rates[0], rates[2]
    );
    // The sequential database's chain too: records' audit rows, as the operator writes them.
    let db = Database::connect(&db_url(plane, "bench_sequential")?).await?;
    let report = db.verify_chain().await?;
    ensure!(report.first_broken.is_none() && report.rows_checked == SEQUENTIAL as u64);
    Ok(())
}
