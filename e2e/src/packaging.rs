//! The install manifests as users render them: `kubectl kustomize` of a `config/` tree (or
//! the e2e overlay) and `helm template` of `helm/lotabots`, with the pinned kubectl (which
//! has kustomize built in) and helm of `e2e/testbins/`; and the comparisons the packaging
//! and install tests make between them.

use std::{
    collections::BTreeMap,
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
