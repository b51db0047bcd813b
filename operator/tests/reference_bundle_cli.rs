//! `verify-gpu-evidence --reference-bundle`: NVIDIA's recorded Hopper report judged against
//! bundles of RIMs — test RIMs for its own measurements (signed by a test CA the bundle
//! carries as an explicitly allowed RIM root override), NVIDIA's real RIMs, broken bundles.

mod common;
#[path = "../verifier/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use lotabots_crds::evidence::{AttestationReport, CcCertificates, CcSystemState, Fact};
use lotabots_verifier::cc::rim::RimKind;
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;
use support::{CHAIN_PEM, REPORT_HEX, SAMPLE_NONCE, bundle_json, pki, sample_rims};
use tempfile::TempDir;

const AT: &str = "2025-06-01T00:00:00Z";

fn hopper(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("verifier/tests/fixtures/hopper")
        .join(file)
}

fn nvidia_rim(file: &str) -> String {
    std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("verifier/tests/fixtures/rim")
            .join(file),
    )
    .unwrap()
}

fn write(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn verify(bundle: &Path) -> Command {
    let mut cmd = Command::cargo_bin("lotabots-operator").unwrap();
    cmd.env_clear()
        .arg("verify-gpu-evidence")
        .arg("--report")
        .arg(hopper("hopperAttestationReport.txt"))
        .arg("--chain")
        .arg(hopper("hopperCertChain.txt"))
        .args(["--nonce", SAMPLE_NONCE, "--at", AT])
        .arg("--reference-bundle")
        .arg(bundle);
    cmd
}

#[test]
fn matching_bundle_attests_without_the_not_checked_note() {
    let dir = TempDir::new().unwrap();
    let pki = pki(2030);
    let json = bundle_json(
        &sample_rims(&pki, |_, _| {}),
        &[],
        "note",
        Some(&pki.root_pem),
    );
    let bundle = write(&dir, "bundle.json", &json);
    verify(&bundle)
        .arg("--allow-rim-root-override")
        .assert()
        .code(0)
        .stdout(contains("VERDICT   Attested"))
        .stdout(contains("BUNDLE    sha256:"))
        .stdout(contains("measurements not checked").not())
        .stdout(contains(
            "no OCSP response in the bundle for device certificate chain",
        ))
        .stderr(contains("instead of the pinned NVIDIA RIM root"));
}

#[test]
fn mismatch_is_named_in_the_json_document() {
    let dir = TempDir::new().unwrap();
    let pki = pki(2030);
    let rims = sample_rims(&pki, |kind, ms| {
        if kind == RimKind::Driver {
            ms[40].2 = vec!["cd".repeat(48)];
        }
    });
    let bundle = write(
        &dir,
        "bundle.json",
        &bundle_json(&rims, &[], "note", Some(&pki.root_pem)),
    );
    let out = verify(&bundle)
        .args(["--allow-rim-root-override", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["schemaVersion"], "lotabots.io/gpu-verdict/v1alpha2");
    assert_eq!(doc["verdict"], "Failed");
    assert!(
        doc["referenceBundleDigest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    let failed: Vec<&serde_json::Value> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["outcome"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert_eq!(failed[0]["check"], "referenceValues");
    let m = failed[0]["message"].as_str().unwrap();
    assert!(
        m.contains("measurement index 40 (Measurement_40) does not match the driver RIM 550.90.07"),
        "{m}"
    );
    assert!(m.contains(&format!("expected {}", "cd".repeat(48))), "{m}");
}

#[test]
fn nvidia_rims_for_other_versions_fail_naming_the_versions() {
    let dir = TempDir::new().unwrap();
    let rims = [
        (
            RimKind::Driver,
            nvidia_rim("Driver_RIM_test_no_gpu.swidtag"),
        ),
        (
            RimKind::Vbios,
            nvidia_rim("1010_0200_882_96005E0001_PROD.swidtag"),
        ),
    ];
    let bundle = write(&dir, "bundle.json", &bundle_json(&rims, &[], "fail", None));
    verify(&bundle)
        .assert()
        .code(1)
        .stdout(contains(
            "no driver RIM for the report's driver version 550.90.07 in the reference bundle (it has driver RIMs for: 545.00)",
        ))
        .stdout(contains(
            "no VBIOS RIM for the report's VBIOS version 96.00.9F.00.01 in the reference bundle (it has VBIOS RIMs for: 96.00.5E.00.01)",
        ))
        .stdout(contains("no OCSP response in the bundle for device certificate chain"));
}

#[test]
fn malformed_bundle_exits_2_naming_file_and_field() {
    let dir = TempDir::new().unwrap();
    let bundle = write(
        &dir,
        "bundle.json",
        br#"{"schemaVersion":"lotabots.io/cc-reference-bundle/v1alpha1","rims":[{"kind":"driver","swidtag":"<oops"}]}"#,
    );
    verify(&bundle).assert().code(2).stderr(contains(
        "bundle.json: not a usable reference bundle: rims[0].swidtag: not XML",
    ));
    let missing = dir.path().join("absent.json");
    verify(&missing)
        .assert()
        .code(2)
        .stderr(contains("absent.json: cannot read"));
}

#[test]
fn a_root_override_needs_the_flag() {
    let dir = TempDir::new().unwrap();
    let pki = pki(2030);
    let json = bundle_json(
        &sample_rims(&pki, |_, _| {}),
        &[],
        "note",
        Some(&pki.root_pem),
    );
    let bundle = write(&dir, "bundle.json", &json);
    verify(&bundle).assert().code(2).stderr(contains(
        "rimRootOverride: the bundle replaces the pinned NVIDIA RIM root",
    ));
}

/// An agent's evidence carrying the recorded report in GPU 0's confidential-computing facts.
fn cc_evidence() -> lotabots_crds::evidence::NodeEvidence {
    let nonce: [u8; 32] = hex::decode(SAMPLE_NONCE).unwrap().try_into().unwrap();
    let mut e = common::evidence("h100-80gb-hbm3", "gpu-node-1", nonce);
    e.host.confidential_computing = Fact::Value(CcSystemState {
        enabled: true,
        dev_tools_mode: false,
    });
    let gpu = &mut e.gpus[0].confidential_computing;
    gpu.attestation_report = Fact::Value(AttestationReport {
        nonce: SAMPLE_NONCE.into(),
        report: REPORT_HEX.trim().to_owned(),
        cec_report: None,
    });
    gpu.certificates = Fact::Value(CcCertificates {
        cert_chain: String::new(),
        attestation_cert_chain: hex::encode(CHAIN_PEM),
    });
    e
}

/// The operator's controller path: the node's accepted evidence judged with the bundle of
/// `--reference-bundle` (loaded by the same function as the CLI's).
#[test]
fn the_controller_judges_evidence_with_the_bundle() {
    let dir = TempDir::new().unwrap();
    let pki = pki(2030);
    let e = cc_evidence();
    let now = e.collected_at;
    let policy = lotabots_crds::gpu_attestation::GpuPolicy {
        confidential_computing_required: true,
        ..Default::default()
    };
    let judging = lotabots_operator::status::Judging {
        interval: std::time::Duration::from_secs(600),
        grace: std::time::Duration::from_secs(120),
        allow_simulated: true,
        waiting_since: now,
    };
    let accepted = lotabots_operator::evidence_api::AcceptedEvidence {
        node: "gpu-node-1".into(),
        digest: "sha256:00".into(),
        received_at: now,
        evidence: e,
    };
    let wrong = sample_rims(&pki, |kind, ms| {
        if kind == RimKind::Driver {
            ms[50].2 = vec!["ee".repeat(48)];
        }
    });
    let path = write(
        &dir,
        "bundle.json",
        &bundle_json(&wrong, &[], "note", Some(&pki.root_pem)),
    );
    let (bundle, digest) =
        lotabots_operator::verify_cmd::load_reference_bundle(&path, true).unwrap();
    assert!(digest.starts_with("sha256:"));
    let bundle = std::sync::Arc::new(bundle);
    let judge = |bundle| {
        lotabots_operator::status::judge_node_with(
            "gpu-node-1",
            Some(&accepted),
            &policy,
            &judging,
            bundle,
            now,
        )
    };
    let with = judge(Some(&bundle));
    assert_eq!(
        with.verdict,
        lotabots_crds::gpu_attestation::Verdict::Failed,
        "{:#?}",
        with.reasons
    );
    assert!(
        with.reasons
            .iter()
            .any(|r| r.contains("measurement index 50 (Measurement_50) does not match")),
        "{:#?}",
        with.reasons
    );
    let without = judge(None);
    assert_eq!(
        without.verdict,
        lotabots_crds::gpu_attestation::Verdict::Attested
    );
    // The operator refuses a bundle's own RIM root: it has no override flag.
    assert!(
        lotabots_operator::verify_cmd::load_reference_bundle(&path, false)
            .unwrap_err()
            .to_string()
            .contains("rimRootOverride")
    );
}

/// The evidence path from the CLI: the report in the evidence, a policy requiring
/// confidential computing.
#[test]
fn evidence_reports_are_judged_with_the_bundle() {
    let dir = TempDir::new().unwrap();
    let e = cc_evidence();
    let at = e.collected_at.to_string();
    let evidence = write(&dir, "evidence.json", &serde_json::to_vec(&e).unwrap());
    let policy = write(
        &dir,
        "policy.yaml",
        b"apiVersion: lotabots.io/v1alpha1\nkind: GpuAttestation\nmetadata:\n  name: cc-fleet\n\
          spec:\n  policy:\n    confidentialComputingRequired: true\n",
    );
    let pki = pki(2030);
    let run = |rims: &[(RimKind, String)]| {
        let bundle = write(
            &dir,
            "bundle.json",
            &bundle_json(rims, &[], "note", Some(&pki.root_pem)),
        );
        let mut cmd = Command::cargo_bin("lotabots-operator").unwrap();
        cmd.env_clear()
            .arg("verify-gpu-evidence")
            .arg("--evidence")
            .arg(&evidence)
            .arg("--policy")
            .arg(&policy)
            .args(["--nonce", SAMPLE_NONCE, "--at", &at, "--allow-simulated"])
            .arg("--reference-bundle")
            .arg(&bundle)
            .arg("--allow-rim-root-override");
        cmd
    };
    run(&sample_rims(&pki, |_, _| {}))
        .assert()
        .code(0)
        .stdout(contains("VERDICT   Attested"))
        .stdout(contains("measurements not checked").not());
    let wrong = sample_rims(&pki, |kind, ms| {
        if kind == RimKind::Vbios {
            ms[7].2 = vec!["ee".repeat(48)];
        }
    });
    run(&wrong)
        .assert()
        .code(1)
        .stdout(contains("GPU 0"))
        .stdout(contains(
            "measurement index 7 (Measurement_7) does not match the VBIOS RIM",
        ));
}
