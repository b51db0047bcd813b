//! The runner as the launcher starts it: settings from the environment and the JSON
//! parameters, malformed suites refused with exit 2, a model that does not match refused
//! with exit 1, and the result posted over HTTPS with the pod's token to a local
//! operator stand-in (127.0.0.1, a CA made here).

mod common;

use std::path::Path;

use common::operator::{Operator, pod_env};
use common::{MINILM_MANIFEST_DIGEST, minilm_dir, runner, suite_path};
use lotabots_crds::workload::{RESULT_PATH, WorkloadResult};

/// A small model that the runner hashes but never loads (the digest given is not its).
fn fake_model(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), b"{}").unwrap();
    std::fs::write(dir.join("model.safetensors"), b"not weights").unwrap();
}

const OTHER_DIGEST: &str =
    "sha256:1111111111111111111111111111111111111111111111111111111111111111";

#[test]
fn malformed_suites_exit_2_naming_probe_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    fake_model(&tmp.path().join("m"));
    let header =
        "apiVersion: lotabots.io/probes/v1alpha1\nkind: ProbeSuite\ntask: embedding\nprobes:\n";
    let cases = [
        (
            format!(
                "{header}  - name: typo\n    similarityOrdr: {{anchor: a, closer: b, farther: c}}\n"
            ),
            "probe \"typo\" (probes[0]): unknown field `similarityOrdr`",
        ),
        (
            format!("{header}  - name: short\n    similarityAtLeast: {{a: x, bound: 0.5}}\n"),
            "probe \"short\" (probes[0]): similarityAtLeast: missing field `b`",
        ),
        (
            header.replace("probes/v1alpha1", "probes/v1"),
            "apiVersion is \"lotabots.io/probes/v1\", expected lotabots.io/probes/v1alpha1",
        ),
        (
            format!("{header}  - name: gen\n    pattern: {{input: hi, regex: 'h.*'}}\n"),
            "probe \"gen\" (probes[0]): pattern applies to generation models, but the suite's task is embedding",
        ),
    ];
    for (i, (yaml, want)) in cases.iter().enumerate() {
        let suite = tmp.path().join(format!("suite{i}.yaml"));
        std::fs::write(&suite, yaml).unwrap();
        let out = runner()
            .args(["--no-post", "--model"])
            .arg(tmp.path().join("m"))
            .arg("--suite")
            .arg(&suite)
            .args(["--manifest-digest", OTHER_DIGEST])
            .assert()
            .code(2)
            .get_output()
            .clone();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "case {i}: {stderr}");
        assert!(stderr.contains(&suite.display().to_string()), "{stderr}");
        // The result says so too (the operator learns the suite is broken).
        let result: WorkloadResult = serde_json::from_slice(&out.stdout).unwrap();
        assert!(!result.passed);
        assert!(result.error.unwrap().contains(want));
    }
}

#[test]
fn a_generation_suite_is_refused_as_unsupported() {
    let tmp = tempfile::tempdir().unwrap();
    fake_model(&tmp.path().join("m"));
    let suite = tmp.path().join("gen.yaml");
    std::fs::write(
        &suite,
        "apiVersion: lotabots.io/probes/v1alpha1\nkind: ProbeSuite\ntask: generation\nprobes:\n  - name: hi\n    exact: {input: hi, output: hello}\n",
    )
    .unwrap();
    runner()
        .args(["--no-post", "--model"])
        .arg(tmp.path().join("m"))
        .arg("--suite")
        .arg(&suite)
        .args(["--manifest-digest", OTHER_DIGEST])
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "the suite's task is generation; this runner runs embedding suites only",
        ));
}

#[test]
fn a_mounted_suite_of_another_digest_is_refused_when_a_digest_is_given() {
    let tmp = tempfile::tempdir().unwrap();
    fake_model(&tmp.path().join("m"));
    let suite = suite_path("minilm-semantic.yaml");
    let found = lotabots_probes::suite::digest_of(&std::fs::read(&suite).unwrap());
    let out = runner()
        .args(["--no-post", "--model"])
        .arg(tmp.path().join("m"))
        .arg("--suite")
        .arg(&suite)
        .args([
            "--manifest-digest",
            OTHER_DIGEST,
            "--suite-digest",
            OTHER_DIGEST,
        ])
        .assert()
        .code(1)
        .get_output()
        .clone();
    let want = format!(
        "suite refused: {} hashes to {found}, not to the expected suite digest {OTHER_DIGEST}",
        suite.display()
    );
    let result: WorkloadResult = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result.error.as_deref(), Some(want.as_str()));
}

#[test]
fn usage_errors_exit_2() {
    runner()
        .args(["--no-post", "--suite", "s.yaml"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("--model is required"));
    runner()
        .args(["--model", "m", "--suite", "s.yaml", "--manifest-digest"])
        .arg(MINILM_MANIFEST_DIGEST)
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "--operator-url (or LOTABOTS_OPERATOR_URL) is required to post the result",
        ));
}

/// The runner as a pod against `op`, on a model in `dir` that does not hash to the
/// attested digest it is given.
fn refused_model_pod(dir: &Path, op: &Operator) -> assert_cmd::Command {
    fake_model(&dir.join("m"));
    let mut cmd = runner();
    pod_env(
        &mut cmd,
        dir,
        op,
        &serde_json::json!({
            "modelDir": dir.join("m"),
            "suite": suite_path("minilm-semantic.yaml"),
            "manifestDigest": OTHER_DIGEST,
        }),
    );
    cmd
}

#[test]
fn a_refused_model_is_posted_with_the_pod_token() {
    let tmp = tempfile::tempdir().unwrap();
    let op = Operator::taking_results(202);
    let mut cmd = refused_model_pod(tmp.path(), &op);
    cmd.assert()
        .code(1)
        .stderr(predicates::str::contains("result posted to"));
    let got = op.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].path, RESULT_PATH);
    assert_eq!(
        got[0].authorization.as_deref(),
        Some("Bearer pod-bound-token")
    );
    let result: WorkloadResult = serde_json::from_slice(&got[0].body).unwrap();
    assert!(!result.passed);
    assert_eq!(result.node, "gpu-node-7");
    assert_eq!(result.nonce, "ab".repeat(32));
    assert_eq!(result.request_id, "c0ffee");
    assert!(result.error.unwrap().contains(&format!(
        "do not match the attested manifest {OTHER_DIGEST}"
    )));
}

#[test]
fn a_refusal_by_the_operator_exits_3() {
    let tmp = tempfile::tempdir().unwrap();
    let op = Operator::taking_results(403);
    let mut cmd = refused_model_pod(tmp.path(), &op);
    cmd.assert().code(3).stderr(predicates::str::contains(
        "the operator refused the result (403)",
    ));
    assert_eq!(op.received().len(), 1);
}

#[test]
fn an_operator_with_another_ca_is_not_trusted() {
    let tmp = tempfile::tempdir().unwrap();
    let op = Operator::taking_results(202);
    // Its URL, another stand-in's CA.
    let impostor = Operator {
        ca_pem: Operator::taking_results(202).ca_pem,
        ..op.clone()
    };
    let mut cmd = refused_model_pod(tmp.path(), &impostor);
    cmd.assert()
        .code(3)
        .stderr(predicates::str::contains("posting to"));
    assert!(op.received().is_empty());
}

#[test]
fn the_minilm_suite_result_is_posted() {
    let tmp = tempfile::tempdir().unwrap();
    let op = Operator::taking_results(202);
    let mut cmd = runner();
    pod_env(
        &mut cmd,
        tmp.path(),
        &op,
        &serde_json::json!({
            "modelDir": minilm_dir(),
            "suite": suite_path("minilm-semantic.yaml"),
            "manifestDigest": MINILM_MANIFEST_DIGEST,
        }),
    );
    cmd.assert().code(0);
    let got = op.received();
    assert_eq!(got.len(), 1);
    let result: WorkloadResult = serde_json::from_slice(&got[0].body).unwrap();
    assert!(result.passed);
    let probes = result.probes.unwrap();
    assert_eq!(probes.manifest_digest, MINILM_MANIFEST_DIGEST);
    let suite_bytes = std::fs::read(suite_path("minilm-semantic.yaml")).unwrap();
    assert_eq!(
        probes.suite_digest,
        lotabots_probes::suite::Suite::parse(&suite_bytes)
            .unwrap()
            .digest
    );
    assert_eq!(probes.device, "cpu");
}
