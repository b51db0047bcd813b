//! CRD manifests generated from the Rust types: the one source of the YAML checked in
//! under `config/crd/bases/` (and copied into the Helm chart).
//!
//! `cargo run -p lotabots-crds --bin crdgen` writes the files; `--check` compares them.

use std::{
    fmt, io,
    path::{Path, PathBuf},
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value;

use crate::{GpuAttestation, ModelAttestation};

/// Directory, relative to the repository root, the CRD manifests are checked in to.
pub const DEFAULT_OUTPUT_DIR: &str = "config/crd/bases";
/// The command that regenerates the checked-in manifests.
pub const REGENERATE_COMMAND: &str = "cargo run -p lotabots-crds --bin crdgen";

/// Every CRD of the project, annotated so that Argo CD applies them in an earlier sync
/// wave than any custom resource of theirs (Helm and Flux order CRDs first on their own).
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![GpuAttestation::crd(), ModelAttestation::crd()];
    for crd in &mut crds {
        crd.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(ARGOCD_SYNC_WAVE.into(), "-1".into());
    }
    crds
}

/// Argo CD's sync-wave annotation.
pub const ARGOCD_SYNC_WAVE: &str = "argocd.argoproj.io/sync-wave";

/// The file name of a CRD's manifest, controller-gen style: `GROUP_PLURAL.yaml`
/// (`lotabots.io_gpuattestations.yaml`).
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

/// A CRD as YAML, with a header naming the command that generated it. Object keys are
/// sorted, so the output does not depend on how `serde_json` was built.
pub fn render_crd_yaml(crd: &CustomResourceDefinition) -> String {
    let value = sort_keys(serde_json::to_value(crd).expect("a CRD serializes to JSON"));
    let body = serde_yaml::to_string(&value).expect("JSON serializes to YAML");
    format!("# Generated from the Rust types by `{REGENERATE_COMMAND}`. Do not edit.\n---\n{body}")
}

/// Every manifest, as (file name, contents).
pub fn rendered_files() -> Vec<(String, String)> {
    all_crds()
        .iter()
        .map(|crd| (crd_file_name(crd), render_crd_yaml(crd)))
        .collect()
}

/// Writes every manifest into `dir` (created if missing) and returns the paths written.
pub fn write_all(dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    rendered_files()
        .into_iter()
        .map(|(name, contents)| {
            let path = dir.join(name);
            std::fs::write(&path, contents)?;
            Ok(path)
        })
        .collect()
}

/// A checked-in manifest that differs from what the types generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    /// The file that differs or is missing.
    pub path: PathBuf,
    /// The first differing line (1-based) with the expected and found text, or that the
    /// file is missing or unreadable.
    pub detail: String,
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.detail)
    }
}

/// Compares the manifests in `dir` with what the types generate; returns every drift.
pub fn check_all(dir: &Path) -> Vec<Drift> {
    rendered_files()
        .into_iter()
        .filter_map(|(name, expected)| {
            let path = dir.join(name);
            let detail = match std::fs::read_to_string(&path) {
                Err(e) => Some(format!("cannot read it ({e})")),
                Ok(found) if found == expected => None,
                Ok(found) => Some(first_difference(&expected, &found)),
            };
            detail.map(|detail| Drift { path, detail })
        })
        .collect()
}

/// Runs crdgen: writes the manifests to `dir`, or with `check` compares them. Returns the
/// process exit code (0 up to date or written, 1 drift, 2 I/O error) after printing what it
/// did to stdout/stderr.
pub fn run(dir: &Path, check: bool) -> i32 {
    if check {
        let drifts = check_all(dir);
        if drifts.is_empty() {
            println!("CRD manifests in {} are up to date", dir.display());
            return 0;
        }
        for d in &drifts {
            eprintln!("out of date: {d}");
        }
        eprintln!("the CRD manifests differ from the Rust types; run `{REGENERATE_COMMAND}`");
        return 1;
    }
    match write_all(dir) {
        Ok(paths) => {
            for p in paths {
                println!("wrote {}", p.display());
            }
            0
        }
        Err(e) => {
            eprintln!("cannot write CRD manifests to {}: {e}", dir.display());
            2
        }
    }
}

fn first_difference(expected: &str, found: &str) -> String {
    let mut exp = expected.lines();
    let mut got = found.lines();
    let mut line = 1;
    loop {
        match (exp.next(), got.next()) {
            (Some(e), Some(g)) if e == g => line += 1,
            (e, g) => {
                return format!(
                    "line {line}: expected {:?}, found {:?}",
                    e.unwrap_or("<end of file>"),
                    g.unwrap_or("<end of file>")
                );
            }
        }
    }
}

fn sort_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_follow_controller_gen() {
        let names: Vec<String> = all_crds().iter().map(crd_file_name).collect();
        assert_eq!(
            names,
            [
                "lotabots.io_gpuattestations.yaml",
                "lotabots.io_modelattestations.yaml"
            ]
        );
    }

    #[test]
    fn first_difference_names_the_line() {
        assert_eq!(
            first_difference("a\nb\nc\n", "a\nx\nc\n"),
            "line 2: expected \"b\", found \"x\""
        );
        assert_eq!(
            first_difference("a\nb\n", "a\n"),
            "line 2: expected \"b\", found \"<end of file>\""
        );
    }

    #[test]
    fn write_then_check_round_trips() {
        let dir = std::env::temp_dir().join(format!("lotabots-crdgen-{}", std::process::id()));
        write_all(&dir).unwrap();
        assert!(check_all(&dir).is_empty());
        let f = dir.join("lotabots.io_gpuattestations.yaml");
        std::fs::write(&f, "stale\n").unwrap();
        let drifts = check_all(&dir);
        assert_eq!(drifts.len(), 1);
        assert!(drifts[0].detail.starts_with("line 1:"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
