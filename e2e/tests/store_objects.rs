//! The evidence store's object-store half on the real servers: SeaweedFS's S3 gateway
//! (signed requests, checksums) and fake-gcs-server through Google's client, with the
//! outbox on the harness's PostgreSQL 15.
//!
//! - ciphertext at rest: the servers' files hold the bundle's bytes, never the plaintext;
//! - round trip and key rotation: bundles read back open, also after the active key
//!   changed; a bundle under a key the ring lacks fails naming the key;
//! - create-only: the same bytes again are accepted, other bytes under the key refused,
//!   also on fake-gcs-server, which ignores `ifGenerationMatch=0` (shown);
//! - corruption: a truncated or altered object is caught on read by its digest;
//! - S3 stopped mid-run: GCS gets every bundle, S3 catches up after its restart, lost
//!   bundles counted in both (0);
//! - process restart: a worker dropped mid-run, a new one on the same database, 0 lost.
//!
//! Each scenario uses its own buckets and its own database, so they run in parallel.

#[path = "support/evidence_stores.rs"]
mod evidence_stores;

use std::{
    path::Path,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use evidence_stores::{evidence, gcs_store, http, key_ring, s3_store};
use jiff::Timestamp;
use lotabots_crds::gpu_attestation::Verdict;
use lotabots_e2e::{
    ControlPlane, scenario,
    stores::{OwnSeaweed, PG_DATABASE, Stores},
    suite::Ctx,
};
use lotabots_store::{
    SealedBundle,
    bundle::{self, BundleError},
    db::{Database, NewRecord, RecordKind},
    objects::{Bytes, ObjectError, ObjectStore, PutOutcome, bundle_key, get_verified},
    outbox::{Backoff, BreakerConfig, NamedStore, OutboxConfig, OutboxWorker},
};
use prometheus::Registry;

fn main() -> ExitCode {
    lotabots_e2e::suite::main(
        "store_objects",
        || {
            ControlPlane::builder()
                .without_controller_manager()
                .without_scheduler()
                .without_kwok()
                .with_stores()
        },
        &[
            scenario!(bundles_are_ciphertext_at_rest_and_open_after_key_rotation),
            scenario!(writes_are_create_only_and_corruption_is_caught_on_read),
            scenario!(s3_stopped_mid_run_loses_no_bundle),
            scenario!(a_worker_dropped_mid_run_is_resumed_by_a_new_one),
        ],
    )
}

fn stores(ctx: &Ctx) -> Result<&Stores> {
    ctx.plane().stores()
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let e = e?;
            let ty = e.file_type()?;
            if ty.is_dir() {
                todo.push(e.path());
            } else if ty.is_file() {
                out.push(e.path());
            }
        }
    }
    Ok(out)
}

/// How many files under `dir` contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Result<usize> {
    let mut n = 0;
    for f in files_under(dir)? {
        // Sockets and files that vanish while the server runs are skipped.
        let Ok(bytes) = std::fs::read(&f) else {
            continue;
        };
        if bytes.windows(needle.len()).any(|w| w == needle) {
            n += 1;
        }
    }
    Ok(n)
}

async fn bundles_are_ciphertext_at_rest_and_open_after_key_rotation(ctx: Ctx) -> Result<()> {
    let st = stores(&ctx)?;
    let s3 = s3_store(&st.s3, &ctx.name("s3")).await?;
    let gcs = gcs_store(&st.gcs, &ctx.name("gcs")).await?;
    let marker = "PLAINTEXT-MARKER-7f3a9c";
    let old = key_ring("2026-05", &[("2026-05", 1)]);
    let docs: Vec<_> = (0..4).map(|i| evidence(i, 64 * 1024, marker)).collect();
    let sealed: Vec<SealedBundle> = docs
        .iter()
        .map(|d| bundle::seal(d, &old))
        .collect::<Result<_, _>>()?;
    for b in &sealed {
        ensure!(b.key_id == "2026-05");
        let key = bundle_key(&b.digest);
        for store in [&s3 as &dyn ObjectStore, &gcs] {
            let put = store
                .put(&key, Bytes::from(b.ciphertext.clone()), &b.digest)
                .await?;
            ensure!(put.outcome == PutOutcome::Stored, "{put:?}");
        }
    }

    // At rest: SeaweedFS's volumes and fake-gcs-server's files hold the ciphertext
    // (found, so the scan does see stored bytes) and never the plaintext.
    let probe = &sealed[0].ciphertext[100..164];
    for (name, dir) in [
        ("SeaweedFS", st.s3.data_dir()),
        ("fake-gcs-server", st.gcs.root()),
    ] {
        let with_ciphertext = files_containing(dir, probe)?;
        let with_plaintext = files_containing(dir, marker.as_bytes())?;
        eprintln!(
            "{name}: {} files, {with_ciphertext} with the bundle's ciphertext, {with_plaintext} with the plaintext",
            files_under(dir)?.len()
        );
        ensure!(
            with_ciphertext > 0,
            "{name}: the ciphertext is not in its data directory"
        );
        ensure!(
            with_plaintext == 0,
            "{name}: the plaintext is at rest in its data directory"
        );
    }

    // Round trip, then rotation: the active key changes, old bundles still open.
    let rotated = key_ring("2026-11", &[("2026-05", 1), ("2026-11", 2)]);
    for (b, doc) in sealed.iter().zip(&docs) {
        for store in [&s3 as &dyn ObjectStore, &gcs] {
            let bytes = get_verified(store, &bundle_key(&b.digest), &b.digest).await?;
            ensure!(bundle::open(&bytes, &old, &b.plaintext_sha256)? == *doc);
            ensure!(bundle::open(&bytes, &rotated, &b.plaintext_sha256)? == *doc);
        }
    }
    let new = bundle::seal(&docs[0], &rotated)?;
    ensure!(new.key_id == "2026-11", "sealed under {}", new.key_id);
    s3.put(
        &bundle_key(&new.digest),
        Bytes::from(new.ciphertext.clone()),
        &new.digest,
    )
    .await?;
    let bytes = get_verified(&s3, &bundle_key(&new.digest), &new.digest).await?;
    ensure!(bundle::open(&bytes, &rotated, &new.plaintext_sha256)? == docs[0]);

    // Once the old key is dropped from the ring, its bundles fail naming it.
    let without_old = key_ring("2026-11", &[("2026-11", 2)]);
    let bytes = get_verified(&gcs, &bundle_key(&sealed[0].digest), &sealed[0].digest).await?;
    match bundle::open(&bytes, &without_old, &sealed[0].plaintext_sha256) {
        Err(e @ BundleError::UnknownKey { .. }) => {
            eprintln!("old bundle with the old key removed: {e}");
            ensure!(e.to_string().contains("\"2026-05\""), "{e}");
        }
        other => bail!("expected an unknown-key error, got {other:?}"),
    }
    // The same id with other key material: the data key does not unwrap.
    let impostor = key_ring("2026-05", &[("2026-05", 9)]);
    ensure!(matches!(
        bundle::open(&bytes, &impostor, &sealed[0].plaintext_sha256),
        Err(BundleError::WrongKey { .. })
    ));
    Ok(())
}

async fn writes_are_create_only_and_corruption_is_caught_on_read(ctx: Ctx) -> Result<()> {
    let st = stores(&ctx)?;
    let s3 = s3_store(&st.s3, &ctx.name("s3")).await?;
    let gcs_bucket = ctx.name("gcs");
    let gcs = gcs_store(&st.gcs, &gcs_bucket).await?;
    let keys = key_ring("k1", &[("k1", 1)]);
    let a = bundle::seal(&evidence(1, 4096, "a"), &keys)?;
    let b = bundle::seal(&evidence(2, 4096, "b"), &keys)?;
    let key = bundle_key(&a.digest);

    for store in [&s3 as &dyn ObjectStore, &gcs] {
        let first = store
            .put(&key, Bytes::from(a.ciphertext.clone()), &a.digest)
            .await?;
        let again = store
            .put(&key, Bytes::from(a.ciphertext.clone()), &a.digest)
            .await?;
        ensure!(
            (first.outcome, again.outcome) == (PutOutcome::Stored, PutOutcome::AlreadyPresent),
            "{first:?} {again:?}"
        );
        match store
            .put(&key, Bytes::from(b.ciphertext.clone()), &b.digest)
            .await
        {
            Err(e @ ObjectError::Conflict { .. }) => eprintln!("other bytes refused: {e}"),
            other => bail!("{}: other bytes under the key: {other:?}", first.location),
        }
        ensure!(
            get_verified(store, &key, &a.digest).await? == a.ciphertext,
            "changed"
        );
        // Bytes that are not what their digest says are refused before sending.
        ensure!(matches!(
            store
                .put(
                    &bundle_key(&b.digest),
                    Bytes::from(a.ciphertext.clone()),
                    &b.digest
                )
                .await,
            Err(ObjectError::BadInput { .. })
        ));
        ensure!(!store.exists(&bundle_key(&b.digest)).await?);
    }

    // What the servers do with the create-only preconditions themselves.
    let raw = s3.client();
    let probe_key = format!("probe/{}", ctx.prefix());
    let mut statuses = Vec::new();
    for body in [&b"first"[..], b"second"] {
        let r = raw
            .put_object()
            .bucket(s3.bucket())
            .key(&probe_key)
            .if_none_match("*")
            .body(body.to_vec().into())
            .send()
            .await;
        statuses.push(match r {
            Ok(_) => "200".to_string(),
            Err(e) => e
                .raw_response()
                .map_or_else(|| format!("{e}"), |r| r.status().as_u16().to_string()),
        });
    }
    eprintln!("SeaweedFS: two PUTs with If-None-Match: * -> {statuses:?}");
    let url = |name: &str| {
        format!(
            "{}/upload/storage/v1/b/{gcs_bucket}/o?uploadType=media&name={name}&ifGenerationMatch=0",
            st.gcs.endpoint()
        )
    };
    let mut statuses = Vec::new();
    for body in ["first", "second"] {
        let r = http().post(url("probe")).body(body).send().await?;
        statuses.push(r.status().as_u16());
    }
    let now = http()
        .get(format!(
            "{}/storage/v1/b/{gcs_bucket}/o/probe?alt=media",
            st.gcs.endpoint()
        ))
        .send()
        .await?
        .text()
        .await?;
    eprintln!(
        "fake-gcs-server: two uploads with ifGenerationMatch=0 -> {statuses:?}, object now {now:?} (real GCS answers 412 to the second)"
    );

    // Corruption on the servers, caught on read: S3 gets a truncated copy, GCS one with
    // a flipped bit, written past the create-only API.
    let truncated = a.ciphertext[..a.ciphertext.len() - 100].to_vec();
    raw.put_object()
        .bucket(s3.bucket())
        .key(&key)
        .body(truncated.into())
        .send()
        .await
        .context("overwriting the S3 object")?;
    let mut flipped = a.ciphertext.clone();
    flipped[a.ciphertext.len() / 2] ^= 0x01;
    let name = key.clone();
    let r = http()
        .post(format!(
            "{}/upload/storage/v1/b/{gcs_bucket}/o?uploadType=media&name={name}",
            st.gcs.endpoint()
        ))
        .body(flipped)
        .send()
        .await?;
    ensure!(
        r.status().is_success(),
        "overwriting the GCS object: {}",
        r.status()
    );
    for (store, expect) in [(&s3 as &dyn ObjectStore, "truncated"), (&gcs, "tampered")] {
        let err = get_verified(store, &key, &a.digest)
            .await
            .expect_err("a corrupted object must not verify");
        ensure!(matches!(err, ObjectError::Corrupt { .. }), "{err}");
        eprintln!("{err}");
        let raw_bytes = store.get(&key).await?;
        let opened = bundle::open(&raw_bytes, &keys, &a.plaintext_sha256);
        match (expect, opened) {
            ("truncated", Err(BundleError::Truncated { .. }))
            | ("tampered", Err(BundleError::Tampered)) => {}
            (_, other) => bail!("{expect} object opened as {other:?}"),
        }
    }
    Ok(())
}

/// A database of this scenario's own on the harness's PostgreSQL.
async fn own_database(ctx: &Ctx) -> Result<Database> {
    let pg = &stores(ctx)?.postgres;
    let name = ctx.prefix().replace('-', "_");
    pg.query(&format!("CREATE DATABASE {name}")).await?;
    let url = pg.url();
    let base = url
        .strip_suffix(PG_DATABASE)
        .context("the harness URL ends with its database")?;
    Database::connect(&format!("{base}{name}")).await
}

/// Seals `n` bundles (numbered from `from`) and records each with its outbox rows.
async fn record_bundles(
    db: &Database,
    from: usize,
    n: usize,
    stores: &[&str],
) -> Result<Vec<SealedBundle>> {
    let keys = key_ring("k1", &[("k1", 1)]);
    let mut out = Vec::new();
    for i in from..from + n {
        let b = bundle::seal(&evidence(i, 4096, "evidence"), &keys)?;
        let rec = NewRecord {
            kind: RecordKind::GpuNode,
            subject: format!("gpu-node-{i}"),
            attestation: "h100-fleet".into(),
            verdict: Verdict::Attested,
            reasons: vec![],
            policy_digest: format!("sha256:{}", "ab".repeat(32)),
            evidence_digest: format!("sha256:{}", b.plaintext_sha256),
            token_id: None,
            observed_at: Timestamp::now(),
            actor: "e2e".into(),
        };
        db.record(&rec, Some(&b), stores).await?;
        out.push(b);
    }
    Ok(out)
}

fn fast_config() -> OutboxConfig {
    OutboxConfig {
        batch: 16,
        concurrency: 4,
        idle_poll: Duration::from_millis(100),
        upload_timeout: Duration::from_secs(10),
        backoff: Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        },
        breaker: BreakerConfig {
            failures: 3,
            cool_down: Duration::from_secs(1),
        },
        backlog_interval: Duration::from_millis(200),
    }
}

struct Worker {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<()>>,
}

fn start_worker(db: &Database, stores: &[NamedStore]) -> Result<Worker> {
    let backlog_db = db.clone();
    let worker = OutboxWorker::new(
        Arc::new(db.clone()),
        stores.to_vec(),
        fast_config(),
        &Registry::new(),
    )?
    .with_backlog(Arc::new(move || {
        let db = backlog_db.clone();
        Box::pin(async move { db.outbox_backlog().await })
    }));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    Ok(Worker { stop, task })
}

/// Copies `store` still lacks according to the outbox.
async fn backlog(db: &Database, store: &str) -> Result<u64> {
    Ok(db.outbox_backlog().await?.get(store).copied().unwrap_or(0))
}

async fn wait_for<F: Future<Output = Result<bool>>>(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> F,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await? {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Bundles missing from `store` or not matching their digest.
async fn lost(store: &dyn ObjectStore, bundles: &[SealedBundle]) -> Result<usize> {
    let mut lost = 0;
    for b in bundles {
        match get_verified(store, &bundle_key(&b.digest), &b.digest).await {
            Ok(_) => {}
            Err(ObjectError::NotFound { .. } | ObjectError::Corrupt { .. }) => lost += 1,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(lost)
}

async fn s3_stopped_mid_run_loses_no_bundle(ctx: Ctx) -> Result<()> {
    let st = stores(&ctx)?;
    let mut seaweed = OwnSeaweed::start(&ctx.plane().run_dir().join(ctx.name("seaweedfs"))).await?;
    let s3 = Arc::new(s3_store(seaweed.s3(), "evidence-primary").await?);
    let gcs = Arc::new(gcs_store(&st.gcs, &ctx.name("gcs")).await?);
    let db = own_database(&ctx).await?;
    let db = &db;
    let named = [
        NamedStore::new("s3", s3.clone()),
        NamedStore::new("gcs", gcs.clone()),
    ];
    const N: usize = 60;
    let mut bundles = record_bundles(db, 0, N / 2, &["s3", "gcs"]).await?;
    let worker = start_worker(db, &named)?;
    wait_for(
        "S3 to have some of the first half",
        Duration::from_secs(60),
        || async move { Ok(backlog(db, "s3").await? < (N / 2) as u64) },
    )
    .await?;

    let stopped = seaweed.stop().context("SeaweedFS was running")?;
    eprintln!("SeaweedFS stopped: {}", stopped.ending);
    bundles.extend(record_bundles(db, N / 2, N / 2, &["s3", "gcs"]).await?);
    wait_for(
        "GCS to get every bundle while S3 is down",
        Duration::from_secs(60),
        || async move { Ok(backlog(db, "gcs").await? == 0) },
    )
    .await?;
    let s3_waiting = backlog(db, "s3").await?;
    eprintln!("S3 down: GCS has all {N}, S3 is {s3_waiting} behind");
    ensure!(s3_waiting > 0, "S3 was down, yet nothing waits for it");
    // Down for a while longer: the breaker holds the retries back.
    tokio::time::sleep(Duration::from_secs(3)).await;

    seaweed.restart().await?;
    eprintln!("SeaweedFS restarted on the same ports and data directory");
    wait_for("S3 to catch up", Duration::from_secs(90), || async move {
        Ok(backlog(db, "s3").await? == 0)
    })
    .await?;
    let _ = worker.stop.send(());
    worker.task.await??;

    let (lost_s3, lost_gcs) = (
        lost(s3.as_ref(), &bundles).await?,
        lost(gcs.as_ref(), &bundles).await?,
    );
    eprintln!("S3 stopped mid-run: {N} bundles, lost in S3: {lost_s3}, lost in GCS: {lost_gcs}");
    ensure!((lost_s3, lost_gcs) == (0, 0));
    // Every copy is recorded where it is.
    for b in &bundles {
        let copies = db
            .bundle_locations(&b.digest)
            .await?
            .context("bundle unknown")?;
        ensure!(copies.len() == 2, "{copies:?}");
        for c in copies {
            ensure!(
                matches!(&c.state, lotabots_store::db::CopyState::Stored { location, .. }
                    if location.ends_with(&bundle_key(&b.digest))),
                "{c:?}"
            );
        }
    }
    Ok(())
}

async fn a_worker_dropped_mid_run_is_resumed_by_a_new_one(ctx: Ctx) -> Result<()> {
    let st = stores(&ctx)?;
    let s3 = Arc::new(s3_store(&st.s3, &ctx.name("s3")).await?);
    let gcs = Arc::new(gcs_store(&st.gcs, &ctx.name("gcs")).await?);
    let db = own_database(&ctx).await?;
    let db = &db;
    let named = [
        NamedStore::new("s3", s3.clone()),
        NamedStore::new("gcs", gcs.clone()),
    ];
    const N: usize = 80;
    let bundles = record_bundles(db, 0, N, &["s3", "gcs"]).await?;
    let first = start_worker(db, &named)?;
    wait_for(
        "the first worker to upload some",
        Duration::from_secs(60),
        || async move { Ok(backlog(db, "s3").await? + backlog(db, "gcs").await? < (2 * N) as u64) },
    )
    .await?;
    // Dropped as a crash would: no graceful shutdown, uploads cut off mid-flight.
    first.task.abort();
    let _ = first.task.await;
    let left = backlog(db, "s3").await? + backlog(db, "gcs").await?;
    eprintln!(
        "worker dropped with {left} of {} copies still pending",
        2 * N
    );

    let second = start_worker(db, &named)?;
    wait_for(
        "the new worker to finish",
        Duration::from_secs(90),
        || async move { Ok(backlog(db, "s3").await? + backlog(db, "gcs").await? == 0) },
    )
    .await?;
    let _ = second.stop.send(());
    second.task.await??;
    let (lost_s3, lost_gcs) = (
        lost(s3.as_ref(), &bundles).await?,
        lost(gcs.as_ref(), &bundles).await?,
    );
    eprintln!("process restart: {N} bundles, lost in S3: {lost_s3}, lost in GCS: {lost_gcs}");
    ensure!((lost_s3, lost_gcs) == (0, 0));
    Ok(())
}
