//! Structured input (built with `arbitrary`) → a `PodSpec` → `evaluate::evaluate_pod`, and
//! the same pod as an AdmissionReview through `admission::review`.
//!
//! Strings are mostly drawn from a dictionary of values the rules care about (protected and
//! allowed paths, `..` tricks, capabilities, GPU variables, quantities), so that the fuzzer
//! spends its time in the rules rather than in random names.
//!
//! Invariants: never panics; every violation names a field under the spec path and says
//! what is wrong; evaluation is deterministic; an `enforce` violation denies the pod.
#![no_main]

use std::collections::BTreeMap;
use std::sync::LazyLock;

use arbitrary::Arbitrary;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, EphemeralContainer, HostPathVolumeSource,
    PodSpec, ResourceClaim, ResourceRequirements, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use libfuzzer_sys::fuzz_target;
use lotabots_webhook::admission::{WorkloadEnforcement, decode, review_with};
use lotabots_webhook::cli::DEFAULT_POLICY;
use lotabots_webhook::evaluate::evaluate_pod;
use lotabots_webhook::policy::{Mode, Policy};

const WORDS: &[&str] = &[
    "",
    "/",
    "/var/log",
    "/var/log/app",
    "/var/log/../../etc",
    "//var//log/",
    "/var/log/.",
    "/var/logs",
    "/data/models",
    "/data/models/../../",
    "/data/modelsx",
    "/run/containerd",
    "/run/containerd/containerd.sock",
    "/var/run/docker.sock",
    "/var/run/crio/crio.sock",
    "/run/cri-dockerd.sock",
    "/proc",
    "/proc/1/root",
    "/sys/fs/cgroup",
    "/dev",
    "/dev/nvidia0",
    "/etc",
    "/etc/",
    "/boot",
    "/var/lib/kubelet",
    "/var/lib/kubelet/pods",
    "/var",
    "/run",
    "relative/path",
    "..",
    ".",
    "../..",
    "a/../../b",
    "sub",
    "logs",
    "data",
    "sock",
    "c",
    "init",
    "debug",
    "team",
    "kube-system",
    "lotabots-system",
    "default",
    "builder",
    "NET_ADMIN",
    "CAP_SYS_ADMIN",
    "sys_admin",
    "ALL",
    "CHOWN",
    " net_bind_service ",
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_MIG_CONFIG_DEVICES",
    "CUDA_VISIBLE_DEVICES",
    "all",
    "none",
    "void",
    " none ",
    "GPU-0",
    "nvidia.com/gpu",
    "nvidia.com/mig-1g.10gb",
    "nvidia.com/",
    "cpu",
    "0",
    "1",
    "-1",
    "0.5",
    "0.0",
    "1e3",
    "+1",
    "1Ki",
    "0m",
    "Enabled",
    "Disabled",
    "IfPossible",
    "Unmasked",
    "Default",
    "CharDevice",
    "BlockDevice",
    "Directory",
    "Socket",
    "File",
    "DirectoryOrCreate",
];

#[derive(Arbitrary, Debug)]
enum S {
    Word(u8),
    Raw(String),
}

impl S {
    fn get(&self) -> String {
        match self {
            S::Word(i) => WORDS[usize::from(*i) % WORDS.len()].to_owned(),
            S::Raw(s) => s.clone(),
        }
    }
}

fn opt(s: &Option<S>) -> Option<String> {
    s.as_ref().map(S::get)
}

#[derive(Arbitrary, Debug)]
struct Vol {
    name: S,
    host_path: Option<(S, Option<S>)>,
}

#[derive(Arbitrary, Debug)]
struct Mount {
    name: S,
    path: S,
    read_only: Option<bool>,
    recursive_read_only: Option<S>,
    sub_path: Option<S>,
}

#[derive(Arbitrary, Debug)]
struct Env {
    name: S,
    value: Option<S>,
    from_ref: bool,
}

#[derive(Arbitrary, Debug)]
struct Ctr {
    list: u8,
    name: S,
    privileged: Option<bool>,
    proc_mount: Option<S>,
    caps_add: Option<Vec<S>>,
    env: Option<Vec<Env>>,
    mounts: Option<Vec<Mount>>,
    limits: Option<Vec<(S, S)>>,
    requests: Option<Vec<(S, S)>>,
    claims: Option<Vec<S>>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    policy: u8,
    namespace: S,
    service_account: Option<S>,
    host_pid: Option<bool>,
    host_ipc: Option<bool>,
    host_network: Option<bool>,
    volumes: Option<Vec<Vol>>,
    containers: Vec<Ctr>,
}

const EXEMPTING: &str = r#"
exemptions: {namespaces: [kube-system], serviceAccounts: [team/builder], containers: [debug]}
rules:
  hostPath:
    mode: warn
    allowed: [{path: /var/log, readOnly: true, recursiveReadOnly: true}, {path: /data}]
  protectedPaths: {mode: enforce, exemptions: {containers: [init]}, extraPaths: [/opt/secret]}
  privileged: {mode: audit}
  capabilities: {mode: enforce, allowed: [NET_BIND_SERVICE, CHOWN]}
  hostNamespaces: {mode: warn, exemptions: {namespaces: [team]}}
  procMount: {mode: enforce}
  gpuIsolation: {mode: enforce, exemptions: {serviceAccounts: [default/default]}}
"#;

static POLICIES: LazyLock<Vec<Policy>> = LazyLock::new(|| {
    [DEFAULT_POLICY, EXEMPTING, "{}"]
        .iter()
        .map(|t| Policy::from_yaml(t).expect("the fuzz policies are valid"))
        .collect()
});

fn map(pairs: &Option<Vec<(S, S)>>) -> Option<BTreeMap<String, Quantity>> {
    pairs.as_ref().map(|p| {
        p.iter()
            .map(|(k, v)| (k.get(), Quantity(v.get())))
            .collect()
    })
}

fn build(input: &Input) -> PodSpec {
    let mut spec = PodSpec {
        service_account_name: opt(&input.service_account),
        host_pid: input.host_pid,
        host_ipc: input.host_ipc,
        host_network: input.host_network,
        volumes: input.volumes.as_ref().map(|vs| {
            vs.iter()
                .map(|v| Volume {
                    name: v.name.get(),
                    host_path: v.host_path.as_ref().map(|(p, t)| HostPathVolumeSource {
                        path: p.get(),
                        type_: opt(t),
                    }),
                    ..Default::default()
                })
                .collect()
        }),
        ..Default::default()
    };
    for c in &input.containers {
        let security_context = (c.privileged.is_some()
            || c.proc_mount.is_some()
            || c.caps_add.is_some())
        .then(|| SecurityContext {
            privileged: c.privileged,
            proc_mount: opt(&c.proc_mount),
            capabilities: c.caps_add.as_ref().map(|a| Capabilities {
                add: Some(a.iter().map(S::get).collect()),
                drop: None,
            }),
            ..Default::default()
        });
        let env = c.env.as_ref().map(|es| {
            es.iter()
                .map(|e| EnvVar {
                    name: e.name.get(),
                    value: opt(&e.value),
                    value_from: e.from_ref.then(EnvVarSource::default),
                })
                .collect()
        });
        let volume_mounts = c.mounts.as_ref().map(|ms| {
            ms.iter()
                .map(|m| VolumeMount {
                    name: m.name.get(),
                    mount_path: m.path.get(),
                    read_only: m.read_only,
                    recursive_read_only: opt(&m.recursive_read_only),
                    sub_path: opt(&m.sub_path),
                    ..Default::default()
                })
                .collect()
        });
        let resources =
            (c.limits.is_some() || c.requests.is_some() || c.claims.is_some()).then(|| {
                ResourceRequirements {
                    limits: map(&c.limits),
                    requests: map(&c.requests),
                    claims: c.claims.as_ref().map(|cl| {
                        cl.iter()
                            .map(|n| ResourceClaim {
                                name: n.get(),
                                request: None,
                            })
                            .collect()
                    }),
                }
            });
        match c.list % 3 {
            0 => spec
                .init_containers
                .get_or_insert_default()
                .push(Container {
                    name: c.name.get(),
                    security_context,
                    env,
                    volume_mounts,
                    resources,
                    ..Default::default()
                }),
            1 => spec.containers.push(Container {
                name: c.name.get(),
                security_context,
                env,
                volume_mounts,
                resources,
                ..Default::default()
            }),
            _ => spec
                .ephemeral_containers
                .get_or_insert_default()
                .push(EphemeralContainer {
                    name: c.name.get(),
                    security_context,
                    env,
                    volume_mounts,
                    resources,
                    ..Default::default()
                }),
        }
    }
    spec
}

fuzz_target!(|input: Input| {
    let policy = &POLICIES[usize::from(input.policy) % POLICIES.len()];
    let namespace = input.namespace.get();
    let spec = build(&input);

    let violations = evaluate_pod(policy, &namespace, &spec, "spec");
    for v in &violations {
        assert!(v.field.starts_with("spec"), "field outside the spec: {v}");
        assert!(
            !v.message.trim().is_empty(),
            "violation without a message: {v:?}"
        );
        let _ = v.to_string();
    }
    assert_eq!(
        violations,
        evaluate_pod(policy, &namespace, &spec, "spec"),
        "evaluation is not deterministic"
    );

    // The same pod through the admission path the server runs.
    let body = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "fuzz",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "p", "namespace": namespace},
                "spec": spec,
            },
        },
    });
    let body = serde_json::to_vec(&body).expect("serialises");
    let req = decode(&body).expect("a review built from a PodSpec decodes");
    let r = review_with(policy, req, WorkloadEnforcement::Deny);
    assert_eq!(r.response.response.uid, "fuzz");
    for w in &r.response.response.warnings {
        assert!(
            w.chars().count() <= 120,
            "warning over 120 characters: {w:?}"
        );
    }
    if violations.iter().any(|v| v.mode == Mode::Enforce) {
        assert!(
            !r.response.response.allowed,
            "an enforce violation did not deny the pod: {violations:?}"
        );
    }
});
