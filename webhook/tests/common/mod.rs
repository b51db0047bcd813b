//! Shared test fixtures: a test policy, pod specs built from JSON, AdmissionReview
//! requests, and an in-process router.
#![allow(dead_code)] // each test binary uses a different part

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use lotabots_webhook::metrics::Metrics;
use lotabots_webhook::policy::Policy;
use lotabots_webhook::reload::PolicyStore;
use lotabots_webhook::server::{AppState, DEFAULT_MAX_BODY_BYTES};
use lotabots_webhook::workloads::PodBearingKind;
use serde_json::{Value, json};

/// A policy with one allowlist entry of each kind.
pub const TEST_POLICY: &str = r#"
apiVersion: lotabots.io/v1alpha1
kind: WebhookPolicy
exemptions:
  namespaces: [trusted]
  serviceAccounts: [infra/node-agent]
  containers: [debugger]
rules:
  hostPath:
    allowed:
      - {path: /data}
      - {path: /models/, readOnly: true}
      - {path: /var/log, readOnly: true, recursiveReadOnly: true}
  privileged:
    exemptions: {containers: [driver-installer]}
  capabilities:
    allowed: [NET_BIND_SERVICE, CHOWN]
"#;

pub fn policy() -> Policy {
    Policy::from_yaml(TEST_POLICY).expect("test policy is valid")
}

/// The same test policy with every rule set in `mode`.
pub fn policy_in_mode(mode: &str) -> Policy {
    let mut text = TEST_POLICY.replace(
        "  privileged:\n",
        &format!("  privileged:\n    mode: {mode}\n"),
    );
    text = text.replace("  hostPath:\n", &format!("  hostPath:\n    mode: {mode}\n"));
    text = text.replace(
        "  capabilities:\n",
        &format!("  capabilities:\n    mode: {mode}\n"),
    );
    text.push_str(&format!(
        "  protectedPaths: {{mode: {mode}}}\n  hostNamespaces: {{mode: {mode}}}\n  procMount: {{mode: {mode}}}\n  gpuIsolation: {{mode: {mode}}}\n"
    ));
    Policy::from_yaml(&text).expect("moded policy is valid")
}

/// A container named `name` with extra fields merged in.
pub fn container(name: &str, extra: Value) -> Value {
    let mut c = json!({"name": name, "image": "registry.example/app:1"});
    merge(&mut c, extra);
    c
}

/// A pod spec with one container `app` and extra fields merged in.
pub fn spec_with(extra: Value) -> Value {
    let mut s = json!({"containers": [container("app", json!({}))]});
    merge(&mut s, extra);
    s
}

/// A pod spec mounting one hostPath volume `host` at `path` in container `app`.
pub fn host_path_spec(path: &str, mount: Value) -> Value {
    let mut m = json!({"name": "host", "mountPath": "/mnt"});
    merge(&mut m, mount);
    json!({
        "volumes": [{"name": "host", "hostPath": {"path": path}}],
        "containers": [container("app", json!({"volumeMounts": [m]}))]
    })
}

/// Shallow-merges object `extra` into object `base`.
pub fn merge(base: &mut Value, extra: Value) {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        for (k, v) in e {
            b.insert(k, v);
        }
    }
}

/// A typical, compliant pod spec: an init container, two containers (one with a GPU),
/// config and hostPath volumes, resources, probes, env.
pub fn typical_spec() -> Value {
    json!({
        "serviceAccountName": "inference",
        "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
        "initContainers": [{
            "name": "fetch", "image": "registry.example/fetch:1",
            "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": true}],
            "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}
        }],
        "containers": [
            {
                "name": "server", "image": "registry.example/server:2",
                "env": [
                    {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"},
                    {"name": "MODEL_DIR", "value": "/models"},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
                ],
                "resources": {"limits": {"nvidia.com/gpu": "1", "memory": "16Gi"}, "requests": {"cpu": "2"}},
                "ports": [{"containerPort": 8080, "name": "http"}],
                "volumeMounts": [
                    {"name": "models", "mountPath": "/models", "readOnly": true},
                    {"name": "logs", "mountPath": "/var/log/app", "readOnly": true, "recursiveReadOnly": "Enabled"},
                    {"name": "config", "mountPath": "/etc/app"}
                ],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}
            },
            {
                "name": "sidecar", "image": "registry.example/sidecar:3",
                "env": [{"name": "LOG_LEVEL", "value": "info"}],
                "volumeMounts": [{"name": "logs", "mountPath": "/var/log/app", "readOnly": true, "recursiveReadOnly": "Enabled"}]
            }
        ],
        "volumes": [
            {"name": "models", "hostPath": {"path": "/models/llama", "type": "Directory"}},
            {"name": "logs", "hostPath": {"path": "/var/log/pods-app"}},
            {"name": "config", "configMap": {"name": "app-config"}}
        ]
    })
}

/// An object of `kind` carrying `spec` as its pod spec.
pub fn wrap(kind: PodBearingKind, spec: Value) -> Value {
    let meta = json!({"name": "web", "namespace": "apps"});
    let template = json!({"metadata": {"labels": {"app": "web"}}, "spec": spec});
    let selector = json!({"matchLabels": {"app": "web"}});
    let (api, body) = match kind {
        PodBearingKind::Pod => ("v1", json!({"spec": spec})),
        PodBearingKind::PodTemplate => ("v1", json!({"template": template})),
        PodBearingKind::ReplicationController => (
            "v1",
            json!({"spec": {"selector": {"app": "web"}, "template": template}}),
        ),
        PodBearingKind::CronJob => (
            "batch/v1",
            json!({"spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": template}}}}),
        ),
        PodBearingKind::Job => ("batch/v1", json!({"spec": {"template": template}})),
        _ => (
            "apps/v1",
            json!({"spec": {"selector": selector, "template": template}}),
        ),
    };
    let mut obj = json!({"apiVersion": api, "kind": kind.as_str(), "metadata": meta});
    merge(&mut obj, body);
    obj
}

/// An AdmissionReview request for `object` of `kind`.
pub fn review(
    uid: &str,
    operation: &str,
    group: &str,
    version: &str,
    kind: &str,
    object: Option<Value>,
    old_object: Option<Value>,
) -> Value {
    let resource = format!("{}s", kind.to_ascii_lowercase());
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "requestKind": {"group": group, "version": version, "kind": kind},
            "name": "web",
            "namespace": "apps",
            "operation": operation,
            "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
            "object": object,
            "oldObject": old_object,
            "dryRun": false,
            "options": null
        }
    })
}

/// A CREATE review of a Pod with `spec`.
pub fn pod_review(uid: &str, spec: Value) -> Value {
    review(
        uid,
        "CREATE",
        "",
        "v1",
        "Pod",
        Some(wrap(PodBearingKind::Pod, spec)),
        None,
    )
}

/// Handler state around `policy`.
pub fn state(policy: Policy) -> Arc<AppState> {
    state_with_limit(policy, DEFAULT_MAX_BODY_BYTES)
}

pub fn state_with_limit(policy: Policy, max_body_bytes: usize) -> Arc<AppState> {
    Arc::new(AppState {
        policy: Arc::new(PolicyStore::new(policy)),
        metrics: Metrics::new(),
        max_body_bytes,
        ready: Arc::new(AtomicBool::new(true)),
    })
}
