//! From the nodes a GpuAttestation selects and their latest accepted evidence to its
//! status: per-node verdicts, counts, the bounded node list and the conditions.
//!
//! Pure functions of their inputs (the time included), so that every edge is tested
//! without an API server: the controller only gathers the inputs and writes the result.

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use lotabots_crds::conditions::{self, reason, status as cstatus};
use lotabots_crds::gpu_attestation::{GpuAttestationStatus, GpuPolicy, NodeSummary, Verdict};
use lotabots_verifier::cc::ReferenceBundle;
use lotabots_verifier::{Context, verify_node};

use crate::evidence_api::AcceptedEvidence;

/// At most this many nodes are listed in the status; the rest are counted.
pub const MAX_LISTED_NODES: usize = 100;
/// At most this many reasons per node.
pub const MAX_REASONS: usize = 8;
/// At most this many characters per reason.
pub const MAX_REASON_CHARS: usize = 256;

/// How evidence is judged.
#[derive(Clone, Copy, Debug)]
pub struct Judging {
    /// The policy's re-attestation interval.
    pub interval: Duration,
    /// How long past the interval an agent may stay silent before its node is Unknown.
    pub grace: Duration,
    /// Accept evidence of the simulated backend (development clusters only).
    pub allow_simulated: bool,
    /// Since when the GpuAttestation has been waiting for evidence (its creation): a node
    /// without evidence is pending until interval plus grace after this, then silent.
    pub waiting_since: Timestamp,
}

/// One node's verdict with what it rests on.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeResult {
    /// The node.
    pub node: String,
    /// Its verdict.
    pub verdict: Verdict,
    /// Why.
    pub reasons: Vec<String>,
    /// The evidence's digest, if there was evidence.
    pub digest: Option<String>,
    /// Unknown only because the first evidence is still expected (within interval plus
    /// grace): the attestation is in progress, not stuck.
    pub pending: bool,
}

/// Judges one node from its latest accepted evidence (none: the agent never reported).
pub fn judge_node(
    node: &str,
    latest: Option<&AcceptedEvidence>,
    policy: &GpuPolicy,
    judging: &Judging,
    now: Timestamp,
) -> NodeResult {
    judge_node_with(node, latest, policy, judging, None, now)
}

/// [`judge_node`] with the reference bundle (RIMs, OCSP responses) that the GPUs'
/// confidential-computing reports are judged with: the same verifier path as
/// `verify-gpu-evidence --reference-bundle`.
pub fn judge_node_with(
    node: &str,
    latest: Option<&AcceptedEvidence>,
    policy: &GpuPolicy,
    judging: &Judging,
    reference_bundle: Option<&Arc<ReferenceBundle>>,
    now: Timestamp,
) -> NodeResult {
    let max_age = judging.interval + judging.grace;
    let Some(accepted) = latest else {
        let waited = now.duration_since(judging.waiting_since);
        let pending = !waited.is_positive() || waited.unsigned_abs() <= max_age;
        let reason = if pending {
            "no evidence received from the node's agent yet".to_owned()
        } else {
            format!(
                "agent silent: no evidence from the node's agent in the {}s since this GpuAttestation was created (interval plus grace: {}s)",
                waited.as_secs(),
                max_age.as_secs()
            )
        };
        return NodeResult {
            node: node.to_owned(),
            verdict: Verdict::Unknown,
            reasons: vec![reason],
            digest: None,
            pending,
        };
    };
    // A silent agent: its latest evidence is too old to vouch for the node, but that is a
    // question, not proof of a fault.
    let age = now.duration_since(accepted.evidence.collected_at);
    if age.is_positive() && age.unsigned_abs() > max_age {
        return NodeResult {
            node: node.to_owned(),
            verdict: Verdict::Unknown,
            reasons: vec![format!(
                "agent silent: latest evidence is {}s old (collected {}), more than the {}s interval plus grace",
                age.as_secs(),
                accepted.evidence.collected_at,
                max_age.as_secs()
            )],
            digest: Some(accepted.digest.clone()),
            pending: false,
        };
    }
    let ctx = Context {
        // The evidence API already bound the evidence to a nonce it issued to this node.
        expected_nonce: Some(accepted.evidence.nonce.clone()),
        max_age,
        allow_simulated: judging.allow_simulated,
        reference_bundle: reference_bundle.cloned(),
        ..Context::at(now)
    };
    let verdict = verify_node(&accepted.evidence, policy, &ctx);
    NodeResult {
        node: node.to_owned(),
        verdict: verdict.verdict,
        reasons: verdict.findings.iter().map(|f| f.message.clone()).collect(),
        digest: Some(accepted.digest.clone()),
        pending: false,
    }
}

/// The status for `results`, keeping each condition's transition time unless its status
/// changed since `previous`.
pub fn build_status(
    generation: Option<i64>,
    previous: Option<&GpuAttestationStatus>,
    results: Vec<NodeResult>,
    now: Timestamp,
) -> GpuAttestationStatus {
    build_status_with_workload(generation, previous, results, None, now)
}

/// The `WorkloadChecked` condition of a GpuAttestation with `spec.workloadCheck`:
/// (status, reason, message), as [`crate::workload_fold::condition`] computes it.
pub type WorkloadCondition = (&'static str, &'static str, String);

/// [`build_status`] of a GpuAttestation with a workload check: `results` already have
/// the self-test folded in, and `workload` becomes the `WorkloadChecked` condition
/// (absent without a workload check).
pub fn build_status_with_workload(
    generation: Option<i64>,
    previous: Option<&GpuAttestationStatus>,
    mut results: Vec<NodeResult>,
    workload: Option<WorkloadCondition>,
    now: Timestamp,
) -> GpuAttestationStatus {
    let count = |v: Verdict| results.iter().filter(|r| r.verdict == v).count() as u32;
    let (attested, failed, unknown) = (
        count(Verdict::Attested),
        count(Verdict::Failed),
        count(Verdict::Unknown),
    );
    let matched = results.len() as u32;

    // Failing first, then unknown, then attested (the order of `Verdict`), each by name.
    results.sort_by(|a, b| match a.verdict.cmp(&b.verdict) {
        Ordering::Equal => a.node.cmp(&b.node),
        o => o,
    });
    let checked_at = Time(now);
    let nodes: Vec<NodeSummary> = results
        .iter()
        .take(MAX_LISTED_NODES)
        .map(|r| NodeSummary {
            node: r.node.clone(),
            verdict: r.verdict,
            reasons: r
                .reasons
                .iter()
                .take(MAX_REASONS)
                .map(|m| clip(m))
                .collect(),
            evidence_digest: r.digest.clone(),
            checked_at: Some(checked_at.clone()),
        })
        .collect();

    // One meaning for people, kstatus (Flux) and Argo CD alike: Ready=True is healthy,
    // Reconciling=True in progress, Stalled=True failed.
    let silent = results
        .iter()
        .filter(|r| r.verdict == Verdict::Unknown && !r.pending)
        .count();
    let (ready, why) = if matched == 0 {
        (
            Health::Ready,
            (
                reason::NO_MATCHING_NODES,
                "the node selector matches no node".to_owned(),
            ),
        )
    } else if failed > 0 {
        (
            Health::Stalled,
            (
                reason::NODES_FAILED,
                format!("{failed} of {matched} nodes failed the policy"),
            ),
        )
    } else if silent > 0 {
        (
            Health::Stalled,
            (
                reason::NODES_UNKNOWN,
                format!(
                    "{silent} of {matched} nodes have no fresh evidence: their agents are silent past the grace period"
                ),
            ),
        )
    } else if unknown > 0 {
        (
            Health::Reconciling,
            (
                reason::RECONCILING,
                if workload.is_some() {
                    format!(
                        "waiting for the first evidence or GPU self-test result of {unknown} of {matched} nodes"
                    )
                } else {
                    format!("waiting for the first evidence of {unknown} of {matched} nodes")
                },
            ),
        )
    } else {
        (
            Health::Ready,
            (
                reason::ALL_NODES_ATTESTED,
                format!("all {matched} nodes attested"),
            ),
        )
    };
    let flag = |b: bool| if b { cstatus::TRUE } else { cstatus::FALSE };
    let prev = previous
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let mut conditions: Vec<Condition> = [
        (conditions::READY, flag(ready == Health::Ready)),
        (conditions::RECONCILING, flag(ready == Health::Reconciling)),
        (conditions::STALLED, flag(ready == Health::Stalled)),
        (conditions::DEGRADED, flag(failed + silent as u32 > 0)),
        (conditions::NODES_EVALUATED, flag(unknown == 0)),
    ]
    .into_iter()
    .map(|(type_, status)| {
        condition(
            prev,
            type_,
            status,
            why.0,
            why.1.clone(),
            generation,
            &checked_at,
        )
    })
    .collect();
    if let Some((status, why, message)) = workload {
        conditions.push(condition(
            prev,
            conditions::WORKLOAD_CHECKED,
            status,
            why,
            message,
            generation,
            &checked_at,
        ));
    }

    GpuAttestationStatus {
        observed_generation: generation,
        conditions,
        matched_nodes: matched,
        attested_nodes: attested,
        failed_nodes: failed,
        unknown_nodes: unknown,
        omitted_nodes: matched.saturating_sub(nodes.len() as u32),
        nodes,
    }
}

/// Which of Ready, Reconciling and Stalled is true.
#[derive(PartialEq, Eq)]
enum Health {
    Ready,
    Reconciling,
    Stalled,
}

/// A condition whose transition time is kept from `previous` unless its status changed.
pub(crate) fn condition(
    previous: &[Condition],
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    // The transition time moves only when the status does (API conventions).
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Clips a reason to [`MAX_REASON_CHARS`] characters, on a character boundary.
pub(crate) fn clip(message: &str) -> String {
    if message.chars().count() <= MAX_REASON_CHARS {
        return message.to_owned();
    }
    let mut s: String = message.chars().take(MAX_REASON_CHARS - 1).collect();
    s.push('…');
    s
}

/// The status of a GpuAttestation whose spec cannot be applied: `Stalled` with the reason,
/// `Ready` false; the node counts and list of the previous status are kept.
pub fn stalled_status(
    generation: Option<i64>,
    previous: Option<&GpuAttestationStatus>,
    why: &str,
    message: String,
    now: Timestamp,
) -> GpuAttestationStatus {
    let prev = previous
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let at = Time(now);
    let conditions = vec![
        condition(
            prev,
            conditions::READY,
            cstatus::FALSE,
            why,
            message.clone(),
            generation,
            &at,
        ),
        condition(
            prev,
            conditions::STALLED,
            cstatus::TRUE,
            why,
            message,
            generation,
            &at,
        ),
    ];
    GpuAttestationStatus {
        observed_generation: generation,
        conditions,
        ..previous.cloned().unwrap_or_default()
    }
}
