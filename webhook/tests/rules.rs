//! Table-driven tests, one table per rule: each case names the rule, container and volume
//! it must hit (or none), so a rule that stops firing, or fires on a compliant pod, fails.

mod common;

use common::*;
use k8s_openapi::api::core::v1::PodSpec;
use lotabots_webhook::evaluate::evaluate_pod;
use lotabots_webhook::policy::Policy;
use serde_json::{Value, json};

/// (rule, container, volume) of each violation.
type Hit = (&'static str, Option<&'static str>, Option<&'static str>);

fn hits(policy: &Policy, ns: &str, spec: &Value) -> Vec<(String, Option<String>, Option<String>)> {
    let spec: PodSpec = serde_json::from_value(spec.clone()).expect("test spec decodes");
    evaluate_pod(policy, ns, &spec, "spec")
        .into_iter()
        .map(|v| (v.rule.to_string(), v.container, v.volume))
        .collect()
}

fn run_table(table: &[(&str, Value, &[Hit])]) {
    run_table_in(&policy(), "apps", table);
}

fn run_table_in(policy: &Policy, ns: &str, table: &[(&str, Value, &[Hit])]) {
    let mut failures = Vec::new();
    for (name, spec, want) in table {
        let got = hits(policy, ns, spec);
        let want: Vec<(String, Option<String>, Option<String>)> = want
            .iter()
            .map(|(r, c, v)| (r.to_string(), c.map(str::to_owned), v.map(str::to_owned)))
            .collect();
        if got != want {
            failures.push(format!("{name}: want {want:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

const HP: &str = "hostPath";
const PP: &str = "protectedPaths";

#[test]
fn host_path_allowlist_by_whole_segments() {
    let vol = Some("host");
    run_table(&[
        ("allowed dir", host_path_spec("/data", json!({})), &[]),
        (
            "below allowed dir",
            host_path_spec("/data/set1", json!({})),
            &[],
        ),
        (
            "dot segments",
            host_path_spec("/data/./a/../b", json!({})),
            &[],
        ),
        (
            "repeated and trailing slashes",
            host_path_spec("//data///x//", json!({})),
            &[],
        ),
        (
            "prefix is not a segment",
            host_path_spec("/datax", json!({})),
            &[(HP, None, vol)],
        ),
        (
            "sibling with suffix",
            host_path_spec("/data.bak", json!({})),
            &[(HP, None, vol)],
        ),
        (
            "parent of allowed",
            host_path_spec("/mnt", json!({})),
            &[(HP, None, vol)],
        ),
        (
            "climbs out",
            host_path_spec("/data/../opt", json!({})),
            &[(HP, None, vol)],
        ),
        (
            "relative path",
            host_path_spec("data", json!({})),
            &[(HP, None, vol)],
        ),
        (
            "empty path",
            host_path_spec("", json!({})),
            &[(HP, None, vol)],
        ),
        (
            "allowlist entry with trailing slash",
            host_path_spec("/models/a", json!({"readOnly": true})),
            &[],
        ),
        (
            "modelsx is not models",
            host_path_spec("/modelsx", json!({"readOnly": true})),
            &[(HP, None, vol)],
        ),
    ]);
}

#[test]
fn host_path_read_only() {
    let vol = Some("host");
    let two = |ro_a: bool, ro_b: Option<bool>| {
        let mut b = json!({"name": "host", "mountPath": "/m"});
        if let Some(ro) = ro_b {
            b["readOnly"] = json!(ro);
        }
        json!({
            "volumes": [{"name": "host", "hostPath": {"path": "/models/x"}}],
            "containers": [
                container("a", json!({"volumeMounts": [{"name": "host", "mountPath": "/m", "readOnly": ro_a}]})),
                container("b", json!({"volumeMounts": [b]}))
            ]
        })
    };
    run_table(&[
        ("every mount read-only", two(true, Some(true)), &[]),
        (
            "one mount writable",
            two(true, Some(false)),
            &[(HP, Some("b"), vol)],
        ),
        (
            "readOnly left out",
            two(true, None),
            &[(HP, Some("b"), vol)],
        ),
        (
            "both writable",
            two(false, Some(false)),
            &[(HP, Some("a"), vol), (HP, Some("b"), vol)],
        ),
        (
            "writable mount in init container",
            json!({
                "volumes": [{"name": "host", "hostPath": {"path": "/models"}}],
                "initContainers": [container("init", json!({"volumeMounts": [{"name": "host", "mountPath": "/m"}]}))],
                "containers": [container("app", json!({"volumeMounts": [{"name": "host", "mountPath": "/m", "readOnly": true}]}))]
            }),
            &[(HP, Some("init"), vol)],
        ),
        (
            "writable mount in ephemeral container",
            json!({
                "volumes": [{"name": "host", "hostPath": {"path": "/models"}}],
                "containers": [container("app", json!({"volumeMounts": [{"name": "host", "mountPath": "/m", "readOnly": true}]}))],
                "ephemeralContainers": [{"name": "shell", "image": "busybox", "volumeMounts": [{"name": "host", "mountPath": "/m"}]}]
            }),
            &[(HP, Some("shell"), vol)],
        ),
        (
            "writable allowed where not demanded",
            host_path_spec("/data", json!({"readOnly": false})),
            &[],
        ),
    ]);
}

#[test]
fn host_path_recursive_read_only() {
    let vol = Some("host");
    let m = |extra: Value| host_path_spec("/var/log/app", extra);
    run_table(&[
        (
            "Enabled",
            m(json!({"readOnly": true, "recursiveReadOnly": "Enabled"})),
            &[],
        ),
        (
            "left out",
            m(json!({"readOnly": true})),
            &[(HP, Some("app"), vol)],
        ),
        (
            "IfPossible is not enough",
            m(json!({"readOnly": true, "recursiveReadOnly": "IfPossible"})),
            &[(HP, Some("app"), vol)],
        ),
        (
            "Disabled",
            m(json!({"readOnly": true, "recursiveReadOnly": "Disabled"})),
            &[(HP, Some("app"), vol)],
        ),
        (
            "not read-only at all",
            m(json!({"recursiveReadOnly": "Enabled"})),
            &[(HP, Some("app"), vol)],
        ),
        (
            "not demanded",
            host_path_spec("/models", json!({"readOnly": true})),
            &[],
        ),
    ]);
}

#[test]
fn protected_paths_always_denied() {
    let vol = Some("host");
    let mut table: Vec<(&str, Value, &[Hit])> = Vec::new();
    let denied: &[Hit] = &[(PP, None, vol)];
    let via_sub_path: &[Hit] = &[(PP, Some("app"), vol)];
    let not_allowed: &[Hit] = &[(HP, None, vol)];
    for p in [
        "/",
        "//",
        "/.",
        "/proc",
        "/proc/1/root",
        "/sys",
        "/sys/fs/cgroup",
        "/dev",
        "/dev/nvidia0",
        "/etc",
        "/etc/kubernetes",
        "/boot",
        "/var/lib/kubelet",
        "/var/lib/kubelet/pods",
        "/run/containerd",
        "/run/containerd/containerd.sock",
        "/var/run/containerd/containerd.sock",
        "/run/crio/crio.sock",
        "/var/run/crio/crio.sock",
        "/run/docker.sock",
        "/var/run/docker.sock",
        "/var/run/docker",
        "/run/cri-dockerd.sock",
        "/var/run/cri-dockerd.sock",
        "/var/lib/docker",
        "/var/lib/containerd",
        "/run",
        "/var/run",
        "/var",
        "/data/../etc",
        "/data/../../var/run/./docker.sock",
    ] {
        table.push((p, host_path_spec(p, json!({"readOnly": true})), denied));
    }
    table.push((
        "device node anywhere",
        json!({"volumes": [{"name": "host", "hostPath": {"path": "/data/gpu0", "type": "CharDevice"}}],
               "containers": [container("app", json!({"volumeMounts": [{"name": "host", "mountPath": "/dev/gpu0"}]}))]}),
        denied,
    ));
    table.push((
        "subPath climbing into /etc",
        host_path_spec("/data", json!({"subPath": "../etc"})),
        via_sub_path,
    ));
    table.push((
        "not protected: /etcd-backup is not /etc",
        host_path_spec("/data/etcd-backup", json!({})),
        &[],
    ));
    table.push((
        "not protected: /run/dockerx",
        host_path_spec("/run/dockerx", json!({})),
        not_allowed,
    ));
    run_table(&table);
}

#[test]
fn privileged() {
    let c = "privileged";
    run_table(&[
        (
            "privileged",
            spec_with(
                json!({"containers": [container("app", json!({"securityContext": {"privileged": true}}))]}),
            ),
            &[(c, Some("app"), None)],
        ),
        (
            "explicitly not",
            spec_with(
                json!({"containers": [container("app", json!({"securityContext": {"privileged": false}}))]}),
            ),
            &[],
        ),
        ("no securityContext", spec_with(json!({})), &[]),
        (
            "init container",
            spec_with(
                json!({"initContainers": [container("init", json!({"securityContext": {"privileged": true}}))]}),
            ),
            &[(c, Some("init"), None)],
        ),
        (
            "ephemeral container",
            spec_with(
                json!({"ephemeralContainers": [{"name": "dbg", "image": "busybox", "securityContext": {"privileged": true}}]}),
            ),
            &[(c, Some("dbg"), None)],
        ),
        (
            "rule-level container exemption",
            spec_with(
                json!({"containers": [container("driver-installer", json!({"securityContext": {"privileged": true}}))]}),
            ),
            &[],
        ),
    ]);
}

#[test]
fn capabilities() {
    let c = "capabilities";
    let add = |caps: Value| {
        spec_with(
            json!({"containers": [container("app", json!({"securityContext": {"capabilities": {"add": caps}}}))]}),
        )
    };
    run_table(&[
        ("allowed", add(json!(["NET_BIND_SERVICE", "CHOWN"])), &[]),
        (
            "CAP_ prefix and case",
            add(json!(["cap_net_bind_service"])),
            &[],
        ),
        (
            "SYS_ADMIN",
            add(json!(["SYS_ADMIN"])),
            &[(c, Some("app"), None)],
        ),
        (
            "lower-case sys_admin",
            add(json!(["sys_admin"])),
            &[(c, Some("app"), None)],
        ),
        ("ALL", add(json!(["ALL"])), &[(c, Some("app"), None)]),
        (
            "two bad",
            add(json!(["NET_RAW", "SYS_PTRACE"])),
            &[(c, Some("app"), None), (c, Some("app"), None)],
        ),
        (
            "drop only",
            spec_with(
                json!({"containers": [container("app", json!({"securityContext": {"capabilities": {"drop": ["ALL"]}}}))]}),
            ),
            &[],
        ),
        (
            "ephemeral container",
            spec_with(
                json!({"ephemeralContainers": [{"name": "dbg", "securityContext": {"capabilities": {"add": ["SYS_PTRACE"]}}}]}),
            ),
            &[(c, Some("dbg"), None)],
        ),
    ]);
}

#[test]
fn host_namespaces() {
    let h = "hostNamespaces";
    run_table(&[
        (
            "hostPID",
            spec_with(json!({"hostPID": true})),
            &[(h, None, None)],
        ),
        (
            "hostIPC",
            spec_with(json!({"hostIPC": true})),
            &[(h, None, None)],
        ),
        (
            "hostNetwork",
            spec_with(json!({"hostNetwork": true})),
            &[(h, None, None)],
        ),
        (
            "all three",
            spec_with(json!({"hostPID": true, "hostIPC": true, "hostNetwork": true})),
            &[(h, None, None), (h, None, None), (h, None, None)],
        ),
        (
            "false",
            spec_with(json!({"hostPID": false, "hostIPC": false, "hostNetwork": false})),
            &[],
        ),
    ]);
}

#[test]
fn proc_mount() {
    let p = "procMount";
    let pm = |v: &str| {
        spec_with(
            json!({"containers": [container("app", json!({"securityContext": {"procMount": v}}))]}),
        )
    };
    run_table(&[
        ("Unmasked", pm("Unmasked"), &[(p, Some("app"), None)]),
        ("Default", pm("Default"), &[]),
        (
            "init container",
            spec_with(
                json!({"initContainers": [container("init", json!({"securityContext": {"procMount": "Unmasked"}}))]}),
            ),
            &[(p, Some("init"), None)],
        ),
    ]);
}

#[test]
fn gpu_isolation() {
    let g = "gpuIsolation";
    let env = |name: &str, value: Value, resources: Value| {
        let mut e = json!({"name": name});
        if value.is_object() {
            e["valueFrom"] = value;
        } else {
            e["value"] = value;
        }
        spec_with(
            json!({"containers": [container("app", json!({"env": [e], "resources": resources}))]}),
        )
    };
    let none = json!({});
    let gpu = json!({"limits": {"nvidia.com/gpu": "1"}});
    run_table(&[
        (
            "all without GPU",
            env("NVIDIA_VISIBLE_DEVICES", json!("all"), none.clone()),
            &[(g, Some("app"), None)],
        ),
        (
            "all with GPU",
            env("NVIDIA_VISIBLE_DEVICES", json!("all"), gpu.clone()),
            &[],
        ),
        (
            "UUIDs without GPU",
            env(
                "CUDA_VISIBLE_DEVICES",
                json!("GPU-8f1a2b3c-1111-2222-3333-444455556666"),
                none.clone(),
            ),
            &[(g, Some("app"), None)],
        ),
        (
            "index without GPU",
            env("CUDA_VISIBLE_DEVICES", json!("0"), none.clone()),
            &[(g, Some("app"), None)],
        ),
        (
            "MIG config devices",
            env("NVIDIA_MIG_CONFIG_DEVICES", json!("all"), none.clone()),
            &[(g, Some("app"), None)],
        ),
        (
            "void",
            env("NVIDIA_VISIBLE_DEVICES", json!("void"), none.clone()),
            &[],
        ),
        (
            "none",
            env("NVIDIA_VISIBLE_DEVICES", json!("none"), none.clone()),
            &[],
        ),
        (
            "empty",
            env("NVIDIA_VISIBLE_DEVICES", json!(""), none.clone()),
            &[],
        ),
        (
            "from a ConfigMap",
            env(
                "NVIDIA_VISIBLE_DEVICES",
                json!({"configMapKeyRef": {"name": "x", "key": "y"}}),
                none.clone(),
            ),
            &[(g, Some("app"), None)],
        ),
        (
            "MIG slice request",
            env(
                "NVIDIA_VISIBLE_DEVICES",
                json!("all"),
                json!({"limits": {"nvidia.com/mig-1g.10gb": "1"}}),
            ),
            &[],
        ),
        (
            "zero GPUs",
            env(
                "NVIDIA_VISIBLE_DEVICES",
                json!("all"),
                json!({"limits": {"nvidia.com/gpu": "0"}}),
            ),
            &[(g, Some("app"), None)],
        ),
        (
            "only CPU",
            env(
                "NVIDIA_VISIBLE_DEVICES",
                json!("all"),
                json!({"limits": {"cpu": "4"}}),
            ),
            &[(g, Some("app"), None)],
        ),
        (
            "unrelated variable",
            env("NVIDIA_DRIVER_CAPABILITIES", json!("all"), none.clone()),
            &[],
        ),
        (
            "other container has the GPU",
            json!({"containers": [
                container("gpu", json!({"resources": gpu})),
                container("side", json!({"env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]}))
            ]}),
            &[(g, Some("side"), None)],
        ),
        (
            "ephemeral container (never has resources)",
            spec_with(
                json!({"ephemeralContainers": [{"name": "dbg", "env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]}]}),
            ),
            &[(g, Some("dbg"), None)],
        ),
    ]);
}

#[test]
fn exemptions() {
    let p = policy();
    let bad = json!({
        "hostPID": true,
        "volumes": [{"name": "sock", "hostPath": {"path": "/run/containerd/containerd.sock"}}],
        "containers": [container("app", json!({"securityContext": {"privileged": true},
            "volumeMounts": [{"name": "sock", "mountPath": "/s"}]}))]
    });
    // The unexempt baseline hits three rules.
    assert_eq!(hits(&p, "apps", &bad).len(), 3);
    run_table_in(&p, "trusted", &[("exempt namespace", bad.clone(), &[])]);
    let mut as_agent = bad.clone();
    as_agent["serviceAccountName"] = json!("node-agent");
    run_table_in(
        &p,
        "infra",
        &[("exempt service account", as_agent.clone(), &[])],
    );
    run_table_in(
        &p,
        "apps",
        &[(
            "service account exempt only in its own namespace",
            as_agent,
            &[
                ("hostNamespaces", None, None),
                (PP, None, Some("sock")),
                ("privileged", Some("app"), None),
            ],
        )],
    );
    let mut debugger = bad.clone();
    debugger["containers"][0]["name"] = json!("debugger");
    run_table_in(
        &p,
        "apps",
        &[(
            "exempt container: its own rules and volumes only mounted by it, not pod-level",
            debugger,
            &[("hostNamespaces", None, None)],
        )],
    );
    let shared = json!({
        "volumes": [{"name": "sock", "hostPath": {"path": "/var/run/docker.sock"}}],
        "containers": [
            container("debugger", json!({"volumeMounts": [{"name": "sock", "mountPath": "/s"}]})),
            container("app", json!({"volumeMounts": [{"name": "sock", "mountPath": "/s"}]}))
        ]
    });
    run_table_in(
        &p,
        "apps",
        &[(
            "volume shared with an unexempt container",
            shared,
            &[(PP, None, Some("sock"))],
        )],
    );
}

#[test]
fn typical_pod_is_compliant() {
    run_table(&[("typical", typical_spec(), &[])]);
}
