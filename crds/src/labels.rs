//! Node label keys: the ones lotabots writes, and the ones it reads in NVIDIA GPU Feature
//! Discovery's (GFD) vocabulary, so that selectors in a GpuAttestation can use the labels
//! a GPU cluster already carries.
//!
//! GFD writes label values without spaces: the product `NVIDIA H100 80GB HBM3` becomes
//! `NVIDIA-H100-80GB-HBM3` (see [`gfd_label_value`]).

// ---- written by lotabots ----

/// Set by the operator on every node a GpuAttestation with `labelNodes: true` selects:
/// `"true"` when the node is attested, `"false"` when it failed; removed while the verdict
/// is `Unknown`. The webhook can keep GPU pods on nodes with `lotabots.io/gpu-attested=true`.
pub const GPU_ATTESTED: &str = "lotabots.io/gpu-attested";
/// Set next to [`GPU_ATTESTED`]: the name of the GpuAttestation whose policy gave the
/// verdict.
pub const GPU_ATTESTATION: &str = "lotabots.io/gpu-attestation";
/// Standard `app.kubernetes.io/managed-by` label on the pods lotabots creates (GPU
/// self-tests, behavioural probes); the value is [`MANAGED_BY_VALUE`].
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY`] on lotabots' own objects.
pub const MANAGED_BY_VALUE: &str = "lotabots";

/// On every workload pod: which workload it runs ([`crate::workload::WorkloadKind::as_str`],
/// `gpu-selftest` or `behaviour-probes`).
pub const WORKLOAD_KIND: &str = "lotabots.io/workload-kind";
/// On every workload pod: the [`crate::workload::WorkloadRequest::id`] it was launched for.
pub const WORKLOAD_ID: &str = "lotabots.io/workload-id";
/// On every workload pod: the node it is pinned to, as [`node_label_value`] writes it. The
/// launcher counts and reaps its own node's pods by this label (a pod that is not yet
/// scheduled has no `spec.nodeName` to select on).
pub const NODE: &str = "lotabots.io/node";
/// On a workload pod whose owner is namespaced in another namespace (a ModelAttestation):
/// the owner's UID. An owner reference cannot cross namespaces, so the garbage collector
/// cannot remove such a pod; the launcher does, once no object with this UID exists at
/// [`OWNER_NAMESPACE_ANNOTATION`]/[`OWNER_NAME_ANNOTATION`].
pub const OWNER_UID: &str = "lotabots.io/owner-uid";
/// Annotation (not a label: the value may be longer than 63 characters) next to
/// [`OWNER_UID`]: the owner's `apiVersion`.
pub const OWNER_API_VERSION_ANNOTATION: &str = "lotabots.io/owner-api-version";
/// Annotation next to [`OWNER_UID`]: the owner's kind.
pub const OWNER_KIND_ANNOTATION: &str = "lotabots.io/owner-kind";
/// Annotation next to [`OWNER_UID`]: the owner's namespace.
pub const OWNER_NAMESPACE_ANNOTATION: &str = "lotabots.io/owner-namespace";
/// Annotation next to [`OWNER_UID`]: the owner's name.
pub const OWNER_NAME_ANNOTATION: &str = "lotabots.io/owner-name";

/// Label value for a boolean `true`.
pub const TRUE: &str = "true";
/// Label value for a boolean `false`.
pub const FALSE: &str = "false";

// ---- written by NVIDIA GPU Feature Discovery (read by lotabots) ----

/// `"true"` on nodes with at least one NVIDIA GPU (written by the GPU Operator's node
/// feature rules and by GFD). The default node selection of a GpuAttestation.
pub const GPU_PRESENT: &str = "nvidia.com/gpu.present";
/// GPU product name with spaces replaced by `-`, e.g. `NVIDIA-H100-80GB-HBM3`; with the
/// `single` MIG strategy a `-MIG-<profile>` suffix is added.
pub const GPU_PRODUCT: &str = "nvidia.com/gpu.product";
/// Number of GPUs on the node (with MIG `single`: number of MIG devices), e.g. `8`.
pub const GPU_COUNT: &str = "nvidia.com/gpu.count";
/// Memory of one GPU in MiB, e.g. `81559`.
pub const GPU_MEMORY: &str = "nvidia.com/gpu.memory";
/// GPU architecture family, e.g. `hopper`, `ampere`.
pub const GPU_FAMILY: &str = "nvidia.com/gpu.family";
/// CUDA compute capability, major part, e.g. `9`.
pub const GPU_COMPUTE_MAJOR: &str = "nvidia.com/gpu.compute.major";
/// CUDA compute capability, minor part, e.g. `0`.
pub const GPU_COMPUTE_MINOR: &str = "nvidia.com/gpu.compute.minor";
/// The machine's product name from DMI, e.g. `DGX-H100`.
pub const GPU_MACHINE: &str = "nvidia.com/gpu.machine";
/// How GPUs are shared: `none`, `time-slicing` or `mps`.
pub const GPU_SHARING_STRATEGY: &str = "nvidia.com/gpu.sharing-strategy";
/// Number of replicas each GPU is advertised as when shared.
pub const GPU_REPLICAS: &str = "nvidia.com/gpu.replicas";
/// Full NVIDIA driver version, e.g. `550.54.15` (GFD names it after CUDA's driver API).
pub const CUDA_DRIVER_VERSION_FULL: &str = "nvidia.com/cuda.driver-version.full";
/// NVIDIA driver version, major part, e.g. `550`.
pub const CUDA_DRIVER_VERSION_MAJOR: &str = "nvidia.com/cuda.driver-version.major";
/// NVIDIA driver version, minor part, e.g. `54`.
pub const CUDA_DRIVER_VERSION_MINOR: &str = "nvidia.com/cuda.driver-version.minor";
/// NVIDIA driver version, revision part, e.g. `15`.
pub const CUDA_DRIVER_VERSION_REVISION: &str = "nvidia.com/cuda.driver-version.revision";
/// Highest CUDA runtime version the driver supports, e.g. `12.4`.
pub const CUDA_RUNTIME_VERSION_FULL: &str = "nvidia.com/cuda.runtime-version.full";
/// `"true"` when the GPUs support MIG.
pub const MIG_CAPABLE: &str = "nvidia.com/mig.capable";
/// The device plugin's MIG strategy: `none`, `single` or `mixed`.
pub const MIG_STRATEGY: &str = "nvidia.com/mig.strategy";
/// The MIG configuration the MIG manager should apply (mig-parted name, e.g.
/// `all-1g.10gb`).
pub const MIG_CONFIG: &str = "nvidia.com/mig.config";
/// The MIG manager's progress applying [`MIG_CONFIG`]: `pending`, `success`, `failed`.
pub const MIG_CONFIG_STATE: &str = "nvidia.com/mig.config.state";
/// `"true"` when the GPUs support confidential computing (GPU Operator).
pub const CC_CAPABLE: &str = "nvidia.com/cc.capable";
/// The confidential-computing mode requested for the node's GPUs (`on`, `off`, `devtools`)
/// (GPU Operator).
pub const CC_MODE: &str = "nvidia.com/cc.mode";
/// When GFD last labelled the node (Unix seconds).
pub const GFD_TIMESTAMP: &str = "nvidia.com/gfd.timestamp";

/// The extended resource the NVIDIA device plugin advertises for whole GPUs (not a label;
/// MIG devices use [`crate::mig::resource_name`]).
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// A value as GFD writes it into a label: spaces become `-` (`NVIDIA H100 80GB HBM3` →
/// `NVIDIA-H100-80GB-HBM3`).
pub fn gfd_label_value(value: &str) -> String {
    value.trim().replace(' ', "-")
}

/// Longest label value Kubernetes accepts.
pub const MAX_LABEL_VALUE_LEN: usize = 63;

/// A node name as the value of [`NODE`]: the name itself when it is a valid label value
/// (almost always), else `sha256-` and the first 48 hex digits of its SHA-256 — node names
/// may be DNS subdomains of up to 253 characters, label values at most 63.
pub fn node_label_value(node: &str) -> String {
    if is_label_value(node) {
        return node.to_owned();
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(node.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256-{}", &hex[..48])
}

/// Whether `v` is a valid label value: at most 63 characters, alphanumerics, `-`, `_`, `.`,
/// beginning and ending with an alphanumeric (or empty).
pub fn is_label_value(v: &str) -> bool {
    v.len() <= MAX_LABEL_VALUE_LEN
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && v.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && v.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gfd_product_values_have_no_spaces() {
        assert_eq!(
            gfd_label_value("NVIDIA H100 80GB HBM3"),
            "NVIDIA-H100-80GB-HBM3"
        );
        assert_eq!(
            gfd_label_value(" NVIDIA A100-SXM4-80GB "),
            "NVIDIA-A100-SXM4-80GB"
        );
    }

    #[test]
    fn keys_are_prefixed() {
        for key in [
            GPU_ATTESTED,
            GPU_ATTESTATION,
            GPU_PRESENT,
            GPU_PRODUCT,
            GPU_COUNT,
            GPU_MEMORY,
            CUDA_DRIVER_VERSION_FULL,
            MIG_CAPABLE,
            MIG_STRATEGY,
            WORKLOAD_KIND,
            WORKLOAD_ID,
            NODE,
            OWNER_UID,
            OWNER_API_VERSION_ANNOTATION,
            OWNER_KIND_ANNOTATION,
            OWNER_NAMESPACE_ANNOTATION,
            OWNER_NAME_ANNOTATION,
        ] {
            let (prefix, name) = key.split_once('/').unwrap();
            assert!(
                prefix.contains('.') && !name.is_empty() && name.len() <= 63,
                "{key}"
            );
        }
    }

    #[test]
    fn node_label_values_fit_a_label() {
        assert_eq!(node_label_value("gpu-node-1.example"), "gpu-node-1.example");
        let long = format!("{}.example.com", "n".repeat(80));
        let v = node_label_value(&long);
        assert!(
            v.starts_with("sha256-") && v.len() == 55 && is_label_value(&v),
            "{v}"
        );
        assert_ne!(
            v,
            node_label_value(&format!("{}.example.org", "n".repeat(80)))
        );
        assert!(!is_label_value("-x") && !is_label_value("a b") && is_label_value(""));
    }
}
