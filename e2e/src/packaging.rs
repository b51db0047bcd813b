//! The install manifests as users render them: `kubectl kustomize` of a `config/` tree (or
//! the e2e overlay) and `helm template` of `helm/lotabots`, with the pinned kubectl (which
//! has kustomize built in) and helm of `e2e/testbins/`; and the comparisons the packaging
//! and install tests make between them.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, ensure};
use serde::Deserialize;
use serde_json::Value;

use crate::{repo_root, testbins::TestBins};

/// The namespace everything installs into.
pub const NAMESPACE: &str = "lotabots-system";

/// The release name the tests render the chart with.
pub const RELEASE: &str = "lotabots";

/// `helm/lotabots`.
pub fn chart_dir() -> PathBuf {
    repo_root().join("helm/lotabots")
}

/// `config/default`.
pub fn config_default() -> PathBuf {
    repo_root().join("config/default")
}

/// `e2e/overlays/install`: config/default with the webhook registered by 127.0.0.1 URL.
pub fn e2e_overlay() -> PathBuf {
    repo_root().join("e2e/overlays/install")
}

/// `e2e/overlays/prometheus`: config/default with the config/prometheus component.
pub fn prometheus_overlay() -> PathBuf {
    repo_root().join("e2e/overlays/prometheus")
}

/// The chart's values that render what [`prometheus_overlay`] adds.
pub const HELM_PROMETHEUS: &[&str] = &[
    "--set",
    "metrics.serviceMonitor.enabled=true",
    "--set",
    "metrics.prometheusRule.enabled=true",
];

/// The Prometheus Operator CRDs for ServiceMonitor and PrometheusRule, vendored in
/// `e2e/testbins/prometheus-operator/` (see its README for the source and pin).
pub fn prometheus_operator_crds() -> Vec<PathBuf> {
    let dir = repo_root().join("e2e/testbins/prometheus-operator");
    ["servicemonitors", "prometheusrules"]
        .iter()
        .map(|p| dir.join(format!("monitoring.coreos.com_{p}.yaml")))
        .collect()
}

/// One alerting or recording rule as `promrules` (e2e/testbins/packaging) prints it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct PromRule {
    /// `namespace/name` of the PrometheusRule.
    pub object: String,
    /// The rule group.
    pub group: String,
    /// The alert's name (empty for a recording rule).
    #[serde(default)]
    pub alert: String,
    /// The expression.
    pub expr: String,
    /// `for`, as Prometheus prints durations (empty when none).
    #[serde(default, rename = "for")]
    pub for_: String,
    /// Labels added to the alert.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The metric names the expression selects.
    pub metrics: Vec<String>,
}

/// Checks the PrometheusRule objects in `file` as Prometheus loads rules (`promrules`,
/// built on Prometheus's rulefmt and PromQL parser) and returns their rules; an invalid
/// rule is an error with promrules' explanation.
pub fn prom_rules(file: &Path) -> Result<Vec<PromRule>> {
    let tool = crate::images::packaging_tool("promrules")?;
    let out = run(&tool, &[&file.display().to_string()], None)?.ok()?;
    serde_json::from_str(&out).context("parsing promrules output")
}

/// The metric names our binaries define: every `"lotabots_…"` string literal in the
/// sources of the agent, the operator (with the crates under `operator/`) and the webhook.
/// A histogram's `_bucket`, `_sum` and `_count` series follow from its name.
pub fn exported_metrics() -> Result<BTreeSet<String>> {
    let root = repo_root();
    let mut dirs = vec![root.join("agent/src"), root.join("webhook/src")];
    for entry in std::fs::read_dir(root.join("operator"))? {
        let dir = entry?.path();
        if dir.join("Cargo.toml").is_file() {
            dirs.push(dir.join("src"));
        }
    }
    dirs.push(root.join("operator/src"));
    let mut names = BTreeSet::new();
    let mut stack = dirs;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path)?;
                names.extend(metric_literals(&text));
            }
        }
    }
    Ok(names)
}

/// The `"lotabots_[a-z0-9_]+"` string literals of a source text.
fn metric_literals(text: &str) -> impl Iterator<Item = String> + '_ {
    text.match_indices("\"lotabots_").filter_map(|(at, _)| {
        let rest = &text[at + 1..];
        let end =
            rest.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))?;
        rest[end..].starts_with('"').then(|| rest[..end].to_owned())
    })
}

/// The metrics `rules` select that are neither in `exported` (a histogram's series
/// counted by its name) nor Prometheus's own `up`: `alert: metric` each.
pub fn unexported(rules: &[PromRule], exported: &BTreeSet<String>) -> Vec<String> {
    let known = |m: &str| {
        m == "up"
            || exported.contains(m)
            || ["_bucket", "_sum", "_count"].iter().any(|s| {
                m.strip_suffix(s)
                    .is_some_and(|base| exported.contains(base))
            })
    };
    rules
        .iter()
        .flat_map(|r| {
            r.metrics
                .iter()
                .filter(|m| !known(m))
                .map(|m| format!("{}: {m}", r.alert))
        })
        .collect()
}

/// Runs `program args` (stdin `input`, if any) and returns stdout; fails with stderr.
pub fn run(program: &Path, args: &[&str], input: Option<&str>) -> Result<Output> {
    let shown = format!(
        "{} {}",
        program.file_name().unwrap_or_default().to_string_lossy(),
        args.join(" ")
    );
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {shown}"))?;
    if let Some(text) = input {
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(text.as_bytes())?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("running {shown}"))?;
    Ok(Output {
        shown,
        success: out.status.success(),
        status: out.status.to_string(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// What a command printed.
#[derive(Clone, Debug)]
pub struct Output {
    /// The command line, for messages.
    pub shown: String,
    /// Whether it exited 0.
    pub success: bool,
    /// Its exit status, for messages.
    pub status: String,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// `kubectl ARGS` with `plane`'s admin kubeconfig, `input` on stdin.
pub async fn kubectl(
    plane: &crate::ControlPlane,
    args: &[&str],
    input: Option<&str>,
) -> Result<Output> {
    use std::process::Stdio;
    use tokio::io::AsyncWriteExt;

    let mut child = plane
        .kubectl()
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting kubectl")?;
    if let Some(text) = input {
        let mut stdin = child.stdin.take().context("kubectl stdin")?;
        stdin.write_all(text.as_bytes()).await?;
        drop(stdin);
    }
    let out = child.wait_with_output().await?;
    Ok(Output {
        shown: format!("kubectl {}", args.join(" ")),
        success: out.status.success(),
        status: out.status.to_string(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

impl Output {
    /// Stdout, or an error with stderr when the command failed.
    pub fn ok(self) -> Result<String> {
        ensure!(
            self.success,
            "{} failed ({}): {}",
            self.shown,
            self.status,
            self.stderr.trim()
        );
        Ok(self.stdout)
    }
}

/// `kubectl kustomize dir`.
pub fn kustomize(dir: &Path) -> Result<String> {
    let bins = TestBins::locate()?;
    run(
        &bins.bin("kubectl"),
        &["kustomize", &dir.display().to_string()],
        None,
    )?
    .ok()
}

/// `helm template lotabots helm/lotabots --namespace lotabots-system --include-crds ARGS`.
pub fn helm_template(args: &[&str]) -> Result<Output> {
    let bins = TestBins::locate()?;
    let chart = chart_dir().display().to_string();
    let mut all = vec![
        "template",
        RELEASE,
        &chart,
        "--namespace",
        NAMESPACE,
        "--include-crds",
    ];
    all.extend_from_slice(args);
    run(&bins.bin("helm"), &all, None)
}

/// `helm lint --strict helm/lotabots`.
pub fn helm_lint() -> Result<Output> {
    let bins = TestBins::locate()?;
    run(
        &bins.bin("helm"),
        &["lint", "--strict", &chart_dir().display().to_string()],
        None,
    )
}

/// Every YAML document of a multi-document text, as JSON (empty documents skipped).
pub fn documents(text: &str) -> Result<Vec<Value>> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).context("parsing rendered YAML"))
        .filter(|v| !matches!(v, Ok(Value::Null)))
        .collect()
}

/// `Kind namespace/name` (namespace empty for cluster-scoped objects).
pub fn key(obj: &Value) -> String {
    let s = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or_default();
    format!(
        "{} {}/{}",
        s("/kind"),
        s("/metadata/namespace"),
        s("/metadata/name")
    )
}

/// Objects by [`key`].
pub fn by_key(objs: &[Value]) -> BTreeMap<String, Value> {
    objs.iter().map(|o| (key(o), o.clone())).collect()
}

/// The objects of `kinds`.
pub fn of_kinds<'a>(objs: &'a [Value], kinds: &[&str]) -> Vec<&'a Value> {
    objs.iter()
        .filter(|o| kinds.iter().any(|k| o["kind"] == *k))
        .collect()
}

/// One RBAC rule, normalised: apiGroups, resources, verbs (each sorted), resourceNames.
pub type Rule = (Vec<String>, Vec<String>, Vec<String>, Vec<String>);

/// The rules of every Role and ClusterRole, by [`key`], each role's rules sorted.
pub fn rbac_rules(objs: &[Value]) -> BTreeMap<String, Vec<Rule>> {
    let list = |v: &Value| -> Vec<String> {
        let mut l: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect();
        l.sort();
        l
    };
    of_kinds(objs, &["Role", "ClusterRole"])
        .into_iter()
        .map(|role| {
            let mut rules: Vec<Rule> = role["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    (
                        list(&r["apiGroups"]),
                        list(&r["resources"]),
                        list(&r["verbs"]),
                        list(&r["resourceNames"]),
                    )
                })
                .collect();
            rules.sort();
            (key(role), rules)
        })
        .collect()
}

/// The subjects and role of every RoleBinding and ClusterRoleBinding, by [`key`].
pub fn bindings(objs: &[Value]) -> BTreeMap<String, (Value, Value)> {
    of_kinds(objs, &["RoleBinding", "ClusterRoleBinding"])
        .into_iter()
        .map(|b| (key(b), (b["roleRef"].clone(), b["subjects"].clone())))
        .collect()
}

/// `obj` without what legitimately differs between the renderers: labels (Helm adds its
/// own) — the selectors and pod template labels stay.
pub fn comparable(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("labels");
    }
    o
}

/// The first place where `a` and `b` differ, as a JSON pointer with both values.
pub fn first_difference(a: &Value, b: &Value) -> Option<String> {
    fn walk(a: &Value, b: &Value, at: &str) -> Option<String> {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                keys.into_iter().find_map(|k| {
                    walk(
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                        &format!("{at}/{k}"),
                    )
                })
            }
            (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
                .iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (p, q))| walk(p, q, &format!("{at}/{i}"))),
            // `0.0` in a file and `0` from a renderer are the same number.
            (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
            _ if a == b => None,
            _ => Some(format!("{at}: {a} vs {b}")),
        }
    }
    walk(a, b, "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn first_difference_names_the_path() {
        let a = json!({"spec": {"x": [1, {"y": "a"}]}});
        let b = json!({"spec": {"x": [1, {"y": "b"}]}});
        assert_eq!(
            first_difference(&a, &b).unwrap(),
            r#"/spec/x/1/y: "a" vs "b""#
        );
        assert_eq!(first_difference(&a, &a), None);
        assert_eq!(first_difference(&json!({"m": 0}), &json!({"m": 0.0})), None);
        assert!(
            first_difference(&json!({"a": 1}), &json!({}))
                .unwrap()
                .starts_with("/a")
        );
    }

    #[test]
    fn metric_literals_are_whole_string_literals() {
        let src = r#"Opts::new("lotabots_gpu_nodes", "help"); "lotabots_x{a}"; // lotabots_y
            let name = "lotabots_agent_probes_total";"#;
        assert_eq!(
            metric_literals(src).collect::<Vec<_>>(),
            ["lotabots_gpu_nodes", "lotabots_agent_probes_total"]
        );
    }

    #[test]
    fn unexported_names_what_no_binary_exports() {
        let rule = |alert: &str, metrics: &[&str]| PromRule {
            object: "ns/r".into(),
            group: "g".into(),
            alert: alert.into(),
            expr: String::new(),
            for_: String::new(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            metrics: metrics.iter().map(|m| m.to_string()).collect(),
        };
        let exported: BTreeSet<String> = ["lotabots_a", "lotabots_d_seconds"]
            .map(str::to_owned)
            .into();
        let rules = [
            rule("A", &["lotabots_a", "up", "lotabots_d_seconds_bucket"]),
            rule("B", &["lotabots_made_up_total", "lotabots_a_count_total"]),
        ];
        assert_eq!(
            unexported(&rules, &exported),
            ["B: lotabots_made_up_total", "B: lotabots_a_count_total"]
        );
    }

    #[test]
    fn rbac_rules_are_normalised() {
        let objs = vec![json!({
            "kind": "ClusterRole", "metadata": {"name": "r"},
            "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["watch", "get"]}]
        })];
        let rules = rbac_rules(&objs);
        assert_eq!(
            rules["ClusterRole /r"],
            vec![(
                vec!["".to_string()],
                vec!["nodes".to_string()],
                vec!["get".to_string(), "watch".to_string()],
                vec![]
            )]
        );
    }
}
