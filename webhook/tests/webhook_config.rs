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

/// The webhook that binds agents' pod deletes to their nodes.
const AGENT_POD_DELETES: &str = "agent-pod-deletes.webhook.lotabots.io";

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
    assert_eq!(hooks.len(), 4);
    let mut kinds_covered = Vec::new();
    for h in &hooks {
        assert_eq!(h.side_effects, "None", "{}", h.name);
        assert_eq!(h.match_policy.as_deref(), Some("Equivalent"), "{}", h.name);
        assert!(h.timeout_seconds.is_some_and(|t| t <= 5), "{}", h.name);
        assert_eq!(h.admission_review_versions, vec!["v1"]);
        let sel = h.namespace_selector.as_ref().expect("namespaceSelector");
        let exprs = sel.match_expressions.as_ref().unwrap();
        let excluded = |ns: &str| {
            exprs.iter().any(|e| {
                let values = e.values.clone().unwrap_or_default();
                e.key == "kubernetes.io/metadata.name"
                    && match e.operator.as_str() {
                        "NotIn" => values.iter().any(|v| v == ns),
                        "In" => !values.iter().any(|v| v == ns),
                        _ => false,
                    }
            })
        };
        assert!(
            excluded("kube-system") && excluded("lotabots-system"),
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
            assert!(!ops.contains(&"*".to_string()), "{}", h.name);
            // Deletes only where agent_pod_deletes_are_bound_in_the_workload_namespace_only
            // says.
            if h.name != AGENT_POD_DELETES {
                assert!(!ops.contains(&"DELETE".to_string()), "{}", h.name);
            }
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

/// An agent deletes workload pods on its own node only: pod deletes reach the webhook, but
/// only those in the workload namespace (an outage then blocks no other pod deletion in the
/// cluster), failing closed.
#[test]
fn agent_pod_deletes_are_bound_in_the_workload_namespace_only() {
    let ns = lotabots_crds::workload::DEFAULT_NAMESPACE;
    let hooks = config().webhooks.unwrap();
    let deletes = hooks
        .iter()
        .find(|h| h.name == AGENT_POD_DELETES)
        .expect("the agent pod deletes webhook");
    assert_eq!(
        deletes
            .client_config
            .service
            .as_ref()
            .and_then(|s| s.path.as_deref()),
        Some(PODS_PATH)
    );
    assert_eq!(deletes.failure_policy.as_deref(), Some("Fail"));
    let rules = deletes.rules.as_ref().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].api_groups.as_deref(), Some(&["".to_string()][..]));
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["pods".to_string()][..])
    );
    assert_eq!(
        rules[0].operations.as_deref(),
        Some(&["DELETE".to_string()][..])
    );
    let sel = deletes.namespace_selector.as_ref().unwrap();
    assert!(sel.match_labels.is_none());
    let exprs = sel.match_expressions.as_ref().unwrap();
    assert_eq!(exprs.len(), 1);
    assert_eq!(exprs[0].key, "kubernetes.io/metadata.name");
    assert_eq!(exprs[0].operator, "In");
    assert_eq!(exprs[0].values.as_deref(), Some(&[ns.to_string()][..]));
    // No other webhook is sent deletes: the cluster-wide pods webhook failing closed on
    // them would block every pod deletion while the webhook is down.
    for h in hooks.iter().filter(|h| h.name != AGENT_POD_DELETES) {
        for rule in h.rules.iter().flatten() {
            assert!(
                !rule
                    .operations
                    .iter()
                    .flatten()
                    .any(|o| o == "DELETE" || o == "*"),
                "{} is sent deletes",
                h.name
            );
        }
    }
}
