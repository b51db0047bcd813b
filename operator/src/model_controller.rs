//! The ModelAttestation controller: for each ModelAttestation (all namespaces) the model's
//! files are judged by the stages of `attest-model` (signature, integrity, safety,
//! compliance; [`lotabots_model::attest::run_stages`]) on a blocking thread; the status
//! is written by server-side apply; verdict changes become Events and, with an evidence
//! store, records whose sealed bundle is the operator's signed statement of every stage's
//! result bound to the manifest digest.
//!
//! Reconciles run when a ModelAttestation changes and every [`ModelSettings::resync`],
//! since files, keys and ConfigMaps can change without the spec changing; a status that
//! is still fresh for the current generation is not recomputed (the controller's own
//! status write must not start another hash of the whole model). No finalizer: the controller
//! leaves nothing outside the object to clean up.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use lotabots_crds::conditions::reason;
use lotabots_crds::model_attestation::{ModelAttestation, ModelAttestationStatus, Verdict};
use lotabots_model::bundle::Bundle;
use lotabots_model::hashing::HashOptions;
use lotabots_model::keys::SigningKey;
use serde_json::json;

use crate::backoff::Backoff;
use crate::controller::FIELD_MANAGER;
use crate::evidence_store::{ModelLog, ModelResult};
use crate::metrics::ModelMetrics;
use crate::model_inputs::{self, ModelSettings};
use crate::model_status::{Blocked, Outcome, build_model_status, statement};

/// The Secret data key of the operator's current token signing key (`tokens::keys`).
const TOKEN_KEY: &str = "current.pem";

/// The key the operator signs its model statements with.
// One per process: boxing the API handle would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum StatementKey {
    /// A PEM key read at start (`--model-statement-key`).
    Fixed(Arc<SigningKey>),
    /// The current attestation-token signing key (`current.pem` of the token Secret),
    /// read at each signing so that a rotation takes effect at once.
    TokenSecret {
        /// The Secrets of the operator's namespace.
        secrets: Api<Secret>,
        /// The token signing Secret's name.
        name: String,
    },
}

impl std::fmt::Debug for StatementKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // SigningKey's Debug shows the public half only.
            Self::Fixed(k) => write!(f, "Fixed({k:?})"),
            Self::TokenSecret { name, .. } => write!(f, "TokenSecret({name})"),
        }
    }
}

impl StatementKey {
    async fn load(&self) -> Result<Arc<SigningKey>, Error> {
        match self {
            Self::Fixed(k) => Ok(k.clone()),
            Self::TokenSecret { secrets, name } => {
                let secret = secrets.get_opt(name).await?.ok_or_else(|| {
                    Error::Key(format!(
                        "the token signing Secret {name} does not exist (yet): it signs the model statements"
                    ))
                })?;
                let pem = secret
                    .data
                    .unwrap_or_default()
                    .remove(TOKEN_KEY)
                    .and_then(|b| String::from_utf8(b.0).ok())
                    .ok_or_else(|| Error::Key(format!("Secret {name} has no {TOKEN_KEY}")))?;
                SigningKey::from_pem(&pem)
                    .map(Arc::new)
                    .map_err(|e| Error::Key(format!("Secret {name} {TOKEN_KEY}: {}", e.0)))
            }
        }
    }
}

/// Where model verdicts are recorded and the key their statements are signed with.
pub struct Recording {
    /// The evidence store.
    pub log: Arc<dyn ModelLog>,
    /// The statement key.
    pub key: StatementKey,
}

/// What reconciles share.
pub struct Context {
    client: Client,
    settings: ModelSettings,
    recorder: Recorder,
    failures: Backoff<ModelAttestation>,
    recording: Option<Recording>,
    metrics: ModelMetrics,
}

/// Why a reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The stages' thread panicked or was cancelled.
    #[error("model stages: {0}")]
    Stages(String),
    /// The statement key is unavailable.
    #[error("statement key: {0}")]
    Key(String),
    /// The statement could not be signed or recorded.
    #[error("evidence store: {0:#}")]
    Store(anyhow::Error),
}

impl Error {
    fn category(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api_status",
            Error::Kube(_) => "api_transport",
            Error::Stages(_) => "stages",
            Error::Key(_) => "key",
            Error::Store(_) => "store",
        }
    }
}

/// Runs the controller until `shutdown` resolves; with `recording`, every verdict change
/// is recorded in the evidence store before the status shows it. Every judgement is
/// counted in `metrics`.
pub async fn run(
    client: Client,
    settings: ModelSettings,
    reporter: Reporter,
    recording: Option<Recording>,
    metrics: ModelMetrics,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<ModelAttestation> = Api::all(client.clone());
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        settings,
        failures: Backoff::default(),
        recording,
        metrics,
    });
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "model reconcile did not complete");
            }
        })
        .await;
}

async fn reconcile(att: Arc<ModelAttestation>, ctx: Arc<Context>) -> Result<Action, Error> {
    let result = apply(&att, &ctx).await;
    if result.is_ok() {
        ctx.failures.succeeded(&att);
    }
    result
}

/// Per-object exponential backoff: 2 s, 4 s, … up to 5 min; reset by a success.
fn error_policy(att: Arc<ModelAttestation>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.failures.failed(&att);
    tracing::warn!(
        attestation = %att.name_any(),
        namespace = att.namespace().unwrap_or_default(),
        category = error.category(),
        error = %error,
        retry_in = ?delay,
        "model reconcile failed"
    );
    Action::requeue(delay)
}

/// A model that could not be judged (a missing ConfigMap, an absent volume) is looked at
/// again this soon, whatever the resync: the fix usually comes within minutes.
const BLOCKED_RETRY: Duration = Duration::from_secs(30);

/// How long the last status stays good for: `None` when it must be recomputed now (no
/// status, an older generation, or older than the resync interval).
fn fresh_for(att: &ModelAttestation, resync: Duration, now: Timestamp) -> Option<Duration> {
    let status = att.status.as_ref()?;
    if status.observed_generation != att.metadata.generation {
        return None;
    }
    let window = if status.manifest_digest.is_none() {
        resync.min(BLOCKED_RETRY)
    } else {
        resync
    };
    let age = now.duration_since(status.verified_at.as_ref()?.0);
    if age.is_negative() {
        return Some(window);
    }
    window
        .checked_sub(age.unsigned_abs())
        .filter(|d| !d.is_zero())
}

async fn apply(att: &ModelAttestation, ctx: &Context) -> Result<Action, Error> {
    let now = Timestamp::now();
    if let Some(wait) = fresh_for(att, ctx.settings.resync, now) {
        return Ok(Action::requeue(wait));
    }
    let outcome = judge(att, ctx).await?;
    ctx.metrics.observe(&outcome);
    let status = build_model_status(
        att.metadata.generation,
        att.status.as_ref(),
        &outcome,
        att.spec.behaviour.is_some(),
        now,
    );
    if verdict_changed(att.status.as_ref(), &status) {
        if let Outcome::Judged(report) = &outcome {
            record(att, report, &status, ctx).await?;
        }
        publish(att, &status, ctx).await;
    }
    patch_status(ctx, att, &status).await?;
    Ok(Action::requeue(match outcome {
        Outcome::Blocked(_) => ctx.settings.resync.min(BLOCKED_RETRY),
        Outcome::Judged(_) => ctx.settings.resync,
    }))
}

/// Gathers the inputs (the trust through the API) and runs the stages on a blocking
/// thread: hashing a model reads every byte of it.
async fn judge(att: &ModelAttestation, ctx: &Context) -> Result<Outcome, Error> {
    if let Err(errors) = att.spec.validate() {
        let message = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        return Ok(Outcome::Blocked(Blocked {
            stage: None,
            reason: reason::INVALID_SPEC,
            message,
            verdict: Verdict::Unknown,
        }));
    }
    let namespace = att.namespace().unwrap_or_default();
    let trust = match model_inputs::read_trust(&ctx.client, &namespace, &att.spec).await? {
        Ok(trust) => trust,
        Err(blocked) => return Ok(Outcome::Blocked(blocked)),
    };
    let access = match model_inputs::read_access(&ctx.client, &namespace, &att.spec).await? {
        Ok(access) => access,
        Err(blocked) => return Ok(Outcome::Blocked(blocked)),
    };
    let spec = att.spec.clone();
    let root = ctx.settings.model_root.clone();
    // Object-store reads block on this runtime from the blocking thread (and the rayon
    // threads it starts), never from a worker.
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let found = model_inputs::inputs(&root, &namespace, &spec, trust, access.as_ref(), &handle);
        let (model, inputs) = match found {
            Ok(found) => found,
            Err(blocked) => return Outcome::Blocked(blocked),
        };
        match lotabots_model::attest::run_stages(&model, &inputs, &HashOptions::default()) {
            Ok(report) => Outcome::Judged(report),
            // What is left unusable once the inputs are gathered is the signature bundle.
            Err(e) => Outcome::Blocked(Blocked {
                stage: Some(lotabots_crds::conditions::SIGNATURE_VERIFIED),
                reason: reason::SIGNATURE_INVALID,
                message: e.to_string(),
                verdict: Verdict::Failed,
            }),
        }
    })
    .await
    .map_err(|e| Error::Stages(e.to_string()))
}

/// Whether the verdict or the manifest it is about differs from the last status.
fn verdict_changed(
    previous: Option<&ModelAttestationStatus>,
    now: &ModelAttestationStatus,
) -> bool {
    previous.is_none_or(|p| p.verdict != now.verdict || p.manifest_digest != now.manifest_digest)
}

/// Signs the statement of `report` and records it; a failure fails the reconcile before
/// the status moves on, so that the change is recorded on the retry.
async fn record(
    att: &ModelAttestation,
    report: &lotabots_model::attest::Report,
    status: &ModelAttestationStatus,
    ctx: &Context,
) -> Result<(), Error> {
    let Some(recording) = &ctx.recording else {
        return Ok(());
    };
    let (Some(statement), Some(digest), Some(verdict)) = (
        statement(att, report, status),
        status.manifest_digest.clone(),
        status.verdict,
    ) else {
        // The model could not be hashed: there is no subject to record it under.
        return Ok(());
    };
    let key = recording.key.load().await?;
    let payload = serde_json::to_vec(&statement).map_err(|e| Error::Store(e.into()))?;
    let bundle = Bundle::sign_payload(&payload, &key, None).map_err(|e| Error::Store(e.into()))?;
    let result = ModelResult {
        manifest_digest: digest,
        verdict,
        reasons: status.reasons.clone(),
    };
    recording
        .log
        .record_model(att, &result, &bundle)
        .await
        .map_err(Error::Store)
}

/// An Event for a verdict change: `ModelAttested`, `ModelFailed` or `ModelUnknown`.
async fn publish(att: &ModelAttestation, status: &ModelAttestationStatus, ctx: &Context) {
    let (type_, why) = match status.verdict {
        Some(Verdict::Attested) => (EventType::Normal, "ModelAttested"),
        Some(Verdict::Failed) => (EventType::Warning, "ModelFailed"),
        _ => (EventType::Warning, "ModelUnknown"),
    };
    let mut note = if status.reasons.is_empty() {
        format!(
            "{}: every stage passed",
            status.manifest_digest.as_deref().unwrap_or("model")
        )
    } else {
        status.reasons.join("; ")
    };
    if note.len() > 1000 {
        let mut cut = 999;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push('…');
    }
    let event = Event {
        type_,
        reason: why.into(),
        note: Some(note),
        action: "Verify".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &att.object_ref(&())).await {
        tracing::warn!(error = %e, "could not record event");
    }
}

async fn patch_status(
    ctx: &Context,
    att: &ModelAttestation,
    status: &ModelAttestationStatus,
) -> Result<(), Error> {
    let patch = json!({
        "apiVersion": ModelAttestation::api_version(&()),
        "kind": ModelAttestation::kind(&()),
        "status": status,
    });
    Api::<ModelAttestation>::namespaced(ctx.client.clone(), &att.namespace().unwrap_or_default())
        .patch_status(
            &att.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::test_api::{api_server, requests};

    /// A model log in memory: what was recorded, or a failure on demand.
    #[derive(Default)]
    struct MemoryLog {
        recorded: StdMutex<Vec<(ModelResult, Bundle)>>,
        fail: bool,
    }

    impl ModelLog for MemoryLog {
        fn record_model<'a>(
            &'a self,
            _attestation: &'a ModelAttestation,
            result: &'a ModelResult,
            statement: &'a Bundle,
        ) -> futures::future::BoxFuture<'a, anyhow::Result<()>> {
            Box::pin(async move {
                if self.fail {
                    anyhow::bail!("database unreachable");
                }
                self.recorded
                    .lock()
                    .unwrap()
                    .push((result.clone(), statement.clone()));
                Ok(())
            })
        }
    }

    /// A clean one-file model in a temporary directory, and a ModelAttestation of it.
    fn model() -> (tempfile::TempDir, ModelAttestation) {
        let dir = tempfile::tempdir().unwrap();
        let header = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let mut st = (header.len() as u64).to_le_bytes().to_vec();
        st.extend_from_slice(header);
        st.extend_from_slice(&[0; 8]);
        std::fs::write(dir.path().join("model.safetensors"), st).unwrap();
        let uri = format!("file://{}", dir.path().display());
        let spec = serde_json::from_value(json!({"source": {"uri": uri}})).unwrap();
        let mut att = ModelAttestation::new("m", spec);
        att.metadata.namespace = Some("team".into());
        att.metadata.generation = Some(1);
        (dir, att)
    }

    fn context(client: Client, log: Option<Arc<MemoryLog>>) -> (Context, Arc<SigningKey>) {
        let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_pem();
        let key = Arc::new(SigningKey::from_pem(&pem).unwrap());
        let ctx = Context {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: "test".into(),
                    instance: None,
                },
            ),
            client,
            settings: ModelSettings {
                model_root: "/nonexistent".into(),
                resync: Duration::from_secs(60),
            },
            failures: Backoff::default(),
            recording: log.map(|log| Recording {
                log,
                key: StatementKey::Fixed(key.clone()),
            }),
            metrics: ModelMetrics::register(&prometheus::Registry::new()).unwrap(),
        };
        (ctx, key)
    }

    #[tokio::test]
    async fn a_judged_model_is_recorded_signed_then_shown_in_status() {
        let (_dir, att) = model();
        let (client, seen) = api_server(serde_json::to_value(&att).unwrap(), |_, _| None);
        let log = Arc::new(MemoryLog::default());
        let (ctx, key) = context(client, Some(log.clone()));
        let action = apply(&att, &ctx).await.unwrap();
        assert_eq!(action, Action::requeue(Duration::from_secs(60)));
        let patches = requests(
            &seen,
            "PATCH",
            "/namespaces/team/modelattestations/m/status",
        );
        assert_eq!(patches.len(), 1, "{seen:?}");
        let status = &patches[0]["status"];
        assert_eq!(patches[0]["kind"], "ModelAttestation");
        assert_eq!(status["verdict"], "Attested", "{status}");
        let recorded = log.recorded.lock().unwrap();
        assert_eq!(recorded.len(), 1);
        let (result, bundle) = &recorded[0];
        assert_eq!(status["manifestDigest"], json!(result.manifest_digest));
        let (payload, _) = bundle
            .verify_payload(&lotabots_model::bundle::Trust::PublicKey(key.public_key()))
            .unwrap();
        let statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(
            format!(
                "sha256:{}",
                statement["subject"][0]["digest"]["sha256"]
                    .as_str()
                    .unwrap()
            ),
            result.manifest_digest
        );
    }

    #[tokio::test]
    async fn a_verdict_that_cannot_be_recorded_holds_the_status_back() {
        let (_dir, att) = model();
        let (client, seen) = api_server(serde_json::to_value(&att).unwrap(), |_, _| None);
        let (ctx, _) = context(
            client,
            Some(Arc::new(MemoryLog {
                fail: true,
                ..Default::default()
            })),
        );
        let ctx = Arc::new(ctx);
        let err = apply(&att, &ctx).await.unwrap_err();
        assert_eq!(err.category(), "store");
        assert!(err.to_string().contains("database unreachable"), "{err}");
        assert!(
            requests(&seen, "PATCH", "/status").is_empty(),
            "the status must not show a verdict the store did not take"
        );
        let delays: Vec<String> = (0..3)
            .map(|_| {
                format!(
                    "{:?}",
                    error_policy(Arc::new(att.clone()), &err, ctx.clone())
                )
            })
            .collect();
        assert_eq!(
            delays,
            [2, 4, 8].map(|s| format!("{:?}", Action::requeue(Duration::from_secs(s))))
        );
    }

    #[tokio::test]
    async fn a_key_the_operator_may_not_read_is_named_in_the_status() {
        let (_dir, mut att) = model();
        att.spec.signature = Some(
            serde_json::from_value(json!({
                "publicKey": {"configMapKeyRef": {"name": "signers", "key": "k"}}
            }))
            .unwrap(),
        );
        let (client, seen) = api_server(serde_json::to_value(&att).unwrap(), |m, p| {
            (m == "GET" && p.ends_with("/configmaps/signers")).then_some(403)
        });
        let (ctx, _) = context(client, None);
        assert_eq!(
            apply(&att, &ctx).await.unwrap(),
            Action::requeue(BLOCKED_RETRY)
        );
        let status = &requests(&seen, "PATCH", "/status")[0]["status"];
        let signature = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "SignatureVerified")
            .unwrap();
        assert_eq!(signature["status"], "False");
        assert_eq!(signature["reason"], "ReferenceNotFound");
        let message = signature["message"].as_str().unwrap();
        assert!(
            message.contains("may not read ConfigMap team/signers"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_missing_model_is_blocked_and_retried_soon() {
        let (dir, att) = model();
        drop(dir);
        let (client, seen) = api_server(serde_json::to_value(&att).unwrap(), |_, _| None);
        let log = Arc::new(MemoryLog::default());
        let (ctx, _) = context(client, Some(log.clone()));
        let action = apply(&att, &ctx).await.unwrap();
        assert_eq!(action, Action::requeue(BLOCKED_RETRY));
        let status = &requests(&seen, "PATCH", "/status")[0]["status"];
        assert_eq!(status["verdict"], "Unknown");
        let integrity = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "IntegrityVerified")
            .unwrap();
        assert_eq!(integrity["reason"], "SourceUnavailable");
        assert!(
            log.recorded.lock().unwrap().is_empty(),
            "nothing to bind a record to"
        );
    }

    fn attestation(generation: i64, status: Option<ModelAttestationStatus>) -> ModelAttestation {
        let spec = serde_json::from_value(json!({"source": {"uri": "file:///models/m"}})).unwrap();
        let mut att = ModelAttestation::new("m", spec);
        att.metadata.generation = Some(generation);
        att.status = status;
        att
    }

    fn judged_at(t: Timestamp, digest: Option<&str>) -> ModelAttestationStatus {
        ModelAttestationStatus {
            observed_generation: Some(1),
            manifest_digest: digest.map(str::to_owned),
            verified_at: Some(Time(t)),
            ..Default::default()
        }
    }

    #[test]
    fn a_fresh_status_of_this_generation_is_not_recomputed() {
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let hour = Duration::from_secs(3600);
        let later = |s: i64| t0 + jiff::SignedDuration::from_secs(s);
        assert_eq!(fresh_for(&attestation(1, None), hour, t0), None);
        let judged = attestation(1, Some(judged_at(t0, Some("sha256:00"))));
        assert_eq!(
            fresh_for(&judged, hour, later(600)),
            Some(Duration::from_secs(3000))
        );
        assert_eq!(fresh_for(&judged, hour, later(3600)), None, "resync is due");
        let newer_spec = attestation(2, Some(judged_at(t0, Some("sha256:00"))));
        assert_eq!(fresh_for(&newer_spec, hour, later(1)), None);
        let blocked = attestation(1, Some(judged_at(t0, None)));
        assert_eq!(
            fresh_for(&blocked, hour, later(10)),
            Some(BLOCKED_RETRY - Duration::from_secs(10)),
            "a blocked model is looked at again soon"
        );
    }

    #[test]
    fn only_a_new_verdict_or_manifest_is_a_change() {
        let t = Timestamp::from_second(1_800_000_000).unwrap();
        let mut a = judged_at(t, Some("sha256:00"));
        a.verdict = Some(Verdict::Attested);
        assert!(verdict_changed(None, &a));
        let mut b = a.clone();
        b.verified_at = Some(Time(t + jiff::SignedDuration::from_secs(60)));
        assert!(!verdict_changed(Some(&a), &b));
        b.manifest_digest = Some("sha256:11".into());
        assert!(verdict_changed(Some(&a), &b));
        b.manifest_digest = a.manifest_digest.clone();
        b.verdict = Some(Verdict::Failed);
        assert!(verdict_changed(Some(&a), &b));
    }

    #[test]
    fn the_statement_key_never_shows_its_secret() {
        let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_pem();
        let key = SigningKey::from_pem(&pem).unwrap();
        let shown = format!("{:?}", StatementKey::Fixed(Arc::new(key)));
        let secret_line = pem.lines().nth(1).unwrap();
        assert!(!shown.contains(secret_line), "{shown}");
    }
}
