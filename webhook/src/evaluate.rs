//! Policy evaluation over one pod spec: a pure function from (policy, namespace, spec) to the
//! list of violations, each naming its rule, container, volume and field.
//!
//! Evaluation allocates only when it finds something: a compliant pod costs a walk over its
//! containers and volumes, which is what keeps it in the single-digit microseconds.

use std::fmt;

use k8s_openapi::api::core::v1::{
    Container, EnvVar, EphemeralContainer, PodSpec, ResourceRequirements, SecurityContext, Volume,
    VolumeMount,
};

use crate::paths::HostPath;
use crate::policy::{Mode, Policy, Rule, normalise_capability};

/// Environment variables that select GPUs for the NVIDIA container runtime or CUDA. Set in
/// a container the device plugin gave no GPU, they would hand it GPUs behind the scheduler's
/// and the device plugin's back (`NVIDIA_VISIBLE_DEVICES=all` is the classic escape).
pub const GPU_SELECTION_ENV: &[&str] = &[
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_MIG_CONFIG_DEVICES",
    "CUDA_VISIBLE_DEVICES",
];

/// Values of those variables that select no GPU and so are harmless.
const GPU_ENV_NO_DEVICES: &[&str] = &["", "void", "none"];

/// Resource names that give a container GPUs: whole GPUs and MIG slices from the NVIDIA
/// device plugin (`nvidia.com/gpu`, `nvidia.com/mig-1g.10gb`, `nvidia.com/gpu.shared`).
const GPU_RESOURCE_PREFIX: &str = "nvidia.com/";

/// One rule broken by one pod, container or volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The rule set.
    pub rule: Rule,
    /// That rule set's mode under the policy in force.
    pub mode: Mode,
    /// The container concerned, if any.
    pub container: Option<String>,
    /// The volume concerned, if any.
    pub volume: Option<String>,
    /// JSON path of the offending field from the object root
    /// (`spec.template.spec.containers[0].securityContext.privileged`).
    pub field: String,
    /// What is wrong, in words a person can act on.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]", self.rule)?;
        if let Some(c) = &self.container {
            write!(f, " container {c:?}")?;
        }
        if let Some(v) = &self.volume {
            write!(f, " volume {v:?}")?;
        }
        write!(f, ": {} ({})", self.message, self.field)
    }
}

/// Which list of the pod spec a container sits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ContainerList {
    Init,
    Regular,
    Ephemeral,
}

impl ContainerList {
    fn field(self) -> &'static str {
        match self {
            ContainerList::Init => "initContainers",
            ContainerList::Regular => "containers",
            ContainerList::Ephemeral => "ephemeralContainers",
        }
    }
}

/// The parts of a container the rules read; regular, init and ephemeral containers are
/// different types in the API but the same thing to the policy.
struct ContainerView<'a> {
    list: ContainerList,
    index: usize,
    name: &'a str,
    security_context: Option<&'a SecurityContext>,
    env: &'a [EnvVar],
    volume_mounts: &'a [VolumeMount],
    resources: Option<&'a ResourceRequirements>,
}

impl<'a> ContainerView<'a> {
    fn of(list: ContainerList, index: usize, c: &'a Container) -> Self {
        Self {
            list,
            index,
            name: &c.name,
            security_context: c.security_context.as_ref(),
            env: c.env.as_deref().unwrap_or_default(),
            volume_mounts: c.volume_mounts.as_deref().unwrap_or_default(),
            resources: c.resources.as_ref(),
        }
    }

    fn of_ephemeral(index: usize, c: &'a EphemeralContainer) -> Self {
        Self {
            list: ContainerList::Ephemeral,
            index,
            name: &c.name,
            security_context: c.security_context.as_ref(),
            env: c.env.as_deref().unwrap_or_default(),
            volume_mounts: c.volume_mounts.as_deref().unwrap_or_default(),
            resources: c.resources.as_ref(),
        }
    }

    fn field(&self, spec_path: &str, rest: &str) -> String {
        format!("{spec_path}.{}[{}].{rest}", self.list.field(), self.index)
    }

    /// Whether the device plugin (or a DRA claim) gives this container GPUs.
    fn requests_gpu(&self) -> bool {
        let Some(r) = self.resources else {
            return false;
        };
        let gpu_in = |m: &Option<std::collections::BTreeMap<String, _>>| {
            m.iter().flatten().any(
                |(name, q): (
                    &String,
                    &k8s_openapi::apimachinery::pkg::api::resource::Quantity,
                )| {
                    name.starts_with(GPU_RESOURCE_PREFIX) && quantity_is_positive(&q.0)
                },
            )
        };
        // A DRA claim is how GPUs are handed out without the device plugin; its driver sets
        // the visibility variables itself, so a container with claims counts as requesting.
        gpu_in(&r.limits) || gpu_in(&r.requests) || r.claims.as_ref().is_some_and(|c| !c.is_empty())
    }
}

/// Whether a resource quantity is greater than zero. Unparsable quantities count as
/// positive: the API server rejects them anyway, and treating them as a GPU request only
/// relaxes the GPU-isolation rule for an object that cannot be created.
fn quantity_is_positive(q: &str) -> bool {
    let num_end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    match q[..num_end].parse::<f64>() {
        Ok(v) => v > 0.0,
        Err(_) => true,
    }
}

/// Who the pod runs as, for exemptions.
#[derive(Clone, Copy, Debug)]
pub struct PodIdentity<'a> {
    /// Namespace of the object (for namespaced kinds, the name in the namespace's
    /// immutable `kubernetes.io/metadata.name` label).
    pub namespace: &'a str,
    /// The pod's service account (`default` when the spec names none).
    pub service_account: &'a str,
}

impl<'a> PodIdentity<'a> {
    /// The identity of a pod with `spec` in `namespace`.
    pub fn of(namespace: &'a str, spec: &'a PodSpec) -> Self {
        let service_account = spec
            .service_account_name
            .as_deref()
            .or(spec.service_account.as_deref())
            .filter(|s| !s.is_empty())
            .unwrap_or("default");
        Self {
            namespace,
            service_account,
        }
    }
}

/// Evaluates every rule against one pod spec found at `spec_path` (`spec`,
/// `spec.template.spec`, ...). Returns every violation, in every mode; the caller decides
/// what each mode does.
pub fn evaluate_pod(
    policy: &Policy,
    namespace: &str,
    spec: &PodSpec,
    spec_path: &str,
) -> Vec<Violation> {
    let who = PodIdentity::of(namespace, spec);
    let mut out = Vec::new();
    let containers: Vec<ContainerView<'_>> = spec
        .init_containers
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| ContainerView::of(ContainerList::Init, i, c))
        .chain(
            spec.containers
                .iter()
                .enumerate()
                .map(|(i, c)| ContainerView::of(ContainerList::Regular, i, c)),
        )
        .chain(
            spec.ephemeral_containers
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, c)| ContainerView::of_ephemeral(i, c)),
        )
        .collect();

    host_namespaces(policy, who, spec, spec_path, &mut out);
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        volume(policy, who, &containers, i, v, spec_path, &mut out);
    }
    for c in &containers {
        container(policy, who, c, spec_path, &mut out);
    }
    out
}

fn violation(
    policy: &Policy,
    rule: Rule,
    container: Option<&str>,
    volume: Option<&str>,
    field: String,
    message: String,
) -> Violation {
    Violation {
        rule,
        mode: policy.rule(rule).mode,
        container: container.map(str::to_owned),
        volume: volume.map(str::to_owned),
        field,
        message,
    }
}

fn host_namespaces(
    policy: &Policy,
    who: PodIdentity<'_>,
    spec: &PodSpec,
    spec_path: &str,
    out: &mut Vec<Violation>,
) {
    if policy.pod_exempt(Rule::HostNamespaces, who.namespace, who.service_account) {
        return;
    }
    for (set, field, what) in [
        (spec.host_pid, "hostPID", "the host's process namespace"),
        (spec.host_ipc, "hostIPC", "the host's IPC namespace"),
        (
            spec.host_network,
            "hostNetwork",
            "the host's network namespace",
        ),
    ] {
        if set == Some(true) {
            out.push(violation(
                policy,
                Rule::HostNamespaces,
                None,
                None,
                format!("{spec_path}.{field}"),
                format!("{field}: true shares {what} with the pod"),
            ));
        }
    }
}

/// The mounts of volume `name` by containers that the given rule applies to.
fn mounts_of<'c>(
    policy: &'c Policy,
    rule: Rule,
    containers: &'c [ContainerView<'c>],
    name: &'c str,
) -> impl Iterator<Item = (&'c ContainerView<'c>, usize, &'c VolumeMount)> + 'c {
    let policy_exempt = move |c: &ContainerView<'_>| policy.container_exempt(rule, c.name);
    containers
        .iter()
        .filter(move |c| !policy_exempt(c))
        .flat_map(move |c| {
            c.volume_mounts
                .iter()
                .enumerate()
                .filter(move |(_, m)| m.name == name)
                .map(move |(j, m)| (c, j, m))
        })
}

/// Whether every container that mounts volume `name` is exempt from `rule`. A volume no
/// container mounts is not exempt: exemptions are for containers, and nobody owns it.
fn volume_exempt_by_containers(
    policy: &Policy,
    rule: Rule,
    containers: &[ContainerView<'_>],
    name: &str,
) -> bool {
    let mut mounters = containers
        .iter()
        .filter(|c| c.volume_mounts.iter().any(|m| m.name == name))
        .peekable();
    mounters.peek().is_some() && mounters.all(|c| policy.container_exempt(rule, c.name))
}

/// Checks one volume; a finding about the volume as a whole names the containers that
/// mount it, so that the message says where the exposure lands.
fn volume(
    policy: &Policy,
    who: PodIdentity<'_>,
    containers: &[ContainerView<'_>],
    index: usize,
    v: &Volume,
    spec_path: &str,
    out: &mut Vec<Violation>,
) {
    let start = out.len();
    volume_rules(policy, who, containers, index, v, spec_path, out);
    let mounters: Vec<String> = containers
        .iter()
        .filter(|c| c.volume_mounts.iter().any(|m| m.name == v.name))
        .map(|c| format!("{:?}", c.name))
        .collect();
    if mounters.is_empty() {
        return;
    }
    for found in &mut out[start..] {
        if found.container.is_none() {
            found.message = format!(
                "{}; mounted by container {}",
                found.message,
                mounters.join(", ")
            );
        }
    }
}

fn volume_rules(
    policy: &Policy,
    who: PodIdentity<'_>,
    containers: &[ContainerView<'_>],
    index: usize,
    v: &Volume,
    spec_path: &str,
    out: &mut Vec<Violation>,
) {
    let Some(hp) = &v.host_path else {
        return;
    };
    let field = || format!("{spec_path}.volumes[{index}].hostPath.path");
    let path = match HostPath::parse(&hp.path) {
        Ok(p) => p,
        Err(e) => {
            // A path that cannot be normalised cannot be shown to be safe.
            if !policy.pod_exempt(Rule::HostPath, who.namespace, who.service_account) {
                out.push(violation(
                    policy,
                    Rule::HostPath,
                    None,
                    Some(&v.name),
                    field(),
                    format!("host path {e}"),
                ));
            }
            return;
        }
    };

    // Every host path the volume exposes: the volume's own path, and each mount's subPath
    // below it (a subPath cannot climb with `..` on a real cluster, but the offline check
    // reads manifests the API server never validated).
    let mut exposed: Vec<(HostPath, Option<&str>)> = vec![(path.clone(), None)];
    for c in containers {
        for m in c.volume_mounts {
            if m.name == v.name
                && let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty())
                && let Ok(p) = HostPath::parse(&format!("{}/{sub}", path.as_str()))
                && p != path
            {
                exposed.push((p, Some(c.name)));
            }
        }
    }

    // Protected paths: when a path touches one, that rule alone decides (the allowlist can
    // never hold a protected path, so exempting a workload from protectedPaths is how it is
    // let through).
    let device_node = matches!(hp.type_.as_deref(), Some("CharDevice" | "BlockDevice"));
    let mut protected_hit = device_node;
    let protected_exempt =
        policy.pod_exempt(Rule::ProtectedPaths, who.namespace, who.service_account)
            || volume_exempt_by_containers(policy, Rule::ProtectedPaths, containers, &v.name);
    if device_node && !protected_exempt {
        out.push(violation(
            policy,
            Rule::ProtectedPaths,
            None,
            Some(&v.name),
            format!("{spec_path}.volumes[{index}].hostPath.type"),
            format!(
                "host path {path} has type {} (a host device node)",
                hp.type_.as_deref().unwrap_or_default()
            ),
        ));
    }
    for (p, via) in &exposed {
        if let Some(entry) = policy.protected_entry(p) {
            protected_hit = true;
            if !protected_exempt {
                let (container, at) = match via {
                    Some(cname) => (Some(*cname), format!("{p} (through a subPath)")),
                    None => (None, p.to_string()),
                };
                out.push(violation(
                    policy,
                    Rule::ProtectedPaths,
                    container,
                    Some(&v.name),
                    field(),
                    format!(
                        "host path {at} exposes protected {} ({})",
                        entry.path, entry.reason
                    ),
                ));
            }
        }
    }
    if protected_hit {
        return;
    }

    if policy.pod_exempt(Rule::HostPath, who.namespace, who.service_account)
        || volume_exempt_by_containers(policy, Rule::HostPath, containers, &v.name)
    {
        return;
    }
    let Some(entry) = policy.allowlist_entry(&path) else {
        out.push(violation(
            policy,
            Rule::HostPath,
            None,
            Some(&v.name),
            field(),
            format!("host path {path} is not within any rules.hostPath.allowed entry"),
        ));
        return;
    };
    // A subPath that climbs out of the allowed tree exposes a path the allowlist never
    // granted.
    for (p, via) in &exposed[1..] {
        if policy.allowlist_entry(p).is_none() {
            out.push(violation(
                policy,
                Rule::HostPath,
                *via,
                Some(&v.name),
                field(),
                format!("host path {p} (through a subPath) is not within any rules.hostPath.allowed entry"),
            ));
        }
    }
    if !entry.read_only {
        return;
    }
    for (c, j, m) in mounts_of(policy, Rule::HostPath, containers, &v.name) {
        if m.read_only != Some(true) {
            out.push(violation(
                policy,
                Rule::HostPath,
                Some(c.name),
                Some(&v.name),
                c.field(spec_path, &format!("volumeMounts[{j}].readOnly")),
                format!(
                    "host path {path} must be mounted readOnly: true (allowlist entry {})",
                    entry.path
                ),
            ));
        } else if entry.recursive_read_only && m.recursive_read_only.as_deref() != Some("Enabled") {
            out.push(violation(
                policy,
                Rule::HostPath,
                Some(c.name),
                Some(&v.name),
                c.field(spec_path, &format!("volumeMounts[{j}].recursiveReadOnly")),
                format!(
                    "host path {path} must be mounted recursiveReadOnly: Enabled so submounts are read-only too (allowlist entry {})",
                    entry.path
                ),
            ));
        }
    }
}

fn container(
    policy: &Policy,
    who: PodIdentity<'_>,
    c: &ContainerView<'_>,
    spec_path: &str,
    out: &mut Vec<Violation>,
) {
    let applies = |rule: Rule| {
        !policy.pod_exempt(rule, who.namespace, who.service_account)
            && !policy.container_exempt(rule, c.name)
    };
    if let Some(sc) = c.security_context {
        if sc.privileged == Some(true) && applies(Rule::Privileged) {
            out.push(violation(
                policy,
                Rule::Privileged,
                Some(c.name),
                None,
                c.field(spec_path, "securityContext.privileged"),
                "privileged: true gives the container every device and capability of the host"
                    .to_owned(),
            ));
        }
        if let Some(pm) = sc.proc_mount.as_deref()
            && pm != "Default"
            && applies(Rule::ProcMount)
        {
            out.push(violation(
                policy,
                Rule::ProcMount,
                Some(c.name),
                None,
                c.field(spec_path, "securityContext.procMount"),
                format!("procMount: {pm} unmasks the host's /proc; only Default is allowed"),
            ));
        }
        let added = sc
            .capabilities
            .as_ref()
            .and_then(|caps| caps.add.as_deref())
            .unwrap_or_default();
        if !added.is_empty() && applies(Rule::Capabilities) {
            for (k, cap) in added.iter().enumerate() {
                let n = normalise_capability(cap);
                if !policy.capability_allowed(&n) {
                    out.push(violation(
                        policy,
                        Rule::Capabilities,
                        Some(c.name),
                        None,
                        c.field(spec_path, &format!("securityContext.capabilities.add[{k}]")),
                        format!("capability {cap} is not in rules.capabilities.allowed"),
                    ));
                }
            }
        }
    }
    if !c.env.is_empty() && applies(Rule::GpuIsolation) {
        let mut requests_gpu = None;
        for (k, e) in c.env.iter().enumerate() {
            if !GPU_SELECTION_ENV.contains(&e.name.as_str()) {
                continue;
            }
            // A value from a ConfigMap, Secret or field reference is unknown here; it can
            // select GPUs as well as a literal can.
            let harmless = e.value_from.is_none()
                && GPU_ENV_NO_DEVICES.contains(&e.value.as_deref().unwrap_or_default().trim());
            if harmless {
                continue;
            }
            if *requests_gpu.get_or_insert_with(|| c.requests_gpu()) {
                break;
            }
            let shown = match (&e.value, &e.value_from) {
                (_, Some(_)) => "a value from a reference".to_owned(),
                (Some(v), None) => format!("{v:?}"),
                (None, None) => "\"\"".to_owned(),
            };
            out.push(violation(
                policy,
                Rule::GpuIsolation,
                Some(c.name),
                None,
                c.field(spec_path, &format!("env[{k}]")),
                format!(
                    "{} set to {shown} in a container that requests no GPU bypasses the device plugin",
                    e.name
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for (q, want) in [
            ("1", true),
            ("0", false),
            ("0.0", false),
            ("2", true),
            ("500m", true),
            ("0m", false),
            ("1Gi", true),
            ("x", true),
        ] {
            assert_eq!(quantity_is_positive(q), want, "{q}");
        }
    }
}
