//! The two ways to install lotabots agree, and what they install passes our own policy:
//!
//! - the chart's `crds/` and `files/policy.yaml` are byte-for-byte the generated CRDs and
//!   `config/webhook/policy.yaml`;
//! - `helm lint --strict` is clean and `values.schema.json` rejects bad values naming the
//!   value;
//! - `helm template` with default values and `kubectl kustomize config/default` render the
//!   same objects — kinds, names, RBAC rules and bindings, and every field but labels —
//!   the Namespace excepted (Helm does not create its release namespace);
//! - the rendered Deployments and DaemonSet pass `lotabots-webhook check` with the default
//!   policy, and still pass without its blanket `lotabots-system` namespace exemption: the
//!   agent needs its ServiceAccount's gpuIsolation exemption, and nothing else.
//!
//! - Prometheus (`config/prometheus`, opt-in): the chart's `files/prometheusrule.yaml` is
//!   `config/prometheus/prometheusrule.yaml`; with `metrics.*.enabled` the chart renders
//!   what `e2e/overlays/prometheus` (config/default plus the component) does; every alert
//!   loads as Prometheus loads rules (`promrules`: Prometheus's rulefmt and PromQL
//!   parser), selects only metrics our binaries define, and the ServiceMonitor reaches
//!   the metrics port of all three components.
//!
//! No control plane: the pinned kubectl, helm and promrules of `e2e/testbins` only (see
//! `tests/install.rs` and `tests/monitoring.rs` for the real API server).

use std::collections::{BTreeMap, BTreeSet};

use lotabots_e2e::{
    packaging::{self, NAMESPACE},
    repo_root,
};
use lotabots_webhook::{check, cli::DEFAULT_POLICY, policy::Policy, verdict::Decision};
use serde_json::Value;

fn kustomized() -> Vec<Value> {
    let text = packaging::kustomize(&packaging::config_default()).expect("kustomize");
    packaging::documents(&text).expect("kustomize output parses")
}

fn helm_rendered(args: &[&str]) -> Vec<Value> {
    let text = packaging::helm_template(args)
        .expect("helm runs")
        .ok()
        .expect("helm template");
    packaging::documents(&text).expect("helm output parses")
}

fn files_in(dir: &std::path::Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

#[test]
fn chart_crds_are_the_generated_bases() {
    let root = repo_root();
    let bases = files_in(&root.join("config/crd/bases"));
    let chart = files_in(&root.join("helm/lotabots/crds"));
    assert_eq!(
        bases.keys().collect::<Vec<_>>(),
        chart.keys().collect::<Vec<_>>(),
        "helm/lotabots/crds/ must hold exactly the files of config/crd/bases/"
    );
    for (name, content) in &bases {
        assert!(
            chart[name] == *content,
            "helm/lotabots/crds/{name} differs from config/crd/bases/{name}: \
             cp config/crd/bases/*.yaml helm/lotabots/crds/"
        );
    }
}

#[test]
fn chart_policy_is_the_default_policy() {
    let root = repo_root();
    let config = std::fs::read_to_string(root.join("config/webhook/policy.yaml")).unwrap();
    let chart = std::fs::read_to_string(root.join("helm/lotabots/files/policy.yaml")).unwrap();
    assert!(
        config == chart,
        "helm/lotabots/files/policy.yaml differs from config/webhook/policy.yaml: \
         cp config/webhook/policy.yaml helm/lotabots/files/"
    );
}

#[test]
fn helm_lint_strict_is_clean() {
    let out = packaging::helm_lint().expect("helm runs");
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(out.success, "helm lint --strict failed:\n{all}");
    for line in all.lines() {
        assert!(
            !line.contains("[WARNING]") && !line.contains("[ERROR]"),
            "helm lint --strict: {line}"
        );
    }
}

#[test]
fn values_schema_rejects_bad_values_naming_them() {
    for (set, field, why) in [
        ("operator.replicas=0", "/operator/replicas", "minimum"),
        ("webhook.replicas=1", "/webhook/replicas", "minimum"),
        ("image.tag=latest", "/image/tag", ""),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy", ""),
        ("agent.maxUnavailable=0", "/agent/maxUnavailable", ""),
        (
            "agent.tokenExpirationSeconds=60",
            "/agent/tokenExpirationSeconds",
            "600",
        ),
        (
            "operator.resources.limits.memory=lots",
            "/operator/resources/limits/memory",
            "",
        ),
        (
            "agent.nodeSelector=null",
            "missing property 'nodeSelector'",
            "",
        ),
        (
            "operator.tlsSecretName=Not_A_Name",
            "/operator/tlsSecretName",
            "",
        ),
        (
            "operator.extraAgentServiceAccounts[0]=no-namespace",
            "/operator/extraAgentServiceAccounts/0",
            "",
        ),
        ("webhook.caBundle=not*base64", "/webhook/caBundle", ""),
        ("replicas=2", "additional properties 'replicas'", ""),
        (
            "metrics.serviceMonitor.enabled=yes",
            "/metrics/serviceMonitor/enabled",
            "boolean",
        ),
        (
            "metrics.serviceMonitor.interval=soon",
            "/metrics/serviceMonitor/interval",
            "",
        ),
    ] {
        let out = packaging::helm_template(&["--set", set]).expect("helm runs");
        assert!(!out.success, "--set {set} was accepted");
        assert!(
            out.stderr.contains(field) && out.stderr.contains(why),
            "--set {set}: the error does not name {field:?} ({why:?}):\n{}",
            out.stderr
        );
    }
    // And good non-default values render.
    let objs = helm_rendered(&[
        "--set",
        "image.tag=0.1.1",
        "--set",
        "agent.maxUnavailable=2",
        "--set",
        "operator.allowSimulated=true",
        "--set",
        "operator.extraAgentServiceAccounts[0]=gpu-team/lotabots-agent",
    ]);
    let op = objs
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "lotabots-operator")
        .expect("operator Deployment");
    let c = &op["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "ghcr.io/lotabots/operator:0.1.1");
    let env: BTreeMap<&str, &str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
        .collect();
    assert_eq!(env["LOTABOTS_ALLOW_SIMULATED"], "true");
    assert_eq!(
        env["LOTABOTS_AGENT_SERVICE_ACCOUNTS"],
        "lotabots-system/lotabots-agent,gpu-team/lotabots-agent"
    );
}

/// Whether `o` is the Namespace lotabots is installed into (which Helm does not create;
/// the workload namespace it does).
fn is_release_namespace(o: &Value) -> bool {
    o["kind"] == "Namespace" && o["metadata"]["name"] == NAMESPACE
}

/// `kust` (kustomize) and `helm` hold the same objects — kinds, names, RBAC rules and
/// bindings, and every field but labels — the release Namespace excepted.
fn assert_same_objects(kust: &[Value], helm: &[Value]) {
    let kust_keys: BTreeSet<String> = kust
        .iter()
        .filter(|o| !is_release_namespace(o))
        .map(packaging::key)
        .collect();
    let helm_keys: BTreeSet<String> = helm.iter().map(packaging::key).collect();
    assert_eq!(
        kust_keys, helm_keys,
        "kinds and names differ (left: kustomize, right: helm)"
    );
    assert_eq!(
        kust.iter()
            .filter(|o| o["kind"] == "Namespace")
            .map(packaging::key)
            .collect::<Vec<_>>(),
        [
            format!("Namespace /{NAMESPACE}"),
            "Namespace /lotabots-workloads".to_string()
        ]
    );
    assert_eq!(
        packaging::rbac_rules(kust),
        packaging::rbac_rules(helm),
        "RBAC rules differ (left: kustomize, right: helm)"
    );
    assert_eq!(
        packaging::bindings(kust),
        packaging::bindings(helm),
        "bindings differ"
    );
    // Everything else too, field by field (labels aside).
    let helm_by_key = packaging::by_key(helm);
    for obj in kust.iter().filter(|o| !is_release_namespace(o)) {
        let k = packaging::key(obj);
        let a = packaging::comparable(obj);
        let b = packaging::comparable(&helm_by_key[&k]);
        if let Some(d) = packaging::first_difference(&a, &b) {
            panic!("{k} differs between kustomize and helm at {d}");
        }
    }
}

#[test]
fn helm_template_and_kustomize_render_the_same_objects() {
    let kust = kustomized();
    let helm = helm_rendered(&[]);
    assert_same_objects(&kust, &helm);
    assert_eq!(
        packaging::rbac_rules(&kust).keys().collect::<Vec<_>>(),
        [
            "ClusterRole /lotabots-agent",
            "ClusterRole /lotabots-operator",
            "Role lotabots-system/lotabots-operator-certificates",
            "Role lotabots-system/lotabots-operator-keys",
            "Role lotabots-system/lotabots-operator-leader-election",
            "Role lotabots-workloads/lotabots-agent-workloads",
            "Role lotabots-workloads/lotabots-operator-workloads",
        ],
        "one role per component that needs one; none for the webhook"
    );
    // Monitoring is opt-in: nothing of the Prometheus Operator by default.
    for obj in kust.iter().chain(&helm) {
        assert!(
            !obj["apiVersion"]
                .as_str()
                .unwrap_or_default()
                .starts_with("monitoring.coreos.com/")
                && obj["metadata"]["name"] != "lotabots-agent-metrics",
            "{} is rendered by default",
            packaging::key(obj)
        );
    }

    // Every image is pinned to the version.
    for obj in packaging::of_kinds(&kust, &["Deployment", "DaemonSet"]) {
        for c in obj["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
        {
            let image = c["image"].as_str().unwrap();
            assert!(
                image.starts_with("ghcr.io/lotabots/") && image.ends_with(":0.1.0"),
                "{}: image {image} is not ghcr.io/lotabots/<component>:0.1.0",
                packaging::key(obj)
            );
        }
    }
}

#[test]
fn the_chart_installs_into_another_namespace_consistently() {
    let out = packaging::helm_template(&[
        "--namespace",
        "gpu-system",
        "--set",
        "operator.manageCertificates=false",
        "--set",
        "webhook.certManagerCertificate=lotabots-webhook",
    ])
    .expect("helm runs")
    .ok()
    .expect("helm template");
    // The namespace appears in object metadata, binding subjects, the operator's agent
    // ServiceAccounts, the agent's operator URL, the webhook's namespaceSelector and
    // cert-manager annotation, and the policy's exemptions: all follow the release.
    assert!(
        !out.contains(NAMESPACE),
        "{NAMESPACE} is hard-coded somewhere:\n{}",
        out.lines()
            .filter(|l| l.contains(NAMESPACE))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for needle in [
        "serviceAccounts: [gpu-system/lotabots-agent]",
        "namespaces: [kube-system, gpu-system]",
        "https://lotabots-operator.gpu-system.svc:8443",
        "cert-manager.io/inject-ca-from: gpu-system/lotabots-webhook",
    ] {
        assert!(out.contains(needle), "no {needle:?} in the rendered chart");
    }
}

/// The Deployments and DaemonSet of `objs` as one YAML stream.
fn workloads_yaml(objs: &[Value]) -> String {
    packaging::of_kinds(objs, &["Deployment", "DaemonSet"])
        .into_iter()
        .map(|o| format!("---\n{}", serde_yaml::to_string(o).unwrap()))
        .collect()
}

/// `check` of the workloads under `policy`: `Kind ns/name` → (decision, messages).
fn checked(policy: &Policy, objs: &[Value]) -> BTreeMap<String, (Decision, Vec<String>)> {
    let results = check::check_text(policy, &workloads_yaml(objs), "rendered").unwrap();
    assert_eq!(results.len(), 3, "two Deployments and a DaemonSet");
    results
        .into_iter()
        .map(|r| (r.object, (r.decision, r.messages)))
        .collect()
}

#[test]
fn rendered_workloads_pass_the_default_policy_the_agent_by_its_service_account_only() {
    let default = Policy::from_yaml(DEFAULT_POLICY).unwrap();
    // The default policy exempts lotabots-system as a whole (the webhook is never sent
    // it); without that, only the agent's ServiceAccount exemption may be needed.
    let blanket = "namespaces: [kube-system, lotabots-system]";
    assert!(
        DEFAULT_POLICY.contains(blanket),
        "the default policy's exemptions changed; update this test"
    );
    let strict_text = DEFAULT_POLICY.replace(blanket, "namespaces: [kube-system]");
    let strict = Policy::from_yaml(&strict_text).unwrap();
    let exemption = "      serviceAccounts: [lotabots-system/lotabots-agent]\n";
    assert_eq!(
        DEFAULT_POLICY.matches(exemption).count(),
        1,
        "the agent's exemption is one line, under gpuIsolation"
    );
    let without_agent = Policy::from_yaml(&strict_text.replace(exemption, "")).unwrap();

    for (renderer, objs) in [("kustomize", kustomized()), ("helm", helm_rendered(&[]))] {
        for (name, policy) in [
            ("default", &default),
            ("default without lotabots-system", &strict),
        ] {
            for (obj, (decision, messages)) in checked(policy, &objs) {
                assert!(
                    decision == Decision::Allowed && messages.is_empty(),
                    "{renderer}: {obj} under the {name} policy: {decision}: {messages:?}"
                );
            }
        }
        let results = checked(&without_agent, &objs);
        for (obj, (decision, messages)) in &results {
            if obj.starts_with("DaemonSet") {
                assert_eq!(
                    *decision,
                    Decision::Denied,
                    "{renderer}: {obj}: {messages:?}"
                );
                let denial = &messages[0];
                assert!(
                    denial.contains("[gpuIsolation]") && denial.contains("NVIDIA_VISIBLE_DEVICES"),
                    "{renderer}: {obj}: {denial}"
                );
                for rule in [
                    "hostPath",
                    "protectedPaths",
                    "privileged",
                    "capabilities",
                    "hostNamespaces",
                    "procMount",
                    "unknownFields",
                ] {
                    assert!(
                        !messages.iter().any(|m| m.contains(&format!("[{rule}]"))),
                        "{renderer}: {obj} violates {rule}: {messages:?}"
                    );
                }
            } else {
                assert_eq!(
                    *decision,
                    Decision::Allowed,
                    "{renderer}: {obj}: {messages:?}"
                );
            }
        }
    }
}

#[test]
fn chart_prometheus_rule_is_config_prometheus() {
    let root = repo_root();
    let config =
        std::fs::read_to_string(root.join("config/prometheus/prometheusrule.yaml")).unwrap();
    let chart =
        std::fs::read_to_string(root.join("helm/lotabots/files/prometheusrule.yaml")).unwrap();
    assert!(
        config == chart,
        "helm/lotabots/files/prometheusrule.yaml differs from config/prometheus/prometheusrule.yaml: \
         cp config/prometheus/prometheusrule.yaml helm/lotabots/files/"
    );
}

fn prometheus_overlay() -> Vec<Value> {
    let text = packaging::kustomize(&packaging::prometheus_overlay()).expect("kustomize");
    packaging::documents(&text).expect("kustomize output parses")
}

#[test]
fn with_metrics_enabled_helm_renders_what_the_prometheus_overlay_adds() {
    let kust = prometheus_overlay();
    let helm = helm_rendered(packaging::HELM_PROMETHEUS);
    assert_same_objects(&kust, &helm);
    let added: BTreeSet<String> = kust
        .iter()
        .map(packaging::key)
        .filter(|k| !kustomized().iter().any(|o| packaging::key(o) == *k))
        .collect();
    assert_eq!(
        added,
        [
            "PrometheusRule lotabots-system/lotabots",
            "Service lotabots-system/lotabots-agent-metrics",
            "ServiceMonitor lotabots-system/lotabots",
        ]
        .map(str::to_owned)
        .into()
    );
    // Extra labels reach the objects a Prometheus selects by label.
    let labelled = helm_rendered(&[
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.serviceMonitor.labels.release=kps",
        "--set",
        "metrics.prometheusRule.enabled=true",
        "--set",
        "metrics.prometheusRule.labels.release=kps",
    ]);
    for kind in ["ServiceMonitor", "PrometheusRule"] {
        let obj = packaging::of_kinds(&labelled, &[kind])[0];
        assert_eq!(obj["metadata"]["labels"]["release"], "kps", "{kind}");
    }
}

/// The rules of `objs` through promrules (which fails on any rule Prometheus would not
/// load).
fn checked_rules(objs: &[Value]) -> Vec<packaging::PromRule> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, as_yaml_stream(objs)).unwrap();
    packaging::prom_rules(&file).expect("the rules load as Prometheus loads them")
}

fn as_yaml_stream(objs: &[Value]) -> String {
    objs.iter()
        .map(|o| format!("---\n{}", serde_yaml::to_string(o).unwrap()))
        .collect()
}

#[test]
fn alerts_load_in_prometheus_and_select_only_metrics_we_export() {
    let from_config = checked_rules(&prometheus_overlay());
    let from_chart = checked_rules(&helm_rendered(packaging::HELM_PROMETHEUS));
    assert_eq!(from_config, from_chart, "the chart's rules are config's");

    let exported = packaging::exported_metrics().unwrap();
    for must in [
        "lotabots_gpu_nodes",
        "lotabots_agent_submissions_total",
        "lotabots_certificate_expiry_timestamp_seconds",
    ] {
        assert!(
            exported.contains(must),
            "{must} is not defined in the sources"
        );
    }
    assert_eq!(
        packaging::unexported(&from_config, &exported),
        Vec::<String>::new(),
        "alerts select metrics no binary exports"
    );

    let alerts: BTreeMap<&str, &packaging::PromRule> =
        from_config.iter().map(|r| (r.alert.as_str(), r)).collect();
    assert_eq!(alerts.len(), from_config.len(), "alert names are unique");
    for (name, rule) in &alerts {
        assert!(name.starts_with("Lotabots"), "{name}");
        assert!(
            ["warning", "critical"].contains(&rule.labels["severity"].as_str()),
            "{name}: severity {:?}",
            rule.labels.get("severity")
        );
        for a in ["summary", "description"] {
            assert!(
                rule.annotations
                    .get(a)
                    .is_some_and(|t| !t.trim().is_empty()),
                "{name}: no {a}"
            );
        }
        assert!(
            !rule.for_.is_empty(),
            "{name}: fires on a single evaluation"
        );
    }
    // The four concerns, by the metrics they watch.
    for (concern, metric) in [
        ("attestation failed", "lotabots_gpu_nodes"),
        ("evidence stale", "lotabots_evidence_submissions_total"),
        ("agents silent", "up"),
        ("store backlog", "lotabots_store_outbox_pending"),
        ("store uploads", "lotabots_store_uploads_total"),
        (
            "certificate expiring",
            "lotabots_certificate_expiry_timestamp_seconds",
        ),
    ] {
        assert!(
            from_config
                .iter()
                .any(|r| r.metrics.iter().any(|m| m == metric)),
            "no alert for {concern} ({metric})"
        );
    }
    assert!(
        alerts["LotabotsGpuAttestationFailed"]
            .expr
            .contains(r#"verdict="Failed""#)
    );
    assert!(
        alerts["LotabotsGpuEvidenceStale"]
            .expr
            .contains(r#"verdict="Unknown""#)
    );
}

#[test]
fn promrules_refuses_what_prometheus_would_not_load() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        r#"apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata: {name: bad, namespace: ns}
spec:
  groups:
    - name: g
      rules:
        - alert: Broken
          expr: sum(rate(lotabots_gpu_nodes[5m])
"#,
    )
    .unwrap();
    let err = packaging::prom_rules(&file).unwrap_err().to_string();
    assert!(
        err.contains("Broken") && err.contains("parse error"),
        "promrules did not name the broken rule: {err}"
    );
}

#[test]
fn the_service_monitor_scrapes_all_three_components() {
    let objs = prometheus_overlay();
    let monitor = packaging::of_kinds(&objs, &["ServiceMonitor"])[0];
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    let endpoints = monitor["spec"]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1);
    let port_name = endpoints[0]["port"].as_str().unwrap();
    assert_eq!(endpoints[0]["path"], "/metrics");
    let job_label = monitor["spec"]["jobLabel"].as_str().unwrap();

    let mut scraped = BTreeMap::new();
    for svc in packaging::of_kinds(&objs, &["Service"]) {
        let labels = &svc["metadata"]["labels"];
        if !selector.iter().all(|(k, v)| labels[k] == *v) {
            continue;
        }
        let port = svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == port_name)
            .unwrap_or_else(|| panic!("{}: no port {port_name}", packaging::key(svc)));
        // The Service's selector picks a workload whose container has that target port.
        let target = port["targetPort"].as_str().unwrap();
        let pods = svc["spec"]["selector"].as_object().unwrap();
        let workload = packaging::of_kinds(&objs, &["Deployment", "DaemonSet"])
            .into_iter()
            .find(|w| {
                let l = &w["spec"]["template"]["metadata"]["labels"];
                pods.iter().all(|(k, v)| l[k] == *v)
            })
            .unwrap_or_else(|| panic!("{} selects no workload", packaging::key(svc)));
        let container_port = workload["spec"]["template"]["spec"]["containers"][0]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == target)
            .unwrap_or_else(|| panic!("{}: no container port {target}", packaging::key(workload)));
        scraped.insert(
            labels[job_label].as_str().unwrap().to_owned(),
            container_port["containerPort"].as_u64().unwrap(),
        );
    }
    // The ports the binaries serve /metrics on (operator --probe-addr, webhook ops,
    // agent LOTABOTS_METRICS_ADDR).
    assert_eq!(
        scraped,
        [
            ("lotabots-agent".to_owned(), 9402),
            ("lotabots-operator".to_owned(), 8080),
            ("lotabots-webhook".to_owned(), 8080),
        ]
        .into()
    );
}
