//! `GpuAttestation`: which nodes to attest, the policy their GPUs must meet, and a bounded
//! summary of the verdicts.
//!
//! The API server rejects malformed specs early through the CEL rules
//! (`x-kubernetes-validations`) declared here; [`GpuAttestationSpec::validate`] checks what
//! CEL cannot express well (known MIG profile names, whether the profiles fit on a GPU,
//! label-selector operators) and is what the admission webhook calls.

use std::{cmp::Ordering, fmt, str::FromStr, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::mig;

/// Most node entries a GpuAttestation's status keeps (failing nodes first); the rest are
/// counted in `status.omittedNodes`, so status never grows with the fleet.
pub const MAX_STATUS_NODES: usize = 100;
/// Most reasons one node entry keeps.
pub const MAX_NODE_REASONS: usize = 8;
/// Longest reason string (bytes) a node entry keeps; longer ones are cut at a character
/// boundary and end in `…`.
pub const MAX_REASON_LEN: usize = 256;

/// Default of `spec.reattestationInterval`.
pub const DEFAULT_REATTESTATION_INTERVAL: &str = "10m";
/// Default of `spec.workloadCheck.timeout`.
pub const DEFAULT_WORKLOAD_TIMEOUT: &str = "5m";
/// Shortest re-attestation interval accepted.
pub const MIN_REATTESTATION_INTERVAL: Duration = Duration::from_secs(60);
/// Longest re-attestation interval accepted (7 days).
pub const MAX_REATTESTATION_INTERVAL: Duration = Duration::from_secs(168 * 3600);
/// Longest GPU workload timeout accepted.
pub const MAX_WORKLOAD_TIMEOUT: Duration = Duration::from_secs(3600);
/// Compute slices of every MIG-capable GPU NVIDIA ships (A30 has 4, but its profiles are
/// named so that the sum still fits); the sum of `slices × count` over the required
/// profiles must not exceed it.
pub const MIG_COMPUTE_SLICES: u32 = 7;

/// Desired state of a GpuAttestation: which nodes to attest, how often, and against which
/// policy.
// Each `printcolumn(...)` repeats `type_ = ...`, which clippy mistakes for a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "lotabots.io",
    version = "v1alpha1",
    kind = "GpuAttestation",
    plural = "gpuattestations",
    shortname = "gpuatt",
    category = "lotabots",
    status = "GpuAttestationStatus",
    derive = "PartialEq",
    doc = "GpuAttestation attests the GPUs of the nodes it selects against a policy (product, firmware, driver, ECC, MIG, confidential computing, health) with fresh, nonce-bound evidence, and labels the nodes with the verdict.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Matched",
        type_ = "integer",
        description = "Nodes the selector matches",
        json_path = ".status.matchedNodes"
    ),
    printcolumn(
        name = "Attested",
        type_ = "integer",
        json_path = ".status.attestedNodes"
    ),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.failedNodes"),
    printcolumn(
        name = "Unknown",
        type_ = "integer",
        json_path = ".status.unknownNodes"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct GpuAttestationSpec {
    /// Nodes to attest. Unset selects every node labelled `nvidia.com/gpu.present=true`;
    /// an empty selector (`{}`) selects every node. GPU Feature Discovery labels such as
    /// `nvidia.com/gpu.product` can be used here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,

    /// How often each node is attested again with a fresh nonce, as a duration of hours,
    /// minutes and seconds (`10m`, `1h30m`), between 1m and 168h.
    #[serde(default = "default_reattestation_interval")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new(
        "self.matches('^([0-9]+h)?([0-9]+m)?([0-9]+s)?$') && self != '' && duration(self) >= duration('1m') && duration(self) <= duration('168h')"
    ).message("spec.reattestationInterval must be a duration such as 10m or 1h30m, between 1m and 168h"))]
    pub reattestation_interval: String,

    /// What the GPUs of a selected node must be and report to be attested.
    #[serde(default)]
    pub policy: GpuPolicy,

    /// A GPU self-test run in an isolated pod on each node that passes the policy; the
    /// node is attested only when it passes. Unset: no workload check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_check: Option<WorkloadCheck>,

    /// Whether to label selected nodes `lotabots.io/gpu-attested=true|false` with the
    /// verdict (the label is removed while the verdict is Unknown).
    #[serde(default = "default_true")]
    pub label_nodes: bool,
}

/// The policy the GPUs of every selected node must meet. Every GPU of the node is checked;
/// one failing GPU fails the node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GpuPolicy {
    /// Product names the GPUs may have, exactly as NVML reports them (e.g.
    /// `NVIDIA H100 80GB HBM3`). Empty: any product.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 128)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub allowed_products: Vec<String>,

    /// Lowest NVIDIA driver version accepted, compared numerically part by part (e.g.
    /// `550.54.15`, or `550.0` for any 550 driver). Unset: any driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{1,4}([.][0-9]{1,4}){0,2}$')")
        .message("spec.policy.minDriverVersion must be a driver version such as 550.54.15 or 550.0"))]
    pub min_driver_version: Option<String>,

    /// VBIOS versions the GPUs may run, as NVML reports them (e.g. `96.00.DA.00.0C`);
    /// compared case-insensitively. Empty: any VBIOS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 32)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[x_kube(validation = Rule::new("self.all(v, v.matches('^[0-9A-Fa-f]{2}([.][0-9A-Fa-f]{2}){4}$'))")
        .message("spec.policy.allowedVbiosVersions entries must be VBIOS versions such as 96.00.DA.00.0C"))]
    pub allowed_vbios_versions: Vec<String>,

    /// Whether ECC must be enabled (current mode) on every GPU.
    #[serde(default, skip_serializing_if = "is_false")]
    pub ecc_required: bool,

    /// MIG mode and GPU-instance layout the GPUs must have. Unset: MIG is not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig: Option<MigPolicy>,

    /// Whether confidential computing must be on, with an attestation report bound to the
    /// operator's nonce and a certificate chain that verifies.
    #[serde(default, skip_serializing_if = "is_false")]
    pub confidential_computing_required: bool,

    /// Health limits; a limit on a fact the GPU does not report (retired pages on Hopper,
    /// which remaps rows instead) is not applicable and the reasons say so. Unset: health
    /// is reported, not enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthLimits>,
}

/// MIG mode a policy requires.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum MigMode {
    /// MIG must be enabled (current mode) on every GPU.
    Enabled,
    /// MIG must be disabled on every GPU.
    Disabled,
    /// MIG may be either; required profiles are not allowed with this mode.
    #[default]
    Any,
}

/// The MIG mode and GPU-instance profiles the GPUs must have.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode == 'Enabled' || !has(self.profiles) || size(self.profiles) == 0")
    .message("spec.policy.mig.profiles may only be set when spec.policy.mig.mode is Enabled"))]
pub struct MigPolicy {
    /// Required MIG mode: `Enabled`, `Disabled` or `Any`.
    #[serde(default)]
    pub mode: MigMode,

    /// GPU-instance profiles every GPU must have, each at least `count` times (e.g.
    /// `3g.40gb` × 1, `1g.10gb` × 2). One entry per profile.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["profile".into()]))]
    pub profiles: Vec<MigProfileRequirement>,
}

/// A GPU-instance profile and how many instances of it each GPU must have.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MigProfileRequirement {
    /// GPU-instance profile name as `nvidia-smi mig -lgip` prints it, without the `MIG `
    /// prefix (e.g. `1g.10gb`, `3g.40gb`, `1g.10gb+me`).
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^[1-8]g[.][0-9]+gb([+]me|-me|[+]gfx|[+]me[.]all)?$')")
        .message("spec.policy.mig.profiles[].profile must be a MIG profile name such as 1g.10gb or 3g.40gb"))]
    pub profile: String,

    /// Minimum number of GPU instances of this profile on each GPU, 1 to 7.
    #[x_kube(validation = Rule::new("self >= 1 && self <= 7")
        .message("spec.policy.mig.profiles[].count must be between 1 and 7"))]
    pub count: u32,
}

/// Health limits; each is optional and checked on every GPU of the node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthLimits {
    /// Highest GPU core temperature accepted, in °C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 150))]
    pub max_temperature_celsius: Option<u32>,

    /// Most retired pages (single- and double-bit ECC, together) accepted. Not applicable
    /// to GPUs that remap rows instead (Hopper and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retired_pages: Option<u32>,

    /// Most row-remapping failures accepted (GPUs with row remapping: A100 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_remapped_row_failures: Option<u32>,

    /// Most uncorrectable ECC errors (volatile count) accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uncorrectable_ecc_errors: Option<u64>,
}

/// A GPU self-test run in a hardened, isolated pod on each node that passed the policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadCheck {
    /// Container image of the self-test; pin it by digest (`…@sha256:…`).
    #[schemars(length(min = 1, max = 512))]
    pub image: String,

    /// How long the self-test may run before the node counts as failed, as a duration
    /// (`5m`), greater than 0s and at most 1h.
    #[serde(default = "default_workload_timeout")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new(
        "self.matches('^([0-9]+h)?([0-9]+m)?([0-9]+s)?$') && self != '' && duration(self) > duration('0s') && duration(self) <= duration('1h')"
    ).message("spec.workloadCheck.timeout must be a duration such as 5m, greater than 0s and at most 1h"))]
    pub timeout: String,

    /// Lowest device-to-device copy bandwidth accepted on every GPU, in GB/s (10^9 bytes
    /// per second), greater than 0. Unset: bandwidth is reported, not enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.0")
        .message("spec.workloadCheck.minBandwidthGbps must be greater than 0"))]
    pub min_bandwidth_gbps: Option<f64>,

    /// Whether a failing (or missing) self-test fails the node. `false`: the outcome is
    /// reported in the `WorkloadChecked` condition and the node's reasons, but the node's
    /// verdict and `Ready` rest on the policy alone.
    #[serde(default = "default_true")]
    pub required: bool,
}

/// Observed state of a GpuAttestation: counts over all selected nodes and a bounded list of
/// per-node verdicts (failing nodes first).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GpuAttestationStatus {
    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready` (every selected node attested), `Reconciling`, `Stalled`, `Degraded`,
    /// `NodesEvaluated` and `WorkloadChecked`; one entry per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// Nodes the selector matches.
    #[serde(default)]
    pub matched_nodes: u32,

    /// Matched nodes whose verdict is Attested.
    #[serde(default)]
    pub attested_nodes: u32,

    /// Matched nodes whose verdict is Failed.
    #[serde(default)]
    pub failed_nodes: u32,

    /// Matched nodes whose verdict is Unknown (no fresh evidence, or a query failed).
    #[serde(default)]
    pub unknown_nodes: u32,

    /// Per-node verdicts, failing nodes first, then unknown, then attested, each group by
    /// node name; at most 100 entries (the rest are counted in `omittedNodes`). The full
    /// record of every node is in the store.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["node".into()]))]
    pub nodes: Vec<NodeSummary>,

    /// Matched nodes left out of `nodes` to keep the status small.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted_nodes: u32,
}

/// The verdict on one node, kept small.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeSummary {
    /// Node name.
    #[schemars(length(max = 253))]
    pub node: String,

    /// `Attested`, `Failed` or `Unknown`.
    pub verdict: Verdict,

    /// Why the node has this verdict, in words a person can act on (at most 8, each at
    /// most 256 characters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(length(max = 256)))]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub reasons: Vec<String>,

    /// Digest of the evidence the verdict rests on: `sha256:` and the hex SHA-256 of the
    /// evidence document's canonical (RFC 8785) JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 71))]
    pub evidence_digest: Option<String>,

    /// When the evidence was checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<Time>,
}

/// A verdict: on a node's GPUs, or on a model.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum Verdict {
    /// Failed the policy; the reasons say why.
    Failed,
    /// No usable evidence, or a fact could not be queried; never read as a pass.
    Unknown,
    /// Met the policy with fresh evidence.
    Attested,
}

impl Verdict {
    /// The verdict's name as it appears in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Attested => "Attested",
            Self::Failed => "Failed",
            Self::Unknown => "Unknown",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn default_reattestation_interval() -> String {
    DEFAULT_REATTESTATION_INTERVAL.to_owned()
}

fn default_workload_timeout() -> String {
    DEFAULT_WORKLOAD_TIMEOUT.to_owned()
}

fn default_true() -> bool {
    true
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Default for GpuAttestationSpec {
    fn default() -> Self {
        Self {
            node_selector: None,
            reattestation_interval: default_reattestation_interval(),
            policy: GpuPolicy::default(),
            workload_check: None,
            label_nodes: true,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Rust-side validation
// ---------------------------------------------------------------------------------------

/// One problem with a spec, naming the field by its path from the object root
/// (`spec.policy.mig.profiles[0].profile`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FieldError {
    /// JSON path of the field, from the object root.
    pub path: String,
    /// What is wrong and what would be right.
    pub message: String,
}

impl FieldError {
    /// A problem with the field at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Parses a duration of hours, minutes and seconds in Go's notation, the subset the CRDs
/// accept: `^([0-9]+h)?([0-9]+m)?([0-9]+s)?$`, not empty (`10m`, `1h30m`, `45s`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut total: u64 = 0;
    for (unit, secs) in [('h', 3600u64), ('m', 60), ('s', 1)] {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && rest[digits..].starts_with(unit) {
            let n: u64 = rest[..digits].parse().ok()?;
            total = total.checked_add(n.checked_mul(secs)?)?;
            rest = &rest[digits + 1..];
        }
    }
    rest.is_empty().then_some(Duration::from_secs(total))
}

/// An NVIDIA driver version, compared numerically part by part (`550.54.15` >
/// `550.0` > `535.104.05`); missing parts count as 0, so `550` == `550.0`.
#[derive(Clone, Debug)]
pub struct DriverVersion(Vec<u32>);

impl DriverVersion {
    /// The numeric parts, most significant first.
    pub fn parts(&self) -> &[u32] {
        &self.0
    }
}

/// Why a driver version string does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a driver version: expected 1 to 3 dot-separated numbers such as 550.54.15")]
pub struct DriverVersionError(pub String);

impl FromStr for DriverVersion {
    type Err = DriverVersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DriverVersionError(s.to_owned());
        let parts = s
            .split('.')
            .map(|p| {
                if p.is_empty() || p.len() > 4 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    Err(err())
                } else {
                    p.parse::<u32>().map_err(|_| err())
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if parts.is_empty() || parts.len() > 3 {
            return Err(err());
        }
        Ok(Self(parts))
    }
}

impl Ord for DriverVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        let n = self.0.len().max(other.0.len());
        (0..n)
            .map(|i| {
                let a = self.0.get(i).copied().unwrap_or(0);
                let b = other.0.get(i).copied().unwrap_or(0);
                a.cmp(&b)
            })
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }
}

impl PartialEq for DriverVersion {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for DriverVersion {}

impl PartialOrd for DriverVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for DriverVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u32::to_string).collect();
        f.write_str(&parts.join("."))
    }
}

/// Whether `v` has the shape of a VBIOS version (`96.00.DA.00.0C`).
pub fn is_vbios_version(v: &str) -> bool {
    let groups: Vec<&str> = v.split('.').collect();
    groups.len() == 5
        && groups
            .iter()
            .all(|g| g.len() == 2 && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Compute slices of a MIG profile name (`3g.40gb` → 3), if it has the profile shape.
pub fn mig_profile_slices(profile: &str) -> Option<u32> {
    let (slices, rest) = profile.split_once("g.")?;
    let slices: u32 = slices.parse().ok().filter(|n| (1..=8).contains(n))?;
    let gb_end = rest.find("gb")?;
    let (gb, suffix) = (&rest[..gb_end], &rest[gb_end + 2..]);
    let shape_ok = !gb.is_empty()
        && gb.bytes().all(|b| b.is_ascii_digit())
        && matches!(suffix, "" | "+me" | "-me" | "+gfx" | "+me.all");
    shape_ok.then_some(slices)
}

impl GpuAttestationSpec {
    /// The nodes this selects: `nodeSelector`, or nodes labelled
    /// `nvidia.com/gpu.present=true` when it is unset. The operator and the agents both
    /// decide with this, so they agree on which nodes an attestation covers.
    pub fn selector(&self) -> Result<kube::core::Selector, kube::core::ParseExpressionError> {
        match &self.node_selector {
            Some(sel) => kube::core::Selector::try_from(sel.clone()),
            None => Ok(kube::core::Selector::from_iter([
                kube::core::Expression::Equal(
                    crate::labels::GPU_PRESENT.into(),
                    crate::labels::TRUE.into(),
                ),
            ])),
        }
    }

    /// Whether this selects a node with `labels`; an invalid selector selects nothing.
    pub fn selects(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        use kube::core::SelectorExt;
        self.selector().is_ok_and(|s| s.matches(labels))
    }

    /// Checks what the CRD's schema and CEL rules cannot express well, and repeats the
    /// shape checks so that a caller without an API server (the webhook, offline commands,
    /// tests) gets the same answer. Every problem is returned, each naming its field.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        if let Some(sel) = &self.node_selector {
            validate_label_selector(sel, "spec.nodeSelector", &mut errs);
        }
        match parse_duration(&self.reattestation_interval) {
            None => errs.push(FieldError::new(
                "spec.reattestationInterval",
                format!(
                    "{:?} is not a duration such as 10m or 1h30m",
                    self.reattestation_interval
                ),
            )),
            Some(d) if !(MIN_REATTESTATION_INTERVAL..=MAX_REATTESTATION_INTERVAL).contains(&d) => {
                errs.push(FieldError::new(
                    "spec.reattestationInterval",
                    format!(
                        "{} is out of range: must be between 1m and 168h",
                        self.reattestation_interval
                    ),
                ))
            }
            Some(_) => {}
        }
        self.policy.validate_into("spec.policy", &mut errs);
        if let Some(w) = &self.workload_check {
            if w.image.trim().is_empty() {
                errs.push(FieldError::new(
                    "spec.workloadCheck.image",
                    "must name a container image",
                ));
            }
            validate_timeout(
                &w.timeout,
                MAX_WORKLOAD_TIMEOUT,
                "spec.workloadCheck.timeout",
                "1h",
                &mut errs,
            );
            if let Some(min) = w.min_bandwidth_gbps
                && !(min.is_finite() && min > 0.0)
            {
                errs.push(FieldError::new(
                    "spec.workloadCheck.minBandwidthGbps",
                    format!("{min} is not a bandwidth: must be a number of GB/s greater than 0"),
                ));
            }
        }
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }
}

impl GpuPolicy {
    /// The minimum driver version, parsed; `None` when unset.
    pub fn min_driver(&self) -> Option<Result<DriverVersion, DriverVersionError>> {
        self.min_driver_version.as_deref().map(str::parse)
    }

    fn validate_into(&self, path: &str, errs: &mut Vec<FieldError>) {
        for (i, p) in self.allowed_products.iter().enumerate() {
            if p.trim().is_empty() {
                errs.push(FieldError::new(
                    format!("{path}.allowedProducts[{i}]"),
                    "must be a product name such as \"NVIDIA H100 80GB HBM3\"",
                ));
            }
        }
        push_duplicates(
            &self.allowed_products,
            &format!("{path}.allowedProducts"),
            errs,
        );
        if let Some(Err(e)) = self.min_driver() {
            errs.push(FieldError::new(
                format!("{path}.minDriverVersion"),
                e.to_string(),
            ));
        }
        for (i, v) in self.allowed_vbios_versions.iter().enumerate() {
            if !is_vbios_version(v) {
                errs.push(FieldError::new(
                    format!("{path}.allowedVbiosVersions[{i}]"),
                    format!("{v:?} is not a VBIOS version such as 96.00.DA.00.0C"),
                ));
            }
        }
        push_duplicates(
            &self.allowed_vbios_versions,
            &format!("{path}.allowedVbiosVersions"),
            errs,
        );
        if let Some(mig) = &self.mig {
            mig.validate_into(&format!("{path}.mig"), errs);
        }
    }
}

impl MigPolicy {
    fn validate_into(&self, path: &str, errs: &mut Vec<FieldError>) {
        if !self.profiles.is_empty() && self.mode != MigMode::Enabled {
            errs.push(FieldError::new(
                format!("{path}.profiles"),
                format!(
                    "may only be set when {path}.mode is Enabled (it is {:?})",
                    self.mode
                ),
            ));
        }
        let mut total_slices = 0u32;
        let names: Vec<String> = self.profiles.iter().map(|p| p.profile.clone()).collect();
        push_duplicates(&names, &format!("{path}.profiles"), errs);
        for (i, req) in self.profiles.iter().enumerate() {
            let p = format!("{path}.profiles[{i}]");
            match mig_profile_slices(&req.profile) {
                None => errs.push(FieldError::new(
                    format!("{p}.profile"),
                    format!(
                        "{:?} is not a MIG profile name such as 1g.10gb or 3g.40gb",
                        req.profile
                    ),
                )),
                Some(_) if !mig::is_known_profile_name(&req.profile) => {
                    errs.push(FieldError::new(
                        format!("{p}.profile"),
                        format!(
                            "{:?} is not a GPU-instance profile NVIDIA ships; known profiles include 1g.10gb, 2g.20gb, 3g.40gb, 7g.80gb",
                            req.profile
                        ),
                    ))
                }
                Some(slices) => total_slices += slices * req.count.min(MIG_COMPUTE_SLICES),
            }
            if !(1..=MIG_COMPUTE_SLICES).contains(&req.count) {
                errs.push(FieldError::new(
                    format!("{p}.count"),
                    format!("{} is out of range: must be between 1 and 7", req.count),
                ));
            }
        }
        if total_slices > MIG_COMPUTE_SLICES {
            errs.push(FieldError::new(
                format!("{path}.profiles"),
                format!(
                    "the profiles need {total_slices} compute slices per GPU, more than the {MIG_COMPUTE_SLICES} a GPU has"
                ),
            ));
        }
    }
}

/// Checks a timeout field: a duration greater than zero and at most `max`.
pub(crate) fn validate_timeout(
    value: &str,
    max: Duration,
    path: &str,
    max_text: &str,
    errs: &mut Vec<FieldError>,
) {
    match parse_duration(value) {
        None => errs.push(FieldError::new(
            path,
            format!("{value:?} is not a duration such as 5m or 1h30m"),
        )),
        Some(d) if d.is_zero() || d > max => errs.push(FieldError::new(
            path,
            format!("{value} is out of range: must be greater than 0s and at most {max_text}"),
        )),
        Some(_) => {}
    }
}

/// Reports every value that occurs more than once in `values`.
pub(crate) fn push_duplicates(values: &[String], path: &str, errs: &mut Vec<FieldError>) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, v) in values.iter().enumerate() {
        if !seen.insert(v.as_str()) {
            errs.push(FieldError::new(
                format!("{path}[{i}]"),
                format!("duplicate value {v:?}"),
            ));
        }
    }
}

/// Checks the operators of a label selector, which the API server does not check inside a
/// custom resource.
fn validate_label_selector(sel: &LabelSelector, path: &str, errs: &mut Vec<FieldError>) {
    for (i, expr) in sel.match_expressions.iter().flatten().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        let n_values = expr.values.as_ref().map_or(0, Vec::len);
        match expr.operator.as_str() {
            "In" | "NotIn" if n_values == 0 => errs.push(FieldError::new(
                format!("{p}.values"),
                format!("must not be empty for operator {}", expr.operator),
            )),
            "Exists" | "DoesNotExist" if n_values > 0 => errs.push(FieldError::new(
                format!("{p}.values"),
                format!("must be empty for operator {}", expr.operator),
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errs.push(FieldError::new(
                format!("{p}.operator"),
                format!("{other:?} is not one of In, NotIn, Exists, DoesNotExist"),
            )),
        }
        if expr.key.is_empty() {
            errs.push(FieldError::new(format!("{p}.key"), "must not be empty"));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Bounded status
// ---------------------------------------------------------------------------------------

/// Orders node entries failing first (Failed, Unknown, Attested, then by node name), keeps
/// one entry per node (the worst), bounds each entry's reasons and the list itself, and
/// returns the entries kept and the number of nodes left out. Use it to fill
/// `status.nodes` and `status.omittedNodes`.
pub fn bound_node_entries(mut entries: Vec<NodeSummary>) -> (Vec<NodeSummary>, u32) {
    entries.sort_by(|a, b| a.node.cmp(&b.node).then(a.verdict.cmp(&b.verdict)));
    entries.dedup_by(|later, earlier| later.node == earlier.node);
    entries.sort_by(|a, b| a.verdict.cmp(&b.verdict).then(a.node.cmp(&b.node)));
    let omitted = entries.len().saturating_sub(MAX_STATUS_NODES);
    entries.truncate(MAX_STATUS_NODES);
    for e in &mut entries {
        e.reasons.truncate(MAX_NODE_REASONS);
        for r in &mut e.reasons {
            truncate_reason(r);
        }
    }
    (entries, u32::try_from(omitted).unwrap_or(u32::MAX))
}

/// Cuts a reason to at most [`MAX_REASON_LEN`] bytes at a character boundary, ending it in
/// `…` when cut.
pub fn truncate_reason(reason: &mut String) {
    if reason.len() <= MAX_REASON_LEN {
        return;
    }
    let mut end = MAX_REASON_LEN - '…'.len_utf8();
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason.truncate(end);
    reason.push('…');
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn h100_spec() -> GpuAttestationSpec {
        GpuAttestationSpec {
            policy: GpuPolicy {
                allowed_products: vec!["NVIDIA H100 80GB HBM3".into()],
                min_driver_version: Some("550.0".into()),
                allowed_vbios_versions: vec!["96.00.DA.00.0C".into()],
                ecc_required: true,
                mig: Some(MigPolicy {
                    mode: MigMode::Disabled,
                    profiles: vec![],
                }),
                confidential_computing_required: false,
                health: Some(HealthLimits {
                    max_temperature_celsius: Some(85),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }
    }

    fn paths(r: Result<(), Vec<FieldError>>) -> Vec<String> {
        r.unwrap_err().into_iter().map(|e| e.path).collect()
    }

    #[test]
    fn durations_parse_like_the_cel_pattern() {
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h2m3s"), Some(Duration::from_secs(3723)));
        assert_eq!(parse_duration("45s"), Some(Duration::from_secs(45)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        for bad in ["", "10", "m", "1m1h", "10 m", "1.5h", "-1m", "1d", "10ms"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn driver_versions_compare_numerically() {
        let v = |s: &str| s.parse::<DriverVersion>().unwrap();
        assert!(v("550.54.15") > v("550.0"));
        assert!(v("550.0") == v("550"));
        assert!(v("535.104.05") < v("550.0"));
        assert!(v("550.100") > v("550.54.15"));
        assert_eq!(v("550.54.15").to_string(), "550.54.15");
        for bad in ["", "550.", ".1", "a.b", "1.2.3.4", "55000.1", "550.54.15-1"] {
            assert!(bad.parse::<DriverVersion>().is_err(), "{bad}");
        }
    }

    #[test]
    fn vbios_and_profile_shapes() {
        assert!(is_vbios_version("96.00.DA.00.0C"));
        assert!(is_vbios_version("96.00.da.00.0c"));
        assert!(!is_vbios_version("96.00.DA.00"));
        assert!(!is_vbios_version("96.00.DA.00.0G"));
        assert_eq!(mig_profile_slices("3g.40gb"), Some(3));
        assert_eq!(mig_profile_slices("1g.10gb+me"), Some(1));
        assert_eq!(mig_profile_slices("1g.10gb+me.all"), Some(1));
        assert_eq!(mig_profile_slices("9g.10gb"), None);
        assert_eq!(mig_profile_slices("1g.gb"), None);
        assert_eq!(mig_profile_slices("1g.10gb+xx"), None);
    }

    #[test]
    fn h100_policy_is_valid() {
        assert_eq!(h100_spec().validate(), Ok(()));
        assert_eq!(GpuAttestationSpec::default().validate(), Ok(()));
    }

    #[test]
    fn bad_shapes_are_named_by_path() {
        let mut s = h100_spec();
        s.reattestation_interval = "30s".into();
        s.policy.min_driver_version = Some("550.x".into());
        s.policy.allowed_vbios_versions.push("96.00".into());
        s.policy.allowed_products.push(" ".into());
        assert_eq!(
            paths(s.validate()),
            [
                "spec.reattestationInterval",
                "spec.policy.allowedProducts[1]",
                "spec.policy.minDriverVersion",
                "spec.policy.allowedVbiosVersions[1]",
            ]
        );
    }

    #[test]
    fn mig_profiles_must_be_known_fit_and_need_enabled_mode() {
        let req = |p: &str, c| MigProfileRequirement {
            profile: p.into(),
            count: c,
        };
        let mut s = h100_spec();
        s.policy.mig = Some(MigPolicy {
            mode: MigMode::Enabled,
            profiles: vec![req("3g.40gb", 1), req("2g.20gb", 1), req("1g.10gb", 2)],
        });
        assert_eq!(s.validate(), Ok(()));

        s.policy.mig = Some(MigPolicy {
            mode: MigMode::Any,
            profiles: vec![req("5g.50gb", 1), req("4g.40gb", 2), req("4g.40gb", 0)],
        });
        let errs = s.validate().unwrap_err();
        let got: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            got,
            [
                "spec.policy.mig.profiles",
                "spec.policy.mig.profiles[2]",
                "spec.policy.mig.profiles[0].profile",
                "spec.policy.mig.profiles[2].count",
                "spec.policy.mig.profiles",
            ]
        );
        assert!(
            errs[2]
                .message
                .contains("not a GPU-instance profile NVIDIA ships")
        );
        assert!(errs[4].message.contains("8 compute slices"));
    }

    #[test]
    fn selector_operators_and_timeouts_are_checked() {
        let mut s = h100_spec();
        s.node_selector = Some(LabelSelector {
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "nvidia.com/gpu.product".into(),
                    operator: "In".into(),
                    values: None,
                },
                LabelSelectorRequirement {
                    key: "x".into(),
                    operator: "Equals".into(),
                    values: Some(vec!["y".into()]),
                },
            ]),
            match_labels: None,
        });
        s.workload_check = Some(WorkloadCheck {
            image: "ghcr.io/lotabots/gpu-selftest:v1".into(),
            timeout: "0s".into(),
            min_bandwidth_gbps: Some(0.0),
            required: true,
        });
        assert_eq!(
            paths(s.validate()),
            [
                "spec.nodeSelector.matchExpressions[0].values",
                "spec.nodeSelector.matchExpressions[1].operator",
                "spec.workloadCheck.timeout",
                "spec.workloadCheck.minBandwidthGbps",
            ]
        );
    }

    #[test]
    fn node_entries_are_bounded_failing_first() {
        let entry = |n: usize, v| NodeSummary {
            node: format!("node-{n:04}"),
            verdict: v,
            reasons: vec!["x".repeat(300); 12],
            evidence_digest: None,
            checked_at: None,
        };
        let mut all: Vec<NodeSummary> = (0..150).map(|n| entry(n, Verdict::Attested)).collect();
        all.push(entry(149, Verdict::Failed)); // duplicate node: the worst verdict wins
        all.push(entry(140, Verdict::Unknown));
        let (kept, omitted) = bound_node_entries(all);
        assert_eq!(kept.len(), MAX_STATUS_NODES);
        assert_eq!(omitted, 50);
        assert_eq!(
            (kept[0].node.as_str(), kept[0].verdict),
            ("node-0149", Verdict::Failed)
        );
        assert_eq!(
            (kept[1].node.as_str(), kept[1].verdict),
            ("node-0140", Verdict::Unknown)
        );
        assert_eq!(kept[2].node, "node-0000");
        assert_eq!(kept[0].reasons.len(), MAX_NODE_REASONS);
        assert!(kept[0].reasons[0].len() <= MAX_REASON_LEN && kept[0].reasons[0].ends_with('…'));
    }

    #[test]
    fn reasons_are_cut_at_char_boundaries() {
        let mut r = "é".repeat(200);
        truncate_reason(&mut r);
        assert!(r.len() <= MAX_REASON_LEN && r.ends_with('…'));
        let mut short = "ok".to_owned();
        truncate_reason(&mut short);
        assert_eq!(short, "ok");
    }
}
