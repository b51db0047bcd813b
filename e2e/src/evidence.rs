//! The operator's evidence store wired to the harness's stores, as `lotabots-e2e up
//! --stores` and the `recording` suite use it: the buckets are created (as a user would
//! before installing), a fresh key-encryption key goes into the Secret the operator reads,
//! and [`evidence_store::connect`] does the rest exactly as `lotabots-operator run` does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use lotabots_operator::evidence_store::{self, EvidenceStore, StoreArgs, StoreSecrets};
use lotabots_store::bundle::KeyRing;
use lotabots_store::objects::{S3Config, S3Credentials, S3Store};
use rand::RngCore;
use tokio::task::JoinHandle;

use crate::stores::Stores;

/// The primary bucket (S3).
pub const S3_BUCKET: &str = "lotabots-evidence";
/// The backup bucket (GCS).
pub const GCS_BUCKET: &str = "lotabots-evidence-backup";
/// The Secret holding the key-encryption keys.
pub const KEY_SECRET: &str = "lotabots-bundle-keys";
/// The id of the key the harness generates.
pub const KEY_ID: &str = "e2e-1";

/// A connected evidence store and its running outbox worker.
pub struct Recording {
    /// Records verdicts (hand it to the controller).
    pub store: Arc<EvidenceStore>,
    key: [u8; 32],
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    worker: JoinHandle<anyhow::Result<()>>,
}

impl Recording {
    /// Creates the buckets and the key Secret in `namespace`, connects the store and
    /// starts the outbox worker.
    pub async fn start(client: kube::Client, stores: &Stores, namespace: &str) -> Result<Self> {
        create_buckets(stores).await?;
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(KEY_SECRET.into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([
                ("active".to_string(), ByteString(KEY_ID.as_bytes().to_vec())),
                (KEY_ID.to_string(), ByteString(key.to_vec())),
            ])),
            ..Default::default()
        };
        Api::<Secret>::namespaced(client.clone(), namespace)
            .create(&PostParams::default(), &secret)
            .await
            .context("creating the bundle key Secret")?;

        let args = StoreArgs {
            s3_bucket: Some(S3_BUCKET.into()),
            s3_region: stores.s3.region().into(),
            s3_endpoint: Some(stores.s3.endpoint().into()),
            gcs_bucket: Some(GCS_BUCKET.into()),
            gcs_endpoint: Some(stores.gcs.endpoint().into()),
            gcs_anonymous: true,
            bundle_keys_secret: KEY_SECRET.into(),
            secrets: StoreSecrets {
                database_url: Some(stores.postgres.url()),
                s3: Some(s3_credentials(stores)),
            },
            ..Default::default()
        };
        let wired = evidence_store::connect(&args, client, namespace, &prometheus::Registry::new())
            .await?
            .context("a database URL is configured, yet no store was connected")?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(wired.worker.run(async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            store: wired.store,
            key,
            stop: Some(stop),
            worker,
        })
    }

    /// The key ring the bundles are sealed with (to open what the stores hold).
    pub fn key_ring(&self) -> Result<KeyRing> {
        Ok(KeyRing::new(KEY_ID, [(KEY_ID, self.key.as_slice())])?)
    }

    /// Stops the outbox worker (uploads under way finish) and closes the database.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), &mut self.worker)
            .await
            .context("the outbox worker did not stop")???;
        self.store.database().close().await;
        Ok(())
    }
}

fn s3_credentials(stores: &Stores) -> S3Credentials {
    S3Credentials {
        access_key_id: stores.s3.access_key().into(),
        secret_access_key: stores.s3.secret_key().into(),
    }
}

/// The two buckets, as a user creates them before installing.
async fn create_buckets(stores: &Stores) -> Result<()> {
    let mut s3 = S3Config::new(S3_BUCKET, stores.s3.region(), s3_credentials(stores));
    s3.endpoint = Some(stores.s3.endpoint().into());
    S3Store::new(s3)?.ensure_bucket().await?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/storage/v1/b?project=lotabots",
            stores.gcs.endpoint()
        ))
        .json(&serde_json::json!({ "name": GCS_BUCKET }))
        .send()
        .await
        .context("creating the GCS bucket")?;
    let status = resp.status();
    ensure!(
        status.is_success() || status.as_u16() == 409,
        "creating the GCS bucket {GCS_BUCKET}: {status}"
    );
    Ok(())
}
