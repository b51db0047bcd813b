//! `lotabots-operator verify-gpu-evidence` as a user runs it: real files, the real binary,
//! the sample policy of config/samples, exit codes 0/1/2.

mod common;

use std::path::PathBuf;

use assert_cmd::Command;
use predicates::str::contains;
use tempfile::TempDir;

const NONCE: [u8; 32] = [0xab; 32];

fn sample_policy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../config/samples/lotabots_v1alpha1_gpuattestation_h100.yaml")
}

/// Writes the evidence of `profile` and returns the directory, the file, and its collection time.
fn evidence_file(profile: &str) -> (TempDir, PathBuf, String) {
    let dir = TempDir::new().unwrap();
    let e = common::evidence(profile, "gpu-node-1", NONCE);
    let path = dir.path().join("evidence.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&e).unwrap()).unwrap();
    (dir, path, e.collected_at.to_string())
}

fn verify(evidence: &PathBuf, at: &str) -> Command {
    verify_nonce(evidence, at, &hex::encode(NONCE))
}

fn verify_nonce(evidence: &PathBuf, at: &str, nonce: &str) -> Command {
    let mut cmd = Command::cargo_bin("lotabots-operator").unwrap();
    cmd.env_clear()
        .arg("verify-gpu-evidence")
        .arg("--evidence")
        .arg(evidence)
        .args(["--nonce", nonce, "--at", at, "--allow-simulated"]);
    cmd
}

#[test]
fn the_h100_profile_meets_the_sample_policy() {
    let (_dir, path, at) = evidence_file("h100-80gb-hbm3");
    verify(&path, &at)
        .arg("--policy")
        .arg(sample_policy())
        .assert()
        .code(0)
        .stdout(contains("VERDICT   Attested"))
        .stdout(contains("POLICY    h100-fleet"))
        .stdout(contains("NODE      gpu-node-1"));
}

#[test]
fn the_faulty_node_fails_with_reasons_and_exit_1() {
    let (_dir, path, at) = evidence_file("faulty-node");
    verify(&path, &at)
        .arg("--policy")
        .arg(sample_policy())
        .assert()
        .code(1)
        .stdout(contains("VERDICT   Failed"))
        .stdout(contains("Failed"));
}

#[test]
fn another_nonce_fails() {
    let (_dir, path, at) = evidence_file("h100-80gb-hbm3");
    verify_nonce(&path, &at, &"cd".repeat(32))
        .assert()
        .code(1)
        .stdout(contains("not to the one issued"));
}

#[test]
fn stale_evidence_fails_when_judged_later() {
    let (_dir, path, at) = evidence_file("h100-80gb-hbm3");
    let later: jiff::Timestamp =
        at.parse::<jiff::Timestamp>().unwrap() + jiff::SignedDuration::from_secs(3600);
    verify(&path, &later.to_string())
        .assert()
        .code(1)
        .stdout(contains("3600s old"));
}

#[test]
fn simulated_evidence_is_refused_unless_allowed() {
    let (_dir, path, at) = evidence_file("h100-80gb-hbm3");
    Command::cargo_bin("lotabots-operator")
        .unwrap()
        .env_clear()
        .arg("verify-gpu-evidence")
        .arg("--evidence")
        .arg(&path)
        .args(["--nonce", &hex::encode(NONCE), "--at", &at])
        .assert()
        .code(1)
        .stdout(contains("simulated backend"));
}

#[test]
fn json_output_is_the_documented_verdict_document() {
    let (_dir, path, at) = evidence_file("h100-80gb-hbm3");
    let out = verify(&path, &at)
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["schemaVersion"], "lotabots.io/gpu-verdict/v1alpha2");
    assert_eq!(doc["verdict"], "Attested");
    assert!(
        doc["evidenceDigest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert_eq!(doc["node"], "gpu-node-1");
}

#[test]
fn unusable_input_exits_2_naming_the_file_and_problem() {
    let (dir, path, at) = evidence_file("h100-80gb-hbm3");
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, br#"{"schemaVersion": 7}"#).unwrap();
    verify(&garbage, &at).assert().code(2).stderr(contains(
        "garbage.json: not an evidence document: at schemaVersion",
    ));

    verify(&dir.path().join("missing.json"), &at)
        .assert()
        .code(2)
        .stderr(contains("missing.json: cannot read"));

    verify_nonce(&path, &at, "xyz")
        .assert()
        .code(2)
        .stderr(contains("--nonce: nonce must be 64 hex characters"));

    let not_policy = dir.path().join("pod.yaml");
    std::fs::write(
        &not_policy,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n",
    )
    .unwrap();
    verify(&path, &at)
        .arg("--policy")
        .arg(&not_policy)
        .assert()
        .code(2)
        .stderr(contains("pod.yaml: not a GpuAttestation"));
}

fn hopper(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("verifier/tests/fixtures/hopper")
        .join(file)
}

/// The nonce NVIDIA's recorded Hopper report was requested with (fixture README).
const HOPPER_NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";

fn verify_report(nonce: &str) -> Command {
    let mut cmd = Command::cargo_bin("lotabots-operator").unwrap();
    cmd.env_clear()
        .arg("verify-gpu-evidence")
        .arg("--report")
        .arg(hopper("hopperAttestationReport.txt"))
        .arg("--chain")
        .arg(hopper("hopperCertChain.txt"))
        .args(["--nonce", nonce]);
    cmd
}

#[test]
fn a_recorded_hopper_report_verifies_and_says_what_was_not_checked() {
    verify_report(HOPPER_NONCE)
        .assert()
        .code(0)
        .stdout(contains("VERDICT   Attested"))
        .stdout(contains("REPORT    sha256:"))
        .stdout(contains(
            "measurements not checked against reference values",
        ));
}

#[test]
fn a_report_requested_with_another_nonce_fails() {
    verify_report(&"00".repeat(32))
        .assert()
        .code(1)
        .stdout(contains("VERDICT   Failed"))
        .stdout(contains("nonce"));
}

#[test]
fn a_custom_device_root_is_used_only_when_given_and_is_logged() {
    // NVIDIA's chain file is not a single root: refused, and the run says which root it used.
    verify_report(HOPPER_NONCE)
        .arg("--device-root")
        .arg(hopper("hopperCertChain.txt"))
        .assert()
        .code(1)
        .stderr(contains("instead of the pinned NVIDIA root"));
}

#[test]
fn an_unusable_report_exits_2_naming_it() {
    let dir = TempDir::new().unwrap();
    let bad = dir.path().join("report.txt");
    std::fs::write(&bad, "zz not hex at all").unwrap();
    let mut cmd = Command::cargo_bin("lotabots-operator").unwrap();
    cmd.env_clear()
        .arg("verify-gpu-evidence")
        .arg("--report")
        .arg(&bad)
        .arg("--chain")
        .arg(hopper("hopperCertChain.txt"))
        .args(["--nonce", HOPPER_NONCE])
        .assert()
        .code(2)
        .stderr(contains("report.txt: not an SPDM report"));
    Command::cargo_bin("lotabots-operator")
        .unwrap()
        .env_clear()
        .args(["verify-gpu-evidence", "--nonce", HOPPER_NONCE, "--report"])
        .arg(&bad)
        .assert()
        .code(2)
        .stderr(contains("--chain"));
}
