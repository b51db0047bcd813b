//! The evidence store wired into the operator: every change of a node's verdict becomes a
//! PostgreSQL record with its audit row, and the evidence behind it an encrypted bundle
//! that the outbox worker copies to S3 (primary) and GCS (backup).
//!
//! Configuration comes from flags and the environment; the secrets only from the
//! environment (filled from Secrets by `valueFrom.secretKeyRef`) or a Secret read
//! through the API, never from an argument, where `ps` would show them:
//!
//! | what | where |
//! |---|---|
//! | PostgreSQL URL (with its password) | env `LOTABOTS_DATABASE_URL` |
//! | S3 credentials | env `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` |
//! | GCS credentials | Application Default Credentials (workload identity, or a key file named by `GOOGLE_APPLICATION_CREDENTIALS`) |
//! | bundle key-encryption keys | Secret `--bundle-keys-secret` in the operator's namespace (layout in `lotabots_store::bundle::KeyRing::from_secret_data`) |
//!
//! The key Secret is read again every [`KEY_RELOAD`], so a rotated key is used without a
//! restart; bundles sealed under a retired key still open as long as the Secret keeps it.
//!
//! Replicas share the database: every replica consumes nonces and stores the evidence it
//! accepts there ([`SharedAcceptance`] for [`Database`]) and follows what the others
//! accept ([`follow_evidence`]); only the leader records verdicts and runs the outbox.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::future::BoxFuture;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use lotabots_crds::gpu_attestation::{GpuAttestation, Verdict};
use lotabots_crds::model_attestation::ModelAttestation;
use lotabots_store::bundle::{KeyRing, seal};
use lotabots_store::db::{Acceptance, Database, DbOptions, NewRecord, NodeEvidenceRow, RecordKind};
use lotabots_store::objects::{GcsConfig, GcsStore, ObjectStore, S3Config, S3Credentials, S3Store};
use lotabots_store::outbox::{NamedStore, OutboxConfig, OutboxWorker};
use prometheus::Registry;
use serde_json::json;

use crate::challenges::Verified;
use crate::evidence_api::{AcceptedEvidence, LatestEvidence, SharedAcceptance};
use crate::status::NodeResult;

/// How often the bundle key Secret is read again.
pub const KEY_RELOAD: Duration = Duration::from_secs(60);

/// How often expired consumed nonces are deleted.
pub const NONCE_PRUNE: Duration = Duration::from_secs(300);

/// Who the audit rows name as the actor.
const ACTOR: &str = "lotabots-operator";

/// Where verdict changes are recorded. The controller sees only this, so that its tests
/// need no database.
pub trait VerdictLog: Send + Sync {
    /// Records that `result` is the new verdict of a node selected by `attestation`,
    /// judged from `evidence` (none: the agent never reported or went silent). Returns
    /// only once the record, its audit row and its bundle are committed.
    fn record<'a>(
        &'a self,
        attestation: &'a GpuAttestation,
        result: &'a NodeResult,
        evidence: Option<&'a AcceptedEvidence>,
    ) -> BoxFuture<'a, anyhow::Result<()>>;
}

/// Where model verdicts are recorded, beside [`VerdictLog`]'s GPU verdicts.
pub trait ModelLog: Send + Sync {
    /// Records `result`, the new verdict of the ModelAttestation `attestation`, with
    /// `statement`: the operator's signed Sigstore bundle binding every stage's result to
    /// the manifest digest (the record's subject). Returns only once the record, its
    /// audit row and the sealed statement are committed.
    fn record_model<'a>(
        &'a self,
        attestation: &'a ModelAttestation,
        result: &'a ModelResult,
        statement: &'a lotabots_model::bundle::Bundle,
    ) -> BoxFuture<'a, anyhow::Result<()>>;
}

/// A model verdict as recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelResult {
    /// `sha256:HEX`, the manifest's digest: the record's subject.
    pub manifest_digest: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Why, as the status says it.
    pub reasons: Vec<String>,
}

/// The store's flags. Without `--database-url`'s variable nothing is stored and verdicts
/// live in the GpuAttestations' status only.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct StoreArgs {
    /// TLS mode towards PostgreSQL (`disable`, `prefer`, `require`, `verify-ca`,
    /// `verify-full`); the URL's `sslmode` when unset.
    #[arg(long, env = "LOTABOTS_DATABASE_SSLMODE")]
    pub database_sslmode: Option<String>,
    /// PEM file of the CA that signed PostgreSQL's certificate.
    #[arg(long, env = "LOTABOTS_DATABASE_CA")]
    pub database_ca: Option<PathBuf>,
    /// The S3 bucket (primary copy of every evidence bundle).
    #[arg(long, env = "LOTABOTS_S3_BUCKET")]
    pub s3_bucket: Option<String>,
    /// The S3 region requests are signed for.
    #[arg(long, env = "LOTABOTS_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// A custom S3 endpoint (S3-compatible stores); AWS when unset.
    #[arg(long, env = "LOTABOTS_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// The GCS bucket (backup copy of every evidence bundle).
    #[arg(long, env = "LOTABOTS_GCS_BUCKET")]
    pub gcs_bucket: Option<String>,
    /// A custom GCS endpoint (emulators); Google's when unset.
    #[arg(long, env = "LOTABOTS_GCS_ENDPOINT")]
    pub gcs_endpoint: Option<String>,
    /// Send no credentials to GCS (emulators only).
    #[arg(long, env = "LOTABOTS_GCS_ANONYMOUS")]
    pub gcs_anonymous: bool,
    /// The Secret holding the bundle key-encryption keys, in the operator's namespace.
    #[arg(
        long,
        env = "LOTABOTS_BUNDLE_KEYS_SECRET",
        default_value = "lotabots-bundle-keys"
    )]
    pub bundle_keys_secret: String,
    /// The secrets: from the environment only ([`StoreSecrets::from_env`]).
    #[arg(skip)]
    pub secrets: StoreSecrets,
}

/// The store's secrets. `Debug` shows which are set, never their values.
#[derive(Clone, Default)]
pub struct StoreSecrets {
    /// PostgreSQL URL, password included (`LOTABOTS_DATABASE_URL`).
    pub database_url: Option<String>,
    /// S3 credentials (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`).
    pub s3: Option<S3Credentials>,
}

impl StoreSecrets {
    /// Reads the variables named in the module documentation; empty counts as unset.
    pub fn from_env() -> Self {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        Self {
            database_url: var("LOTABOTS_DATABASE_URL"),
            s3: var("AWS_ACCESS_KEY_ID")
                .zip(var("AWS_SECRET_ACCESS_KEY"))
                .map(|(access_key_id, secret_access_key)| S3Credentials {
                    access_key_id,
                    secret_access_key,
                }),
        }
    }
}

impl std::fmt::Debug for StoreSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSecrets")
            .field(
                "database_url",
                &self
                    .database_url
                    .as_deref()
                    .map(lotabots_store::db::redact_url),
            )
            .field("s3", &self.s3)
            .finish()
    }
}

/// The database, the key ring and the names of the stores each bundle goes to.
pub struct EvidenceStore {
    db: Arc<Database>,
    keys: Arc<RwLock<KeyRing>>,
    stores: Vec<String>,
}

impl EvidenceStore {
    /// The database the records go to.
    pub fn database(&self) -> &Arc<Database> {
        &self.db
    }
}

/// The evidence store and the outbox worker that copies its bundles.
pub struct Wired {
    /// Records verdicts.
    pub store: Arc<EvidenceStore>,
    /// Uploads bundles until shutdown.
    pub worker: OutboxWorker<Database>,
    /// Keeps the key ring current until shutdown.
    pub key_reload: BoxFuture<'static, ()>,
}

/// Connects what `args` configure: `None` without a database URL. Fails (naming what is wrong) when the database is
/// unreachable, no object store is configured, or the key Secret is missing or invalid,
/// so that a misconfigured operator never runs believing it keeps proof.
pub async fn connect(
    args: &StoreArgs,
    client: Client,
    namespace: &str,
    registry: &Registry,
) -> anyhow::Result<Option<Wired>> {
    let Some(url) = &args.secrets.database_url else {
        return Ok(None);
    };
    let mut options = DbOptions::new(url.clone());
    if let Some(mode) = &args.database_sslmode {
        options.ssl_mode = Some(
            mode.parse()
                .map_err(|e| anyhow::anyhow!("--database-sslmode {mode:?}: {e}"))?,
        );
    }
    options.ssl_root_cert = args.database_ca.clone();
    let db = Arc::new(Database::connect_with(&options).await?);

    let stores = object_stores(args).await?;
    if stores.is_empty() {
        bail!(
            "LOTABOTS_DATABASE_URL is set but no object store is: set --s3-bucket and/or \
             --gcs-bucket, where the evidence bundles go"
        );
    }
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let keys = Arc::new(RwLock::new(
        read_key_ring(&secrets, &args.bundle_keys_secret).await?,
    ));

    let names = stores.iter().map(|s| s.name.clone()).collect();
    let backlog_db = db.clone();
    let worker = OutboxWorker::new(db.clone(), stores, OutboxConfig::default(), registry)?
        .with_backlog(Arc::new(move || {
            let db = backlog_db.clone();
            Box::pin(async move { db.outbox_backlog().await })
        }));
    let key_reload = Box::pin(reload_keys(
        secrets,
        args.bundle_keys_secret.clone(),
        keys.clone(),
    ));
    Ok(Some(Wired {
        store: Arc::new(EvidenceStore {
            db,
            keys,
            stores: names,
        }),
        worker,
        key_reload,
    }))
}

/// The configured object stores, S3 first.
async fn object_stores(args: &StoreArgs) -> anyhow::Result<Vec<NamedStore>> {
    let mut stores = Vec::new();
    if let Some(bucket) = &args.s3_bucket {
        let credentials = args.secrets.s3.clone().context(
            "--s3-bucket is set: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be too",
        )?;
        let mut config = S3Config::new(bucket, &args.s3_region, credentials);
        config.endpoint = args.s3_endpoint.clone();
        let store: Arc<dyn ObjectStore> = Arc::new(S3Store::new(config)?);
        stores.push(NamedStore::new("s3", store));
    }
    if let Some(bucket) = &args.gcs_bucket {
        let mut config = GcsConfig::new(bucket);
        config.endpoint = args.gcs_endpoint.clone();
        config.anonymous = args.gcs_anonymous;
        let store: Arc<dyn ObjectStore> = Arc::new(GcsStore::new(config).await?);
        stores.push(NamedStore::new("gcs", store));
    }
    Ok(stores)
}

async fn read_key_ring(secrets: &Api<Secret>, name: &str) -> anyhow::Result<KeyRing> {
    let secret = secrets
        .get_opt(name)
        .await
        .with_context(|| format!("reading the bundle key Secret {name}"))?
        .with_context(|| {
            format!(
                "the bundle key Secret {name} does not exist in {}: create it with an \
                 `active` entry naming a 32-byte key",
                secrets.resource_url()
            )
        })?;
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    KeyRing::from_secret_data(&data).with_context(|| format!("bundle key Secret {name}"))
}

/// Reads the key Secret every [`KEY_RELOAD`]; a Secret that became invalid keeps the
/// last good key ring (and says so) rather than stopping the records.
async fn reload_keys(secrets: Api<Secret>, name: String, keys: Arc<RwLock<KeyRing>>) {
    let mut tick = tokio::time::interval(KEY_RELOAD);
    tick.tick().await;
    loop {
        tick.tick().await;
        match read_key_ring(&secrets, &name).await {
            Ok(ring) => {
                let mut current = keys.write().unwrap_or_else(|p| p.into_inner());
                if current.active_id() != ring.active_id() {
                    tracing::info!(active = ring.active_id(), "bundle key rotated");
                }
                *current = ring;
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "keeping the last bundle keys"),
        }
    }
}

/// `sha256:` digest of `value`'s RFC 8785 canonical JSON: how a policy is named.
fn policy_digest(value: &serde_json::Value) -> anyhow::Result<String> {
    Ok(format!(
        "sha256:{}",
        lotabots_store::bundle::sha256_hex(&lotabots_store::bundle::canonical_json(value)?)
    ))
}

impl ModelLog for EvidenceStore {
    fn record_model<'a>(
        &'a self,
        attestation: &'a ModelAttestation,
        result: &'a ModelResult,
        statement: &'a lotabots_model::bundle::Bundle,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let now = Timestamp::now();
            // The whole spec is the policy: source, integrity, signature trust and rules.
            let policy_digest = policy_digest(&serde_json::to_value(&attestation.spec)?)?;
            let document: serde_json::Value = serde_json::from_str(&statement.to_json())?;
            let sealed = {
                let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
                seal(&document, &keys)?
            };
            let name = format!(
                "{}/{}",
                attestation.namespace().unwrap_or_default(),
                attestation.name_any()
            );
            let record = NewRecord {
                kind: RecordKind::Model,
                subject: result.manifest_digest.clone(),
                attestation: name.clone(),
                verdict: result.verdict,
                reasons: result.reasons.clone(),
                policy_digest,
                evidence_digest: format!("sha256:{}", sealed.plaintext_sha256),
                token_id: None,
                observed_at: now,
                actor: ACTOR.into(),
            };
            let stores: Vec<&str> = self.stores.iter().map(String::as_str).collect();
            let id = self.db.record(&record, Some(&sealed), &stores).await?;
            tracing::info!(
                record = %id,
                attestation = %name,
                manifest = %result.manifest_digest,
                verdict = ?result.verdict,
                bundle = %sealed.digest,
                "model verdict recorded"
            );
            Ok(())
        })
    }
}

impl VerdictLog for EvidenceStore {
    fn record<'a>(
        &'a self,
        attestation: &'a GpuAttestation,
        result: &'a NodeResult,
        evidence: Option<&'a AcceptedEvidence>,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let now = Timestamp::now();
            let policy = serde_json::to_value(&attestation.spec.policy)?;
            let policy_digest = policy_digest(&policy)?;
            // The bundle is the whole judgement: what was judged, against what, and why.
            let document = json!({
                "schemaVersion": 1,
                "kind": "GpuNodeVerdict",
                "attestation": attestation.name_any(),
                "generation": attestation.metadata.generation,
                "node": result.node,
                "verdict": result.verdict,
                "reasons": result.reasons,
                "policy": policy,
                "judgedAt": now,
                "evidence": evidence.map(|e| json!({
                    "digest": e.digest,
                    "receivedAt": e.received_at,
                    "document": e.evidence,
                })),
            });
            let sealed = {
                let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
                seal(&document, &keys)?
            };
            let record = NewRecord {
                kind: RecordKind::GpuNode,
                subject: result.node.clone(),
                attestation: attestation.name_any(),
                verdict: result.verdict,
                reasons: result.reasons.clone(),
                policy_digest,
                evidence_digest: format!("sha256:{}", sealed.plaintext_sha256),
                token_id: None,
                observed_at: now,
                actor: ACTOR.into(),
            };
            let stores: Vec<&str> = self.stores.iter().map(String::as_str).collect();
            let id = self.db.record(&record, Some(&sealed), &stores).await?;
            tracing::info!(
                record = %id,
                node = %result.node,
                verdict = ?result.verdict,
                bundle = %sealed.digest,
                "verdict recorded"
            );
            Ok(())
        })
    }
}

impl SharedAcceptance for Database {
    fn accept<'a>(
        &'a self,
        evidence: &'a AcceptedEvidence,
        nonce: &'a Verified,
    ) -> BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move {
            let row = NodeEvidenceRow {
                node: evidence.node.clone(),
                nonce: nonce.nonce.0.to_vec(),
                digest: evidence.digest.clone(),
                evidence: serde_json::to_value(&evidence.evidence)?,
                received_at: evidence.received_at,
            };
            Ok(self.accept_evidence(&row, nonce.expires_at).await? == Acceptance::Accepted)
        })
    }
}

/// Evidence as a replica stored it. The document was checked when it was accepted; it is
/// decoded again here, and one that no longer decodes (edited by hand) is an error
/// naming its node.
pub fn accepted_from_row(row: NodeEvidenceRow) -> anyhow::Result<AcceptedEvidence> {
    let evidence = serde_json::from_value(row.evidence)
        .with_context(|| format!("stored evidence of node {} does not decode", row.node))?;
    Ok(AcceptedEvidence {
        node: row.node,
        evidence,
        digest: row.digest,
        received_at: row.received_at,
    })
}

/// Keeps `latest` current with the evidence every replica accepts: everything stored at
/// first, then each node announced on the channel, and everything again after the
/// listening connection was lost (announcements made meanwhile are gone). Failures are
/// logged and retried; it never returns.
pub async fn follow_evidence(db: Arc<Database>, latest: Arc<LatestEvidence>) {
    loop {
        if let Err(e) = follow_once(&db, &latest).await {
            tracing::warn!(error = %format!("{e:#}"), "following accepted evidence; retrying in 1 s");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn follow_once(db: &Database, latest: &LatestEvidence) -> anyhow::Result<()> {
    // Listening first, then reading: nothing stored in between is missed.
    let mut listener = db.listen_evidence().await?;
    let mut reload = true;
    loop {
        if reload {
            let mut loaded = 0;
            for row in db.all_node_evidence().await? {
                match accepted_from_row(row) {
                    Ok(e) => loaded += usize::from(latest.load(e)),
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "skipping stored evidence"),
                }
            }
            tracing::info!(nodes = loaded, "loaded the evidence replicas accepted");
        }
        match listener.next().await? {
            Some(node) => {
                reload = false;
                if let Some(row) = db.node_evidence(&node).await? {
                    match accepted_from_row(row) {
                        Ok(e) => {
                            latest.load(e);
                        }
                        Err(e) => {
                            tracing::warn!(error = %format!("{e:#}"), "skipping stored evidence")
                        }
                    }
                }
            }
            None => {
                tracing::warn!("evidence announcements interrupted; reading everything again");
                reload = true;
            }
        }
    }
}

/// Deletes expired consumed nonces every [`NONCE_PRUNE`]; never returns.
pub async fn prune_nonces(db: Arc<Database>) {
    let mut tick = tokio::time::interval(NONCE_PRUNE);
    loop {
        tick.tick().await;
        match db.prune_consumed_nonces(Timestamp::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(pruned = n, "expired nonces deleted"),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "pruning expired nonces"),
        }
    }
}
