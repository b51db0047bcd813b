//! The verifier: one node's GPU evidence against one `GpuAttestation` policy → a verdict
//! with reasons a person can act on.
//!
//! Pure functions, no Kubernetes client and no I/O, so that the operator's evidence API
//! and the offline command run exactly this code, and every rule is tested from data.
//!
//! Three outcomes per rule and GPU: a violation fails the node; a fact that could not be
//! measured makes the node `Unknown` (never a silent pass); a limit on a fact the GPU does
//! not report at all (retired pages on Hopper, which remaps rows instead) is not
//! applicable, and the reasons say so.

pub mod cc;
mod rules;

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use lotabots_crds::evidence::{BackendKind, NodeEvidence, NonceOrigin, SCHEMA_VERSION};
use lotabots_crds::gpu_attestation::{GpuPolicy, Verdict};
use serde::Serialize;

/// What the verifier knows besides the evidence and the policy.
#[derive(Clone, Debug)]
pub struct Context {
    /// The nonce the verifier issued for this evidence (64 hex characters), if any; when
    /// set, the evidence must carry it.
    pub expected_nonce: Option<String>,
    /// The time to judge freshness at.
    pub now: Timestamp,
    /// Oldest evidence accepted.
    pub max_age: Duration,
    /// How far in the future a collection time may lie (clock skew between nodes).
    pub max_clock_skew: Duration,
    /// Whether evidence from the simulated backend may be attested (development and tests
    /// only: simulated evidence proves nothing about hardware).
    pub allow_simulated: bool,
    /// RIMs and OCSP responses the confidential-computing reports are judged with; `None`:
    /// their measurements and revocation are not checked, and a note says so.
    pub reference_bundle: Option<Arc<cc::ReferenceBundle>>,
}

impl Context {
    /// Judges at `now`, with a 5-minute age limit, 30 s of skew, no simulated evidence and
    /// no reference bundle.
    pub fn at(now: Timestamp) -> Self {
        Self {
            expected_nonce: None,
            now,
            max_age: Duration::from_secs(300),
            max_clock_skew: Duration::from_secs(30),
            allow_simulated: false,
            reference_bundle: None,
        }
    }
}

/// The rule a finding is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Rule {
    /// The evidence format.
    Schema,
    /// The nonce binding.
    Nonce,
    /// Evidence age.
    Freshness,
    /// Simulated evidence.
    Backend,
    /// The node reports GPUs at all.
    Gpus,
    /// Allowed products.
    Product,
    /// Minimum driver version.
    Driver,
    /// Allowed VBIOS versions.
    Vbios,
    /// ECC required.
    Ecc,
    /// MIG mode.
    MigMode,
    /// MIG GPU-instance profiles.
    MigProfiles,
    /// Confidential computing.
    ConfidentialComputing,
    /// Temperature limit.
    Temperature,
    /// Retired-pages limit.
    RetiredPages,
    /// Remapped-row failures limit.
    RemappedRows,
    /// Uncorrectable ECC errors limit.
    UncorrectableEcc,
}

/// What a finding does to the verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// The policy is violated: the node fails.
    Failed,
    /// A fact the rule needs could not be measured: the node is `Unknown`.
    Unknown,
    /// Worth knowing, does not change the verdict (e.g. confidential-computing
    /// measurements not compared with reference values).
    Note,
    /// The rule does not apply to this GPU (it does not report the fact at all).
    NotApplicable,
}

/// One thing the verifier found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// Its effect.
    pub outcome: Outcome,
    /// The rule.
    pub rule: Rule,
    /// The GPU (NVML index) it is about, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<u32>,
    /// For confidential-computing findings: which check of the report it comes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<cc::CcCheck>,
    /// What was found, in words a person can act on.
    pub message: String,
}

/// The verdict on one node's evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeVerdict {
    /// `Attested`, `Failed` or `Unknown`.
    pub verdict: Verdict,
    /// Every finding, failures first, then unknowns, then rules that did not apply.
    pub findings: Vec<Finding>,
}

impl NodeVerdict {
    /// The verdict `findings` give: any failure fails, else any unknown is unknown, else
    /// attested. Findings are ordered failures first, then by GPU and rule.
    pub fn from_findings(mut findings: Vec<Finding>) -> Self {
        findings.sort_by_key(|f| (f.outcome, f.gpu, f.rule));
        let verdict = if findings.iter().any(|f| f.outcome == Outcome::Failed) {
            Verdict::Failed
        } else if findings.iter().any(|f| f.outcome == Outcome::Unknown) {
            Verdict::Unknown
        } else {
            Verdict::Attested
        };
        NodeVerdict { verdict, findings }
    }

    /// The findings' messages, in order.
    pub fn reasons(&self) -> Vec<String> {
        self.findings.iter().map(|f| f.message.clone()).collect()
    }

    /// Whether some finding is about `rule`.
    pub fn has(&self, rule: Rule, outcome: Outcome) -> bool {
        self.findings
            .iter()
            .any(|f| f.rule == rule && f.outcome == outcome)
    }
}

/// Judges one node's evidence against a policy.
pub fn verify_node(evidence: &NodeEvidence, policy: &GpuPolicy, ctx: &Context) -> NodeVerdict {
    let mut findings = Vec::new();
    let mut add = |outcome, rule, gpu, message: String| {
        findings.push(Finding {
            outcome,
            rule,
            gpu,
            check: None,
            message,
        });
    };
    if evidence.schema_version != SCHEMA_VERSION {
        add(
            Outcome::Failed,
            Rule::Schema,
            None,
            format!(
                "evidence schema {:?} is not supported (expected {SCHEMA_VERSION})",
                evidence.schema_version
            ),
        );
        return NodeVerdict::from_findings(findings);
    }
    envelope(evidence, ctx, &mut add);
    if evidence.gpus.is_empty() {
        add(
            Outcome::Failed,
            Rule::Gpus,
            None,
            "the node reports no GPU".into(),
        );
    }
    let mut cc = Vec::new();
    for gpu in &evidence.gpus {
        rules::check_gpu(evidence, gpu, policy, ctx, &mut add, &mut cc);
    }
    findings.extend(cc);
    NodeVerdict::from_findings(findings)
}

/// Nonce, freshness and backend: whether the evidence can be trusted at all.
fn envelope(
    evidence: &NodeEvidence,
    ctx: &Context,
    add: &mut impl FnMut(Outcome, Rule, Option<u32>, String),
) {
    if let Some(expected) = &ctx.expected_nonce {
        if !evidence.nonce.eq_ignore_ascii_case(expected) {
            add(
                Outcome::Failed,
                Rule::Nonce,
                None,
                format!(
                    "evidence is bound to nonce {}…, not to the one issued ({}…)",
                    short(&evidence.nonce),
                    short(expected)
                ),
            );
        } else if evidence.nonce_origin != NonceOrigin::Verifier {
            add(
                Outcome::Failed,
                Rule::Nonce,
                None,
                "evidence says its nonce was not issued by a verifier".into(),
            );
        }
    }
    let age = ctx.now.duration_since(evidence.collected_at);
    if age.is_negative() {
        if age.unsigned_abs() > ctx.max_clock_skew {
            add(
                Outcome::Failed,
                Rule::Freshness,
                None,
                format!(
                    "evidence claims to be collected {}s in the future (allowed clock skew {}s)",
                    age.unsigned_abs().as_secs(),
                    ctx.max_clock_skew.as_secs()
                ),
            );
        }
    } else if age.unsigned_abs() > ctx.max_age {
        add(
            Outcome::Failed,
            Rule::Freshness,
            None,
            format!(
                "evidence is {}s old (at most {}s accepted)",
                age.unsigned_abs().as_secs(),
                ctx.max_age.as_secs()
            ),
        );
    }
    if evidence.backend.kind == BackendKind::Simulated && !ctx.allow_simulated {
        add(
            Outcome::Failed,
            Rule::Backend,
            None,
            format!(
                "evidence comes from the simulated backend ({}), which proves nothing about hardware",
                evidence.backend.profile.as_deref().unwrap_or("no profile")
            ),
        );
    }
}

fn short(nonce: &str) -> &str {
    nonce.get(..12).unwrap_or(nonce)
}

/// The findings of a confidential-computing report check as verifier findings about
/// `subject` (a GPU's name, or the report file), leaving out the checks that passed.
pub fn cc_findings(outcome: &cc::CcOutcome, gpu: Option<u32>, subject: &str) -> Vec<Finding> {
    outcome
        .findings
        .iter()
        .filter_map(|f| {
            let outcome = match f.severity {
                cc::Severity::Passed => return None,
                cc::Severity::Note => Outcome::Note,
                cc::Severity::Unknown => Outcome::Unknown,
                cc::Severity::Failed => Outcome::Failed,
            };
            Some(Finding {
                outcome,
                rule: Rule::ConfidentialComputing,
                gpu,
                check: Some(f.check),
                message: format!("{subject}: {}: {}", f.check.name(), f.message),
            })
        })
        .collect()
}
