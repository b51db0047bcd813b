//! Isolated workloads: the hardened pods an agent launches on its own node (a GPU self-test
//! for a GpuAttestation's `workloadCheck`, behavioural probes for a ModelAttestation's
//! `behaviour`), and the result each pod posts back to the operator.
//!
//! A result is bound to what it describes: it carries the nonce of the node attestation
//! it ran after (so it cannot be replayed onto another round) and is posted with a token
//! the API server bound to the pod, so the operator knows the node it ran on without
//! believing the pod. The pod's own claims (`node`, `nonce`) are checked against those.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Schema version carried by every workload result; bump on incompatible changes.
pub const RESULT_SCHEMA_VERSION: &str = "lotabots.io/workload-result/v1alpha1";

/// Namespace the isolated pods run in unless configured otherwise.
pub const DEFAULT_NAMESPACE: &str = "lotabots-workloads";

/// The ServiceAccount workload pods run as: it has no RBAC rights at all; its pod-bound
/// token (audience [`TOKEN_AUDIENCE`]) only identifies the pod to the operator.
pub const SERVICE_ACCOUNT: &str = "lotabots-workload";

/// Audience of the projected token a workload pod posts its result with.
pub const TOKEN_AUDIENCE: &str = "lotabots";

/// Where a workload pod's scratch volume is mounted ([`WorkloadRequest::scratch_bytes`]).
pub const SCRATCH_DIR: &str = "/work";

/// The operator's endpoint a pod posts its [`WorkloadResult`] to.
pub const RESULT_PATH: &str = "/v1/workload-results";

/// Where a behavioural-probe pod fetches what it checks, on the operator's API (the same
/// listener and pod-bound token as [`RESULT_PATH`]); `{id}` is the request id:
///
/// - `GET {MODEL_PATH}/{id}/suite`: the probe suite's bytes (`application/yaml`);
/// - `GET {MODEL_PATH}/{id}/files`: the model's files, a [`ModelFiles`] (JSON);
/// - `GET {MODEL_PATH}/{id}/files/{path}`: one file's bytes (`application/octet-stream`),
///   `path` as listed, each segment percent-encoded.
///
/// The pod trusts none of it: it loads the model only when the files hash to the
/// attested manifest digest and runs the suite only when it hashes to the suite digest.
pub const MODEL_PATH: &str = "/v1/workload-models";

/// The files of the model a probe pod is to check, as the operator lists them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelFiles {
    /// The manifest digest the files must hash to.
    pub manifest_digest: String,
    /// Every file, relative to the model's root, `/`-separated.
    pub files: Vec<ModelFile>,
}

/// One file of [`ModelFiles`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelFile {
    /// Path relative to the model's root (no `..`, not absolute).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

/// Environment variables the launcher sets in every workload container (the contract
/// between the launcher and the workload binaries).
pub mod env {
    /// The [`WorkloadRequest::id`](super::WorkloadRequest::id).
    pub const REQUEST_ID: &str = "LOTABOTS_WORKLOAD_ID";
    /// Hex nonce of the node attestation the workload is bound to.
    pub const NONCE: &str = "LOTABOTS_NONCE";
    /// The node the pod was launched for.
    pub const NODE: &str = "LOTABOTS_NODE";
    /// Base URL of the operator's API (`https://…`).
    pub const OPERATOR_URL: &str = "LOTABOTS_OPERATOR_URL";
    /// Path of the projected, pod-bound ServiceAccount token (audience `lotabots`).
    pub const TOKEN_FILE: &str = "LOTABOTS_TOKEN_FILE";
    /// Path of the CA bundle that verifies the operator's certificate.
    pub const CA_FILE: &str = "LOTABOTS_CA_FILE";
    /// Extra JSON-encoded parameters ([`WorkloadRequest::params`]).
    pub const PARAMS: &str = "LOTABOTS_WORKLOAD_PARAMS";
}

/// Which workload a pod runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WorkloadKind {
    /// The GPU self-test (matrix multiply, memory pattern, device bandwidth).
    GpuSelfTest,
    /// Behavioural probes of an attested model.
    BehaviourProbes,
}

impl WorkloadKind {
    /// A short, DNS-label-safe name (pod names, labels, metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::GpuSelfTest => "gpu-selftest",
            WorkloadKind::BehaviourProbes => "behaviour-probes",
        }
    }
}

/// The GPU resources a workload pod asks for: whole GPUs or one MIG device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuResources {
    /// Whole GPUs (`nvidia.com/gpu`). Unset and no `migProfile`: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_count: Option<u32>,
    /// One MIG device of this profile (`nvidia.com/mig-<profile>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig_profile: Option<String>,
}

/// The object that asked for a workload; the pod is owned by it (garbage collected with it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadOwner {
    /// `lotabots.io/v1alpha1`.
    pub api_version: String,
    /// `GpuAttestation` or `ModelAttestation`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its UID.
    pub uid: String,
    /// Its namespace (unset for cluster-scoped owners).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// What an agent is to run on its node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRequest {
    /// Unique id (lowercase hex); part of the pod's name and echoed in the result.
    pub id: String,
    /// Which workload.
    pub kind: WorkloadKind,
    /// Container image (pinned by digest in production).
    pub image: String,
    /// The node to run on (always the agent's own).
    pub node: String,
    /// Hex nonce of the node attestation the result is bound to.
    pub nonce: String,
    /// Who asked.
    pub owner: WorkloadOwner,
    /// `activeDeadlineSeconds` of the pod.
    pub deadline_seconds: u64,
    /// GPU resources.
    #[serde(default)]
    pub resources: GpuResources,
    /// Bytes of writable scratch space the pod needs (an `emptyDir` at [`SCRATCH_DIR`]);
    /// probe pods fetch the model into it. Unset: none beyond the bounded `/tmp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scratch_bytes: Option<u64>,
    /// Workload-specific parameters, passed to the container as JSON in
    /// [`env::PARAMS`] (e.g. `memoryShare` for the self-test, the manifest digest and
    /// suite for probes).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
}

impl WorkloadRequest {
    /// The name of the pod that runs this request: `<kind>-<id>` (`gpu-selftest-3f…`).
    /// Deterministic, so that creating it twice is one pod (the second create gets 409).
    pub fn pod_name(&self) -> String {
        format!("{}-{}", self.kind.as_str(), self.id)
    }
}

/// What a workload pod posts to [`RESULT_PATH`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadResult {
    /// [`RESULT_SCHEMA_VERSION`].
    pub schema_version: String,
    /// The [`WorkloadRequest::id`].
    pub request_id: String,
    /// Which workload produced it.
    pub kind: WorkloadKind,
    /// The nonce the workload was launched with (hex).
    pub nonce: String,
    /// The node the pod believes it runs on (checked against its token).
    pub node: String,
    /// When the workload started.
    pub started_at: Timestamp,
    /// When it finished.
    pub finished_at: Timestamp,
    /// Whether every check passed.
    pub passed: bool,
    /// Why it could not run at all (no GPU, driver missing, …); `passed` is then false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The self-test's measurements ([`WorkloadKind::GpuSelfTest`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_test: Option<SelfTestReport>,
    /// The probes' outcomes ([`WorkloadKind::BehaviourProbes`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<ProbeReport>,
}

/// The GPU self-test's measurements, one entry per visible device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SelfTestReport {
    /// True when produced by the simulated mode (tests only; never passes a policy that
    /// requires the workload check on real hardware unless the operator allows it).
    pub simulated: bool,
    /// CUDA driver version as the driver API reports it (e.g. 12080).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_version: Option<u32>,
    /// One entry per device.
    pub devices: Vec<DeviceSelfTest>,
}

/// One device's self-test.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSelfTest {
    /// Device ordinal inside the pod.
    pub ordinal: u32,
    /// `GPU-…` or `MIG-…` UUID.
    pub uuid: String,
    /// Device name (`NVIDIA H100 80GB HBM3`).
    pub name: String,
    /// Matrix multiply checked against a CPU reference.
    pub matmul: MatmulCheck,
    /// Memory pattern test.
    pub memory: MemoryCheck,
    /// Device-to-device copy bandwidth.
    pub bandwidth: BandwidthCheck,
}

/// Matrix multiply on the GPU, compared with a CPU reference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatmulCheck {
    /// Square matrix size.
    pub n: u32,
    /// Largest absolute difference from the CPU reference.
    pub max_abs_error: f64,
    /// Tolerance it was held to.
    pub tolerance: f64,
    /// Achieved rate (FP32 GFLOP/s) over the timed runs.
    pub gflops: f64,
    /// Whether the result matched.
    pub passed: bool,
}

/// Memory pattern test over a share of free memory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryCheck {
    /// Bytes written and read back.
    pub bytes_tested: u64,
    /// Share of free memory requested (0–1).
    pub share: f64,
    /// Words that read back wrong.
    pub errors: u64,
    /// Whether no word was wrong.
    pub passed: bool,
}

/// Device-to-device copy bandwidth.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BandwidthCheck {
    /// Bytes per copy.
    pub bytes: u64,
    /// Measured GB/s (10^9 bytes per second, read + write counted once).
    pub gbps: f64,
}

/// The outcomes of a behavioural probe suite.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeReport {
    /// `sha256:…` of the probe suite as given (its bytes).
    pub suite_digest: String,
    /// `sha256:…` manifest digest the model's files were checked against before loading.
    pub manifest_digest: String,
    /// `cpu` or `cuda`.
    pub device: String,
    /// One entry per probe, in suite order.
    pub probes: Vec<ProbeOutcome>,
}

/// One probe's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeOutcome {
    /// The probe's name.
    pub name: String,
    /// Whether its property held.
    pub passed: bool,
    /// What was observed, in words (`sim(a,b)=0.83 > sim(a,c)=0.12`).
    pub detail: String,
}
