//! The shipped webhook configuration and default policy: decoded with the Kubernetes types
//! and checked against what the issue requires, so an edit that would brick a cluster
//! (intercepting kube-system, failing closed on workloads, a long timeout) fails here.

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use lotabots_webhook::cli::DEFAULT_POLICY;
use lotabots_webhook::policy::{Mode, Policy, Rule};
use lotabots_webhook::server::{LOTABOTS_PATH, PODS_PATH, WORKLOADS_PATH};
use lotabots_webhook::workloads::PodBearingKind;

fn config() -> ValidatingWebhookConfiguration {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/webhook/validating-webhook-configuration.yaml"
    ))
    .unwrap();
    serde_yaml::from_str(&text).unwrap()
}

fn kind_of(group: &str, resource: &str) -> Option<&'static str> {
    Some(match (group, resource) {
        ("", "pods") | ("", "pods/ephemeralcontainers") => "Pod",
        ("", "replicationcontrollers") => "ReplicationController",
        ("", "podtemplates") => "PodTemplate",
        ("apps", "deployments") => "Deployment",
        ("apps", "replicasets") => "ReplicaSet",
        ("apps", "statefulsets") => "StatefulSet",
        ("apps", "daemonsets") => "DaemonSet",
        ("batch", "jobs") => "Job",
        ("batch", "cronjobs") => "CronJob",
        ("lotabots.io", "gpuattestations") => "GpuAttestation",
        ("lotabots.io", "modelattestations") => "ModelAttestation",
        _ => return None,
    })
}

#[test]
fn webhook_configuration_is_safe() {
    let c = config();
    let hooks = c.webhooks.unwrap();
    assert_eq!(hooks.len(), 3);
    let mut kinds_covered = Vec::new();
    for h in &hooks {
        assert_eq!(h.side_effects, "None", "{}", h.name);
        assert_eq!(h.match_policy.as_deref(), Some("Equivalent"), "{}", h.name);
        assert!(h.timeout_seconds.is_some_and(|t| t <= 5), "{}", h.name);
        assert_eq!(h.admission_review_versions, vec!["v1"]);
        let sel = h.namespace_selector.as_ref().expect("namespaceSelector");
        let exprs = sel.match_expressions.as_ref().unwrap();
        assert!(
            exprs.iter().any(|e| e.key == "kubernetes.io/metadata.name"
                && e.operator == "NotIn"
                && e.values
                    .as_ref()
                    .is_some_and(|v| v.contains(&"kube-system".to_string())
                        && v.contains(&"lotabots-system".to_string()))),
            "{}: must exclude kube-system and lotabots-system by the immutable name label",
            h.name
        );
        let svc = h.client_config.service.as_ref().unwrap();
        let path = svc.path.as_deref().unwrap();
        assert!(
            [PODS_PATH, WORKLOADS_PATH, LOTABOTS_PATH].contains(&path),
            "{path}"
        );
        for rule in h.rules.as_ref().unwrap() {
            let ops = rule.operations.as_ref().unwrap();
            assert!(!ops.contains(&"DELETE".to_string()) && !ops.contains(&"*".to_string()));
            for g in rule.api_groups.as_ref().unwrap() {
                for r in rule.resources.as_ref().unwrap() {
                    let kind =
                        kind_of(g, r).unwrap_or_else(|| panic!("{}: intercepts {g}/{r}", h.name));
                    let fail = h.failure_policy.as_deref();
                    if kind == "Pod" {
                        assert_eq!(fail, Some("Fail"), "pods fail closed");
                        assert_eq!(path, PODS_PATH);
                    } else {
                        assert_eq!(fail, Some("Ignore"), "{kind} must fail open");
                    }
                    if PodBearingKind::from_group_kind(g, kind).is_some() && kind != "Pod" {
                        assert_eq!(path, WORKLOADS_PATH, "{kind}");
                    }
                    kinds_covered.push((r.clone(), kind));
                }
            }
        }
    }
    for k in PodBearingKind::ALL {
        assert!(
            kinds_covered.iter().any(|(_, kind)| *kind == k.as_str()),
            "{k} not covered"
        );
    }
    assert!(
        kinds_covered
            .iter()
            .any(|(r, _)| r == "pods/ephemeralcontainers")
    );
}

#[test]
fn default_policy_enforces_everything() {
    let p = Policy::from_yaml(DEFAULT_POLICY).unwrap();
    for r in Rule::ALL {
        let want = if r == Rule::UnknownFields {
            Mode::Warn
        } else {
            Mode::Enforce
        };
        assert_eq!(p.rule(r).mode, want, "{r}");
    }
    assert!(!p.capability_allowed("SYS_ADMIN"));
}

/// The workload pods that agents launch are checked: the pods webhook receives the
/// workload namespace, and the shipped policy binds our agent to its node there.
#[test]
fn agent_workload_pods_are_intercepted_and_node_bound() {
    let ns = lotabots_crds::workload::DEFAULT_NAMESPACE;
    let hooks = config().webhooks.unwrap();
    let pods = hooks
        .iter()
        .find(|h| {
            h.client_config
                .service
                .as_ref()
                .and_then(|s| s.path.as_deref())
                == Some(PODS_PATH)
        })
        .expect("the pods webhook");
    let sel = pods.namespace_selector.as_ref().unwrap();
    assert!(
        sel.match_labels.is_none(),
        "no label a namespace must carry"
    );
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default();
        assert_eq!(e.key, "kubernetes.io/metadata.name");
        assert!(
            e.operator == "NotIn" && !values.iter().any(|v| v == ns),
            "{ns} must reach the pods webhook: {e:?}"
        );
    }
    assert!(
        pods.object_selector.is_none(),
        "every pod there, whatever its labels"
    );
    let p = Policy::from_yaml(DEFAULT_POLICY).unwrap();
    assert_eq!(p.agent_pods.namespace, ns);
    assert_eq!(
        p.agent_pods.service_accounts,
        vec!["system:serviceaccount:lotabots-system:lotabots-agent".to_string()]
    );
}
