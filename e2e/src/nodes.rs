//! Simulated nodes: Node objects that kwok keeps Ready (it manages the nodes annotated
//! `kwok.x-k8s.io/node=fake`) and runs pods on, with the GPU capacity the NVIDIA device
//! plugin would advertise and the labels GPU Feature Discovery would write.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Node, NodeSpec, NodeStatus},
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
};
use lotabots_crds::{labels, mig};

/// The annotation kwok is told to select its nodes by.
pub const KWOK_ANNOTATION: &str = "kwok.x-k8s.io/node";
/// Its value.
pub const KWOK_ANNOTATION_VALUE: &str = "fake";
/// `--manage-nodes-with-annotation-selector` for kwok: only these nodes are simulated.
pub const KWOK_NODE_SELECTOR: &str = "kwok.x-k8s.io/node=fake";
/// Label (and `type=kwok`) marking simulated nodes, as kwok's own examples do.
pub const TYPE_LABEL: &str = "type";

/// The GPUs of a simulated node, as GFD and the device plugin would describe them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpus {
    /// Product name as NVML reports it (`NVIDIA H100 80GB HBM3`).
    pub product: String,
    /// Number of GPUs.
    pub count: u32,
    /// Memory of one GPU, MiB.
    pub memory_mib: u64,
    /// Architecture family (`hopper`).
    pub family: String,
    /// CUDA compute capability (major, minor).
    pub compute: (u32, u32),
    /// NVIDIA driver version (`550.54.15`).
    pub driver: String,
    /// Highest CUDA runtime version the driver supports (`12.4`).
    pub cuda_runtime: String,
    /// Whether the GPUs support MIG.
    pub mig_capable: bool,
    /// MIG devices per GPU when partitioned (device plugin `mixed` strategy): the GPUs are
    /// then advertised only as `nvidia.com/mig-<profile>` resources, not `nvidia.com/gpu`.
    pub mig_devices_per_gpu: Vec<(String, u32)>,
    /// DMI product name (`DGX-H100`).
    pub machine: String,
}

/// A node to simulate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimNode {
    /// Node name (also its `kubernetes.io/hostname`).
    pub name: String,
    /// Its GPUs; `None` for a CPU-only node.
    pub gpus: Option<Gpus>,
}

impl Gpus {
    /// Eight H100 80GB HBM3, MIG capable but not partitioned: the shape of the real
    /// record in `shared/fixtures/gpu/`.
    pub fn h100_x8() -> Self {
        Self {
            product: "NVIDIA H100 80GB HBM3".into(),
            count: 8,
            memory_mib: 81559,
            family: "hopper".into(),
            compute: (9, 0),
            driver: "550.54.15".into(),
            cuda_runtime: "12.4".into(),
            mig_capable: true,
            mig_devices_per_gpu: vec![],
            machine: "DGX-H100".into(),
        }
    }

    /// Eight A100 80GB partitioned as the `a100-mig` sample expects: per GPU one 3g.40gb,
    /// one 2g.20gb and two 1g.10gb, advertised with the `mixed` strategy.
    pub fn a100_mig_x8() -> Self {
        Self {
            product: "NVIDIA A100-SXM4-80GB".into(),
            count: 8,
            memory_mib: 81920,
            family: "ampere".into(),
            compute: (8, 0),
            driver: "535.129.03".into(),
            cuda_runtime: "12.2".into(),
            mig_capable: true,
            mig_devices_per_gpu: vec![
                ("3g.40gb".into(), 1),
                ("2g.20gb".into(), 1),
                ("1g.10gb".into(), 2),
            ],
            machine: "DGX-A100".into(),
        }
    }

    /// Extended resources the device plugin would advertise: `nvidia.com/gpu` for whole
    /// GPUs, or one `nvidia.com/mig-<profile>` per MIG profile.
    pub fn resources(&self) -> BTreeMap<String, u64> {
        if self.mig_devices_per_gpu.is_empty() {
            return BTreeMap::from([(labels::GPU_RESOURCE.to_string(), self.count.into())]);
        }
        self.mig_devices_per_gpu
            .iter()
            .map(|(profile, n)| {
                (
                    mig::resource_name(profile),
                    u64::from(*n) * u64::from(self.count),
                )
            })
            .collect()
    }

    /// The labels GPU Feature Discovery writes for these GPUs.
    pub fn gfd_labels(&self) -> BTreeMap<String, String> {
        let mut driver = self.driver.splitn(3, '.');
        let mut l = BTreeMap::new();
        let mut set = |k: &str, v: String| {
            l.insert(k.to_string(), v);
        };
        set(labels::GPU_PRESENT, labels::TRUE.into());
        set(labels::GPU_PRODUCT, labels::gfd_label_value(&self.product));
        set(labels::GPU_COUNT, self.count.to_string());
        set(labels::GPU_MEMORY, self.memory_mib.to_string());
        set(labels::GPU_FAMILY, self.family.clone());
        set(labels::GPU_COMPUTE_MAJOR, self.compute.0.to_string());
        set(labels::GPU_COMPUTE_MINOR, self.compute.1.to_string());
        set(labels::GPU_MACHINE, labels::gfd_label_value(&self.machine));
        set(labels::GPU_SHARING_STRATEGY, "none".into());
        set(labels::GPU_REPLICAS, "1".into());
        set(labels::CUDA_DRIVER_VERSION_FULL, self.driver.clone());
        for key in [
            labels::CUDA_DRIVER_VERSION_MAJOR,
            labels::CUDA_DRIVER_VERSION_MINOR,
            labels::CUDA_DRIVER_VERSION_REVISION,
        ] {
            set(key, driver.next().unwrap_or("0").to_string());
        }
        set(labels::CUDA_RUNTIME_VERSION_FULL, self.cuda_runtime.clone());
        set(labels::MIG_CAPABLE, self.mig_capable.to_string());
        let strategy = if self.mig_devices_per_gpu.is_empty() {
            "none"
        } else {
            "mixed"
        };
        set(labels::MIG_STRATEGY, strategy.into());
        l
    }
}

impl SimNode {
    /// A node with GPUs.
    pub fn gpu(name: &str, gpus: Gpus) -> Self {
        Self {
            name: name.into(),
            gpus: Some(gpus),
        }
    }

    /// A node without GPUs.
    pub fn cpu_only(name: &str) -> Self {
        Self {
            name: name.into(),
            gpus: None,
        }
    }

    /// The default fleet: two H100 nodes, one A100 node partitioned with MIG and one
    /// CPU-only node (so that GPU scheduling has somewhere wrong to go).
    pub fn default_fleet() -> Vec<Self> {
        vec![
            Self::gpu("gpu-h100-0", Gpus::h100_x8()),
            Self::gpu("gpu-h100-1", Gpus::h100_x8()),
            Self::gpu("gpu-a100-mig-0", Gpus::a100_mig_x8()),
            Self::cpu_only("cpu-0"),
        ]
    }

    /// Extended GPU resources of this node (empty for a CPU-only node).
    pub fn gpu_resources(&self) -> BTreeMap<String, u64> {
        self.gpus.as_ref().map(Gpus::resources).unwrap_or_default()
    }

    /// The Node object: kwok's annotation, the well-known and GFD labels, and capacity
    /// and allocatable with the GPU resources. kwok keeps the given capacity and fills in
    /// conditions, addresses and node info.
    pub fn to_node(&self) -> Node {
        let mut labels = BTreeMap::from([
            ("kubernetes.io/hostname".to_string(), self.name.clone()),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            ("kubernetes.io/arch".to_string(), "amd64".to_string()),
            (TYPE_LABEL.to_string(), "kwok".to_string()),
        ]);
        if let Some(g) = &self.gpus {
            labels.extend(g.gfd_labels());
        }
        let mut capacity = BTreeMap::from([
            ("cpu".to_string(), Quantity("128".into())),
            ("memory".to_string(), Quantity("1Ti".into())),
            ("pods".to_string(), Quantity("110".into())),
            // Workload pods request ephemeral storage (their /tmp and scratch volume), as
            // a kubelet's node reports it.
            ("ephemeral-storage".to_string(), Quantity("1Ti".into())),
        ]);
        for (resource, n) in self.gpu_resources() {
            capacity.insert(resource, Quantity(n.to_string()));
        }
        Node {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(labels),
                annotations: Some(BTreeMap::from([(
                    KWOK_ANNOTATION.to_string(),
                    KWOK_ANNOTATION_VALUE.to_string(),
                )])),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: Some(capacity.clone()),
                capacity: Some(capacity),
                ..Default::default()
            }),
        }
    }
}

/// Whether a Node's `Ready` condition is `True`.
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h100_node_has_gpus_and_gfd_labels() {
        let node = SimNode::gpu("n", Gpus::h100_x8()).to_node();
        let l = node.metadata.labels.as_ref().unwrap();
        assert_eq!(l[labels::GPU_PRODUCT], "NVIDIA-H100-80GB-HBM3");
        assert_eq!(l[labels::GPU_PRESENT], "true");
        assert_eq!(l[labels::GPU_COUNT], "8");
        assert_eq!(l[labels::CUDA_DRIVER_VERSION_MAJOR], "550");
        assert_eq!(l[labels::CUDA_DRIVER_VERSION_REVISION], "15");
        assert_eq!(l[labels::MIG_STRATEGY], "none");
        let cap = node.status.as_ref().unwrap().capacity.as_ref().unwrap();
        assert_eq!(cap[labels::GPU_RESOURCE].0, "8");
        assert_eq!(
            node.metadata.annotations.as_ref().unwrap()[KWOK_ANNOTATION],
            "fake"
        );
    }

    #[test]
    fn mig_node_advertises_mig_devices_not_whole_gpus() {
        let r = Gpus::a100_mig_x8().resources();
        assert_eq!(r["nvidia.com/mig-1g.10gb"], 16);
        assert_eq!(r["nvidia.com/mig-3g.40gb"], 8);
        assert!(!r.contains_key(labels::GPU_RESOURCE));
        assert_eq!(
            Gpus::a100_mig_x8().gfd_labels()[labels::GPU_PRODUCT],
            "NVIDIA-A100-SXM4-80GB"
        );
    }

    #[test]
    fn cpu_node_has_no_gpu_labels() {
        let node = SimNode::cpu_only("c").to_node();
        assert!(
            !node
                .metadata
                .labels
                .unwrap()
                .contains_key(labels::GPU_PRESENT)
        );
    }
}
