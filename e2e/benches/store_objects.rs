//! Benchmark of the evidence store's object-store half on the harness's servers:
//!
//! - seal and open throughput (canonical JSON, AES-256-GCM envelope) for 4 KiB and
//!   1 MiB evidence documents;
//! - upload throughput per store — SeaweedFS's S3 gateway (signed, SHA-256 checksum,
//!   HEAD then create-only PUT), fake-gcs-server through Google's client (existence
//!   read then `ifGenerationMatch=0` upload), a local directory (fsync, hard link) — for
//!   4 KiB and 1 MiB bundles, one upload at a time and 8 in flight (the outbox's
//!   default concurrency).
//!
//! All on 127.0.0.1, so the figures are the stores' and the clients' cost, not a
//! network's. `cargo bench -p lotabots-e2e --bench store_objects` (release).

#[path = "../tests/support/evidence_stores.rs"]
mod evidence_stores;

use std::{sync::Arc, time::Instant};

use anyhow::{Result, ensure};
use evidence_stores::{evidence, gcs_store, key_ring, s3_store};
use lotabots_e2e::ControlPlane;
use lotabots_store::{
    SealedBundle,
    bundle::{self, canonical_json},
    objects::{Bytes, LocalStore, ObjectStore, bundle_key},
};

const MIB: f64 = 1024.0 * 1024.0;

/// (label, document size, bundles sealed and uploaded per round)
const SIZES: [(&str, usize, usize); 2] = [("4 KiB", 4 * 1024, 400), ("1 MiB", 1024 * 1024, 24)];

fn main() -> Result<()> {
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

fn rate(n: usize, bytes: usize, secs: f64) -> String {
    format!(
        "{:>9.1} bundles/s {:>8.1} MiB/s",
        n as f64 / secs,
        bytes as f64 / MIB / secs
    )
}

async fn run(plane: &ControlPlane) -> Result<()> {
    let st = plane.stores()?;
    let keys = key_ring("k1", &[("k1", 1)]);
    let mut sealed_by_size = Vec::new();

    println!("\nseal / open (one thread):");
    for (label, size, n) in SIZES {
        // More rounds for small documents, so that the timing is not noise.
        let reps = if size < 64 * 1024 { 5 } else { 2 };
        let docs: Vec<_> = (0..n).map(|i| evidence(i, size, "bench")).collect();
        let plain: usize = docs
            .iter()
            .map(|d| canonical_json(d).map(|c| c.len()).unwrap_or(0))
            .sum();
        let began = Instant::now();
        let mut sealed = Vec::new();
        for _ in 0..reps {
            sealed = docs
                .iter()
                .map(|d| bundle::seal(d, &keys))
                .collect::<Result<Vec<_>, _>>()?;
        }
        let seal_s = began.elapsed().as_secs_f64();
        let began = Instant::now();
        for _ in 0..reps {
            for b in &sealed {
                bundle::open_sealed(b, &keys)?;
            }
        }
        let open_s = began.elapsed().as_secs_f64();
        println!("  {label:>6} seal {}", rate(n * reps, plain * reps, seal_s));
        println!("  {label:>6} open {}", rate(n * reps, plain * reps, open_s));
        sealed_by_size.push((label, sealed));
    }

    let local_dir = plane.run_dir().join("bench-local-store");
    let s3: Arc<dyn ObjectStore> = Arc::new(s3_store(&st.s3, "bench-s3").await?);
    let gcs: Arc<dyn ObjectStore> = Arc::new(gcs_store(&st.gcs, "bench-gcs").await?);
    let local: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(&local_dir)?);
    println!("\nupload (create-only put of new bundles):");
    for (name, store) in [
        ("s3 (SeaweedFS)", &s3),
        ("gcs (fake-gcs-server)", &gcs),
        ("local directory", &local),
    ] {
        for (round, (label, sealed)) in sealed_by_size.iter().enumerate() {
            for (c, concurrency) in [1usize, 8].into_iter().enumerate() {
                // Fresh bundles per measurement: re-uploading would only measure the
                // already-present path.
                let fresh: Vec<SealedBundle> = sealed
                    .iter()
                    .map(|b| {
                        let doc = bundle::open_sealed(b, &keys)?;
                        let mut doc = doc;
                        doc["round"] = serde_json::json!(format!("{name}-{round}-{c}"));
                        bundle::seal(&doc, &keys)
                    })
                    .collect::<Result<_, _>>()?;
                let bytes: usize = fresh.iter().map(|b| b.ciphertext.len()).sum();
                let secs = upload_all(store, &fresh, concurrency).await?;
                println!(
                    "  {name:<22} {label:>6} x{concurrency} in flight {}",
                    rate(fresh.len(), bytes, secs)
                );
            }
        }
    }
    Ok(())
}

/// Uploads `bundles` with `concurrency` uploads in flight; the seconds it took.
async fn upload_all(
    store: &Arc<dyn ObjectStore>,
    bundles: &[SealedBundle],
    concurrency: usize,
) -> Result<f64> {
    let began = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..concurrency {
        let store = store.clone();
        let mine: Vec<SealedBundle> = bundles
            .iter()
            .skip(lane)
            .step_by(concurrency)
            .cloned()
            .collect();
        tasks.spawn(async move {
            for b in mine {
                let put = store
                    .put(&bundle_key(&b.digest), Bytes::from(b.ciphertext), &b.digest)
                    .await?;
                ensure!(
                    put.outcome == lotabots_store::objects::PutOutcome::Stored,
                    "{put:?}"
                );
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(began.elapsed().as_secs_f64())
}
