//! The offline check: AdmissionReview JSON files and plain manifests (YAML, several
//! documents per file, or JSON) evaluated by the same [`review`] the server runs.
//!
//! A manifest is reviewed as the CREATE the API server would send for it, so a pipeline
//! sees the verdict the cluster would give.

use std::io::Write;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::admission::{
    ADMISSION_KIND, AdmissionRequest, GroupVersionKind, Operation, decode, review,
};
use crate::policy::Policy;
use crate::verdict::Decision;

/// The verdict on one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    /// Where it came from (`file.yaml#2`: the third document).
    pub source: String,
    /// `Kind namespace/name`.
    pub object: String,
    /// The outcome.
    pub decision: Decision,
    /// The denial message, then warnings, then audit-mode violations.
    pub messages: Vec<String>,
}

/// Why a file could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Unreadable file.
    #[error("{0}: {1}")]
    Read(String, std::io::Error),
    /// Not YAML or JSON, or a document that is not an object with apiVersion and kind.
    #[error("{0}: {1}")]
    Parse(String, String),
}

/// Checks every object in the file at `path`.
pub fn check_file(policy: &Policy, path: &Path) -> Result<Vec<CheckResult>, CheckError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| CheckError::Read(shown.clone(), e))?;
    check_text(policy, &text, &shown)
}

/// Checks every object in `text`, naming results after `source`.
pub fn check_text(
    policy: &Policy,
    text: &str,
    source: &str,
) -> Result<Vec<CheckResult>, CheckError> {
    let docs = documents(text).map_err(|e| CheckError::Parse(source.to_owned(), e))?;
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let at = if i == 0 && out.is_empty() {
            source.to_owned()
        } else {
            format!("{source}#{i}")
        };
        check_value(policy, doc, &at, &mut out)?;
    }
    Ok(out)
}

/// Splits text into documents: a stream of JSON values when it starts like JSON, YAML
/// documents otherwise. Empty documents (a stray `---`) are skipped.
fn documents(text: &str) -> Result<Vec<Value>, String> {
    let trimmed = text.trim_start();
    let docs: Vec<Value> = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        serde_json::Deserializer::from_str(text)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?
    } else {
        let mut v = Vec::new();
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value = Value::deserialize(doc).map_err(|e| format!("document {i}: {e}"))?;
            v.push(value);
        }
        v
    };
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

fn check_value(
    policy: &Policy,
    doc: Value,
    at: &str,
    out: &mut Vec<CheckResult>,
) -> Result<(), CheckError> {
    let parse = |msg: String| CheckError::Parse(at.to_owned(), msg);
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .ok_or_else(|| parse("not a Kubernetes object: no kind".into()))?
        .to_owned();
    let api_version = doc
        .get("apiVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| parse("not a Kubernetes object: no apiVersion".into()))?
        .to_owned();
    if kind == ADMISSION_KIND {
        let bytes = serde_json::to_vec(&doc).map_err(|e| parse(e.to_string()))?;
        let req = decode(&bytes).map_err(|e| parse(e.to_string()))?;
        out.push(result(policy, req, at));
        return Ok(());
    }
    // `kubectl get -o yaml` of several objects gives a List.
    if kind.ends_with("List")
        && let Some(items) = doc.get("items").and_then(Value::as_array)
    {
        for (i, item) in items.iter().enumerate() {
            check_value(policy, item.clone(), &format!("{at}.items[{i}]"), out)?;
        }
        return Ok(());
    }
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g.to_owned(), v.to_owned()),
        None => (String::new(), api_version.clone()),
    };
    let meta = doc.get("metadata");
    let field = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let req = AdmissionRequest {
        uid: String::new(),
        kind: GroupVersionKind {
            group,
            version,
            kind,
        },
        sub_resource: None,
        name: field("name").or_else(|| field("generateName")),
        // As `kubectl apply` without `-n` would: the default namespace.
        namespace: Some(field("namespace").unwrap_or_else(|| "default".to_owned())),
        operation: Operation::Create,
        object: Some(doc),
        old_object: None,
        dry_run: Some(true),
        // Manifests have no requester: the node-binding rule of agents does not apply.
        user_info: None,
    };
    out.push(result(policy, req, at));
    Ok(())
}

fn result(policy: &Policy, req: AdmissionRequest, at: &str) -> CheckResult {
    let r = review(policy, req);
    let mut messages = Vec::new();
    if let Some(d) = r.verdict.denial() {
        messages.push(d.message);
    }
    messages.extend(
        r.verdict
            .warnings()
            .into_iter()
            .map(|w| format!("warning: {w}")),
    );
    messages.extend(
        r.verdict
            .audits()
            .into_iter()
            .map(|a| format!("audit: {a}")),
    );
    CheckResult {
        source: at.to_owned(),
        object: r.object,
        decision: r.verdict.decision(),
        messages,
    }
}

/// Checks every path and prints one verdict per object (plus its messages, indented).
/// Unreadable or unparsable files are reported in the output and counted in
/// [`Summary::errors`]; `Err` only when the output cannot be written.
pub fn run(
    policy: &Policy,
    paths: &[impl AsRef<Path>],
    out: &mut impl Write,
) -> std::io::Result<Summary> {
    let mut summary = Summary::default();
    for p in paths {
        match check_file(policy, p.as_ref()) {
            Ok(results) => {
                for r in results {
                    writeln!(out, "{}: {}: {}", r.source, r.object, r.decision)?;
                    for m in &r.messages {
                        writeln!(out, "    {m}")?;
                    }
                    summary.objects += 1;
                    if r.decision == Decision::Denied {
                        summary.denied += 1;
                    }
                }
            }
            Err(e) => {
                writeln!(out, "error: {e}")?;
                summary.errors += 1;
            }
        }
    }
    Ok(summary)
}

/// Counts from a [`run`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Objects checked.
    pub objects: usize,
    /// Objects denied.
    pub denied: usize,
    /// Files that could not be checked.
    pub errors: usize,
}
