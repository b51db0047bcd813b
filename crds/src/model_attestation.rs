//! `ModelAttestation`: where a model is, how to check its integrity and signature, the
//! policy it must meet, an optional behavioural check, and the verdict per stage.
//!
//! The API server rejects malformed specs early through the CEL rules declared here;
//! [`ModelAttestationSpec::validate`] repeats them and adds what CEL cannot express well
//! (quantity parsing, known MIG profile names) for the admission webhook and offline use.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::{
    api::resource::Quantity,
    apis::meta::v1::{Condition, Time},
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    gpu_attestation::{FieldError, push_duplicates, validate_timeout},
    mig,
};

pub use crate::gpu_attestation::Verdict;

/// Default of `spec.behaviour.timeout`.
pub const DEFAULT_BEHAVIOUR_TIMEOUT: &str = "15m";
/// Longest behavioural-check timeout accepted.
pub const MAX_BEHAVIOUR_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Most reasons a ModelAttestation's status keeps.
pub const MAX_MODEL_REASONS: usize = 16;

/// Desired state of a ModelAttestation: the model to attest and what it must satisfy.
// Each `printcolumn(...)` repeats `type_ = ...`, which clippy mistakes for a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "lotabots.io",
    version = "v1alpha1",
    kind = "ModelAttestation",
    plural = "modelattestations",
    shortname = "modelatt",
    category = "lotabots",
    namespaced,
    status = "ModelAttestationStatus",
    derive = "PartialEq",
    doc = "ModelAttestation verifies that a model's files are exactly the ones signed, safe to load, compliant with a policy, and behave as expected in an isolated GPU pod on an attested node.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Verdict", type_ = "string", json_path = ".status.verdict"),
    printcolumn(
        name = "Digest",
        type_ = "string",
        json_path = ".status.manifestDigest",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ModelAttestationSpec {
    /// Where the model's files are.
    pub source: ModelSource,

    /// How the files are hashed into the manifest, and the digest to pin it to.
    #[serde(default)]
    pub integrity: Integrity,

    /// The signature over the manifest and the key or certificate it must verify
    /// against. Unset: the signature stage is skipped (`SignatureVerified` reason
    /// `NotRequested`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureSpec>,

    /// Formats, pickle handling, licences, model-card fields and size the model must meet.
    #[serde(default)]
    pub policy: ModelPolicy,

    /// Probes run against the model in an isolated GPU pod. Unset: the behaviour stage is
    /// skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behaviour: Option<BehaviourCheck>,
}

/// Where a model's files are: exactly one of `uri` or `pvc`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.uri) != has(self.pvc)")
    .message("spec.source must set exactly one of uri or pvc"))]
#[x_kube(validation = Rule::new("!has(self.credentialsSecretRef) || (has(self.uri) && (self.uri.startsWith('s3://') || self.uri.startsWith('gs://')))")
    .message("spec.source.credentialsSecretRef may only be set with an s3:// or gs:// uri"))]
pub struct ModelSource {
    /// URI of the model's directory or object prefix: `s3://BUCKET/PREFIX`,
    /// `gs://BUCKET/PREFIX` or `file:///PATH` (a path on the node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^(s3|gs)://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/.*)?$') || self.matches('^file:///.+$')")
        .message("spec.source.uri must be s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or file:///PATH"))]
    pub uri: Option<String>,

    /// A PersistentVolumeClaim in this namespace that holds the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcSource>,

    /// Secret in this namespace with the credentials to read an `s3://` or `gs://` URI
    /// (the operator never uses its own cloud credentials for a model). Unset: anonymous
    /// access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<LocalObjectReference>,
}

/// A model on a PersistentVolumeClaim.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PvcSource {
    /// Name of the PersistentVolumeClaim, in this namespace.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')")
        .message("spec.source.pvc.claimName must be a DNS subdomain name (lowercase letters, digits, '-', '.')"))]
    pub claim_name: String,

    /// Directory of the model inside the volume, relative to its root (no leading `/`, no
    /// `..`). Empty: the volume's root.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("!self.startsWith('/') && !self.matches('(^|/)[.][.](/|$)')")
        .message("spec.source.pvc.path must be relative to the volume root, without '..'"))]
    pub path: String,
}

/// Name of an object in the resource's own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectReference {
    /// Name of the object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A key in a Secret or ConfigMap in the resource's own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeySelector {
    /// Name of the Secret or ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within its data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Hash algorithm of the model manifest (OpenSSF model-signing).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HashAlgorithm {
    /// SHA-256.
    #[default]
    Sha256,
    /// BLAKE3.
    Blake3,
}

impl HashAlgorithm {
    /// The name as it appears in the API and in digests (`sha256:…`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Blake3 => "blake3",
        }
    }

    /// Length of a digest in lowercase hex.
    pub fn hex_len(self) -> usize {
        match self {
            Self::Sha256 | Self::Blake3 => 64,
        }
    }
}

/// How the model's files are hashed, and the manifest digest to pin to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.expectedDigest) || ((self.algorithm == 'sha256' || self.algorithm == 'blake3') && self.expectedDigest.matches('^[0-9a-f]{64}$'))")
    .message("spec.integrity.expectedDigest must be 64 lowercase hex characters for sha256 and blake3"))]
pub struct Integrity {
    /// Hash algorithm of the manifest: `sha256` or `blake3`.
    #[serde(default)]
    pub algorithm: HashAlgorithm,

    /// Files are hashed in shards of this many bytes (OpenSSF model-signing sharded
    /// hashing). Unset: whole files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0")
        .message("spec.integrity.shardSizeBytes must be greater than 0"))]
    pub shard_size_bytes: Option<u64>,

    /// Expected digest of the manifest, in lowercase hex (without the `sha256:` prefix);
    /// pins the model even without a signature. Unset: not pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub expected_digest: Option<String>,
}

/// A signature over the model manifest and what it must verify against: exactly one of
/// `publicKey` or `certificate`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.publicKey) != has(self.certificate)")
    .message("spec.signature must set exactly one of publicKey or certificate"))]
pub struct SignatureSpec {
    /// Location of the Sigstore bundle: a path relative to the model source (no `..`), or
    /// an `s3://`, `gs://` or `file://` URI. Unset: `model.sig` at the source's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("(self.matches('^(s3|gs)://.+$') || self.matches('^file:///.+$') || (self != '' && !self.startsWith('/') && !self.contains('://'))) && !self.matches('(^|/)[.][.](/|$)')")
        .message("spec.signature.bundle must be a path relative to the model source without '..', or an s3://, gs:// or file:/// URI"))]
    pub bundle: Option<String>,

    /// PEM public key the signature must verify against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<KeyReference>,

    /// PEM signing certificate (or chain) the signature must verify against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<KeyReference>,
}

/// Where a key or certificate is: exactly one of `secretKeyRef` or `configMapKeyRef`, in
/// this namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.secretKeyRef) != has(self.configMapKeyRef)")
    .message("a key reference must set exactly one of secretKeyRef or configMapKeyRef"))]
pub struct KeyReference {
    /// A key of a Secret in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeySelector>,

    /// A key of a ConfigMap in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeySelector>,
}

/// A model file format.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    /// safetensors (`.safetensors`): tensors only, no code.
    Safetensors,
    /// GGUF (`.gguf`): llama.cpp's format.
    Gguf,
    /// PyTorch (`.pt`, `.pth`, `.bin`): a zip of pickles.
    Pytorch,
    /// Raw Python pickle (`.pkl`, `.pickle`).
    Pickle,
    /// ONNX (`.onnx`).
    Onnx,
}

/// What to do with pickled content (raw pickles and PyTorch files).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PickleHandling {
    /// Reject any pickle.
    #[default]
    Deny,
    /// Accept pickles that import only tensor-rebuilding globals (`torch._utils`,
    /// `collections.OrderedDict`, …), as `torch.load(weights_only=True)` does.
    AllowSafeGlobals,
    /// Accept any pickle (dangerous: loading it can run arbitrary code).
    Allow,
}

/// What the model must comply with.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.pickle != 'Deny' || !self.allowedFormats.exists(f, f == 'pickle' || f == 'pytorch')")
    .message("spec.policy.allowedFormats includes pickle or pytorch, which spec.policy.pickle: Deny would always reject; set pickle to AllowSafeGlobals or drop those formats"))]
pub struct ModelPolicy {
    /// File formats the model may consist of.
    #[serde(default = "default_formats")]
    #[schemars(length(min = 1, max = 5))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub allowed_formats: Vec<ModelFormat>,

    /// How pickled content is handled: `Deny`, `AllowSafeGlobals` or `Allow`.
    #[serde(default)]
    pub pickle: PickleHandling,

    /// SPDX licence identifiers the model's licence may be (e.g. `Apache-2.0`, `MIT`).
    /// Empty: any licence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 64)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[x_kube(validation = Rule::new("self.all(l, l.matches('^[A-Za-z0-9][A-Za-z0-9.+-]*$'))")
        .message("spec.policy.allowedLicenses entries must be SPDX licence identifiers such as Apache-2.0"))]
    pub allowed_licenses: Vec<String>,

    /// Fields the model card (README.md front matter) must have, e.g. `license`,
    /// `intended_use`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 128)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub required_model_card_fields: Vec<String>,

    /// Largest total size of the model's files, as a quantity (`20Gi`) or a number of
    /// bytes. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0'))")
        .message("spec.policy.maxSize must be a positive quantity such as 20Gi, or a number of bytes"))]
    pub max_size: Option<Quantity>,
}

impl Default for ModelPolicy {
    fn default() -> Self {
        Self {
            allowed_formats: default_formats(),
            pickle: PickleHandling::Deny,
            allowed_licenses: Vec::new(),
            required_model_card_fields: Vec::new(),
            max_size: None,
        }
    }
}

/// Probes run against the model in an isolated GPU pod: `gpuCount` or `migProfile`, not
/// both.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.gpuCount) && has(self.migProfile))")
    .message("spec.behaviour must set gpuCount or migProfile, not both"))]
pub struct BehaviourCheck {
    /// Container image that loads the model and runs the probes; pin it by digest.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,

    /// ConfigMap key in this namespace holding the probes (prompts and expected answers).
    pub probes: KeySelector,

    /// Whole GPUs the pod gets, 1 to 8. Unset (and no `migProfile`): 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 8")
        .message("spec.behaviour.gpuCount must be between 1 and 8"))]
    pub gpu_count: Option<u32>,

    /// MIG device the pod gets instead of whole GPUs (e.g. `1g.10gb`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^[1-8]g[.][0-9]+gb([+]me|-me|[+]gfx|[+]me[.]all)?$')")
        .message("spec.behaviour.migProfile must be a MIG profile name such as 1g.10gb"))]
    pub mig_profile: Option<String>,

    /// How long the check may run, as a duration (`15m`), greater than 0s and at most 24h.
    #[serde(default = "default_behaviour_timeout")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new(
        "self.matches('^([0-9]+h)?([0-9]+m)?([0-9]+s)?$') && self != '' && duration(self) > duration('0s') && duration(self) <= duration('24h')"
    ).message("spec.behaviour.timeout must be a duration such as 15m, greater than 0s and at most 24h"))]
    pub timeout: String,

    /// Whether the pod may run only on nodes a GpuAttestation has attested
    /// (`lotabots.io/gpu-attested=true`).
    #[serde(default = "default_true")]
    pub attested_nodes_only: bool,
}

/// Observed state of a ModelAttestation: a condition per stage and the verdict.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelAttestationStatus {
    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// One per stage — `IntegrityVerified`, `SignatureVerified`, `SafetyScanned`,
    /// `Compliant`, `Behaviour` — plus `Ready`, `Reconciling` and `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// Digest of the verified manifest, `ALGORITHM:HEX` (e.g. `sha256:…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 80))]
    pub manifest_digest: Option<String>,

    /// `Attested` when every stage passed, `Failed` when one failed, `Unknown` until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,

    /// Why the model has this verdict, in words a person can act on (at most 16).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 256)))]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub reasons: Vec<String>,

    /// When the verdict was reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<Time>,

    /// The behavioural check's current request and, once its pod posted, its result.
    /// Set only with `spec.behaviour`, once every other stage passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behaviour: Option<BehaviourStatus>,
}

/// Longest list of probe outcomes kept in the status (the signed statement keeps all).
pub const MAX_STATUS_PROBES: usize = 64;

/// One behavioural check: the operator picks an attested node and writes this request;
/// that node's agent launches the probe pod; the pod fetches the model and the suite
/// from the operator, checks them against `manifestDigest` and `suiteDigest`, runs the
/// probes and posts the result, which the operator copies into `result`.
///
/// A request is for one manifest, one suite and one node attestation (`nonce`,
/// `evidenceDigest`): when any of them changes a new request replaces it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BehaviourStatus {
    /// The workload request id (32 lowercase hex digits): the probe pod's name is
    /// `behaviour-probes-<requestId>` and its result echoes it.
    #[schemars(length(max = 64))]
    pub request_id: String,
    /// The node the probes run on.
    #[schemars(length(max = 253))]
    pub node: String,
    /// Hex nonce of the node's accepted evidence the probes are bound to.
    #[schemars(length(max = 128))]
    pub nonce: String,
    /// Digest of that evidence (`sha256:…`): the node attestation the probes ran on.
    #[schemars(length(max = 80))]
    pub evidence_digest: String,
    /// The manifest digest the pod must find before it loads the model.
    #[schemars(length(max = 80))]
    pub manifest_digest: String,
    /// `sha256:…` of the probe suite (the ConfigMap value's bytes).
    #[schemars(length(max = 80))]
    pub suite_digest: String,
    /// Total bytes of the files the pod fetches (sizes its scratch volume).
    pub model_bytes: u64,
    /// When the request was made; it times out `spec.behaviour.timeout` later.
    pub requested_at: Time,
    /// The probe pod's result, once accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<BehaviourResult>,
}

/// What the probe pod reported, as the operator accepted it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BehaviourResult {
    /// Whether every probe held.
    pub passed: bool,
    /// `cpu` or `cuda`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub device: Option<String>,
    /// Why the probes could not run (the model was refused, the suite is malformed, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub error: Option<String>,
    /// One entry per probe, in suite order (at most 64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub probes: Vec<ProbeStatus>,
    /// When the pod finished.
    pub finished_at: Time,
}

/// One probe's outcome in the status.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProbeStatus {
    /// The probe's name.
    #[schemars(length(max = 128))]
    pub name: String,
    /// Whether its property held.
    pub passed: bool,
    /// What was observed, in words.
    #[schemars(length(max = 256))]
    pub detail: String,
}

fn default_formats() -> Vec<ModelFormat> {
    vec![
        ModelFormat::Safetensors,
        ModelFormat::Gguf,
        ModelFormat::Onnx,
    ]
}

fn default_behaviour_timeout() -> String {
    DEFAULT_BEHAVIOUR_TIMEOUT.to_owned()
}

fn default_true() -> bool {
    true
}

// ---------------------------------------------------------------------------------------
// Rust-side validation
// ---------------------------------------------------------------------------------------

/// Parses a Kubernetes quantity as a whole number of bytes: an integer or decimal with an
/// optional binary (`Ki` … `Ei`), decimal (`k` … `E`) or exponent (`e9`) suffix, rounded
/// up. `None` for malformed, negative or milli quantities, or beyond `u64`.
pub fn quantity_to_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let q = q.strip_prefix('+').unwrap_or(q);
    let num_end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(num_end);
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
        return None;
    }
    let (base, exp): (u128, u32) = match suffix {
        "" => (10, 0),
        "Ki" => (2, 10),
        "Mi" => (2, 20),
        "Gi" => (2, 30),
        "Ti" => (2, 40),
        "Pi" => (2, 50),
        "Ei" => (2, 60),
        "k" => (10, 3),
        "M" => (10, 6),
        "G" => (10, 9),
        "T" => (10, 12),
        "P" => (10, 15),
        "E" => (10, 18),
        s if s.starts_with(['e', 'E']) => {
            let e = s[1..].strip_prefix('+').unwrap_or(&s[1..]);
            if e.is_empty() || !e.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (10, e.parse().ok().filter(|&e| e <= 30)?)
        }
        _ => return None,
    };
    let multiplier = base.checked_pow(exp)?;
    let digits = format!("{int_part}{frac_part}");
    if digits.len() > 30 {
        return None;
    }
    let mantissa: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    let scale = 10u128.checked_pow(u32::try_from(frac_part.len()).ok()?)?;
    let bytes = mantissa.checked_mul(multiplier)?.div_ceil(scale);
    u64::try_from(bytes).ok()
}

/// Whether `uri` is a model source URI the CRD accepts (`s3://BUCKET[/PREFIX]`,
/// `gs://BUCKET[/PREFIX]`, `file:///PATH`).
pub fn is_source_uri(uri: &str) -> bool {
    if let Some(path) = uri.strip_prefix("file://") {
        return path.len() > 1 && path.starts_with('/');
    }
    let Some(rest) = uri
        .strip_prefix("s3://")
        .or_else(|| uri.strip_prefix("gs://"))
    else {
        return false;
    };
    let bucket = rest.split('/').next().unwrap_or_default();
    let edge_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (3..=222).contains(&bucket.len())
        && edge_ok(bucket.bytes().next())
        && edge_ok(bucket.bytes().last())
        && bucket.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// Whether `path` is relative and has no `..` segment.
fn is_relative_without_dotdot(path: &str) -> bool {
    !path.starts_with('/') && !path.split('/').any(|seg| seg == "..")
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

impl ModelAttestationSpec {
    /// Checks the spec the way the CRD's CEL rules do, plus what they cannot express
    /// (quantity parsing, known MIG profile names, duplicates). Every problem is returned,
    /// each naming its field.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        self.validate_source(&mut errs);
        self.validate_integrity(&mut errs);
        if let Some(sig) = &self.signature {
            validate_signature(sig, &mut errs);
        }
        self.validate_policy(&mut errs);
        if let Some(b) = &self.behaviour {
            validate_behaviour(b, &mut errs);
        }
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }

    fn validate_source(&self, errs: &mut Vec<FieldError>) {
        let s = &self.source;
        if s.uri.is_some() == s.pvc.is_some() {
            errs.push(FieldError::new(
                "spec.source",
                "must set exactly one of uri or pvc",
            ));
        }
        if let Some(uri) = &s.uri
            && !is_source_uri(uri)
        {
            errs.push(FieldError::new(
                "spec.source.uri",
                format!("{uri:?} is not s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or file:///PATH"),
            ));
        }
        if s.credentials_secret_ref.is_some()
            && !s
                .uri
                .as_deref()
                .is_some_and(|u| u.starts_with("s3://") || u.starts_with("gs://"))
        {
            errs.push(FieldError::new(
                "spec.source.credentialsSecretRef",
                "may only be set with an s3:// or gs:// uri",
            ));
        }
        if let Some(pvc) = &s.pvc {
            if !is_dns_subdomain(&pvc.claim_name) {
                errs.push(FieldError::new(
                    "spec.source.pvc.claimName",
                    format!("{:?} is not a DNS subdomain name", pvc.claim_name),
                ));
            }
            if !is_relative_without_dotdot(&pvc.path) {
                errs.push(FieldError::new(
                    "spec.source.pvc.path",
                    format!(
                        "{:?} must be relative to the volume root, without '..'",
                        pvc.path
                    ),
                ));
            }
        }
    }

    fn validate_integrity(&self, errs: &mut Vec<FieldError>) {
        let i = &self.integrity;
        if let Some(d) = &i.expected_digest {
            let n = i.algorithm.hex_len();
            if d.len() != n
                || !d
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                errs.push(FieldError::new(
                    "spec.integrity.expectedDigest",
                    format!(
                        "must be {n} lowercase hex characters for {}",
                        i.algorithm.as_str()
                    ),
                ));
            }
        }
        if i.shard_size_bytes == Some(0) {
            errs.push(FieldError::new(
                "spec.integrity.shardSizeBytes",
                "must be greater than 0",
            ));
        }
    }

    fn validate_policy(&self, errs: &mut Vec<FieldError>) {
        let p = &self.policy;
        if p.allowed_formats.is_empty() {
            errs.push(FieldError::new(
                "spec.policy.allowedFormats",
                "must name at least one format",
            ));
        }
        let formats: Vec<String> = p
            .allowed_formats
            .iter()
            .map(|f| format!("{f:?}").to_lowercase())
            .collect();
        push_duplicates(&formats, "spec.policy.allowedFormats", errs);
        if p.pickle == PickleHandling::Deny
            && p.allowed_formats
                .iter()
                .any(|f| matches!(f, ModelFormat::Pickle | ModelFormat::Pytorch))
        {
            errs.push(FieldError::new(
                "spec.policy.allowedFormats",
                "includes pickle or pytorch, which spec.policy.pickle: Deny would always reject; set pickle to AllowSafeGlobals or drop those formats",
            ));
        }
        for (i, l) in p.allowed_licenses.iter().enumerate() {
            let ok = l.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-'));
            if !ok {
                errs.push(FieldError::new(
                    format!("spec.policy.allowedLicenses[{i}]"),
                    format!("{l:?} is not an SPDX licence identifier such as Apache-2.0"),
                ));
            }
        }
        push_duplicates(&p.allowed_licenses, "spec.policy.allowedLicenses", errs);
        push_duplicates(
            &p.required_model_card_fields,
            "spec.policy.requiredModelCardFields",
            errs,
        );
        if let Some(q) = &p.max_size {
            match quantity_to_bytes(&q.0) {
                Some(0) | None => errs.push(FieldError::new(
                    "spec.policy.maxSize",
                    format!(
                        "{:?} is not a positive size such as 20Gi or 21474836480",
                        q.0
                    ),
                )),
                Some(_) => {}
            }
        }
    }
}

impl ModelPolicy {
    /// `maxSize` in bytes, when set and well formed.
    pub fn max_size_bytes(&self) -> Option<u64> {
        self.max_size.as_ref().and_then(|q| quantity_to_bytes(&q.0))
    }
}

fn validate_signature(sig: &SignatureSpec, errs: &mut Vec<FieldError>) {
    if sig.public_key.is_some() == sig.certificate.is_some() {
        errs.push(FieldError::new(
            "spec.signature",
            "must set exactly one of publicKey or certificate",
        ));
    }
    if let Some(b) = &sig.bundle {
        let uri = b.starts_with("s3://") || b.starts_with("gs://") || b.starts_with("file:///");
        let ok = if uri {
            is_source_uri(b) || b.starts_with("file:///")
        } else {
            !b.is_empty() && !b.contains("://") && is_relative_without_dotdot(b)
        };
        if !ok || b.split('/').any(|seg| seg == "..") {
            errs.push(FieldError::new(
                "spec.signature.bundle",
                format!(
                    "{b:?} must be a path relative to the model source without '..', or an s3://, gs:// or file:/// URI"
                ),
            ));
        }
    }
    for (name, key_ref) in [
        ("publicKey", &sig.public_key),
        ("certificate", &sig.certificate),
    ] {
        if let Some(r) = key_ref
            && r.secret_key_ref.is_some() == r.config_map_key_ref.is_some()
        {
            errs.push(FieldError::new(
                format!("spec.signature.{name}"),
                "must set exactly one of secretKeyRef or configMapKeyRef",
            ));
        }
    }
}

fn validate_behaviour(b: &BehaviourCheck, errs: &mut Vec<FieldError>) {
    if b.image.trim().is_empty() {
        errs.push(FieldError::new(
            "spec.behaviour.image",
            "must name a container image",
        ));
    }
    if b.gpu_count.is_some() && b.mig_profile.is_some() {
        errs.push(FieldError::new(
            "spec.behaviour",
            "must set gpuCount or migProfile, not both",
        ));
    }
    if let Some(n) = b.gpu_count
        && !(1..=8).contains(&n)
    {
        errs.push(FieldError::new(
            "spec.behaviour.gpuCount",
            format!("{n} is out of range: must be between 1 and 8"),
        ));
    }
    if let Some(p) = &b.mig_profile
        && !mig::is_known_profile_name(p)
    {
        errs.push(FieldError::new(
            "spec.behaviour.migProfile",
            format!("{p:?} is not a GPU-instance profile NVIDIA ships, such as 1g.10gb"),
        ));
    }
    validate_timeout(
        &b.timeout,
        MAX_BEHAVIOUR_TIMEOUT,
        "spec.behaviour.timeout",
        "24h",
        errs,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3_spec() -> ModelAttestationSpec {
        ModelAttestationSpec {
            source: ModelSource {
                uri: Some("s3://models/llama-3-8b/".into()),
                pvc: None,
                credentials_secret_ref: Some(LocalObjectReference {
                    name: "model-reader".into(),
                }),
            },
            integrity: Integrity::default(),
            signature: Some(SignatureSpec {
                bundle: None,
                public_key: Some(KeyReference {
                    secret_key_ref: None,
                    config_map_key_ref: Some(KeySelector {
                        name: "signers".into(),
                        key: "release.pub".into(),
                    }),
                }),
                certificate: None,
            }),
            policy: ModelPolicy::default(),
            behaviour: None,
        }
    }

    fn paths(r: Result<(), Vec<FieldError>>) -> Vec<String> {
        r.unwrap_err().into_iter().map(|e| e.path).collect()
    }

    #[test]
    fn quantities_parse_to_bytes() {
        assert_eq!(quantity_to_bytes("20Gi"), Some(20 << 30));
        assert_eq!(quantity_to_bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(quantity_to_bytes("21474836480"), Some(21_474_836_480));
        assert_eq!(quantity_to_bytes("10G"), Some(10_000_000_000));
        assert_eq!(quantity_to_bytes("1e9"), Some(1_000_000_000));
        assert_eq!(quantity_to_bytes("0.5"), Some(1));
        assert_eq!(quantity_to_bytes("16Ei"), None);
        for bad in ["", "Gi", "-1Gi", "1.2.3", "10GB", "100m", "1e", "abc"] {
            assert_eq!(quantity_to_bytes(bad), None, "{bad}");
        }
    }

    #[test]
    fn source_uris() {
        for ok in [
            "s3://models",
            "s3://models/llama/",
            "gs://my_bucket.x/a",
            "file:///models/a",
        ] {
            assert!(is_source_uri(ok), "{ok}");
        }
        for bad in [
            "s3://",
            "s3://Models/a",
            "https://x/y",
            "file://relative",
            "gs://-bad/a",
            "/models",
        ] {
            assert!(!is_source_uri(bad), "{bad}");
        }
    }

    #[test]
    fn good_spec_is_valid() {
        assert_eq!(s3_spec().validate(), Ok(()));
    }

    #[test]
    fn one_of_rules_are_enforced() {
        let mut s = s3_spec();
        s.source.pvc = Some(PvcSource {
            claim_name: "Bad_Name".into(),
            path: "../etc".into(),
        });
        let sig = s.signature.as_mut().unwrap();
        sig.certificate = Some(KeyReference::default());
        s.behaviour = Some(BehaviourCheck {
            image: "ghcr.io/lotabots/probe:v1".into(),
            probes: KeySelector {
                name: "probes".into(),
                key: "probes.yaml".into(),
            },
            gpu_count: Some(1),
            mig_profile: Some("1g.11gb".into()),
            timeout: "25h".into(),
            attested_nodes_only: true,
        });
        assert_eq!(
            paths(s.validate()),
            [
                "spec.source",
                "spec.source.pvc.claimName",
                "spec.source.pvc.path",
                "spec.signature",
                "spec.signature.certificate",
                "spec.behaviour",
                "spec.behaviour.migProfile",
                "spec.behaviour.timeout",
            ]
        );
    }

    #[test]
    fn policy_and_integrity_checks() {
        let mut s = s3_spec();
        s.source.uri = Some("file:///models/x".into());
        s.integrity = Integrity {
            algorithm: HashAlgorithm::Blake3,
            shard_size_bytes: Some(0),
            expected_digest: Some("ABCD".into()),
        };
        s.policy.allowed_formats.push(ModelFormat::Pytorch);
        s.policy.allowed_licenses = vec!["Apache-2.0".into(), "not spdx".into()];
        s.policy.max_size = Some(Quantity("lots".into()));
        s.signature.as_mut().unwrap().bundle = Some("../model.sig".into());
        assert_eq!(
            paths(s.validate()),
            [
                "spec.source.credentialsSecretRef",
                "spec.integrity.expectedDigest",
                "spec.integrity.shardSizeBytes",
                "spec.signature.bundle",
                "spec.policy.allowedFormats",
                "spec.policy.allowedLicenses[1]",
                "spec.policy.maxSize",
            ]
        );
        s.policy.pickle = PickleHandling::AllowSafeGlobals;
        s.policy.max_size = Some(Quantity("20Gi".into()));
        assert_eq!(s.policy.max_size_bytes(), Some(20 << 30));
    }
}
