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
//!
//! With `spec.behaviour`, once every other stage passed, the controller requests a probe
//! pod on an attested node ([`crate::behaviour`]): it writes `status.behaviour` and
//! registers the request in the [`BehaviourRequests`] the workload API serves the pod
//! from; the pod's accepted result wakes the controller, which folds it in from the
//! judgement it keeps in memory (the model is not hashed again for that, nor while the
//! request waits). A request without result past `timeout` plus two minutes is replaced.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use lotabots_crds::conditions::{self, reason, status as cstatus};
use lotabots_crds::model_attestation::{
    BehaviourCheck, BehaviourStatus, ModelAttestation, ModelAttestationStatus, Verdict,
};
use lotabots_model::bundle::Bundle;
use lotabots_model::hashing::HashOptions;
use lotabots_model::keys::SigningKey;
use serde_json::json;

use crate::backoff::Backoff;
use crate::behaviour::{
    self, BehaviourRequests, CurrentRequest, MAX_SUITE_BYTES, ModelRef, NodeNeed, TIMEOUT_GRACE,
};
use crate::controller::FIELD_MANAGER;
use crate::evidence_api::LatestEvidence;
use crate::evidence_store::{ModelLog, ModelResult};
use crate::metrics::ModelMetrics;
use crate::model_files::ModelView;
use crate::model_inputs::{self, Gathered, KeyKind, ModelSettings};
use crate::model_status::{Behaviour, Blocked, Outcome, build_model_status, statement};

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

/// What behavioural checks need: the nodes' accepted evidence (where probe pods may run)
/// and the registry of requests the workload API serves and files results in.
#[derive(Clone)]
pub struct BehaviourWiring {
    /// The latest accepted evidence per node.
    pub evidence: Arc<LatestEvidence>,
    /// The current requests and their results.
    pub requests: Arc<BehaviourRequests>,
}

/// What the stages found for a model, kept while its status is fresh so that a
/// behaviour result or a retry of the node choice does not hash the model again.
#[derive(Clone)]
struct Judged {
    generation: Option<i64>,
    /// When the stages ran: the status's `verifiedAt`, so that folding a behaviour
    /// result does not put off the next judgement of the files.
    at: Timestamp,
    outcome: Outcome,
    /// Total bytes of the files a probe pod fetches (when the model was listed).
    model_bytes: Option<u64>,
}

/// What reconciles share.
pub struct Context {
    client: Client,
    settings: ModelSettings,
    recorder: Recorder,
    failures: Backoff<ModelAttestation>,
    recording: Option<Recording>,
    metrics: ModelMetrics,
    behaviour: Option<BehaviourWiring>,
    /// The last judgement of each ModelAttestation with `spec.behaviour`, by UID.
    judged: Mutex<HashMap<String, Judged>>,
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
/// counted in `metrics`. `spec.behaviour` stays pending (see [`run_with_behaviour`]).
pub async fn run(
    client: Client,
    settings: ModelSettings,
    reporter: Reporter,
    recording: Option<Recording>,
    metrics: ModelMetrics,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    run_with_behaviour(
        client, settings, reporter, recording, metrics, None, shutdown,
    )
    .await;
}

/// As [`run`]; with `behaviour`, `spec.behaviour` is carried out (a probe pod requested
/// on an attested node, its result folded in as soon as it is accepted).
pub async fn run_with_behaviour(
    client: Client,
    settings: ModelSettings,
    reporter: Reporter,
    recording: Option<Recording>,
    metrics: ModelMetrics,
    behaviour: Option<BehaviourWiring>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<ModelAttestation> = Api::all(client.clone());
    let wakeups = behaviour.as_ref().and_then(|b| b.requests.wakeups());
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        settings,
        failures: Backoff::default(),
        recording,
        metrics,
        behaviour,
        judged: Mutex::default(),
    });
    let controller = Controller::new(api, watcher::Config::default());
    let pruning = prune_deleted(controller.store(), context.clone());
    let controller = match wakeups {
        // `reconcile_on` (one object) is behind an unstable kube feature; reconciling
        // all is cheap, as every other ModelAttestation's status is still fresh.
        Some(wakeups) => controller.reconcile_all_on(wakeups.map(|_| ())),
        None => controller,
    };
    let running = controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "model reconcile did not complete");
            }
        });
    // The pruning never ends: the controller's end (shutdown) ends both.
    tokio::select! {
        () = running => {}
        () = pruning => {}
    }
}

/// How often what the controller keeps in memory per ModelAttestation (the last
/// judgement, the behaviour request and its result) is dropped for deleted ones.
const PRUNE_EVERY: Duration = Duration::from_secs(300);

/// Every [`PRUNE_EVERY`], forgets the ModelAttestations no longer in `store`: without a
/// finalizer no reconcile sees a deletion.
async fn prune_deleted(store: Store<ModelAttestation>, ctx: Arc<Context>) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + PRUNE_EVERY, PRUNE_EVERY);
    loop {
        tick.tick().await;
        if store.wait_until_ready().await.is_err() {
            // The controller's watch is gone: it is ending, and ends this with it.
            std::future::pending::<()>().await;
        }
        let live: HashSet<String> = store
            .state()
            .iter()
            .filter_map(|a| a.metadata.uid.clone())
            .collect();
        ctx.judged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|uid, _| live.contains(uid));
        if let Some(wiring) = &ctx.behaviour {
            wiring.requests.retain_models(&live);
        }
    }
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
    let fresh = fresh_for(att, ctx.settings.resync, now);
    if let Some(wait) = fresh {
        match behaviour_due(att, ctx, now) {
            None => return Ok(Action::requeue(wait)),
            Some(due) if !due.is_zero() => return Ok(Action::requeue(wait.min(due))),
            Some(_) => {}
        }
    }
    let uid = att.uid().unwrap_or_default();
    let cached = fresh.and_then(|_| {
        ctx.judged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&uid)
            .filter(|j| j.generation == att.metadata.generation)
            .cloned()
    });
    let judged = match cached {
        Some(judged) => judged,
        None => {
            let judged = judge(att, ctx).await?;
            ctx.metrics.observe(&judged.outcome);
            let mut cache = ctx.judged.lock().unwrap_or_else(|e| e.into_inner());
            if att.spec.behaviour.is_some() {
                cache.insert(uid.clone(), judged.clone());
            } else {
                cache.remove(&uid);
            }
            judged
        }
    };
    let outcome = &judged.outcome;
    let behaviour = match (&att.spec.behaviour, outcome) {
        (None, _) => Behaviour::NotRequested,
        (Some(check), Outcome::Judged(report)) if static_stages_passed(report) => {
            plan_behaviour(att, check, report, judged.model_bytes, ctx, now).await?
        }
        _ => Behaviour::Waiting,
    };
    if !matches!(behaviour, Behaviour::Requested { .. })
        && let Some(wiring) = &ctx.behaviour
    {
        wiring.requests.forget(&uid);
    }
    let mut status = build_model_status(
        att.metadata.generation,
        att.status.as_ref(),
        outcome,
        &behaviour,
        now,
    );
    status.verified_at = Some(Time(judged.at));
    if verdict_changed(att.status.as_ref(), &status) {
        if let Outcome::Judged(report) = outcome {
            record(att, report, &status, ctx).await?;
        }
        publish(att, &status, ctx).await;
    }
    patch_status(ctx, att, &status).await?;
    let next = match (outcome, &behaviour) {
        (Outcome::Blocked(_), _) | (_, Behaviour::Blocked { .. }) => BLOCKED_RETRY,
        (_, Behaviour::Requested { request, .. }) if request.result.is_none() => {
            let check = att.spec.behaviour.as_ref().expect("a request has a spec");
            until(request_deadline(request, check), now).max(Duration::from_secs(1))
        }
        _ => ctx.settings.resync,
    };
    Ok(Action::requeue(next.min(ctx.settings.resync)))
}

/// Whether every stage the model controller runs itself passed (or was not asked for):
/// only then is a probe pod worth requesting.
fn static_stages_passed(report: &lotabots_model::attest::Report) -> bool {
    report
        .stages
        .iter()
        .all(|s| crate::model_status::stage_status(s) == cstatus::TRUE)
}

/// When the last request, made at `requested_at`, is given up on.
fn request_deadline(request: &BehaviourStatus, check: &BehaviourCheck) -> Timestamp {
    let timeout = lotabots_crds::gpu_attestation::parse_duration(&check.timeout)
        .unwrap_or(lotabots_crds::model_attestation::MAX_BEHAVIOUR_TIMEOUT);
    let span = jiff::SignedDuration::try_from(timeout + TIMEOUT_GRACE)
        .unwrap_or(jiff::SignedDuration::MAX);
    request
        .requested_at
        .0
        .checked_add(span)
        .unwrap_or(Timestamp::MAX)
}

/// How long from `now` until `t` (zero when past).
fn until(t: Timestamp, now: Timestamp) -> Duration {
    let d = t.duration_since(now);
    if d.is_negative() {
        Duration::ZERO
    } else {
        d.unsigned_abs()
    }
}

/// While the static stages' status is fresh, how soon the behavioural check needs a
/// reconcile anyway: at once when a result for the current request waits to be folded
/// or the request is not in the registry (a restart), at its deadline while it waits,
/// soon when no request could be made. `None`: nothing to do before the resync.
fn behaviour_due(att: &ModelAttestation, ctx: &Context, now: Timestamp) -> Option<Duration> {
    let check = att.spec.behaviour.as_ref()?;
    let status = att.status.as_ref()?;
    let wiring = ctx.behaviour.as_ref()?;
    match &status.behaviour {
        Some(b) if b.result.is_some() => None,
        Some(b) => {
            if wiring.requests.get(&b.request_id).is_none()
                || wiring.requests.result(&b.request_id).is_some()
            {
                Some(Duration::ZERO)
            } else {
                Some(until(request_deadline(b, check), now))
            }
        }
        None => {
            let blocked = status.conditions.iter().any(|c| {
                c.type_ == conditions::BEHAVIOUR
                    && (c.reason == reason::NO_ATTESTED_NODE
                        || c.reason == reason::REFERENCE_NOT_FOUND)
            });
            let since = status.verified_at.as_ref()?.0;
            blocked.then(|| until(since + BLOCKED_RETRY, now))
        }
    }
}

/// The behavioural check of a model whose other stages passed: the current request
/// kept (with its result folded in once accepted) while the manifest, the suite and the
/// generation are unchanged and it has not timed out; otherwise a new request on the
/// node [`behaviour::choose_node`] picks.
async fn plan_behaviour(
    att: &ModelAttestation,
    check: &BehaviourCheck,
    report: &lotabots_model::attest::Report,
    model_bytes: Option<u64>,
    ctx: &Context,
    now: Timestamp,
) -> Result<Behaviour, Error> {
    let Some(wiring) = &ctx.behaviour else {
        return Ok(Behaviour::Blocked {
            status: cstatus::UNKNOWN,
            reason: reason::PENDING,
            message: "this operator process does not serve probe pods".into(),
        });
    };
    let namespace = att.namespace().unwrap_or_default();
    let suite = match model_inputs::read_key(
        &ctx.client,
        &namespace,
        KeyKind::ConfigMap,
        &check.probes,
        MAX_SUITE_BYTES,
    )
    .await?
    {
        Ok(suite) => suite,
        Err(message) => {
            return Ok(Behaviour::Blocked {
                status: cstatus::FALSE,
                reason: reason::REFERENCE_NOT_FOUND,
                message: format!("spec.behaviour.probes: {message}"),
            });
        }
    };
    let suite_digest = behaviour::sha256_digest(&suite);
    let manifest_digest = report.manifest_digest.clone().unwrap_or_default();
    let generation = att.metadata.generation;
    let model = ModelRef {
        namespace,
        name: att.name_any(),
        uid: att.uid().unwrap_or_default(),
    };
    let register = |request: &BehaviourStatus| {
        wiring.requests.register(CurrentRequest {
            id: request.request_id.clone(),
            model: model.clone(),
            node: request.node.clone(),
            nonce: request.nonce.clone(),
            manifest_digest: request.manifest_digest.clone(),
            suite_digest: request.suite_digest.clone(),
            suite: suite.clone().into(),
            spec: att.spec.clone(),
        });
    };
    let previous = att
        .status
        .as_ref()
        .filter(|s| s.observed_generation == generation)
        .and_then(|s| s.behaviour.as_ref())
        .filter(|b| b.manifest_digest == manifest_digest && b.suite_digest == suite_digest);
    let mut timed_out = None;
    if let Some(previous) = previous {
        let mut request = previous.clone();
        if request.result.is_none()
            && let Some(accepted) = wiring.requests.result(&request.request_id)
        {
            request.result = Some(accepted.to_status());
        }
        if request.result.is_some() || now < request_deadline(&request, check) {
            register(&request);
            return Ok(Behaviour::Requested {
                request,
                timed_out: None,
            });
        }
        timed_out = Some(request.request_id);
    }
    let attested = if check.attested_nodes_only {
        attested_nodes(&ctx.client).await?
    } else {
        BTreeSet::new()
    };
    let chosen = match behaviour::choose_node(
        &model.uid,
        &NodeNeed::from(check),
        &wiring.evidence.all(),
        &attested,
        now,
    ) {
        Ok(chosen) => chosen,
        Err(message) => {
            let message = match &timed_out {
                Some(old) => format!("request {old} timed out without a result; {message}"),
                None => message,
            };
            return Ok(Behaviour::Blocked {
                status: cstatus::UNKNOWN,
                reason: reason::NO_ATTESTED_NODE,
                message,
            });
        }
    };
    let nonce = chosen.evidence.nonce.clone();
    let request = BehaviourStatus {
        // The time is part of it: a request that replaces a timed-out one on the same
        // node and evidence still names a new pod, which the agent launches afresh.
        request_id: behaviour::request_id(&[
            &model.uid,
            &generation.unwrap_or_default().to_string(),
            &manifest_digest,
            &suite_digest,
            &chosen.node,
            &nonce,
            &now.to_string(),
        ]),
        node: chosen.node.clone(),
        nonce,
        evidence_digest: chosen.digest.clone(),
        manifest_digest,
        suite_digest,
        model_bytes: model_bytes.unwrap_or_default(),
        requested_at: Time(now),
        result: None,
    };
    register(&request);
    tracing::info!(
        attestation = %model.name,
        namespace = %model.namespace,
        request = %request.request_id,
        node = %request.node,
        "behaviour probes requested"
    );
    Ok(Behaviour::Requested { request, timed_out })
}

/// The nodes the GpuAttestation controller labelled attested.
async fn attested_nodes(client: &Client) -> Result<BTreeSet<String>, Error> {
    let selector = format!("{}=true", lotabots_crds::labels::GPU_ATTESTED);
    let nodes = Api::<Node>::all(client.clone())
        .list_metadata(&ListParams::default().labels(&selector))
        .await?;
    Ok(nodes.items.into_iter().map(|n| n.name_any()).collect())
}

/// Gathers the inputs (the trust through the API) and runs the stages on a blocking
/// thread: hashing a model reads every byte of it.
async fn judge(att: &ModelAttestation, ctx: &Context) -> Result<Judged, Error> {
    let generation = att.metadata.generation;
    let at = Timestamp::now();
    let judged = move |outcome, model_bytes| Judged {
        generation,
        at,
        outcome,
        model_bytes,
    };
    if let Err(errors) = att.spec.validate() {
        let message = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        return Ok(judged(
            Outcome::Blocked(Blocked {
                stage: None,
                reason: reason::INVALID_SPEC,
                message,
                verdict: Verdict::Unknown,
            }),
            None,
        ));
    }
    let namespace = att.namespace().unwrap_or_default();
    let gathered = match Gathered::read(&ctx.client, &namespace, &att.spec).await? {
        Ok(gathered) => gathered,
        Err(blocked) => return Ok(judged(Outcome::Blocked(blocked), None)),
    };
    let list_files = att.spec.behaviour.is_some();
    let root = ctx.settings.model_root.clone();
    // Object-store reads block on this runtime from the blocking thread (and the rayon
    // threads it starts), never from a worker.
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let (model, inputs) = match gathered.inputs(&root, &handle) {
            Ok(found) => found,
            Err(blocked) => return judged(Outcome::Blocked(blocked), None),
        };
        match lotabots_model::attest::run_stages(&model, &inputs, &HashOptions::default()) {
            Ok(report) => {
                // What a probe pod will fetch, to size its scratch volume.
                let bytes = (list_files && static_stages_passed(&report))
                    .then(|| ModelView::list(&inputs).ok().map(|v| v.bytes()))
                    .flatten();
                judged(Outcome::Judged(report), bytes)
            }
            // What is left unusable once the inputs are gathered is the signature bundle.
            Err(e) => judged(
                Outcome::Blocked(Blocked {
                    stage: Some(lotabots_crds::conditions::SIGNATURE_VERIFIED),
                    reason: reason::SIGNATURE_INVALID,
                    message: e.to_string(),
                    verdict: Verdict::Failed,
                }),
                None,
            ),
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
    // Every probe outcome as posted (the status keeps a bounded list).
    let accepted = status.behaviour.as_ref().and_then(|b| {
        ctx.behaviour
            .as_ref()
            .and_then(|w| w.requests.result(&b.request_id))
    });
    let probes = accepted
        .as_ref()
        .and_then(|a| a.result.probes.as_ref())
        .map(|p| p.probes.as_slice());
    let (Some(statement), Some(digest), Some(verdict)) = (
        statement(att, report, status, probes),
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
    use crate::test_api::{Seen, api_server, requests};

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
            behaviour: None,
            judged: Mutex::default(),
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

    /// The probe suite's ConfigMap and the attested node, as the API server answers them.
    fn behaviour_objects(method: &str, path: &str) -> Option<serde_json::Value> {
        match (method, path) {
            ("GET", "/api/v1/namespaces/team/configmaps/probes") => Some(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "probes", "namespace": "team"},
                "data": {"suite.yaml": "probes: []\n"}
            })),
            ("GET", "/api/v1/nodes") => Some(json!({
                "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                "metadata": {},
                "items": [{
                    "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                    "metadata": {"name": "node-a", "labels": {"lotabots.io/gpu-attested": "true"}}
                }]
            })),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_behaviour_request_is_made_and_its_result_folded_without_rehashing() {
        let (dir, mut att) = model();
        att.metadata.uid = Some("ma-uid".into());
        att.spec.behaviour = Some(
            serde_json::from_value(json!({
                "image": "probes@sha256:00",
                "probes": {"name": "probes", "key": "suite.yaml"}
            }))
            .unwrap(),
        );
        let (client, seen) = crate::test_api::api_server_answering(
            serde_json::to_value(&att).unwrap(),
            |_, _| None,
            behaviour_objects,
        );
        let log = Arc::new(MemoryLog::default());
        let (mut ctx, key) = context(client, Some(log.clone()));
        let evidence = Arc::new(LatestEvidence::default());
        let node = crate::test_evidence::shared("node-a", Timestamp::now(), 1, &[]);
        crate::evidence_api::EvidenceSink::accept(&*evidence, (*node).clone());
        let registry = Arc::new(BehaviourRequests::default());
        ctx.behaviour = Some(BehaviourWiring {
            evidence,
            requests: registry.clone(),
        });

        apply(&att, &ctx).await.unwrap();
        let patches = requests(
            &seen,
            "PATCH",
            "/namespaces/team/modelattestations/m/status",
        );
        assert_eq!(patches.len(), 1, "{seen:?}");
        let pending: ModelAttestationStatus =
            serde_json::from_value(patches[0]["status"].clone()).unwrap();
        assert_eq!(pending.verdict, Some(Verdict::Unknown));
        let request = pending.behaviour.clone().unwrap();
        assert_eq!(request.node, "node-a");
        assert_eq!(request.nonce, node.evidence.nonce);
        assert_eq!(request.evidence_digest, node.digest);
        assert_eq!(
            request.suite_digest,
            behaviour::sha256_digest(b"probes: []\n")
        );
        assert_eq!(
            request.model_bytes,
            std::fs::metadata(dir.path().join("model.safetensors"))
                .unwrap()
                .len()
        );
        assert_eq!(
            Some(request.manifest_digest.clone()),
            pending.manifest_digest
        );
        let registered = registry.get(&request.request_id).unwrap();
        assert_eq!(registered.model.uid, "ma-uid");
        assert_eq!(&*registered.suite, b"probes: []\n");

        // Nothing new while the request waits: no patch.
        att.status = Some(pending);
        apply(&att, &ctx).await.unwrap();
        assert_eq!(requests(&seen, "PATCH", "/status").len(), 1);

        // The pod's result wakes the controller, which folds it at once.
        let result = lotabots_crds::workload::WorkloadResult {
            schema_version: lotabots_crds::workload::RESULT_SCHEMA_VERSION.into(),
            request_id: request.request_id.clone(),
            kind: lotabots_crds::workload::WorkloadKind::BehaviourProbes,
            nonce: request.nonce.clone(),
            node: "node-a".into(),
            started_at: Timestamp::now(),
            finished_at: Timestamp::now(),
            passed: true,
            error: None,
            self_test: None,
            probes: Some(lotabots_crds::workload::ProbeReport {
                suite_digest: request.suite_digest.clone(),
                manifest_digest: request.manifest_digest.clone(),
                device: "cpu".into(),
                probes: vec![lotabots_crds::workload::ProbeOutcome {
                    name: "capital".into(),
                    passed: true,
                    detail: "Paris".into(),
                }],
            }),
        };
        registry
            .accept(
                &request.request_id,
                behaviour::AcceptedProbes {
                    pod: "lotabots-workloads/p".into(),
                    result,
                    received_at: Timestamp::now(),
                },
            )
            .unwrap();
        let bytes_before = ctx.metrics.bytes_hashed();
        apply(&att, &ctx).await.unwrap();
        assert_eq!(
            ctx.metrics.bytes_hashed(),
            bytes_before,
            "the model is not hashed again"
        );
        let patches = requests(&seen, "PATCH", "/status");
        assert_eq!(patches.len(), 2);
        let folded: ModelAttestationStatus =
            serde_json::from_value(patches[1]["status"].clone()).unwrap();
        assert_eq!(folded.verdict, Some(Verdict::Attested), "{folded:?}");
        assert_eq!(
            folded.verified_at,
            att.status.as_ref().unwrap().verified_at,
            "folding a result does not put off the next judgement of the files"
        );
        let result = folded.behaviour.as_ref().unwrap().result.as_ref().unwrap();
        assert!(result.passed);
        assert_eq!(result.probes[0].name, "capital");
        let recorded = log.recorded.lock().unwrap();
        let (payload, _) = recorded
            .last()
            .unwrap()
            .1
            .verify_payload(&lotabots_model::bundle::Trust::PublicKey(key.public_key()))
            .unwrap();
        let statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(statement["predicate"]["verdict"], "Attested");
        assert_eq!(
            statement["predicate"]["behaviour"]["requestId"],
            json!(request.request_id)
        );
        assert_eq!(
            statement["predicate"]["behaviour"]["probes"][0]["detail"],
            "Paris"
        );
    }

    /// A model with `spec.behaviour`, a context that serves it, and node-a's evidence.
    fn behaviour_setup(
        fail: fn(&str, &str) -> Option<u16>,
    ) -> (tempfile::TempDir, ModelAttestation, Context, Seen) {
        let (dir, mut att) = model();
        att.metadata.uid = Some("ma-uid".into());
        att.spec.behaviour = Some(
            serde_json::from_value(json!({
                "image": "probes@sha256:00",
                "probes": {"name": "probes", "key": "suite.yaml"},
                "timeout": "10m"
            }))
            .unwrap(),
        );
        let (client, seen) = crate::test_api::api_server_answering(
            serde_json::to_value(&att).unwrap(),
            fail,
            behaviour_objects,
        );
        let (mut ctx, _) = context(client, None);
        let evidence = Arc::new(LatestEvidence::default());
        let node = crate::test_evidence::shared("node-a", Timestamp::now(), 1, &[]);
        crate::evidence_api::EvidenceSink::accept(&*evidence, (*node).clone());
        ctx.behaviour = Some(BehaviourWiring {
            evidence,
            requests: Arc::default(),
        });
        (dir, att, ctx, seen)
    }

    fn behaviour_condition(status: &serde_json::Value) -> serde_json::Value {
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Behaviour")
            .unwrap()
            .clone()
    }

    #[tokio::test]
    async fn a_request_without_result_past_its_timeout_is_replaced() {
        let (_dir, mut att, ctx, seen) = behaviour_setup(|_, _| None);
        apply(&att, &ctx).await.unwrap();
        let first: ModelAttestationStatus =
            serde_json::from_value(requests(&seen, "PATCH", "/status")[0]["status"].clone())
                .unwrap();
        let mut stale = first.clone();
        let old = stale.behaviour.as_mut().unwrap();
        // The same node and the same evidence as the first request: the replacement must
        // still name another pod.
        let old_id = old.request_id.clone();
        // 10m timeout + 2m grace, and a little more.
        old.requested_at = Time(Timestamp::now() - jiff::SignedDuration::from_secs(13 * 60));
        att.status = Some(stale);
        apply(&att, &ctx).await.unwrap();
        let patches = requests(&seen, "PATCH", "/status");
        assert_eq!(patches.len(), 2);
        let status = &patches[1]["status"];
        let c = behaviour_condition(status);
        assert_eq!(c["status"], "Unknown");
        assert_eq!(c["reason"], "TimedOut");
        let message = c["message"].as_str().unwrap();
        assert!(message.contains(&old_id), "{message}");
        assert!(message.contains("requested on node node-a"), "{message}");
        assert_ne!(status["behaviour"]["requestId"], json!(old_id));
        assert_eq!(status["verdict"], "Unknown");
        let requests_now = &ctx.behaviour.as_ref().unwrap().requests;
        assert!(requests_now.get(&old_id).is_none());
        assert_eq!(requests_now.len(), 1);
    }

    #[tokio::test]
    async fn a_missing_suite_or_node_blocks_the_check_and_is_retried_soon() {
        let (_dir, att, ctx, seen) =
            behaviour_setup(|m, p| (m == "GET" && p.contains("/configmaps/")).then_some(404));
        assert_eq!(
            apply(&att, &ctx).await.unwrap(),
            Action::requeue(BLOCKED_RETRY)
        );
        let status = &requests(&seen, "PATCH", "/status")[0]["status"];
        let c = behaviour_condition(status);
        assert_eq!(
            (c["status"].as_str(), c["reason"].as_str()),
            (Some("False"), Some("ReferenceNotFound"))
        );
        assert!(
            c["message"]
                .as_str()
                .unwrap()
                .contains("ConfigMap team/probes does not exist"),
            "{c}"
        );
        assert_eq!(status["verdict"], "Unknown");
        assert!(status.get("behaviour").is_none());

        let (_dir, mut att, ctx, seen) = behaviour_setup(|_, _| None);
        att.spec.behaviour.as_mut().unwrap().gpu_count = Some(4);
        assert_eq!(
            apply(&att, &ctx).await.unwrap(),
            Action::requeue(BLOCKED_RETRY)
        );
        let status = &requests(&seen, "PATCH", "/status")[0]["status"];
        let c = behaviour_condition(status);
        assert_eq!(
            (c["status"].as_str(), c["reason"].as_str()),
            (Some("Unknown"), Some("NoAttestedNode"))
        );
        assert!(c["message"].as_str().unwrap().contains("4 GPU(s)"), "{c}");
    }
}
