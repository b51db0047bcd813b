//! The evidence store's object stores on the harness's servers, shared by the test
//! suites and `benches/store_objects.rs` that include it with `#[path]`.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use lotabots_e2e::stores::{Gcs, S3};
use lotabots_store::{
    bundle::KeyRing,
    objects::{GcsConfig, GcsStore, S3Config, S3Credentials, S3Store},
};
use serde_json::{Value, json};

/// An S3 store on SeaweedFS's gateway, its bucket created.
pub async fn s3_store(s3: &S3, bucket: &str) -> Result<S3Store> {
    let store = s3_client(s3, bucket)?;
    store.ensure_bucket().await?;
    Ok(store)
}

/// An S3 store on SeaweedFS's gateway for an existing `bucket` (no request made: it may
/// be down).
pub fn s3_client(s3: &S3, bucket: &str) -> Result<S3Store> {
    let mut cfg = S3Config::new(
        bucket,
        s3.region(),
        S3Credentials {
            access_key_id: s3.access_key().into(),
            secret_access_key: s3.secret_key().into(),
        },
    );
    cfg.endpoint = Some(s3.endpoint().into());
    cfg.timeout = Duration::from_secs(10);
    S3Store::new(cfg)
}

/// A GCS store on fake-gcs-server (anonymous), its bucket created through the JSON API
/// (the client crate creates buckets over gRPC only).
pub async fn gcs_store(gcs: &Gcs, bucket: &str) -> Result<GcsStore> {
    let resp = http()
        .post(format!("{}/storage/v1/b?project=lotabots", gcs.endpoint()))
        .json(&json!({"name": bucket}))
        .send()
        .await
        .context("creating the GCS bucket")?;
    let status = resp.status();
    ensure!(
        status.is_success() || status.as_u16() == 409,
        "creating GCS bucket {bucket}: {status} {}",
        resp.text().await.unwrap_or_default()
    );
    let mut cfg = GcsConfig::new(bucket);
    cfg.endpoint = Some(gcs.endpoint().into());
    cfg.anonymous = true;
    cfg.timeout = Duration::from_secs(10);
    GcsStore::new(cfg).await
}

/// A plain HTTP client (for what the store clients do not do).
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A key ring of 32-byte keys `id → [byte; 32]`, sealing with `active`.
pub fn key_ring(active: &str, keys: &[(&str, u8)]) -> KeyRing {
    let material: Vec<(&str, [u8; 32])> = keys.iter().map(|(id, b)| (*id, [*b; 32])).collect();
    KeyRing::new(active, material.iter().map(|(id, k)| (*id, k.as_slice())))
        .expect("a valid test key ring")
}

/// An evidence document of about `size` bytes, unique per `i`, whose text includes
/// `marker` many times.
pub fn evidence(i: usize, size: usize, marker: &str) -> Value {
    let filler = format!("{marker} ");
    json!({
        "node": format!("gpu-node-{i}"),
        "verdict": "Attested",
        "gpus": [{"uuid": format!("GPU-{i:08}"), "vbios": "96.00.5E.00.01", "driver": "570.86.15"}],
        "measurements": filler.repeat(size / filler.len() + 1),
    })
}
