//! Fetch mode, as the probe pod runs it (no model volume): the runner fetches the suite
//! and the model from a stand-in operator over HTTPS with the pod's token, checks what it
//! got, verifies the model against the attested manifest, runs the suite and posts the
//! result to the same stand-in. What the operator serves is untrusted: a tampered file, a
//! suite of another digest, a path that climbs out of the model directory, a file of
//! another size are refused, and the operator's own refusal is shown.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::operator::{Operator, REJECTED, REQUEST_ID, Served, TOKEN, pod_env};
use common::{MINILM_MANIFEST_DIGEST, minilm_dir, runner, suite_path};
use lotabots_crds::model_attestation::HashAlgorithm;
use lotabots_crds::workload::{MODEL_PATH, RESULT_PATH};
use lotabots_model::hashing::{HashOptions, hash_model};
use lotabots_model::manifest::Serialization;
use lotabots_model::source::LocalSource;
use lotabots_probes::suite::digest_of;

const OTHER_DIGEST: &str =
    "sha256:1111111111111111111111111111111111111111111111111111111111111111";

fn semantic_suite() -> Vec<u8> {
    std::fs::read(suite_path("minilm-semantic.yaml")).unwrap()
}

/// The MiniLM model and the semantic suite, as the operator would serve them.
fn minilm_served() -> Served {
    Served::new(
        Served::files_of(&minilm_dir()),
        MINILM_MANIFEST_DIGEST,
        semantic_suite(),
    )
}

/// A two-file model the runner never gets as far as hashing.
fn small_served() -> Served {
    let files = BTreeMap::from([
        ("config.json".to_owned(), b"{}".to_vec()),
        ("sub/model.safetensors".to_owned(), b"not weights".to_vec()),
    ]);
    Served::new(files, OTHER_DIGEST, semantic_suite())
}

/// The launcher's parameters for a probe pod whose scratch volume is `work`, expecting
/// the suite `suite` and the manifest `manifest_digest`.
fn params(work: &Path, suite: &[u8], manifest_digest: &str) -> serde_json::Value {
    serde_json::json!({
        "fetch": "operator",
        "modelDir": work.join("model"),
        "suite": work.join("suite.yaml"),
        "manifestDigest": manifest_digest,
        "suiteDigest": digest_of(suite),
        "hashAlgorithm": "sha256",
    })
}

/// Runs the runner as a probe pod against `op` with `extra` flags; returns its exit
/// code, stderr and stdout.
fn run_pod(
    op: &Operator,
    tmp: &Path,
    params: &serde_json::Value,
    extra: &[&str],
) -> (i32, String, Vec<u8>) {
    let mut cmd = runner();
    pod_env(&mut cmd, tmp, op, params);
    let out = cmd.args(extra).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap(), stderr, out.stdout)
}

#[test]
fn the_runner_fetches_verifies_passes_and_posts_the_minilm_suite() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let served = minilm_served();
    let op = Operator::start(served.clone());
    let (code, stderr, _) = run_pod(
        &op,
        tmp.path(),
        &params(&work, &served.suite, MINILM_MANIFEST_DIGEST),
        &["--report"],
    );
    assert_eq!(code, 0, "{stderr}");
    eprintln!("{stderr}");
    let fetch_line = stderr.lines().find(|l| l.contains("fetch (")).unwrap();
    assert!(
        fetch_line.contains(&format!("fetch ({} files, ", served.files.len()))
            && fetch_line.ends_with(" MB/s"),
        "{stderr}"
    );
    assert!(stderr.contains("verify (hash + compare):"), "{stderr}");

    // The suite and every file landed where the parameters said, byte for byte.
    assert_eq!(
        std::fs::read(work.join("suite.yaml")).unwrap(),
        served.suite
    );
    for (path, bytes) in &served.files {
        assert_eq!(
            &std::fs::read(work.join("model").join(path)).unwrap(),
            bytes,
            "{path}"
        );
    }

    // Every request carried the pod's token; suite, list, each file once, one result.
    let received = op.received();
    assert!(
        received
            .iter()
            .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {TOKEN}"))),
        "{received:?}"
    );
    let base = format!("{MODEL_PATH}/{REQUEST_ID}");
    assert_eq!(received[0].path, format!("{base}/suite"));
    assert_eq!(received[1].path, format!("{base}/files"));
    let mut downloaded = op.file_downloads();
    downloaded.sort();
    assert_eq!(downloaded, served.files.keys().cloned().collect::<Vec<_>>());
    assert_eq!(received.last().unwrap().path, RESULT_PATH);

    let results = op.results();
    assert_eq!(results.len(), 1);
    let result = &results[0];
    assert!(result.passed, "{result:?}");
    assert_eq!(result.request_id, REQUEST_ID);
    assert_eq!(result.error, None);
    let probes = result.probes.as_ref().unwrap();
    assert_eq!(probes.suite_digest, digest_of(&served.suite));
    assert_eq!(probes.manifest_digest, MINILM_MANIFEST_DIGEST);
    assert!(!probes.probes.is_empty() && probes.probes.iter().all(|p| p.passed));
}

#[test]
fn a_tampered_file_is_refused_naming_it_and_the_refusal_posted() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let mut served = minilm_served();
    // The model's signed manifest, as the operator serves it with a signed model: it
    // lets the runner name the file that differs.
    let attested = hash_model(
        &LocalSource::new(minilm_dir()).unwrap(),
        &Serialization::files(HashAlgorithm::Sha256),
        &HashOptions::default(),
    )
    .unwrap();
    assert_eq!(attested.digest_string(), MINILM_MANIFEST_DIGEST);
    served.files.insert(
        "model.sig".into(),
        lotabots_model::statement::to_payload(&attested),
    );
    // One bit of one weight, well inside the tensor data: same size, other bytes.
    let weights = served.files.get_mut("model.safetensors").unwrap();
    let at = weights.len() / 2;
    weights[at] ^= 0x01;
    let op = Operator::start(served.clone());
    let (code, stderr, _) = run_pod(
        &op,
        tmp.path(),
        &params(&work, &served.suite, MINILM_MANIFEST_DIGEST),
        &[],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("model.safetensors: modified"), "{stderr}");
    let results = op.results();
    assert_eq!(results.len(), 1);
    assert!(!results[0].passed);
    assert!(results[0].probes.is_none());
    let error = results[0].error.as_deref().unwrap();
    assert!(
        error.starts_with(&format!(
            "model refused: the model's files do not match the attested manifest {MINILM_MANIFEST_DIGEST}"
        )) && error.contains("model.safetensors: modified"),
        "{error}"
    );
}

#[test]
fn a_suite_of_another_digest_is_refused_before_the_model_is_fetched() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let mut served = small_served();
    let expected = served.suite.clone();
    served.suite = std::fs::read(suite_path("minilm-must-fail.yaml")).unwrap();
    let op = Operator::start(served.clone());
    let (code, stderr, _) = run_pod(
        &op,
        tmp.path(),
        &params(&work, &expected, OTHER_DIGEST),
        &[],
    );
    assert_eq!(code, 1, "{stderr}");
    let want = format!(
        "suite refused: the suite served hashes to {}, not to the expected suite digest {}",
        digest_of(&served.suite),
        digest_of(&expected)
    );
    assert!(stderr.contains(&want), "{stderr}");
    assert_eq!(op.results()[0].error.as_deref(), Some(want.as_str()));
    // Nothing else was asked for, nothing written.
    assert_eq!(op.received().len(), 2, "{:?}", op.received());
    assert!(!work.join("suite.yaml").exists());
    assert!(!work.join("model").exists());
}

#[test]
fn a_list_with_a_path_out_of_the_model_is_refused_before_any_download() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let mut served = small_served();
    served.files.insert("../x".into(), b"outside".to_vec());
    let mut list = served.model_files();
    // Listed last, so a runner that downloaded as it went would have fetched the others.
    list.files.sort_by_key(|f| f.path == "../x");
    served.list = Some(list);
    let op = Operator::start(served.clone());
    let (code, stderr, _) = run_pod(
        &op,
        tmp.path(),
        &params(&work, &served.suite, OTHER_DIGEST),
        &[],
    );
    assert_eq!(code, 1, "{stderr}");
    let want =
        "model refused: the operator's file list is unusable: path \"../x\" has a `..` segment";
    assert!(stderr.contains(want), "{stderr}");
    assert_eq!(op.results()[0].error.as_deref(), Some(want));
    assert!(op.file_downloads().is_empty(), "{:?}", op.received());
    assert!(!work.join("x").exists() && !work.join("model").exists());
}

#[test]
fn a_file_of_another_size_than_listed_is_refused_naming_it() {
    for (served_bytes, want) in [
        (
            b"{".to_vec(),
            "model refused: file config.json: 1 bytes served, 2 listed".to_owned(),
        ),
        (
            b"{ }".to_vec(),
            "fetching model file config.json: GET ".to_owned(),
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("work");
        let mut served = small_served();
        served.list = Some(served.model_files());
        let longer = served_bytes.len() > 2;
        served.files.insert("config.json".into(), served_bytes);
        let op = Operator::start(served.clone());
        let (code, stderr, _) = run_pod(
            &op,
            tmp.path(),
            &params(&work, &served.suite, OTHER_DIGEST),
            &[],
        );
        assert_eq!(code, 1, "{stderr}");
        let error = op.results()[0].error.clone().unwrap();
        assert!(error.starts_with(&want), "{error}");
        if longer {
            assert!(
                error.ends_with("the answer is larger than 2 bytes"),
                "{error}"
            );
        }
    }
}

#[test]
fn a_list_of_another_manifest_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let served = small_served();
    let op = Operator::start(served.clone());
    let (code, stderr, _) = run_pod(
        &op,
        tmp.path(),
        &params(&work, &served.suite, MINILM_MANIFEST_DIGEST),
        &[],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "it lists the files of manifest {OTHER_DIGEST}, not of the attested {MINILM_MANIFEST_DIGEST}"
        )),
        "{stderr}"
    );
    assert!(op.file_downloads().is_empty());
}

#[test]
fn a_wrong_token_shows_the_operators_401_detail() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let served = small_served();
    let op = Operator::start(served.clone());
    let mut cmd = runner();
    pod_env(
        &mut cmd,
        tmp.path(),
        &op,
        &params(&work, &served.suite, OTHER_DIGEST),
    );
    std::fs::write(tmp.path().join("token"), "another-pods-token\n").unwrap();
    let out = cmd.arg("--no-post").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let want = format!(
        "fetching the suite: the operator refused GET {}{MODEL_PATH}/{REQUEST_ID}/suite (401): {REJECTED}",
        op.url
    );
    assert!(stderr.contains(&want), "{stderr}");
    let result: lotabots_crds::workload::WorkloadResult =
        serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result.error.as_deref(), Some(want.as_str()));
    // A refusal is final: one attempt, nothing posted.
    assert_eq!(op.received().len(), 1);
}

#[test]
fn a_model_directory_with_files_in_it_is_not_fetched_into() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir_all(work.join("model")).unwrap();
    std::fs::write(work.join("model/left-over"), b"x").unwrap();
    let served = small_served();
    let op = Operator::start(served.clone());
    let (code, stderr, _) = run_pod(
        &op,
        tmp.path(),
        &params(&work, &served.suite, OTHER_DIGEST),
        &[],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("model: not empty: the fetched model must be alone in it"),
        "{stderr}"
    );
    assert!(op.file_downloads().is_empty());
}
