//! Folds the GPU self-test results into a GpuAttestation's node verdicts and its
//! `WorkloadChecked` condition.
//!
//! Only nodes that passed the policy run the self-test, so only they are judged here. A
//! result counts for the attestation round whose nonce it carries; until the current
//! round's result arrives (within `spec.workloadCheck.timeout` of its evidence), the
//! previous round's result still stands, so that a node does not flap to `Unknown` at
//! every re-attestation. No result at all by the deadline is a failure (timed out).
//!
//! The operator does not take the self-test's own `passed` at its word: every device's
//! matrix multiply and memory check must have passed and its bandwidth must meet the
//! policy's minimum. With `required: false` the outcome is reported (reasons, condition)
//! but leaves the node's verdict alone.
//!
//! Pure functions of their inputs (the time included).

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use lotabots_crds::conditions::{reason, status as cstatus};
use lotabots_crds::gpu_attestation::{
    DEFAULT_WORKLOAD_TIMEOUT, Verdict, WorkloadCheck, parse_duration,
};
use lotabots_crds::workload::WorkloadResult;

use crate::evidence_api::AcceptedEvidence;
use crate::status::NodeResult;
use crate::workload_results::AcceptedResult;

/// At most this many nodes are named in the `WorkloadChecked` message.
const MAX_NAMED_NODES: usize = 5;

/// One node's self-test outcome.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The node did not pass the policy: no self-test runs there.
    NotApplicable,
    /// Every check passed; the detail sums up the measurements.
    Passed(String),
    /// A check failed, or the test could not run; the detail names what.
    Failed(String),
    /// No result arrived in time.
    TimedOut(String),
    /// The result is still awaited, until `due`.
    Pending {
        /// When the self-test times out.
        due: Timestamp,
    },
}

impl Outcome {
    /// Whether this counts as a failure of the self-test.
    pub fn is_failure(&self) -> bool {
        matches!(self, Outcome::Failed(_) | Outcome::TimedOut(_))
    }

    /// The reason a node entry shows; `None` for [`Outcome::NotApplicable`].
    fn reason(&self, required: bool) -> Option<String> {
        let not_required = if required {
            ""
        } else {
            " (not required by the policy)"
        };
        Some(match self {
            Outcome::NotApplicable => return None,
            Outcome::Passed(d) => format!("GPU self-test passed: {d}"),
            Outcome::Failed(d) => format!("GPU self-test failed{not_required}: {d}"),
            Outcome::TimedOut(d) => format!("GPU self-test timed out{not_required}: {d}"),
            Outcome::Pending { due } => {
                format!("GPU self-test result awaited (times out at {due}){not_required}")
            }
        })
    }
}

/// The self-test timeout of `check` (the CRD default when unparsable; the spec was
/// validated before).
pub fn timeout(check: &WorkloadCheck) -> Duration {
    parse_duration(&check.timeout)
        .or_else(|| parse_duration(DEFAULT_WORKLOAD_TIMEOUT))
        .unwrap_or(Duration::from_secs(300))
}

/// Judges one node's self-test: `policy` is its verdict on the evidence alone, `evidence`
/// its latest accepted evidence, `result` the latest accepted self-test result of this
/// node for a GpuAttestation of this name (any UID: only `attestation_uid`'s counts).
pub fn judge(
    check: &WorkloadCheck,
    attestation_uid: &str,
    policy: &NodeResult,
    evidence: Option<&AcceptedEvidence>,
    result: Option<&AcceptedResult>,
    now: Timestamp,
) -> Outcome {
    let Some(evidence) = evidence.filter(|_| policy.verdict == Verdict::Attested) else {
        return Outcome::NotApplicable;
    };
    let result = result.filter(|r| r.attestation.uid == attestation_uid);
    let current = result.filter(|r| {
        r.result
            .nonce
            .eq_ignore_ascii_case(&evidence.evidence.nonce)
    });
    if let Some(r) = current {
        return evaluate(&r.result, check.min_bandwidth_gbps);
    }
    let limit = timeout(check);
    let due = evidence.received_at + SignedDuration::try_from(limit).unwrap_or(SignedDuration::MAX);
    if now > due {
        return Outcome::TimedOut(format!(
            "no result within {} of the evidence accepted at {}",
            check.timeout, evidence.received_at
        ));
    }
    match result {
        // The previous round's result stands until this round's is due.
        Some(previous) => match evaluate(&previous.result, check.min_bandwidth_gbps) {
            Outcome::Passed(d) => Outcome::Passed(format!(
                "{d} (previous attestation round; this round's result is due by {due})"
            )),
            Outcome::Failed(d) => Outcome::Failed(format!(
                "{d} (previous attestation round; this round's result is due by {due})"
            )),
            other => other,
        },
        None => Outcome::Pending { due },
    }
}

/// Judges one result's measurements against the policy's minimum bandwidth.
pub fn evaluate(result: &WorkloadResult, min_bandwidth_gbps: Option<f64>) -> Outcome {
    let mut failures = Vec::new();
    if let Some(error) = &result.error {
        failures.push(format!("could not run: {error}"));
    }
    let devices = result
        .self_test
        .as_ref()
        .map(|t| t.devices.as_slice())
        .unwrap_or_default();
    if devices.is_empty() && result.error.is_none() {
        failures.push("no device was tested".into());
    }
    for d in devices {
        let who = format!("device {} ({})", d.ordinal, d.uuid);
        // Written so that a NaN error or bandwidth fails rather than passes.
        let within_tolerance = d.matmul.max_abs_error <= d.matmul.tolerance;
        if !d.matmul.passed || !within_tolerance {
            failures.push(format!(
                "{who}: matrix multiply differs from the CPU reference by {} (tolerance {})",
                d.matmul.max_abs_error, d.matmul.tolerance
            ));
        }
        if !d.memory.passed || d.memory.errors > 0 {
            failures.push(format!(
                "{who}: {} words of {} bytes read back wrong in the memory pattern test",
                d.memory.errors, d.memory.bytes_tested
            ));
        }
        let enough = |min: f64| d.bandwidth.gbps >= min;
        if let Some(min) = min_bandwidth_gbps
            && !enough(min)
        {
            failures.push(format!(
                "{who}: device-to-device bandwidth {:.1} GB/s is below the policy's minimum {min} GB/s",
                d.bandwidth.gbps
            ));
        }
    }
    if !result.passed && failures.is_empty() {
        failures.push("the self-test reported a failure without naming a check".into());
    }
    if !failures.is_empty() {
        return Outcome::Failed(failures.join("; "));
    }
    let lowest = devices
        .iter()
        .map(|d| d.bandwidth.gbps)
        .fold(f64::INFINITY, f64::min);
    let gflops = devices
        .iter()
        .map(|d| d.matmul.gflops)
        .fold(f64::INFINITY, f64::min);
    let simulated = if result.self_test.as_ref().is_some_and(|t| t.simulated) {
        " (simulated)"
    } else {
        ""
    };
    Outcome::Passed(format!(
        "{} devices, matrix multiply and memory correct, lowest bandwidth {lowest:.1} GB/s, lowest matmul {gflops:.0} GFLOP/s{simulated}",
        devices.len()
    ))
}

/// The node's result with its self-test folded in: a required self-test that failed or
/// timed out fails the node, one still awaited keeps it `Unknown` (pending); the outcome
/// is always among the reasons (first, so that the status's cap on reasons keeps it).
pub fn fold(check: &WorkloadCheck, mut result: NodeResult, outcome: &Outcome) -> NodeResult {
    let Some(why) = outcome.reason(check.required) else {
        return result;
    };
    if check.required {
        match outcome {
            Outcome::Failed(_) | Outcome::TimedOut(_) => {
                result.verdict = Verdict::Failed;
                result.pending = false;
            }
            Outcome::Pending { .. } => {
                result.verdict = Verdict::Unknown;
                result.pending = true;
            }
            Outcome::Passed(_) | Outcome::NotApplicable => {}
        }
    }
    result.reasons.insert(0, why);
    result
}

/// The `WorkloadChecked` condition over the nodes' outcomes: (status, reason, message).
pub fn condition(outcomes: &[(String, Outcome)]) -> (&'static str, &'static str, String) {
    let judged: Vec<_> = outcomes
        .iter()
        .filter(|(_, o)| *o != Outcome::NotApplicable)
        .collect();
    let failed: Vec<_> = judged.iter().filter(|(_, o)| o.is_failure()).collect();
    let pending = judged
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Pending { .. }))
        .count();
    if !failed.is_empty() {
        let mut names: Vec<String> = failed
            .iter()
            .take(MAX_NAMED_NODES)
            .map(|(n, o)| match o {
                Outcome::TimedOut(_) => format!("{n} (timed out)"),
                _ => n.clone(),
            })
            .collect();
        if failed.len() > MAX_NAMED_NODES {
            names.push(format!("and {} more", failed.len() - MAX_NAMED_NODES));
        }
        return (
            cstatus::FALSE,
            reason::WORKLOAD_FAILED,
            format!(
                "the GPU self-test failed on {} of {} nodes that passed the policy: {}",
                failed.len(),
                judged.len(),
                names.join(", ")
            ),
        );
    }
    if judged.is_empty() {
        return (
            cstatus::UNKNOWN,
            reason::WORKLOAD_PENDING,
            "no node has passed the policy yet: the GPU self-test runs only on those that do"
                .into(),
        );
    }
    if pending > 0 {
        return (
            cstatus::UNKNOWN,
            reason::WORKLOAD_PENDING,
            format!(
                "awaiting the GPU self-test results of {pending} of {} nodes",
                judged.len()
            ),
        );
    }
    (
        cstatus::TRUE,
        reason::WORKLOAD_PASSED,
        format!(
            "the GPU self-test passed on all {} nodes that passed the policy",
            judged.len()
        ),
    )
}

/// How long until the earliest pending self-test times out (so that the controller looks
/// again then rather than at its next resync).
pub fn next_deadline(outcomes: &[(String, Outcome)], now: Timestamp) -> Option<Duration> {
    outcomes
        .iter()
        .filter_map(|(_, o)| match o {
            Outcome::Pending { due } => Some(due.duration_since(now)),
            _ => None,
        })
        .min()
        .map(|d| d.unsigned_abs() + Duration::from_secs(1))
}

#[cfg(test)]
#[path = "workload_fold_tests.rs"]
mod tests;
