//! The pod a [`WorkloadRequest`] runs in: a pure function from the request and the
//! launcher's settings to a `Pod`, so that every hardening rule is checked on the built
//! object without an API server (see the tests at the end, one per rule).
//!
//! The pod:
//! - is pinned to the request's node by a required node affinity on `metadata.name` (as the
//!   DaemonSet controller pins its pods): the scheduler places it, and no other node can
//!   match; the webhook checks the same field against the node the agent's token is bound
//!   to;
//! - meets the `restricted` Pod Security level (non-root 65532, no privilege escalation,
//!   every capability dropped, `RuntimeDefault` seccomp) and more (read-only root
//!   filesystem, no host namespaces, no hostPath, no service links);
//! - mounts no ServiceAccount token but one projected volume holding only a token bound to
//!   the pod (audience `lotabots`, 10 minutes) and the operator's CA certificate: the pod
//!   can post its result to the operator and do nothing else with the API server;
//! - writes only to bounded `emptyDir`s: `/tmp` always, and a scratch volume at
//!   [`workload::SCRATCH_DIR`] sized by [`WorkloadRequest::scratch_bytes`] when the
//!   workload needs one (a probe pod fetches the model into it);
//! - asks for CPU, memory and ephemeral storage ([`PodSettings::cpu_request`],
//!   [`PodSettings::memory_limit`], the volumes above): memory and ephemeral storage are
//!   requested at their limit, so the scheduler places the pod only where they fit and a
//!   runaway workload is killed or evicted rather than starving the node; CPU is requested,
//!   not limited (a limit would only throttle a pod that already has the node's GPUs);
//! - is owned by the object that asked (see [`owner_metadata`] for owners in another
//!   namespace), ends by `activeDeadlineSeconds`, and never restarts.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapProjection, Container, EmptyDirVolumeSource, EnvVar,
    KeyToPath, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    PodSecurityContext, PodSpec, ProjectedVolumeSource, ResourceRequirements, SeccompProfile,
    SecurityContext, ServiceAccountTokenProjection, Toleration, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use lotabots_crds::labels;
use lotabots_crds::model_attestation::quantity_to_bytes;
use lotabots_crds::workload::{self, WorkloadOwner, WorkloadRequest, env};

/// UID and GID every workload container runs as (distroless `nonroot`).
pub const RUN_AS: i64 = 65532;
/// Lifetime of the projected token: long enough to post one result, short enough that a
/// leaked token is soon useless. The kubelet refreshes it at 80 % of its life.
pub const TOKEN_EXPIRATION_SECONDS: i64 = 600;
/// Where the projected volume (token and CA) is mounted.
pub const SECRETS_DIR: &str = "/var/run/secrets/lotabots";
/// File name of the token in [`SECRETS_DIR`].
pub const TOKEN_PATH: &str = "token";
/// File name of the operator's CA certificate in [`SECRETS_DIR`].
pub const CA_PATH: &str = "ca.crt";
/// Key of the CA certificate in the operator CA ConfigMap.
pub const CA_KEY: &str = "ca.crt";
/// Name of the only container.
pub const CONTAINER: &str = "workload";
/// Grace period on deletion: the workloads hold no state worth a long shutdown.
const TERMINATION_GRACE_SECONDS: i64 = 5;
/// Longest `activeDeadlineSeconds` accepted: the longest behavioural-check timeout the
/// ModelAttestation CRD allows (24 h; the self-test's is capped at 1 h).
pub const MAX_DEADLINE_SECONDS: u64 =
    lotabots_crds::model_attestation::MAX_BEHAVIOUR_TIMEOUT.as_secs();
/// Ephemeral storage allowed beyond the volumes, for the container's logs (the root
/// filesystem is read-only, so logs are all the container itself writes).
pub const LOG_ALLOWANCE_BYTES: u64 = 64 << 20;
/// Name of the scratch volume.
const SCRATCH_VOLUME: &str = "scratch";
/// Resource names of the container's requests and limits.
const CPU: &str = "cpu";
const MEMORY: &str = "memory";
const EPHEMERAL_STORAGE: &str = "ephemeral-storage";

/// Default of [`PodSettings::cpu_request`]: one core feeds the GPUs.
pub const DEFAULT_CPU_REQUEST: &str = "1";
/// Default of [`PodSettings::memory_limit`]: room to load a mid-sized model's weights on
/// the host before they move to the GPU.
pub const DEFAULT_MEMORY_LIMIT: &str = "16Gi";

/// The launcher's settings that shape every pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSettings {
    /// Namespace the pods are created in.
    pub namespace: String,
    /// ServiceAccount the pods run as (no RBAC rights).
    pub service_account: String,
    /// `runtimeClassName` (e.g. `gvisor`, `kata`, `nvidia`); unset: the cluster default.
    pub runtime_class: Option<String>,
    /// The operator's API the pod posts its result to.
    pub operator_url: String,
    /// Name of the ConfigMap (in [`PodSettings::namespace`]) holding the operator's CA
    /// certificate under `ca.crt`.
    pub operator_ca_configmap: String,
    /// Size limit of the writable `/tmp` (the root filesystem is read-only).
    pub tmp_size_limit: String,
    /// CPU the container requests (a quantity: `1`, `500m`); no CPU limit is set.
    pub cpu_request: String,
    /// Memory limit of the container (a quantity: `16Gi`), also its request.
    pub memory_limit: String,
}

impl PodSettings {
    /// The defaults, posting to `operator_url`.
    pub fn new(operator_url: impl Into<String>) -> Self {
        Self {
            namespace: workload::DEFAULT_NAMESPACE.to_owned(),
            service_account: workload::SERVICE_ACCOUNT.to_owned(),
            runtime_class: None,
            operator_url: operator_url.into(),
            operator_ca_configmap: "lotabots-operator-ca".to_owned(),
            tmp_size_limit: "256Mi".to_owned(),
            cpu_request: DEFAULT_CPU_REQUEST.to_owned(),
            memory_limit: DEFAULT_MEMORY_LIMIT.to_owned(),
        }
    }
}

/// Why a request cannot become a pod; each names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A request field is unusable.
    #[error("workload request {field}: {message}")]
    Request {
        /// The field (`id`, `node`, …).
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A launcher setting is unusable (a flag the command line did not check).
    #[error("workload pod setting {setting}: {message}")]
    Setting {
        /// The setting (`tmpSizeLimit`, `memoryLimit`, …).
        setting: &'static str,
        /// What is wrong.
        message: String,
    },
}

fn bad(field: &'static str, message: impl Into<String>) -> SpecError {
    SpecError::Request {
        field,
        message: message.into(),
    }
}

/// Checks the fields that end up in names, labels and limits.
pub fn validate(req: &WorkloadRequest) -> Result<(), SpecError> {
    // The id is part of the pod name and a label value: lowercase hex, bounded.
    if !(8..=48).contains(&req.id.len())
        || !req
            .id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(bad(
            "id",
            format!("{:?} is not 8 to 48 lowercase hex digits", req.id),
        ));
    }
    if req.node.is_empty() || req.node.len() > 253 {
        return Err(bad("node", "must name the node (1 to 253 characters)"));
    }
    if req.image.trim().is_empty() || req.image.len() > 512 {
        return Err(bad(
            "image",
            "must name a container image (at most 512 characters)",
        ));
    }
    if req.nonce.len() != 64 || !req.nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("nonce", "must be 64 hex digits (32 bytes)"));
    }
    if req.deadline_seconds == 0 || req.deadline_seconds > MAX_DEADLINE_SECONDS {
        return Err(bad(
            "deadlineSeconds",
            format!(
                "{} is not between 1 and {MAX_DEADLINE_SECONDS}",
                req.deadline_seconds
            ),
        ));
    }
    let o = &req.owner;
    if o.api_version.is_empty() || o.kind.is_empty() || o.name.is_empty() || o.uid.is_empty() {
        return Err(bad("owner", "needs apiVersion, kind, name and uid"));
    }
    if !labels::is_label_value(&o.uid) {
        return Err(bad("owner.uid", format!("{:?} is not a UID", o.uid)));
    }
    if req.scratch_bytes == Some(0) {
        return Err(bad(
            "scratchBytes",
            "must be at least 1 byte when set (unset: no scratch volume)",
        ));
    }
    gpu_limits(req).map(|_| ())
}

/// A quantity's bytes, or the [`SpecError::Setting`] naming it.
fn setting_bytes(setting: &'static str, q: &str) -> Result<u64, SpecError> {
    quantity_to_bytes(q).ok_or_else(|| SpecError::Setting {
        setting,
        message: format!("{q:?} is not a quantity of bytes such as 16Gi"),
    })
}

/// `bytes` as a quantity, in `Mi` when it is a whole number of them (easier to read in
/// `kubectl get pod -o yaml`).
pub fn bytes_quantity(bytes: u64) -> Quantity {
    const MI: u64 = 1 << 20;
    if bytes != 0 && bytes.is_multiple_of(MI) {
        Quantity(format!("{}Mi", bytes / MI))
    } else {
        Quantity(bytes.to_string())
    }
}

/// The container's requests and limits: the GPUs ([`gpu_limits`]), CPU requested only,
/// memory and ephemeral storage requested at their limits. The ephemeral-storage limit
/// covers what the pod may write: `/tmp`, the scratch volume and the container's logs
/// (the kubelet counts `emptyDir`s against the pod's total).
pub fn resources(
    req: &WorkloadRequest,
    s: &PodSettings,
) -> Result<ResourceRequirements, SpecError> {
    let mut limits = gpu_limits(req)?;
    if !is_cpu_quantity(&s.cpu_request) {
        return Err(SpecError::Setting {
            setting: "cpuRequest",
            message: format!(
                "{:?} is not a CPU quantity such as 1 or 500m",
                s.cpu_request
            ),
        });
    }
    let memory = bytes_quantity(setting_bytes("memoryLimit", &s.memory_limit)?);
    let storage = bytes_quantity(
        setting_bytes("tmpSizeLimit", &s.tmp_size_limit)?
            .saturating_add(req.scratch_bytes.unwrap_or(0))
            .saturating_add(LOG_ALLOWANCE_BYTES),
    );
    limits.insert(MEMORY.to_owned(), memory.clone());
    limits.insert(EPHEMERAL_STORAGE.to_owned(), storage.clone());
    let requests = BTreeMap::from([
        (CPU.to_owned(), Quantity(s.cpu_request.clone())),
        (MEMORY.to_owned(), memory),
        (EPHEMERAL_STORAGE.to_owned(), storage),
    ]);
    Ok(ResourceRequirements {
        limits: Some(limits),
        requests: Some(requests),
        ..Default::default()
    })
}

/// Whether `q` is a positive CPU quantity: whole or decimal cores (`2`, `0.5`) or
/// millicores (`500m`).
pub fn is_cpu_quantity(q: &str) -> bool {
    let (num, milli) = match q.strip_suffix('m') {
        Some(n) => (n, true),
        None => (q, false),
    };
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    num.len() <= 16
        && digits(int_part)
        && digits(frac_part)
        && (!milli || !num.contains('.'))
        && num.bytes().any(|b| (b'1'..=b'9').contains(&b))
}

/// The extended-resource limits of the container: `nvidia.com/mig-<profile>: 1` for a MIG
/// device, else `nvidia.com/gpu: N` (1 when unset).
pub fn gpu_limits(req: &WorkloadRequest) -> Result<BTreeMap<String, Quantity>, SpecError> {
    let r = &req.resources;
    let (name, count) = match (&r.mig_profile, r.gpu_count) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "resources",
                "gpuCount and migProfile exclude each other (one MIG device, or whole GPUs)",
            ));
        }
        (Some(p), None) => {
            if !lotabots_crds::mig::is_known_profile_name(p) {
                return Err(bad(
                    "resources.migProfile",
                    format!("{p:?} is not a MIG profile NVIDIA ships (e.g. 1g.10gb)"),
                ));
            }
            (lotabots_crds::mig::resource_name(p), 1)
        }
        (None, Some(0)) => return Err(bad("resources.gpuCount", "must be at least 1")),
        (None, Some(n)) if n > 16 => {
            return Err(bad(
                "resources.gpuCount",
                format!("{n} is more than 16 GPUs"),
            ));
        }
        (None, n) => (labels::GPU_RESOURCE.to_owned(), n.unwrap_or(1)),
    };
    Ok(BTreeMap::from([(name, Quantity(count.to_string()))]))
}

/// Owner reference, or for an owner in another namespace the labels and annotations the
/// launcher reaps by.
///
/// The garbage collector follows an owner reference only to a cluster-scoped owner or to
/// one in the dependent's own namespace; a reference to an object in another namespace is
/// treated as absent and the pod would be deleted at once. A ModelAttestation lives in its
/// user's namespace, so for it the pod carries [`labels::OWNER_UID`] plus the owner's
/// coordinates as annotations, and the launcher deletes the pod once no object with that
/// UID is found there ([`super::Launcher::reap`]).
pub fn owner_metadata(owner: &WorkloadOwner, namespace: &str, meta: &mut ObjectMeta) {
    let same_scope = owner.namespace.as_deref().is_none_or(|ns| ns == namespace);
    if same_scope {
        meta.owner_references = Some(vec![OwnerReference {
            api_version: owner.api_version.clone(),
            kind: owner.kind.clone(),
            name: owner.name.clone(),
            uid: owner.uid.clone(),
            controller: Some(true),
            // Left unset: setting it needs `update` on the owner's finalizers under the
            // OwnerReferencesPermissionEnforcement admission plugin, a right the agent
            // does not need otherwise; background deletion removes the pod anyway.
            block_owner_deletion: None,
        }]);
    } else {
        meta.labels
            .get_or_insert_with(BTreeMap::new)
            .insert(labels::OWNER_UID.to_owned(), owner.uid.clone());
        let ann = meta.annotations.get_or_insert_with(BTreeMap::new);
        for (k, v) in [
            (labels::OWNER_API_VERSION_ANNOTATION, &owner.api_version),
            (labels::OWNER_KIND_ANNOTATION, &owner.kind),
            (
                labels::OWNER_NAMESPACE_ANNOTATION,
                owner.namespace.as_ref().expect("checked above"),
            ),
            (labels::OWNER_NAME_ANNOTATION, &owner.name),
        ] {
            ann.insert(k.to_owned(), v.clone());
        }
    }
}

/// The labels every workload pod of `node` carries, and that the launcher selects by.
pub fn node_selector_labels(node: &str) -> String {
    format!(
        "{}={},{}={}",
        labels::MANAGED_BY,
        labels::MANAGED_BY_VALUE,
        labels::NODE,
        labels::node_label_value(node)
    )
}

/// Builds the pod for `req`.
pub fn build(req: &WorkloadRequest, s: &PodSettings) -> Result<Pod, SpecError> {
    validate(req)?;
    let resources = resources(req, s)?;
    let params = serde_json::to_string(&req.params).expect("a string map serialises");

    let mut meta = ObjectMeta {
        name: Some(req.pod_name()),
        namespace: Some(s.namespace.clone()),
        labels: Some(BTreeMap::from([
            (
                labels::MANAGED_BY.to_owned(),
                labels::MANAGED_BY_VALUE.to_owned(),
            ),
            (
                labels::WORKLOAD_KIND.to_owned(),
                req.kind.as_str().to_owned(),
            ),
            (labels::WORKLOAD_ID.to_owned(), req.id.clone()),
            (labels::NODE.to_owned(), labels::node_label_value(&req.node)),
        ])),
        ..Default::default()
    };
    owner_metadata(&req.owner, &s.namespace, &mut meta);

    let env_var = |name: &str, value: String| EnvVar {
        name: name.to_owned(),
        value: Some(value),
        value_from: None,
    };
    let mut mounts = vec![
        VolumeMount {
            name: "lotabots".to_owned(),
            mount_path: SECRETS_DIR.to_owned(),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: "tmp".to_owned(),
            mount_path: "/tmp".to_owned(),
            ..Default::default()
        },
    ];
    let mut volumes = vec![
        projected_volume(s),
        empty_dir("tmp", Quantity(s.tmp_size_limit.clone())),
    ];
    if let Some(bytes) = req.scratch_bytes {
        mounts.push(VolumeMount {
            name: SCRATCH_VOLUME.to_owned(),
            mount_path: workload::SCRATCH_DIR.to_owned(),
            ..Default::default()
        });
        volumes.push(empty_dir(SCRATCH_VOLUME, bytes_quantity(bytes)));
    }
    let container = Container {
        name: CONTAINER.to_owned(),
        image: Some(req.image.clone()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        env: Some(vec![
            env_var(env::REQUEST_ID, req.id.clone()),
            env_var(env::NONCE, req.nonce.clone()),
            env_var(env::NODE, req.node.clone()),
            env_var(env::OPERATOR_URL, s.operator_url.clone()),
            env_var(env::TOKEN_FILE, format!("{SECRETS_DIR}/{TOKEN_PATH}")),
            env_var(env::CA_FILE, format!("{SECRETS_DIR}/{CA_PATH}")),
            env_var(env::PARAMS, params),
        ]),
        resources: Some(resources),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: None,
            }),
            seccomp_profile: Some(runtime_default()),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Default::default()
    };

    let spec = PodSpec {
        restart_policy: Some("Never".to_owned()),
        active_deadline_seconds: Some(i64::try_from(req.deadline_seconds).expect("validated")),
        termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
        service_account_name: Some(s.service_account.clone()),
        automount_service_account_token: Some(false),
        // No Service environment variables: they would tell the workload where everything
        // in the namespace listens, which it has no business knowing.
        enable_service_links: Some(false),
        host_network: Some(false),
        host_pid: Some(false),
        host_ipc: Some(false),
        runtime_class_name: s.runtime_class.clone(),
        affinity: Some(pinned_to(&req.node)),
        // GPU node pools are commonly tainted nvidia.com/gpu:NoSchedule; the pod asks for
        // GPUs, so it belongs there.
        tolerations: Some(vec![Toleration {
            key: Some(labels::GPU_RESOURCE.to_owned()),
            operator: Some("Exists".to_owned()),
            effect: Some("NoSchedule".to_owned()),
            ..Default::default()
        }]),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            fs_group: Some(RUN_AS),
            seccomp_profile: Some(runtime_default()),
            ..Default::default()
        }),
        containers: vec![container],
        volumes: Some(volumes),
        ..Default::default()
    };
    Ok(Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    })
}

/// The projected volume: a token bound to the pod and the operator's CA certificate.
fn projected_volume(s: &PodSettings) -> Volume {
    Volume {
        name: "lotabots".to_owned(),
        projected: Some(ProjectedVolumeSource {
            // Owner read only (0440 with fsGroup): the token is the pod's identity.
            default_mode: Some(0o440),
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(workload::TOKEN_AUDIENCE.to_owned()),
                        expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                        path: TOKEN_PATH.to_owned(),
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: s.operator_ca_configmap.clone(),
                        items: Some(vec![KeyToPath {
                            key: CA_KEY.to_owned(),
                            path: CA_PATH.to_owned(),
                            mode: None,
                        }]),
                        optional: Some(false),
                    }),
                    ..Default::default()
                },
            ]),
        }),
        ..Default::default()
    }
}

/// A node-disk `emptyDir` of at most `size` (the kubelet evicts the pod beyond it).
fn empty_dir(name: &str, size: Quantity) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: None,
            size_limit: Some(size),
        }),
        ..Default::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        localhost_profile: None,
    }
}

/// Required node affinity on the node's name, the way the DaemonSet controller pins a
/// pod: exactly one term, one `matchFields` requirement, one value.
pub fn pinned_to(node: &str) -> Affinity {
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_fields: Some(vec![NodeSelectorRequirement {
                        key: "metadata.name".to_owned(),
                        operator: "In".to_owned(),
                        values: Some(vec![node.to_owned()]),
                    }]),
                    match_expressions: None,
                }],
            }),
            preferred_during_scheduling_ignored_during_execution: None,
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
