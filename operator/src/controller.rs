//! The GpuAttestation controller: for each GpuAttestation, the nodes it selects are
//! judged from their agents' latest accepted evidence; the status is written by
//! server-side apply; verdict changes become Events; nodes are labelled with the verdict
//! (and unlabelled when they stop matching, or when the GpuAttestation goes: finalizer).
//!
//! Reconciles run when a GpuAttestation changes, when a node's labels change (it may
//! start or stop matching), when evidence arrives (debounced), and periodically, so that
//! nodes whose agent went silent turn `Unknown`.
//!
//! A GpuAttestation with `spec.workloadCheck` also folds in its nodes' GPU self-test
//! results (see [`crate::workload_fold`]); their arrival triggers a reconcile as well.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PartialObjectMeta, PartialObjectMetaExt, Patch, PatchParams};
use kube::core::{ObjectMeta, SelectorExt};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalized, finalizer};
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use lotabots_crds::conditions::reason;
use lotabots_crds::gpu_attestation::{
    GpuAttestation, GpuAttestationStatus, Verdict, parse_duration,
};
use lotabots_crds::labels;
use serde_json::json;

use crate::backoff::Backoff;
use crate::evidence_api::LatestEvidence;
use crate::evidence_store::VerdictLog;
use crate::metrics::ControllerMetrics;
use crate::status::{Judging, build_status_with_workload, judge_node_with, stalled_status};
use crate::workload_fold;
use crate::workload_results::WorkloadResults;

/// The finalizer that removes the node labels a GpuAttestation wrote.
pub const FINALIZER: &str = "lotabots.io/node-labels";
/// The field manager of the status.
pub const FIELD_MANAGER: &str = "lotabots-operator";

/// How the controller judges and how often it looks again.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How long past its interval an agent may stay silent.
    pub grace: Duration,
    /// Accept evidence of the agent's simulated backend (development clusters only).
    pub allow_simulated: bool,
    /// Longest time between two reconciles of one GpuAttestation.
    pub resync: Duration,
    /// Evidence arriving within this window is judged in one reconcile.
    pub debounce: Duration,
    /// RIMs and OCSP responses the GPUs' confidential-computing reports are judged with
    /// (`--reference-bundle`); `None`: measurements and revocation are not checked, and the
    /// reasons say so.
    pub reference_bundle: Option<Arc<lotabots_verifier::cc::ReferenceBundle>>,
}

/// What reconciles share.
pub struct Context {
    client: Client,
    nodes: Store<PartialObjectMeta<Node>>,
    evidence: Arc<LatestEvidence>,
    /// The GPU self-test results the workload API accepted.
    workloads: Arc<WorkloadResults>,
    settings: Settings,
    recorder: Recorder,
    metrics: ControllerMetrics,
    failures: Backoff<GpuAttestation>,
    /// Where verdict changes are recorded (the evidence store), if anywhere.
    verdict_log: Option<Arc<dyn VerdictLog>>,
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
    /// A verdict change could not be recorded in the evidence store.
    #[error("evidence store: {0:#}")]
    Store(anyhow::Error),
}

impl Error {
    fn category(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api_status",
            Error::Kube(_) => "api_transport",
            Error::Finalizer(_) => "finalizer",
            Error::Store(_) => "store",
        }
    }
}

/// Runs the controller until `shutdown` resolves; with a `verdict_log`, every change of
/// a node's verdict is recorded there before the status shows it.
///
/// No workload API feeds this controller self-test results: the nodes of a
/// GpuAttestation with `spec.workloadCheck` time out. [`run_with_workloads`] is the
/// operator's.
pub async fn run(
    client: Client,
    evidence: Arc<LatestEvidence>,
    settings: Settings,
    metrics: ControllerMetrics,
    reporter: Reporter,
    verdict_log: Option<Arc<dyn VerdictLog>>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let workloads = Arc::new(WorkloadResults::default());
    run_with_workloads(
        client,
        evidence,
        workloads,
        settings,
        metrics,
        reporter,
        verdict_log,
        shutdown,
    )
    .await
}

/// [`run`], folding in the GPU self-test results of `workloads` (what the workload API
/// accepts) and reconciling whenever one arrives.
#[allow(clippy::too_many_arguments)]
pub async fn run_with_workloads(
    client: Client,
    evidence: Arc<LatestEvidence>,
    workloads: Arc<WorkloadResults>,
    settings: Settings,
    metrics: ControllerMetrics,
    reporter: Reporter,
    verdict_log: Option<Arc<dyn VerdictLog>>,
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
        workloads: workloads.clone(),
        settings,
        metrics,
        failures: Backoff::default(),
        verdict_log,
    });
    controller
        .reconcile_all_on(futures::stream::select(
            node_changes,
            futures::stream::select(evidence_arrivals(evidence), workload_arrivals(workloads)),
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

/// One item per accepted self-test result (coalesced by the controller's debounce).
fn workload_arrivals(workloads: Arc<WorkloadResults>) -> impl Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(workloads.subscribe(), |mut rx| async move {
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
        ctx.failures.succeeded(&att);
    }
    result
}

/// Per-object exponential backoff: 2 s, 4 s, … up to 5 min; reset by a success.
fn error_policy(att: Arc<GpuAttestation>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.failures.failed(&att);
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
    let uid = att.metadata.uid.clone().unwrap_or_default();
    let mut workload_outcomes = Vec::new();
    let results: Vec<_> = matched
        .iter()
        .map(|n| {
            let node = n.name_any();
            let latest = ctx.evidence.get(&node);
            let result = judge_node_with(
                &node,
                latest.as_deref(),
                &att.spec.policy,
                &judging,
                ctx.settings.reference_bundle.as_ref(),
                now,
            );
            let Some(check) = &att.spec.workload_check else {
                return result;
            };
            let self_test = ctx.workloads.get(&node, &name);
            let outcome = workload_fold::judge(
                check,
                &uid,
                &result,
                latest.as_deref(),
                self_test.as_deref(),
                now,
            );
            let folded = workload_fold::fold(check, result, &outcome);
            workload_outcomes.push((node, outcome));
            folded
        })
        .collect();

    record_changes(att, &results, ctx).await?;
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

    let workload = att
        .spec
        .workload_check
        .as_ref()
        .map(|_| workload_fold::condition(&workload_outcomes));
    let status =
        build_status_with_workload(generation, att.status.as_ref(), results, workload, now);
    patch_status(ctx, &name, &status).await?;
    // A pending self-test times out at a known time: look again then.
    let next = workload_fold::next_deadline(&workload_outcomes, now)
        .map_or(ctx.settings.resync, |d| d.min(ctx.settings.resync));
    Ok(Action::requeue(next.min(interval)))
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

/// Records every node whose verdict changed since the last status in the evidence store.
/// A failure fails the reconcile before the status moves on, so the change is recorded
/// on the retry: no verdict change goes unrecorded (one may be recorded twice when the
/// status write fails after the record; the audit trail shows both).
async fn record_changes(
    att: &GpuAttestation,
    results: &[crate::status::NodeResult],
    ctx: &Context,
) -> Result<(), Error> {
    let Some(log) = &ctx.verdict_log else {
        return Ok(());
    };
    for r in changed_verdicts(att, results) {
        let evidence = ctx.evidence.get(&r.node);
        log.record(att, r, evidence.as_deref())
            .await
            .map_err(Error::Store)?;
    }
    Ok(())
}

/// The results whose verdict differs from the one the status shows (new nodes included).
fn changed_verdicts<'a>(
    att: &GpuAttestation,
    results: &'a [crate::status::NodeResult],
) -> impl Iterator<Item = &'a crate::status::NodeResult> {
    let before: HashMap<String, Verdict> = att
        .status
        .iter()
        .flat_map(|s| s.nodes.iter())
        .map(|n| (n.node.clone(), n.verdict))
        .collect();
    results
        .iter()
        .filter(move |r| before.get(r.node.as_str()) != Some(&r.verdict))
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
    let reference = att.object_ref(&());
    for r in changed_verdicts(att, results).take(MAX_EVENTS_PER_RECONCILE) {
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
            // The node as the related object: it keeps each node's Event apart (the
            // recorder merges Events with the same reason and related object into one
            // series) and lets `kubectl events --for node/NAME` find it.
            secondary: Some(k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(r.node.clone()),
                ..Default::default()
            }),
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %e, "could not record event");
        }
    }
}

/// The controller's edge cases against a scripted API server: which requests it makes,
/// and what it does when they fail.
#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use kube::runtime::watcher;
    use lotabots_crds::gpu_attestation::GpuAttestationSpec;

    use super::*;
    use crate::evidence_api::{AcceptedEvidence, EvidenceSink};
    use crate::test_api::{Seen, requests};

    fn api_server(att: &GpuAttestation, fail: fn(&str, &str) -> Option<u16>) -> (Client, Seen) {
        crate::test_api::api_server(serde_json::to_value(att).unwrap(), fail)
    }

    fn node(name: &str, labels: &[(&str, &str)]) -> PartialObjectMeta<Node> {
        let meta = ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        };
        meta.into_response_partial::<Node>()
    }

    fn attestation(selector: Option<serde_json::Value>) -> GpuAttestation {
        let spec = GpuAttestationSpec {
            node_selector: selector.map(|s| serde_json::from_value(s).unwrap()),
            ..Default::default()
        };
        let mut att = GpuAttestation::new("fleet", spec);
        att.metadata.generation = Some(1);
        att.metadata.creation_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()),
        );
        att
    }

    fn context(client: Client, nodes: Vec<PartialObjectMeta<Node>>, attested: &[&str]) -> Context {
        let (store, mut writer) = reflector::store();
        for n in nodes {
            writer.apply_watcher_event(&watcher::Event::Apply(n));
        }
        let evidence = Arc::new(LatestEvidence::default());
        for node in attested {
            evidence.accept(crate::test_evidence::accepted(
                node,
                &"00".repeat(32),
                Timestamp::now(),
                0,
                &[],
                "sha256:00",
            ));
        }
        Context {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: "test".into(),
                    instance: None,
                },
            ),
            client,
            nodes: store,
            evidence,
            workloads: Arc::new(WorkloadResults::default()),
            settings: Settings {
                grace: Duration::from_secs(60),
                allow_simulated: true,
                resync: Duration::from_secs(60),
                debounce: Duration::ZERO,
                reference_bundle: None,
            },
            metrics: ControllerMetrics::register(&prometheus::Registry::new()).unwrap(),
            failures: Backoff::default(),
            verdict_log: None,
        }
    }

    /// A verdict log in memory: what was recorded, or a failure on demand.
    #[derive(Default)]
    struct MemoryLog {
        recorded: StdMutex<Vec<(String, Verdict, bool)>>,
        fail: bool,
    }

    impl VerdictLog for MemoryLog {
        fn record<'a>(
            &'a self,
            _attestation: &'a GpuAttestation,
            result: &'a crate::status::NodeResult,
            evidence: Option<&'a AcceptedEvidence>,
        ) -> futures::future::BoxFuture<'a, anyhow::Result<()>> {
            Box::pin(async move {
                if self.fail {
                    anyhow::bail!("database unreachable");
                }
                self.recorded.lock().unwrap().push((
                    result.node.clone(),
                    result.verdict,
                    evidence.is_some(),
                ));
                Ok(())
            })
        }
    }

    const PRESENT: (&str, &str) = ("nvidia.com/gpu.present", "true");

    #[tokio::test]
    async fn labels_are_written_only_where_they_change_and_cleared_where_no_longer_selected() {
        let att = attestation(None);
        let (client, seen) = api_server(&att, |_, _| None);
        let ctx = context(
            client,
            vec![
                node("fresh", &[PRESENT]),
                node(
                    "labelled",
                    &[
                        PRESENT,
                        (labels::GPU_ATTESTED, "false"),
                        (labels::GPU_ATTESTATION, "fleet"),
                    ],
                ),
                node(
                    "gone-cpu",
                    &[
                        (labels::GPU_ATTESTED, "true"),
                        (labels::GPU_ATTESTATION, "fleet"),
                    ],
                ),
                node("other", &[]),
            ],
            &["fresh", "labelled"],
        );
        apply(&att, &ctx).await.unwrap();
        // An empty node list fails ("the node reports no GPU"): both selected nodes fail.
        let fresh = requests(&seen, "PATCH", "/nodes/fresh");
        assert_eq!(fresh.len(), 1, "{seen:?}");
        assert_eq!(
            fresh[0]["metadata"]["labels"][labels::GPU_ATTESTED],
            "false"
        );
        assert!(
            requests(&seen, "PATCH", "/nodes/labelled").is_empty(),
            "an unchanged label is not rewritten"
        );
        let cleared = requests(&seen, "PATCH", "/nodes/gone-cpu");
        assert_eq!(cleared.len(), 1);
        assert!(
            cleared[0]["metadata"].get("labels").is_none(),
            "clearing applies no labels: {}",
            cleared[0]
        );
        assert!(requests(&seen, "PATCH", "/nodes/other").is_empty());
        let status = requests(&seen, "PATCH", "/gpuattestations/fleet/status");
        assert_eq!(status.len(), 1);
        assert_eq!(status[0]["status"]["matchedNodes"], 2);
        assert_eq!(status[0]["status"]["failedNodes"], 2);
        // The recorder posts the first and patches the series of a repeated one.
        let events =
            requests(&seen, "POST", "/events").len() + requests(&seen, "PATCH", "/events").len();
        assert_eq!(events, 2, "one event per verdict change");
    }

    #[tokio::test]
    async fn verdict_changes_are_recorded_once_and_unchanged_ones_not() {
        let mut att = attestation(None);
        att.status = Some(GpuAttestationStatus {
            nodes: vec![lotabots_crds::gpu_attestation::NodeSummary {
                node: "same".into(),
                verdict: Verdict::Failed,
                reasons: vec![],
                evidence_digest: None,
                checked_at: None,
            }],
            ..Default::default()
        });
        let (client, seen) = api_server(&att, |_, _| None);
        let log = Arc::new(MemoryLog::default());
        let mut ctx = context(
            client,
            vec![node("same", &[PRESENT]), node("new", &[PRESENT])],
            &["same", "new"],
        );
        ctx.verdict_log = Some(log.clone());
        apply(&att, &ctx).await.unwrap();
        // Both fail (no GPU in the evidence): only "new" changed.
        assert_eq!(
            *log.recorded.lock().unwrap(),
            vec![("new".to_string(), Verdict::Failed, true)]
        );
        assert_eq!(
            requests(&seen, "PATCH", "/gpuattestations/fleet/status").len(),
            1
        );
    }

    #[tokio::test]
    async fn a_verdict_that_cannot_be_recorded_holds_the_status_back() {
        let att = attestation(None);
        let (client, seen) = api_server(&att, |_, _| None);
        let mut ctx = context(client, vec![node("n", &[PRESENT])], &["n"]);
        ctx.verdict_log = Some(Arc::new(MemoryLog {
            fail: true,
            ..Default::default()
        }));
        let err = apply(&att, &ctx).await.unwrap_err();
        assert_eq!(err.category(), "store");
        assert!(err.to_string().contains("database unreachable"), "{err}");
        assert!(
            requests(&seen, "PATCH", "/gpuattestations/fleet/status").is_empty(),
            "the status must not show a verdict the store did not take"
        );
        assert!(requests(&seen, "POST", "/events").is_empty());
    }

    #[tokio::test]
    async fn a_failed_status_write_is_an_error_that_backs_off_exponentially() {
        let att = attestation(None);
        let (client, _) = api_server(&att, |m, p| {
            (m == "PATCH" && p.ends_with("/status")).then_some(500)
        });
        let ctx = Arc::new(context(client, vec![node("n", &[PRESENT])], &[]));
        let err = apply(&att, &ctx).await.unwrap_err();
        assert_eq!(err.category(), "api_status");
        let delays: Vec<Duration> = (0..12)
            .map(|_| error_policy(Arc::new(att.clone()), &err, ctx.clone()))
            .map(|a| format!("{a:?}"))
            .map(|s| {
                let secs: String = s.chars().filter(|c| c.is_ascii_digit()).collect();
                Duration::from_secs(secs.parse().unwrap())
            })
            .collect();
        assert_eq!(&delays[..4], &[2, 4, 8, 16].map(Duration::from_secs));
        assert_eq!(
            delays[11],
            Duration::from_secs(300),
            "capped at 5 minutes: {delays:?}"
        );
    }

    #[tokio::test]
    async fn a_node_deleted_while_its_labels_are_cleared_is_not_an_error() {
        let att = attestation(None);
        let (client, seen) = api_server(&att, |m, p| {
            (m == "PATCH" && p.ends_with("/nodes/vanished")).then_some(404)
        });
        let ctx = context(
            client,
            vec![node("vanished", &[(labels::GPU_ATTESTATION, "fleet")])],
            &[],
        );
        apply(&att, &ctx).await.unwrap();
        assert_eq!(requests(&seen, "PATCH", "/nodes/vanished").len(), 1);
        assert_eq!(requests(&seen, "PATCH", "/status").len(), 1);
    }

    #[tokio::test]
    async fn an_invalid_selector_stalls_and_touches_no_node() {
        let att = attestation(Some(
            json!({"matchExpressions": [{"key": "k", "operator": "Sideways", "values": ["v"]}]}),
        ));
        let (client, seen) = api_server(&att, |_, _| None);
        let ctx = context(client, vec![node("n", &[("k", "v"), PRESENT])], &["n"]);
        assert!(matches!(apply(&att, &ctx).await, Ok(a) if a == Action::await_change()));
        assert!(requests(&seen, "PATCH", "/nodes/").is_empty(), "{seen:?}");
        let status = requests(&seen, "PATCH", "/status");
        let stalled = status[0]["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Stalled")
            .cloned()
            .unwrap();
        assert_eq!(
            (stalled["status"].as_str(), stalled["reason"].as_str()),
            (Some("True"), Some("InvalidSpec"))
        );
        assert!(
            stalled["message"]
                .as_str()
                .unwrap()
                .contains("spec.nodeSelector"),
            "{stalled}"
        );
    }

    #[tokio::test]
    async fn a_workload_check_adds_the_workload_condition_to_the_status() {
        let mut att = attestation(None);
        att.spec.workload_check = Some(lotabots_crds::gpu_attestation::WorkloadCheck {
            image: "ghcr.io/lotabots/gpu-selftest:v1".into(),
            timeout: "5m".into(),
            min_bandwidth_gbps: None,
            required: true,
        });
        let (client, seen) = api_server(&att, |_, _| None);
        let ctx = context(client, vec![node("n", &[PRESENT])], &["n"]);
        apply(&att, &ctx).await.unwrap();
        let status = requests(&seen, "PATCH", "/gpuattestations/fleet/status");
        let workload = status[0]["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == lotabots_crds::conditions::WORKLOAD_CHECKED)
            .cloned()
            .expect("a WorkloadChecked condition");
        // The evidence has no GPU, so the node fails the policy and runs no self-test.
        assert_eq!(
            (workload["status"].as_str(), workload["reason"].as_str()),
            (Some("Unknown"), Some(reason::WORKLOAD_PENDING)),
            "{workload}"
        );
        // Without a workload check there is no such condition (the other tests' statuses).
        let plain = attestation(None);
        let (client, seen) = api_server(&plain, |_, _| None);
        apply(
            &plain,
            &context(client, vec![node("n", &[PRESENT])], &["n"]),
        )
        .await
        .unwrap();
        let status = requests(&seen, "PATCH", "/gpuattestations/fleet/status");
        assert!(
            status[0]["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["type"] != lotabots_crds::conditions::WORKLOAD_CHECKED)
        );
    }

    #[tokio::test]
    async fn deleting_the_attestation_clears_exactly_its_labels() {
        let att = attestation(None);
        let (client, seen) = api_server(&att, |_, _| None);
        let ctx = context(
            client,
            vec![
                node(
                    "ours",
                    &[
                        (labels::GPU_ATTESTATION, "fleet"),
                        (labels::GPU_ATTESTED, "true"),
                    ],
                ),
                node(
                    "theirs",
                    &[
                        (labels::GPU_ATTESTATION, "other"),
                        (labels::GPU_ATTESTED, "true"),
                    ],
                ),
            ],
            &[],
        );
        cleanup(&att, &ctx).await.unwrap();
        assert_eq!(requests(&seen, "PATCH", "/nodes/ours").len(), 1);
        assert!(requests(&seen, "PATCH", "/nodes/theirs").is_empty());
    }
}
