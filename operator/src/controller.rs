//! The GpuAttestation controller: for each GpuAttestation, the nodes it selects are
//! judged from their agents' latest accepted evidence; the status is written by
//! server-side apply; verdict changes become Events; nodes are labelled with the verdict
//! (and unlabelled when they stop matching, or when the GpuAttestation goes: finalizer).
//!
//! Reconciles run when a GpuAttestation changes, when a node's labels change (it may
//! start or stop matching), when evidence arrives (debounced), and periodically, so that
//! nodes whose agent went silent turn `Unknown`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PartialObjectMeta, PartialObjectMetaExt, Patch, PatchParams};
use kube::core::{ObjectMeta, SelectorExt};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalized, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use lotabots_crds::conditions::reason;
use lotabots_crds::gpu_attestation::{
    GpuAttestation, GpuAttestationStatus, Verdict, parse_duration,
};
use lotabots_crds::labels;
use serde_json::json;

use crate::evidence_api::LatestEvidence;
use crate::metrics::ControllerMetrics;
use crate::status::{Judging, build_status, judge_node, stalled_status};

/// The finalizer that removes the node labels a GpuAttestation wrote.
pub const FINALIZER: &str = "lotabots.io/node-labels";
/// The field manager of the status.
pub const FIELD_MANAGER: &str = "lotabots-operator";

/// How the controller judges and how often it looks again.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// How long past its interval an agent may stay silent.
    pub grace: Duration,
    /// Accept evidence of the agent's simulated backend (development clusters only).
    pub allow_simulated: bool,
    /// Longest time between two reconciles of one GpuAttestation.
    pub resync: Duration,
    /// Evidence arriving within this window is judged in one reconcile.
    pub debounce: Duration,
}

/// What reconciles share.
pub struct Context {
    client: Client,
    nodes: Store<PartialObjectMeta<Node>>,
    evidence: Arc<LatestEvidence>,
    settings: Settings,
    recorder: Recorder,
    metrics: ControllerMetrics,
    failures: Mutex<HashMap<ObjectRef<GpuAttestation>, u32>>,
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The finalizer machinery failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    fn category(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api_status",
            Error::Kube(_) => "api_transport",
            Error::Finalizer(_) => "finalizer",
        }
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    evidence: Arc<LatestEvidence>,
    settings: Settings,
    metrics: ControllerMetrics,
    reporter: Reporter,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let attestations: Api<GpuAttestation> = Api::all(client.clone());
    // Only node metadata is kept: labels are all the controller reads, and full Node
    // objects (images, conditions) would cost megabytes on a large fleet.
    let (nodes, writer) = reflector::store();
    let node_changes = reflector(
        writer,
        watcher(
            Api::<PartialObjectMeta<Node>>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects()
    .predicate_filter(predicates::labels, Default::default())
    // A node's labels changed (or it came or went): every GpuAttestation may select
    // it now, or no longer.
    .filter_map(|r| async move { r.ok().map(|_| ()) });

    let controller = Controller::new(attestations, watcher::Config::default())
        .with_config(ControllerConfig::default().debounce(settings.debounce));
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        nodes,
        evidence: evidence.clone(),
        settings,
        metrics,
        failures: Mutex::default(),
    });
    controller
        .reconcile_all_on(futures::stream::select(
            node_changes,
            evidence_arrivals(evidence),
        ))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile did not complete");
            }
        })
        .await;
}

/// One item per accepted submission (coalesced by the controller's debounce).
fn evidence_arrivals(evidence: Arc<LatestEvidence>) -> impl Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(evidence.subscribe(), |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    })
}

async fn reconcile(att: Arc<GpuAttestation>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    // Judging before the node cache is filled would report every node as unmatched.
    if ctx.nodes.wait_until_ready().await.is_err() {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let api: Api<GpuAttestation> = Api::all(ctx.client.clone());
    let result = finalizer(&api, FINALIZER, att.clone(), |event| async {
        match event {
            Finalized::Apply(att) => apply(&att, &ctx).await,
            Finalized::Cleanup(att) => cleanup(&att, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    });
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics.observe_reconcile(outcome, started.elapsed());
    if result.is_ok() {
        ctx.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ObjectRef::from_obj(&*att));
    }
    result
}

/// Per-object exponential backoff: 2 s, 4 s, … up to 5 min; reset by a success.
fn error_policy(att: Arc<GpuAttestation>, error: &Error, ctx: Arc<Context>) -> Action {
    let mut failures = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
    let n = failures.entry(ObjectRef::from_obj(&*att)).or_insert(0);
    *n = n.saturating_add(1);
    let delay = Duration::from_secs(2u64.saturating_pow((*n).min(9))).min(Duration::from_secs(300));
    ctx.metrics.count_error(error.category());
    tracing::warn!(attestation = %att.name_any(), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn apply(att: &GpuAttestation, ctx: &Context) -> Result<Action, Error> {
    let name = att.name_any();
    let now = Timestamp::now();
    let generation = att.metadata.generation;
    if let Err(errors) = att.spec.validate() {
        // The API server's schema and the webhook normally stop such specs; one that got
        // through stalls here with the fields named, and no node is judged by it.
        let message = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        let status = stalled_status(
            generation,
            att.status.as_ref(),
            reason::INVALID_SPEC,
            message,
            now,
        );
        patch_status(ctx, &name, &status).await?;
        return Ok(Action::await_change());
    }
    let interval =
        parse_duration(&att.spec.reattestation_interval).unwrap_or(Duration::from_secs(600));
    let selector = match att.spec.selector() {
        Ok(s) => s,
        Err(e) => {
            let status = stalled_status(
                generation,
                att.status.as_ref(),
                reason::INVALID_SPEC,
                format!("spec.nodeSelector: {e}"),
                now,
            );
            patch_status(ctx, &name, &status).await?;
            return Ok(Action::await_change());
        }
    };
    let judging = Judging {
        interval,
        grace: ctx.settings.grace,
        allow_simulated: ctx.settings.allow_simulated,
        waiting_since: att
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(now, |t| t.0),
    };

    let all_nodes = ctx.nodes.state();
    let matched: Vec<_> = all_nodes
        .iter()
        .filter(|n| selector.matches(n.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())))
        .collect();
    let results: Vec<_> = matched
        .iter()
        .map(|n| {
            let node = n.name_any();
            let latest = ctx.evidence.get(&node);
            judge_node(&node, latest.as_deref(), &att.spec.policy, &judging, now)
        })
        .collect();

    publish_changes(att, &results, ctx).await;
    if results.is_empty() && !already_reported_no_match(att) {
        // Ready (nothing to attest) but probably not what was meant: say so once.
        let event = Event {
            type_: EventType::Warning,
            reason: reason::NO_MATCHING_NODES.into(),
            note: Some("the node selector matches no node: nothing is attested".into()),
            action: "Select".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &att.object_ref(&())).await {
            tracing::warn!(error = %e, "could not record event");
        }
    }
    ctx.metrics.set_nodes(&name, &results);

    // Labels: the verdict on matched nodes; nothing on nodes this attestation labelled
    // before but no longer selects (or when labelling was turned off).
    let verdicts: HashMap<&str, Verdict> = results
        .iter()
        .map(|r| (r.node.as_str(), r.verdict))
        .collect();
    for node in all_nodes.iter() {
        let node_name = node.name_any();
        let desired = if att.spec.label_nodes {
            verdicts.get(node_name.as_str()).copied()
        } else {
            None
        };
        let ours = node
            .labels()
            .get(labels::GPU_ATTESTATION)
            .is_some_and(|v| v == &name);
        match desired {
            Some(v) => set_node_labels(ctx, &name, node, v).await?,
            None if ours => clear_node_labels(ctx, &name, &node_name).await?,
            None => {}
        }
    }

    let status = build_status(generation, att.status.as_ref(), results, now);
    patch_status(ctx, &name, &status).await?;
    Ok(Action::requeue(ctx.settings.resync.min(interval)))
}

async fn cleanup(att: &GpuAttestation, ctx: &Context) -> Result<Action, Error> {
    let name = att.name_any();
    for node in ctx.nodes.state().iter() {
        if node
            .labels()
            .get(labels::GPU_ATTESTATION)
            .is_some_and(|v| v == &name)
        {
            clear_node_labels(ctx, &name, &node.name_any()).await?;
        }
    }
    ctx.metrics.forget(&name);
    tracing::info!(attestation = %name, "GpuAttestation deleted: its node labels are removed");
    Ok(Action::await_change())
}

/// Each GpuAttestation labels nodes under a field manager of its own, so that server-side
/// apply removes exactly its labels when it applies none.
fn label_manager(attestation: &str) -> String {
    let mut m = format!("lotabots-operator/{attestation}");
    m.truncate(128);
    m
}

async fn set_node_labels(
    ctx: &Context,
    attestation: &str,
    node: &PartialObjectMeta<Node>,
    verdict: Verdict,
) -> Result<(), Error> {
    let value = match verdict {
        Verdict::Attested => labels::TRUE,
        Verdict::Failed => labels::FALSE,
        // Unknown: no claim either way.
        Verdict::Unknown => return clear_node_labels(ctx, attestation, &node.name_any()).await,
    };
    let current = node.labels();
    if current.get(labels::GPU_ATTESTED).map(String::as_str) == Some(value)
        && current.get(labels::GPU_ATTESTATION).map(String::as_str) == Some(attestation)
    {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "labels": { labels::GPU_ATTESTED: value, labels::GPU_ATTESTATION: attestation } },
    });
    // Forced: when two GpuAttestations select one node, the last verdict written wins
    // (and each one's events and status still tell its own verdict).
    let params = PatchParams::apply(&label_manager(attestation)).force();
    Api::<Node>::all(ctx.client.clone())
        .patch_metadata(&node.name_any(), &params, &Patch::Apply(&patch))
        .await?;
    Ok(())
}

async fn clear_node_labels(ctx: &Context, attestation: &str, node: &str) -> Result<(), Error> {
    let patch = ObjectMeta::default().into_request_partial::<Node>();
    let params = PatchParams::apply(&label_manager(attestation)).force();
    match Api::<Node>::all(ctx.client.clone())
        .patch_metadata(node, &params, &Patch::Apply(&patch))
        .await
    {
        Ok(_) => Ok(()),
        // The node is gone: nothing to clear.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn patch_status(
    ctx: &Context,
    name: &str,
    status: &GpuAttestationStatus,
) -> Result<(), Error> {
    let patch = json!({
        "apiVersion": GpuAttestation::api_version(&()),
        "kind": GpuAttestation::kind(&()),
        "status": status,
    });
    Api::<GpuAttestation>::all(ctx.client.clone())
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(())
}

/// Whether the last status already said that the selector matches nothing.
fn already_reported_no_match(att: &GpuAttestation) -> bool {
    att.status
        .iter()
        .flat_map(|s| s.conditions.iter())
        .any(|c| {
            c.type_ == lotabots_crds::conditions::READY && c.reason == reason::NO_MATCHING_NODES
        })
}

/// At most this many verdict-change Events per reconcile, so that a fleet-wide change
/// does not flood the API server; the status lists every node regardless.
const MAX_EVENTS_PER_RECONCILE: usize = 20;

/// Emits an Event for every node whose verdict changed since the last status.
async fn publish_changes(
    att: &GpuAttestation,
    results: &[crate::status::NodeResult],
    ctx: &Context,
) {
    let before: HashMap<&str, Verdict> = att
        .status
        .iter()
        .flat_map(|s| s.nodes.iter())
        .map(|n| (n.node.as_str(), n.verdict))
        .collect();
    let reference = att.object_ref(&());
    let changed = results
        .iter()
        .filter(|r| before.get(r.node.as_str()) != Some(&r.verdict));
    for r in changed.take(MAX_EVENTS_PER_RECONCILE) {
        let (type_, reason) = match r.verdict {
            Verdict::Attested => (EventType::Normal, "NodeAttested"),
            Verdict::Failed => (EventType::Warning, "NodeFailed"),
            Verdict::Unknown => (EventType::Warning, "NodeUnknown"),
        };
        let mut note = format!("node {}: {}", r.node, r.reasons.join("; "));
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
            reason: reason.into(),
            note: Some(note),
            action: "Verify".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %e, "could not record event");
        }
    }
}
